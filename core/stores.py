"""Where things live: a local folder or an fsspec URL, and the options that reach it.

Every layer names places the same way: banks, run folders, SOURCEs and heads may be
local paths or URLs on a store (``s3://``, ``gs://``, ``memory://``; ``file://`` is
local). Credentials and endpoints come from the store's standard mechanisms
(``AWS_ENDPOINT_URL``, ``AWS_*`` variables, a ``storage_options`` mapping); they are
never recorded, and a URL is shown without any ``user:password@`` part (:func:`redact`).

The one commit primitive is :meth:`Location.write_json`: a single object written whole
(temp file + rename on a local disk, one PUT on an object store).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

from facebank.core.errors import BankError

__all__ = ["Location", "is_url", "local_path", "redact", "store_defaults", "url_protocol"]

_PROTOCOL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_LOCAL_PROTOCOLS = ("file", "local")


def is_url(text: str | os.PathLike) -> bool:
    """True for an fsspec URL on a store other than the local disk (``file://`` is local)."""
    m = _URL.match(os.fspath(text))
    return m is not None and m.group(0)[:-3].lower() not in _LOCAL_PROTOCOLS


_FILE_URL = re.compile(r"^(?:file|local):(//[^/]*)?(/.*)$", re.IGNORECASE)


def local_path(text: str | os.PathLike) -> str:
    """The local path a ``file://`` URL names; any other text is returned as given.

    ``file:///data/faces`` and ``file://localhost/data/faces`` name ``/data/faces``; so
    does ``file:/data/faces``, the form typer/click leave when ``file:///data/faces`` is
    given to a ``Path`` option (a local folder literally named ``file:`` is not
    supported). Every command resolves a SOURCE, an input or a bank through this one
    function, so a ``file://`` URL works wherever a path does.
    """
    raw = os.fspath(text)
    m = _FILE_URL.match(raw)
    return m.group(2) if m else raw


def url_protocol(text: str | os.PathLike) -> str | None:
    """The protocol of an fsspec URL on a store (``"s3"`` for ``s3://b/k``), else ``None``."""
    return os.fspath(text).split("://", 1)[0].lower() if is_url(text) else None


@contextlib.contextmanager
def store_defaults(
    storage_options: Mapping[str, Any] | None, urls: Iterable[str]
) -> Iterator[None]:
    """``storage_options`` as fsspec's defaults for the protocols of ``urls``, for a block.

    One command's ``--storage-options`` must reach every URL it touches (a run folder
    on a store, scoring inputs, a head, a bank, a SOURCE), including code paths that
    open a URL without being handed the options. fsspec merges ``fsspec.config.conf``
    into the arguments of every filesystem it instantiates for a protocol (explicit
    arguments win), so the options are set there for the protocols the command's URLs
    name (an ``endpoint_url`` meant for ``s3://`` is never given to ``gs://``) and the
    previous defaults are restored afterwards. Worker *processes* started with spawn
    do not inherit them: code that starts such workers passes the options explicitly.
    """
    if not storage_options:
        yield
        return
    import fsspec.config

    protocols = sorted({p for p in (url_protocol(u) for u in urls) if p})
    saved = {p: fsspec.config.conf.get(p) for p in protocols}
    for p in protocols:
        fsspec.config.conf[p] = {**(saved[p] or {}), **dict(storage_options)}
    try:
        yield
    finally:
        for p, before in saved.items():
            if before is None:
                fsspec.config.conf.pop(p, None)
            else:
                fsspec.config.conf[p] = before


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part (credentials are never shown)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", str(url))


class Location:
    """Where a bank (or one of its parts) lives: a local folder or an fsspec URL.

    Args:
        url: a local path or a URL such as ``s3://bucket/faces.zarr``.
        storage_options: passed to fsspec (endpoint, credentials ...); never recorded.
    """

    def __init__(
        self, url: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        text = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        m = _PROTOCOL.match(text)
        self.protocol = m.group(1).lower() if m else "file"
        if self.protocol in ("file", "local"):
            self.local: Path | None = Path(local_path(text))
            self.url = str(self.local)
            self.fs: Any = None
            self.root = str(self.local)
        else:
            self.local = None
            self.url = redact(text.rstrip("/"))
            try:
                self.fs, self.root = fsspec.core.url_to_fs(text, **self.storage_options)
            except (ImportError, ValueError) as exc:
                raise BankError(
                    f"store {self.url!r} cannot be used ({type(exc).__name__}: {exc}); "
                    "install the fsspec backend for it (s3fs for s3://, gcsfs for gs://)"
                ) from None
            self.root = self.root.rstrip("/")
        self._text = text.rstrip("/") if self.local is None else str(self.local)

    # ------------------------------------------------------------------ naming
    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def name(self) -> str:
        """Last component (``faces.zarr``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, key: str) -> Location:
        """The location ``key`` below this one (same store and options)."""
        out = copy.copy(self)
        if self.local is not None:
            out.local = self.local / key
            out.url = out.root = out._text = str(out.local)
        else:
            out.url = f"{self.url}/{key}"
            out.root = f"{self.root}/{key}"
            out._text = f"{self._text}/{key}"
        return out

    def _key(self, key: str) -> str:
        if not key:
            return self.root
        return str(self.local / key) if self.local is not None else f"{self.root}/{key}"

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------------ objects
    def _fresh(self, key: str) -> str:
        # zarr writes through its own (async) filesystem object, so this one's cached
        # listings may predate those writes: never answer from them
        path = self._key(key)
        self.fs.invalidate_cache(path)
        return path

    def exists(self, key: str = "") -> bool:
        if self.local is not None:
            return (self.local / key).exists() if key else self.local.exists()
        return bool(self.fs.exists(self._fresh(key)))

    def is_file(self, key: str) -> bool:
        if self.local is not None:
            return (self.local / key).is_file()
        return bool(self.fs.isfile(self._fresh(key)))

    def read_bytes(self, key: str) -> bytes:
        """Raises FileNotFoundError when the object does not exist."""
        if self.local is not None:
            return (self.local / key).read_bytes()
        return bytes(self.fs.cat_file(self._key(key)))

    def read_many(self, keys: list[str]) -> list[bytes]:
        """Several objects at once (concurrent requests on an object store)."""
        if self.local is not None:
            return [(self.local / k).read_bytes() for k in keys]
        paths = [self._key(k) for k in keys]
        got = self.fs.cat(paths, on_error="return")
        out = []
        for p in paths:
            value = got.get(p)
            if value is None or isinstance(value, BaseException):
                raise FileNotFoundError(p) if not isinstance(value, OSError) else value
            out.append(bytes(value))
        return out

    def read_json(self, key: str) -> Any:
        """Raises FileNotFoundError (absent) or ValueError (not JSON)."""
        return json.loads(self.read_bytes(key).decode("utf-8"))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole: a reader sees the old or the new bytes, never a mixture."""
        if self.local is not None:
            dst = self.local / key
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f"{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.partial"
            # (no fsync: the guarantee is against a killed process, whose writes the kernel keeps)
            try:
                tmp.write_bytes(data)
                os.replace(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            self.fs.pipe_file(self._key(key), data)  # one PUT: atomic on object stores

    def write_json(self, key: str, doc: Any) -> None:
        self.write_bytes(key, json.dumps(doc, indent=2).encode("utf-8"))

    def list(self, key: str = "") -> list[str]:
        """Names directly below ``key`` ([] when it does not exist)."""
        if self.local is not None:
            d = self.local / key
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        try:
            entries = self.fs.ls(self._key(key), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def find(self, key: str) -> set[str]:
        """Keys of every object below ``key`` (relative to this location; recursive)."""
        if self.local is not None:
            base = self.local / key
            if not base.is_dir():
                return set()
            out: set[str] = set()
            for root, _dirs, files in os.walk(base):
                rel = Path(root).relative_to(self.local).as_posix()
                out.update(f"{rel}/{f}" for f in files)
            return out
        prefix = self.root + "/"
        try:
            found = self.fs.find(self._fresh(key))
        except FileNotFoundError:
            return set()
        return {str(f)[len(prefix) :] for f in found if str(f).startswith(prefix)}

    def remove(self, key: str = "") -> None:
        """Delete an object or a whole prefix (missing is fine)."""
        if self.local is not None:
            import shutil

            p = self.local / key if key else self.local
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._key(key), recursive=True)

    def check_reachable(self) -> None:
        """Raise one clear ``BankError`` line when the store cannot be reached at all."""
        if self.local is not None:
            return
        try:
            self.fs.exists(self.root)
            parent = self.root.split("/", 1)[0]
            self.fs.ls(parent, detail=False)
        except FileNotFoundError:
            raise BankError(
                f"store {self.url!r}: bucket or folder {parent!r} does not exist; create it "
                "or check the URL"
            ) from None
        except Exception as exc:  # any failure to reach the store is the finding
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise BankError(
                f"store {self.url!r} is unreachable ({type(exc).__name__}: {reason}); check the "
                "endpoint and credentials (AWS_ENDPOINT_URL, AWS_* variables or "
                "--storage-options)"
            ) from None

    def zarr_store(self, *, read_only: bool) -> Any:
        """A zarr store rooted here (``LocalStore`` path or ``FsspecStore``)."""
        if self.local is not None:
            return str(self.local)
        import zarr.storage

        return zarr.storage.FsspecStore.from_url(
            self._text, storage_options=self.storage_options or None, read_only=read_only
        )
