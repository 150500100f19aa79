"""Writer lock of a feature bank: an ``flock`` on the bank directory itself.

The lock lives on the directory's inode (no lock file), so plain zarr readers see
no stray files, and the kernel drops it when the writer exits for any reason -
a killed writer never leaves a stale lock that would block a resume.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import BankLockedError

__all__ = ["BankLock"]


class BankLock:
    """Exclusive, non-blocking lock of one bank directory (Linux/macOS ``flock``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> BankLock:
        """Take the lock or raise ``BankLockedError`` at once (never waits)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BankLockedError(
                f"bank {str(self.path)!r} is being written by another process "
                "(its directory is locked); wait for that `facebank embed` to finish or "
                "stop it - a killed writer releases the lock by itself, then rerun the "
                "same command to resume"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def fileno(self) -> int:
        """The locked descriptor (forked children should close their copy)."""
        if self._fd is None:
            raise ValueError("lock not held")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> BankLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
