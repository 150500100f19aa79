"""Writer lock of a feature bank: an ``flock`` on a local bank folder, a lease object elsewhere.

The lock lives on the directory's inode (no lock file), so plain zarr readers see
no stray files, and the kernel drops it when the writer exits for any reason -
a killed writer never leaves a stale lock that would block a resume.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from facebank.core.errors import BankLockedError

__all__ = ["BankLock", "LeaseLock", "writer_lock"]


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

    def renew(self) -> None:
        """Nothing to renew: the kernel holds an ``flock`` as long as the process lives."""

    def __enter__(self) -> BankLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class LeaseLock:
    """Writer lock of a bank on an object store: a lease object with an owner and an expiry.

    Object stores have no ``flock`` and no atomic rename, so the lock is one small
    JSON object, ``BANK/facebank.lease``: ``{"owner", "generation", "host", "pid",
    "expires"}``. A writer takes it when it is absent, expired or its own, renews it on
    every commit and from a background thread every ``ttl_s / 3`` (a driver that waits
    on its workers for hours commits nothing meanwhile), and deletes it on close. A
    writer killed without closing blocks others only until the lease expires (``ttl_s``).

    Every write is read-check-write with a generation number: the writer reads the
    lease, proceeds only if it holds ``(owner, generation)`` it last wrote (or, on
    acquire, if the lease is absent or expired), writes ``generation + 1``, reads it
    back and proceeds only if its own write is the one there. So two writers racing
    for an absent lease, or a writer whose lease expired (a paused process, a lost
    network) renewing after another took it over, end with exactly one holder: the
    other's :meth:`renew` raises :class:`BankLockedError` and it stops writing.
    """

    KEY = "facebank.lease"

    def __init__(self, loc: Any, *, ttl_s: float = 600.0) -> None:
        self.loc = loc
        self.ttl_s = float(ttl_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held = False
        self._generation = 0  # the generation this writer last wrote (0: none)
        self._lost: dict[str, Any] | None = None  # the lease that replaced ours
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def _current(self) -> dict[str, Any] | None:
        try:
            doc = self.loc.read_json(self.KEY)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable lease: treated as absent (it is rewritten below)
        return doc if isinstance(doc, dict) else None

    def _write(self, generation: int) -> None:
        now = time.time()
        self.loc.write_json(
            self.KEY,
            {
                "owner": self.owner,
                "generation": generation,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired": now,
                "expires": now + self.ttl_s,
            },
        )

    def _ours(self, doc: dict[str, Any] | None, generation: int) -> bool:
        return (
            doc is not None
            and doc.get("owner") == self.owner
            and int(doc.get("generation", 0)) == generation
        )

    def _write_checked(self, generation: int) -> dict[str, Any] | None:
        """Write ``generation``, then read it back: ``None`` when ours is the lease there,
        else the lease that won (a racing writer's PUT landed after ours)."""
        self._write(generation)
        time.sleep(0.05)  # let a racing writer's PUT land before reading back
        doc = self._current()
        return None if self._ours(doc, generation) else (doc or {})

    def _refuse(self, doc: dict[str, Any]) -> None:
        left = float(doc.get("expires", 0)) - time.time()
        raise BankLockedError(
            f"bank {self.loc.url!r} is being written by another process (lease of "
            f"{doc.get('host')!r} pid {doc.get('pid')}, expires in {max(left, 0):.0f} s); wait "
            "for that `facebank embed` to finish or stop it - a killed writer's lease expires "
            "by itself, then rerun the same command to resume"
        )

    def acquire(self) -> LeaseLock:
        """Take the lease or raise ``BankLockedError`` at once (never waits)."""
        if self._held:
            return self
        doc = self._current()
        if (
            doc is not None
            and float(doc.get("expires", 0)) > time.time()
            and doc.get("owner") != self.owner
        ):
            self._refuse(doc)
        generation = int(doc.get("generation", 0)) + 1 if doc is not None else 1
        winner = self._write_checked(generation)
        if winner is not None:
            self._refuse(winner)
        self._generation = generation
        self._lost = None
        self._held = True
        if self.ttl_s > 0:
            self._stop.clear()
            self._keeper = threading.Thread(target=self._keep, name="facebank-lease", daemon=True)
            self._keeper.start()
        return self

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except BankLockedError:  # taken over: the next commit raises it
                return
            except Exception:  # a store hiccup: the next beat (or commit) renews
                continue

    def renew(self) -> None:
        """Push the expiry forward (called on every commit).

        Raises:
            BankLockedError: another writer holds the lease now (ours expired and was
                taken over); this writer must stop writing.
        """
        with self._mutex:  # the keeper thread and a commit: one renewal at a time
            if self._lost is None:
                if not self._held:
                    return
                doc = self._current()
                if not self._ours(doc, self._generation):
                    self._lost = doc or {}
                elif float(doc.get("expires", 0)) - time.time() > self.ttl_s / 2:  # type: ignore[union-attr]
                    # far from expiry nobody may take it over: no race to read back
                    self._write(self._generation + 1)
                    self._generation += 1
                    return
                else:
                    winner = self._write_checked(self._generation + 1)
                    if winner is None:
                        self._generation += 1
                        return
                    self._lost = winner
            self._held = False
            self._stop.set()
            doc = self._lost
        raise BankLockedError(
            f"lost the writer lease of bank {self.loc.url!r}: it expired and "
            f"{doc.get('host')!r} pid {doc.get('pid')} holds it now; this writer stopped "
            "(rows it committed before stay) - rerun the command when that writer is done"
        )

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=30)  # a renewal in flight lands before the delete
            self._keeper = None
        if self._held:
            self._held = False
            if self._ours(self._current(), self._generation):  # never another's lease
                self.loc.remove(self.KEY)
        self._lost = None

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_lock(loc: Any) -> BankLock | LeaseLock:
    """The writer lock that fits the store: ``flock`` on a local folder, else a lease object."""
    return BankLock(loc.local) if loc.local is not None else LeaseLock(loc)
