"""Writing a feature bank: create, append, commit, absorb partitions, close.

:class:`BankWriting` is the writing half of :class:`~facebank.embed.bank.bank.FeatureBank`
(which inherits it); the crash-safety contract is the bank's (module docstring of
:mod:`facebank.embed.bank.bank`): rows are written beyond ``count`` first, and one
atomic write of the group's ``zarr.json`` commits them. The row helpers here
(:func:`row_columns`, :func:`write_rows`) are shared with ``partitions``.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import zarr

from facebank.core.errors import BankError
from facebank.core.runs import package_versions
from facebank.core.stores import Location, redact
from facebank.embed.bank._lock import BankLock, LeaseLock, writer_lock
from facebank.embed.bank._store import (
    CORE_COLUMNS,
    DEFAULT_CHUNK_ROWS,
    EXTRA_COLUMNS,
    FORMAT_VERSION,
    Store,
    as_column,
    create_arrays,
    ensure_partitions_group,
    is_bank,
    pending_partitions,
    read_group_attrs,
    remove_orphans,
    remove_partition,
    write_group_json,
)
from facebank.embed.inputs.metadata import METADATA_SCHEMA

__all__ = ["BankWriting", "arrays_backbone", "row_columns", "write_rows", "NOT_RECORDED"]

BankPath = str | os.PathLike
_BANK_VERSIONS = ("numpy", "fsspec")
#: ``meta_error`` of rows appended without acquisition metadata
NOT_RECORDED = "not recorded when the row was written"

B = TypeVar("B", bound="BankWriting")


class BankWriting:
    """The writing methods of a feature bank (mixed into ``FeatureBank``).

    State it relies on, set by ``FeatureBank.__init__``: ``_segments`` (the bank's
    stores), ``_lock`` (the writer lock while open for writing) and ``_digest``.
    """

    _segments: list[tuple[Store, np.ndarray | None]]
    _lock: BankLock | LeaseLock | None
    _digest: str | None

    if TYPE_CHECKING:

        def __init__(
            self,
            segments: list[tuple[Store, np.ndarray | None]],
            *,
            name: str | None = None,
            view: str | None = None,
        ) -> None: ...

        @property
        def name(self) -> str: ...

        @property
        def url(self) -> str: ...

    @classmethod
    def create(
        cls: type[B],
        path: BankPath,
        *,
        backbone: Mapping[str, Any],
        view: str = "original",
        source: str = "",
        dtype: str = "float16",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shard_rows: int | None = None,
        compression: str = "lz4",
        overwrite: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> B:
        """Create an empty, writable bank (holding the writer lock until :meth:`close`).

        Args:
            path: the ``NAME.zarr`` folder to make, or an fsspec URL.
            backbone: the backbone spec (``Backbone.spec``); ``dim`` sets the feature width.
            view: canonical view name the images were transformed with.
            source: where the images came from (recorded only; credentials stripped).
            dtype: ``"float16"`` (default: halves disk and read time) or ``"float32"``.
            chunk_rows: rows per stored chunk.
            shard_rows: rows per shard (zarr v3 sharding codec, a multiple of
                ``chunk_rows``): one object per shard instead of one per chunk, for large
                banks on object stores. None: unsharded.
            compression: ``"lz4"`` (features padding a small bank's last chunk cost
                nothing) or ``"none"`` (raw features: fastest reads of large banks).
            overwrite: replace an existing bank at ``path``.
            storage_options: fsspec options of a URL (endpoint, credentials); never recorded.

        Raises:
            BankError: the path exists (and ``overwrite`` is False), the store is
                unreachable, or arguments are invalid.
        """
        loc = Location(path, storage_options=storage_options)
        layout = _layout(backbone, dtype, chunk_rows, shard_rows, compression)
        loc.check_reachable()
        attrs = {
            "backbone": json.loads(json.dumps(dict(backbone))),
            "view": str(view),
            "source": _redacted_source(source),
            "versions": package_versions(extra=_BANK_VERSIONS),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "count": 0,
            "columns": list(EXTRA_COLUMNS),
            "partitions": {},
            "failures": [],
            "duplicates": [],
        }
        if loc.local is None:
            return cls._create_remote(loc, attrs, layout, overwrite=overwrite)
        p = loc.local
        if p.exists() and not p.is_dir():
            raise BankError(f"{str(p)!r} exists and is not a directory; choose another --out")
        if p.exists() and any(p.iterdir()):
            old = read_group_attrs(loc) if is_bank(loc) else None
            # an interrupted create() of an older facebank never committed a row: redo it
            incomplete = (
                old is not None and old.get("facebank_format") is None and not old.get("count")
            )
            if not overwrite and not incomplete:
                what = "a feature bank" if old is not None else "a non-empty folder"
                raise BankError(
                    f"{str(p)!r} already exists and is {what}; pass overwrite=True "
                    "(`--overwrite`) to replace it, or choose another path"
                )
            with BankLock(p):  # never pull a bank from under a running writer
                shutil.rmtree(p)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BankError(f"cannot make the folder of bank {str(p)!r} ({exc})") from None
        if not os.access(p.parent, os.W_OK):
            raise BankError(
                f"folder {str(p.parent)!r} is not writable; choose an --out you can write to"
            )
        _remove_stale_builds(p)
        # Build in a hidden sibling folder and rename it into place: a bank either does
        # not exist or is complete, whenever the writer is killed. The lock is on the
        # folder's inode, so it moves with the rename.
        tmp = p.parent / f".{p.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        lock = BankLock(tmp).acquire()
        try:
            _build(Location(tmp), attrs, **layout)
            try:
                os.rename(tmp, p)  # atomic; replaces an empty folder, fails on a full one
            except OSError:
                raise BankError(
                    f"{str(p)!r} was created by another process meanwhile; rerun to append "
                    "to it, or choose another path"
                ) from None
            lock.path = p
            store = Store.open(loc, writable=True)
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        bank = cls([(store, None)])
        bank._lock = lock
        return bank

    @classmethod
    def _create_remote(
        cls: type[B],
        loc: Location,
        attrs: dict[str, Any],
        layout: dict[str, Any],
        *,
        overwrite: bool,
    ) -> B:
        """Create on an object store: no rename there, so the group's zarr.json comes last."""
        if is_bank(loc):
            old = read_group_attrs(loc)
            if old.get("facebank_format") is not None and not overwrite:
                raise BankError(
                    f"{loc.url!r} already exists and is a feature bank; pass overwrite=True "
                    "(`--overwrite`) to replace it, or choose another path"
                )
        lock = writer_lock(loc).acquire()
        try:
            for name in loc.list():
                if name != "facebank.lease":
                    loc.remove(name)
            store = _build(loc, attrs, **layout)
        except BaseException:
            lock.release()
            raise
        bank = cls([(store, None)])
        bank._lock = lock
        return bank

    # ------------------------------------------------------------------ writing
    def _writable_store(self) -> Store:
        store = self._segments[0][0]
        if len(self._segments) != 1 or self._segments[0][1] is not None or not store.writable:
            raise BankError(
                f"bank {self.name!r} is read-only; open it with FeatureBank.open(path, mode='a') "
                "or make it with FeatureBank.create(...) to append"
            )
        lock = getattr(self, "_lock", None)
        if lock is None or not lock.held:
            raise BankError(f"bank {self.name!r} was closed; open it again with mode='a'")
        return store

    def append(
        self,
        features: np.ndarray,
        *,
        labels: Sequence[int] | np.ndarray,
        engines: Sequence[str] | np.ndarray,
        paths: Sequence[str] | np.ndarray,
        splits: Sequence[str] | np.ndarray,
        sha256: Sequence[str] | np.ndarray,
        attrs: Mapping[str, Any] | None = None,
        columns: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append rows and commit them (``count`` advances only after the data is on disk).

        Args:
            features: ``(n, dim)`` float array.
            labels: ``(n,)`` in {1, 0, -1}.
            engines, paths, splits, sha256: ``(n,)`` strings.
            attrs: extra group attributes (e.g. ``failures``) committed together with ``count``.
            columns: acquisition metadata, ``{key of METADATA_SCHEMA: (n,) array}``; a
                column not given is stored as its MISSING value.
        """
        store = self._writable_store()
        cols = row_columns(
            features,
            dim=store.dim,
            name=self.name,
            core={
                "label": labels,
                "engine": engines,
                "path": paths,
                "split": splits,
                "sha256": sha256,
            },
            columns=columns,
        )
        X = np.asarray(features)
        start, stop = store.count, store.count + X.shape[0]
        try:
            write_rows(store, start, X, cols)
            self._commit(store, stop, attrs)
        except OSError as exc:  # disk full, permissions, a store gone away
            raise BankError(
                f"writing bank {self.url!r} failed ({exc.strerror or exc}); its "
                f"{store.count:,} committed rows are safe - free space (or fix the store) and "
                "rerun the same command to resume"
            ) from exc
        for key, col in cols.items():
            if key in store._columns:
                store._columns[key] = np.concatenate([store._columns[key], col])
        self._digest = None

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Atomically update group attributes (e.g. ``failures``) without adding rows."""
        store = self._writable_store()
        self._commit(store, store.count, attrs)

    def _commit(self, store: Store, count: int, attrs: Mapping[str, Any] | None) -> None:
        new = dict(attrs or {})
        reserved = {"facebank_format", "backbone", "view", "count", "partitions"} & set(new)
        if reserved:
            raise BankError(f"attributes {sorted(reserved)} are managed by the bank itself")
        self._commit_raw(store, count, new)

    def _commit_raw(self, store: Store, count: int, new: Mapping[str, Any]) -> None:
        merged = {**store.attrs, **new, "count": int(count)}
        lock = getattr(self, "_lock", None)
        if lock is not None:  # still ours (a lost lease raises): then commit
            lock.renew()
        # one atomic write of the group's zarr.json: count and attrs move together
        write_group_json(store.loc, merged, store.children())
        store.attrs = json.loads(json.dumps(merged))
        store.count = int(count)

    def _absorb_partitions(self) -> int:
        """Move committed partitions into the bank's own arrays, oldest index first.

        Resumable: each partition's rows are written beyond ``count`` and committed
        with its index in ``partitions`` in one ``zarr.json`` write; only then are
        its marker and data deleted. Killed anywhere, a rerun redoes at most one
        partition and never counts one twice.

        Returns:
            Rows absorbed.
        """
        store = self._writable_store()
        moved = 0
        for index, part in pending_partitions(store.loc, store.attrs):
            n = part.count
            if n:  # read every column up front: concurrent requests on an object store

                def read(key: str, part: Store = part) -> None:
                    if key != "features":
                        part.column(key)

                part.each_array(read)
            cols = {k: part.column(k) for k in part.column_names}
            for key in store.column_names:
                if key not in cols:
                    cols[key] = as_column(key, None, n)
            X = np.asarray(part.features[:n]) if n else np.zeros((0, store.dim), np.float32)
            write_rows(store, store.count, X, cols)
            done = {**store.attrs.get("partitions", {}), str(index): n}
            extra = {
                key: [*store.attrs.get(key, []), *part.attrs.get(key, [])]
                for key in ("failures", "duplicates")
            }
            self._commit_raw(store, store.count + n, {"partitions": done, **extra})
            store._columns.clear()
            moved += n
            remove_partition(store.loc, index)
        remove_orphans(store.loc, store.attrs)
        self._digest = None
        return moved

    def close(self) -> None:
        """Trim arrays to the committed rows, refresh metadata and release the writer lock."""
        lock = getattr(self, "_lock", None)
        if lock is None or not lock.held:
            return
        store = self._segments[0][0]
        try:
            for key in store.array_names:
                arr = store.array(key)
                if arr.shape[0] != store.count:
                    arr.resize((store.count, *arr.shape[1:]))
            write_group_json(store.loc, store.attrs, store.children())
        except OSError:
            pass  # (a full disk) the last commit stands; rows past count stay invisible
        finally:
            lock.release()
            store.writable = False

    def __enter__(self: B) -> B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def arrays_backbone(dim: int) -> dict[str, Any]:
    """The backbone spec of a bank made from arrays of unknown origin (``backbone=None``)."""
    return {
        "name": "synthetic",
        "library": "numpy",
        "model": "synthetic",
        "pretrained": None,
        "weights_sha256": None,
        "dim": int(dim),
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }


def _layout(
    backbone: Mapping[str, Any],
    dtype: str,
    chunk_rows: int,
    shard_rows: int | None,
    compression: str,
) -> dict[str, Any]:
    """The arrays' layout of a new bank, each argument checked (``BankError`` naming it)."""
    dim = backbone.get("dim")
    if not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise BankError(f"backbone spec {dict(backbone)!r} has no positive integer 'dim'")
    if int(chunk_rows) <= 0:
        raise BankError(f"chunk_rows={chunk_rows!r} must be a positive integer")
    if shard_rows is not None and (int(shard_rows) <= 0 or int(shard_rows) % int(chunk_rows)):
        raise BankError(
            f"shard_rows={shard_rows!r} must be a positive multiple of chunk_rows={chunk_rows}"
        )
    if dtype not in ("float16", "float32"):
        raise BankError(f"dtype {dtype!r} is not valid; use one of ['float16', 'float32']")
    if compression not in ("lz4", "none"):
        raise BankError(f"compression {compression!r} is not valid; use 'lz4' or 'none'")
    return {
        "dim": int(dim),
        "dtype": dtype,
        "chunk_rows": int(chunk_rows),
        "shard_rows": int(shard_rows) if shard_rows else None,
        "compression": compression,
    }


def _redacted_source(source: str | os.PathLike) -> str:
    text = os.fspath(source)
    return redact(text) if "://" in text else text


def _build(
    loc: Location,
    attrs: dict[str, Any],
    *,
    dim: int,
    dtype: str,
    chunk_rows: int,
    shard_rows: int | None,
    compression: str,
) -> Store:
    """Write an empty bank's arrays, then its group zarr.json with ``facebank_format``."""
    group = zarr.create_group(store=loc.zarr_store(read_only=False), attributes=attrs)
    arrays = create_arrays(
        group,
        dim=dim,
        dtype=dtype,
        columns=(*CORE_COLUMNS, *EXTRA_COLUMNS),
        chunk_rows=chunk_rows,
        shard_rows=shard_rows,
        compression=compression,
        concurrent=not loc.is_local,
    )
    ensure_partitions_group(loc)
    store = Store(loc, group, writable=True, arrays=arrays)
    attrs["facebank_format"] = FORMAT_VERSION
    write_group_json(loc, attrs, store.children())
    store.attrs = json.loads(json.dumps(attrs))
    return store


def row_columns(
    features: np.ndarray,
    *,
    dim: int,
    name: str,
    core: Mapping[str, Any],
    columns: Mapping[str, Any] | None,
) -> dict[str, np.ndarray]:
    """Validated per-row columns of an append: core ones, then every metadata column."""
    X = np.asarray(features)
    if X.ndim != 2 or X.shape[1] != dim:
        raise BankError(
            f"features of shape {X.shape} do not fit bank {name!r} of dim {dim}; "
            f"give an (n, {dim}) array"
        )
    n = X.shape[0]
    extra = dict(columns or {})
    unknown = sorted(set(extra) - set(EXTRA_COLUMNS))
    if unknown:
        raise BankError(
            f"columns {unknown} are not acquisition metadata columns (nor group, face_found); "
            "valid: "
            f"{list(EXTRA_COLUMNS)} (label, engine, path, split, sha256 are arguments)"
        )
    cols = {"label": np.asarray(core["label"])}
    for key in CORE_COLUMNS[1:]:
        cols[key] = np.asarray(core[key], dtype=str)
    for key in EXTRA_COLUMNS:
        cols[key] = as_column(key, extra.get(key), n)
    # nothing read from the files: say so, and `bank backfill` reads them later
    if not set(extra) & set(METADATA_SCHEMA):
        cols["meta_error"] = np.full(n, NOT_RECORDED, dtype=object).astype(str)
    for key, col in cols.items():
        if col.shape != (n,):
            raise BankError(
                f"{key} has shape {col.shape} but features have {n} rows; give one value per row"
            )
    bad = ~np.isin(cols["label"], (-1, 0, 1))
    if bad.any():
        raise BankError(
            f"labels {sorted(set(cols['label'][bad].tolist()))!r} are not valid; "
            "use 1 = AI-generated, 0 = real, -1 = unknown"
        )
    cols["label"] = cols["label"].astype(np.int8)
    return cols


def write_rows(store: Store, start: int, X: np.ndarray, cols: Mapping[str, np.ndarray]) -> None:
    """Write rows ``start:start+n`` of every array (beyond ``count``: not yet committed)."""
    n = X.shape[0]
    if not n:
        return
    stop = start + n
    # grow a whole chunk (or shard) at a time (few metadata rewrites); rows past count
    # stay invisible and close() trims them
    step = store.write_rows
    capacity = -(-stop // step) * step
    values = {"features": X.astype(store.features.dtype, copy=False), **cols}

    def write(key: str) -> None:
        arr = store.array(key)
        if arr.shape[0] < stop:
            arr.resize((capacity, *arr.shape[1:]))
        arr[start:stop] = values[key]

    store.each_array(write)


def _remove_stale_builds(path: Path) -> None:
    """Delete half-built banks (``.NAME.creating-*``) of killed writers next to ``path``."""
    for d in path.parent.glob(f".{glob.escape(path.name)}.creating-*"):
        lock = BankLock(d)
        try:
            lock.acquire()
        except (BankError, OSError):
            continue  # still being built by a live process
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            lock.release()
