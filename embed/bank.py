"""Feature banks: one dataset embedded by one backbone under one view, in one Zarr v3 group.

Format version 1 (see DESIGN.md "Feature bank format")::

    NAME.zarr/                      zarr v3 group
        features  (row, dim)  float16 (or float32), row-chunked, uncompressed
        label     (row,)      int8     1 = AI-generated, 0 = real, -1 = unknown
        engine    (row,)      string   e.g. "real", "sdxl"
        path      (row,)      string   relative to the source root
        split     (row,)      string   "train" / "val" / "test" / "" (none)
        sha256    (row,)      string   hex digest of the file bytes
        attrs: facebank_format=1, backbone{...}, view, source, versions, created,
               count (rows committed), failures [{path, reason}],
               duplicates [{path, engine, split, sha256, duplicate_of}]

Crash safety. Every store write of zarr's ``LocalStore`` is atomic (temp file +
rename), so a file is either the old or the new version. An append (1) resizes
every array to ``count + n`` rows, (2) writes the new rows, and only then (3)
rewrites the group attributes with the new ``count``. A writer killed at any
moment therefore leaves a bank whose first ``count`` rows are complete; rows beyond
``count`` are invisible to :class:`FeatureBank` and are overwritten by the next
append. A clean ``close()`` trims every array to exactly ``count`` rows, so plain
zarr/xarray readers see the committed rows only. One writer at a time: an ``flock``
on the bank directory (released by the kernel when a writer dies).
"""

from __future__ import annotations

import copy
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ._lock import BankLock
from .compat import backbone_id, require_one_backbone
from .errors import BackboneMismatchError, BankError

__all__ = [
    "FORMAT_VERSION",
    "FeatureBank",
    "write_bank",
    "concat_banks",
    "synthetic_backbone",
    "verify_bank",
    "BankReport",
]

FORMAT_VERSION = 1
# 8192 rows x 768 dims x 2 bytes = 12 MiB chunks: large enough for >1 GB/s reads,
# small enough that rewriting the partial last chunk on every flush stays cheap.
DEFAULT_CHUNK_ROWS = 8192
_STRING_COLUMNS = ("engine", "path", "split", "sha256")
_COLUMNS = ("label", *_STRING_COLUMNS)
_DTYPES = ("float16", "float32")


def synthetic_backbone(dim: int) -> dict[str, Any]:
    """The backbone spec of banks made from arrays (``write_bank(backbone=None)``)."""
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


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist, key in (
        ("facebank", "facebank"),
        ("torch", "torch"),
        ("open_clip_torch", "open_clip"),
        ("timm", "timm"),
        ("zarr", "zarr"),
        ("numpy", "numpy"),
    ):
        try:
            out[key] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            out[key] = None
    return out


def _as_str_array(values: Any) -> np.ndarray:
    """Strings read from zarr (numpy StringDType or object) -> plain fixed-width ``<U``."""
    arr = np.asarray(values)
    if arr.dtype.kind in ("U",):
        return arr
    if arr.size == 0:
        return np.zeros(arr.shape, dtype="<U1")
    return np.array(arr.tolist(), dtype=str)


def _is_bank_dir(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def _read_group_attrs(path: Path) -> dict[str, Any]:
    try:
        with open(path / "zarr.json", encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise BankError(f"{str(path)!r} is not a readable feature bank ({exc})") from None
    return dict(meta.get("attributes") or {})


def _write_group_json(path: Path, attrs: Mapping[str, Any]) -> None:
    """Rewrite the group's ``zarr.json`` (attributes + consolidated child metadata) atomically.

    One temp-file-and-rename write, so ``count`` and the array shapes that plain
    zarr/xarray readers take from the consolidated metadata always change together.
    The consolidated shapes say ``count`` rows: arrays may be allocated further
    (they grow a chunk at a time), but readers never see uncommitted rows.
    """
    count = int(attrs.get("count", 0))
    children = {}
    for key in ("features", *_COLUMNS):
        with open(path / key / "zarr.json", encoding="utf-8") as fh:
            child = json.load(fh)
        child["shape"] = [count, *child["shape"][1:]]
        children[key] = child
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": json.loads(json.dumps(dict(attrs))),
        # zarr-python's inline consolidated metadata: lets xarray open without a warning
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": children},
    }
    # (no fsync: the guarantee is against a killed process, whose writes the kernel keeps)
    tmp = path / f"zarr.json.{os.getpid()}.partial"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, path / "zarr.json")


class _Store:
    """One bank directory on disk: its group, committed row count and cached columns."""

    def __init__(self, path: Path, group: zarr.Group, *, writable: bool) -> None:
        self.path = path
        self.group = group
        self.writable = writable
        self.attrs: dict[str, Any] = copy.deepcopy(dict(group.attrs))
        self.count = int(self.attrs.get("count", 0))
        self._columns: dict[str, np.ndarray] = {}
        self._arrays: dict[str, zarr.Array] = {}

    def array(self, key: str) -> zarr.Array:
        # one handle per array: zarr re-reads zarr.json on every group[key]
        if key not in self._arrays:
            self._arrays[key] = self.group[key]
        return self._arrays[key]

    @property
    def features(self) -> zarr.Array:
        return self.array("features")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def chunk_rows(self) -> int:
        return int(self.features.chunks[0])

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            raw = self.array(name)[: self.count] if self.count else np.zeros(0)
            col = np.asarray(raw, dtype=np.int8) if name == "label" else _as_str_array(raw)
            self._columns[name] = col
        return self._columns[name]


class _LazyFeatures:
    """Array-like view of a bank's features: ``bank.features[i:j]`` reads only those rows.

    Indexing returns float32 ``(n, D)`` (the API boundary type); the stored dtype is
    ``storage_dtype``.
    """

    def __init__(self, bank: FeatureBank) -> None:
        self._bank = bank

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._bank), self._bank.dim)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def storage_dtype(self) -> np.dtype:
        return self._bank.storage_dtype

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self._bank)

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self._bank)
        if isinstance(key, tuple):
            rows_key, cols = key[0], key[1:]
        else:
            rows_key, cols = key, ()
        if isinstance(rows_key, (int, np.integer)):
            i = int(rows_key)
            if not -n <= i < n:
                raise IndexError(f"row {i} out of range for a bank of {n} rows")
            out = self._bank.load_features([i % n])[0]
            return out[cols] if cols else out
        if isinstance(rows_key, slice):
            rows = np.arange(n)[rows_key]
        else:
            rows = np.arange(n)[np.asarray(rows_key)]
        out = self._bank.load_features(rows)
        return out[(slice(None), *cols)] if cols else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._bank.load_features()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<features {self.shape} stored as {self.storage_dtype} in {self._bank.name!r}>"


# float16 -> float32 conversion: numpy's cast runs at ~0.3-0.5 GB/s, torch's vectorised
# multi-threaded copy_ 2-3x faster; below this many elements numpy is quicker to call.
_TORCH_CAST_MIN = 1 << 20


def _cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with a fast path for float16 -> float32 blocks."""
    if (
        src.dtype == np.float16
        and dst.dtype == np.float32
        and src.size >= _TORCH_CAST_MIN
        and dst.flags.c_contiguous
    ):
        import torch  # a facebank dependency; imported only for large reads

        torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))
    else:
        dst[...] = src


def _cast(X: np.ndarray, dtype: Any) -> np.ndarray:
    if X.dtype == np.dtype(dtype):
        return X
    out = np.empty(X.shape, dtype=dtype)
    _cast_into(out, X)
    return out


def _gather(arr: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order) of a row-chunked zarr array, reading each chunk once."""
    if rows.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    chunk = int(arr.chunks[0])
    if hi - lo <= 2 * rows.size + chunk:  # dense enough: one contiguous read
        return np.asarray(arr[lo:hi])[rows - lo]
    out = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    ids = srt // chunk
    bounds = np.flatnonzero(np.diff(ids)) + 1
    for part, pos in zip(np.split(srt, bounds), np.split(order, bounds), strict=True):
        a, b = int(part[0]), int(part[-1]) + 1
        out[pos] = np.asarray(arr[a:b])[part - a]
    return out


class FeatureBank:
    """A feature bank: lazily read features plus per-row metadata, or a row subset of banks.

    Open with :meth:`open`, make with :meth:`create` (+ :meth:`append`) or
    :func:`write_bank`; combine with :meth:`select` and :meth:`concat`. Every reader
    sees only the committed rows (``meta["count"]``).

    Attributes:
        features: lazy ``(n_rows, dim)`` array-like; slicing reads only those rows (float32).
        labels: ``(n_rows,)`` int8; 1 = AI-generated, 0 = real, -1 = unknown.
        engines, paths, splits, sha256: ``(n_rows,)`` arrays of str.
    """

    def __init__(
        self,
        segments: list[tuple[_Store, np.ndarray | None]],
        *,
        name: str | None = None,
        view: str | None = None,
    ) -> None:
        if not segments:
            raise BankError("a FeatureBank needs at least one bank")
        self._segments = segments
        self._name = name
        self._view = view
        self._digest: str | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str = "r") -> FeatureBank:
        """Open a bank: ``mode="r"`` read-only, ``mode="a"`` to append (takes the writer lock).

        Raises:
            BankError: missing, not a bank, from a newer format, or inconsistent.
            BankLockedError: ``mode="a"`` while another process writes the bank.
        """
        if mode not in ("r", "a"):
            raise BankError(f"mode {mode!r} is not valid; use 'r' (read) or 'a' (append)")
        p = Path(path)
        if not p.exists():
            raise BankError(
                f"feature bank {str(p)!r} does not exist; make one with "
                "`facebank embed SOURCE --backbone NAME --out BANK.zarr`"
            )
        if not _is_bank_dir(p):
            raise BankError(
                f"{str(p)!r} is not a feature bank (no zarr.json inside); give the "
                "NAME.zarr folder written by `facebank embed`"
            )
        lock = None
        if mode == "a":
            lock = BankLock(p).acquire()
            _remove_partials(p)
        try:
            _check_attrs(p, _read_group_attrs(p))
            group = zarr.open_group(
                str(p), mode="r+" if mode == "a" else "r", use_consolidated=False
            )
            store = _Store(p, group, writable=mode == "a")
            _check_arrays(store)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        bank = cls([(store, None)])
        bank._lock = lock
        return bank

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        backbone: Mapping[str, Any],
        view: str = "original",
        source: str = "",
        dtype: str = "float16",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
    ) -> FeatureBank:
        """Create an empty, writable bank (holding the writer lock until :meth:`close`).

        Args:
            path: the ``NAME.zarr`` directory to make.
            backbone: the backbone spec (``Backbone.spec``); ``dim`` sets the feature width.
            view: canonical view name the images were transformed with.
            source: where the images came from (recorded only).
            dtype: ``"float16"`` (default: halves disk and read time) or ``"float32"``.
            chunk_rows: rows per stored chunk.
            overwrite: replace an existing bank at ``path``.

        Raises:
            BankError: the path exists (and ``overwrite`` is False) or arguments are invalid.
        """
        p = Path(path)
        if dtype not in _DTYPES:
            raise BankError(f"dtype {dtype!r} is not valid; use one of {list(_DTYPES)}")
        dim = backbone.get("dim")
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise BankError(f"backbone spec {dict(backbone)!r} has no positive integer 'dim'")
        if int(chunk_rows) <= 0:
            raise BankError(f"chunk_rows={chunk_rows!r} must be a positive integer")
        if p.exists() and not p.is_dir():
            raise BankError(f"{str(p)!r} exists and is not a directory; choose another --out")
        if p.exists() and any(p.iterdir()):
            attrs = _read_group_attrs(p) if _is_bank_dir(p) else None
            # an interrupted create() of an older facebank never committed a row: redo it
            incomplete = attrs is not None and attrs.get("facebank_format") is None
            if not overwrite and not (incomplete and not attrs.get("count")):
                what = "a feature bank" if attrs is not None else "a non-empty folder"
                raise BankError(
                    f"{str(p)!r} already exists and is {what}; pass overwrite=True "
                    "(`--overwrite`) to replace it, or choose another path"
                )
            with BankLock(p):  # never pull a bank from under a running writer
                shutil.rmtree(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(p)
        # Build in a hidden sibling folder and rename it into place: a bank either does
        # not exist or is complete, whenever the writer is killed. The lock is on the
        # folder's inode, so it moves with the rename.
        tmp = p.parent / f".{p.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        lock = BankLock(tmp).acquire()
        try:
            attrs = {
                "backbone": json.loads(json.dumps(dict(backbone))),
                "view": str(view),
                "source": str(source),
                "versions": _versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "count": 0,
                "failures": [],
                "duplicates": [],
            }
            group = zarr.create_group(store=str(tmp), attributes=attrs)
            rows = int(chunk_rows)
            group.create_array(
                "features",
                shape=(0, int(dim)),
                dtype=dtype,
                chunks=(rows, int(dim)),
                compressors=None,  # float features barely compress; raw reads are fastest
                fill_value=0.0,
                dimension_names=("row", "dim"),
            )
            group.create_array(
                "label",
                shape=(0,),
                dtype="int8",
                chunks=(rows,),
                fill_value=-1,
                dimension_names=("row",),
            )
            for col in _STRING_COLUMNS:
                group.create_array(
                    col, shape=(0,), dtype=str, chunks=(rows,), dimension_names=("row",)
                )
            attrs["facebank_format"] = FORMAT_VERSION
            _write_group_json(tmp, attrs)
            try:
                os.rename(tmp, p)  # atomic; replaces an empty folder, fails on a full one
            except OSError:
                raise BankError(
                    f"{str(p)!r} was created by another process meanwhile; rerun to append "
                    "to it, or choose another path"
                ) from None
            lock.path = p
            group = zarr.open_group(str(p), mode="r+", use_consolidated=False)
            store = _Store(p, group, writable=True)
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        bank = cls([(store, None)])
        bank._lock = lock
        return bank

    # ------------------------------------------------------------------ writing
    def _writable_store(self) -> _Store:
        store = self._segments[0][0]
        if len(self._segments) != 1 or self._segments[0][1] is not None or not store.writable:
            raise BankError(
                f"bank {self.name!r} is read-only; open it with FeatureBank.open(path, mode='a') "
                "or make it with FeatureBank.create(...) to append"
            )
        if getattr(self, "_lock", None) is None or not self._lock.held:
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
    ) -> None:
        """Append rows and commit them (``count`` advances only after the data is on disk).

        Args:
            features: ``(n, dim)`` float array.
            labels: ``(n,)`` in {1, 0, -1}.
            engines, paths, splits, sha256: ``(n,)`` strings.
            attrs: extra group attributes (e.g. ``failures``) committed together with ``count``.
        """
        store = self._writable_store()
        X = np.asarray(features)
        if X.ndim != 2 or X.shape[1] != store.dim:
            raise BankError(
                f"features of shape {X.shape} do not fit bank {self.name!r} of dim {store.dim}; "
                f"give an (n, {store.dim}) array"
            )
        n = X.shape[0]
        cols = {
            "label": np.asarray(labels),
            "engine": np.asarray(engines, dtype=str),
            "path": np.asarray(paths, dtype=str),
            "split": np.asarray(splits, dtype=str),
            "sha256": np.asarray(sha256, dtype=str),
        }
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
        start, stop = store.count, store.count + n
        if n:
            # every chunk below count exists on disk, even all-fill ones, so that
            # `verify` can tell a lost chunk from one zarr chose not to write
            with zarr.config.set({"array.write_empty_chunks": True}):
                # grow a whole chunk at a time (few metadata rewrites); rows past count
                # stay invisible and close() trims them
                step = store.chunk_rows
                capacity = -(-stop // step) * step
                for key in ("features", *_COLUMNS):
                    arr = store.array(key)
                    if arr.shape[0] < stop:
                        arr.resize((capacity, *arr.shape[1:]))
                store.features[start:stop] = X.astype(store.features.dtype, copy=False)
                for key, col in cols.items():
                    store.array(key)[start:stop] = col
        self._commit(store, stop, attrs)
        for key, col in cols.items():
            if key in store._columns:
                store._columns[key] = np.concatenate([store._columns[key], col])
        self._digest = None

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Atomically update group attributes (e.g. ``failures``) without adding rows."""
        store = self._writable_store()
        self._commit(store, store.count, attrs)

    @staticmethod
    def _commit(store: _Store, count: int, attrs: Mapping[str, Any] | None) -> None:
        new = dict(attrs or {})
        reserved = {"facebank_format", "backbone", "view", "count"} & set(new)
        if reserved:
            raise BankError(f"attributes {sorted(reserved)} are managed by the bank itself")
        new["count"] = int(count)
        merged = {**store.attrs, **new}
        # one atomic rewrite of the group's zarr.json: count and attrs move together
        _write_group_json(store.path, merged)
        store.attrs = json.loads(json.dumps(merged))
        store.count = int(count)

    def close(self) -> None:
        """Trim arrays to the committed rows, refresh metadata and release the writer lock."""
        lock = getattr(self, "_lock", None)
        if lock is None or not lock.held:
            return
        store = self._segments[0][0]
        try:
            for key in ("features", *_COLUMNS):
                arr = store.array(key)
                if arr.shape[0] != store.count:
                    arr.resize((store.count, *arr.shape[1:]))
            _write_group_json(store.path, store.attrs)
        finally:
            lock.release()
            store.writable = False

    def __enter__(self) -> FeatureBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(store.count if rows is None else len(rows) for store, rows in self._segments)

    def __repr__(self) -> str:
        return (
            f"FeatureBank({self.name!r}, rows={len(self)}, dim={self.dim}, "
            f"backbone={self.backbone.get('name')!r}, view={self.view!r})"
        )

    @property
    def path(self) -> Path:
        """Directory of the (first) underlying bank."""
        return self._segments[0][0].path

    @property
    def name(self) -> str:
        """Display name: the folder stem (``faces`` for ``faces.zarr``); ``a+b`` for concats."""
        if self._name is not None:
            return self._name
        return self.path.name.removesuffix(".zarr") or self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        """The group attributes (a copy) of the first underlying bank."""
        meta = copy.deepcopy(self._segments[0][0].attrs)
        if len(self._segments) > 1 or self._segments[0][1] is not None:
            meta["count"] = len(self)
        return meta

    @property
    def backbone(self) -> dict[str, Any]:
        return copy.deepcopy(self._segments[0][0].attrs["backbone"])

    @property
    def view(self) -> str:
        if self._view is not None:
            return self._view
        return str(self._segments[0][0].attrs.get("view", "original"))

    @property
    def dim(self) -> int:
        return self._segments[0][0].dim

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(self._segments[0][0].features.dtype)

    @property
    def failures(self) -> list[dict[str, str]]:
        """Inputs that could not be embedded: ``[{"path", "reason"}, ...]``."""
        out: list[dict[str, str]] = []
        for store in self._stores():
            out.extend(copy.deepcopy(store.attrs.get("failures", [])))
        return out

    @property
    def duplicates(self) -> list[dict[str, str]]:
        """Files skipped as byte-identical to an embedded row (``duplicate_of`` its path)."""
        out: list[dict[str, str]] = []
        for store in self._stores():
            out.extend(copy.deepcopy(store.attrs.get("duplicates", [])))
        return out

    @property
    def features(self) -> _LazyFeatures:
        return _LazyFeatures(self)

    def _stores(self) -> list[_Store]:
        seen: list[_Store] = []
        for store, _ in self._segments:
            if all(store is not s for s in seen):
                seen.append(store)
        return seen

    def _column(self, name: str) -> np.ndarray:
        parts = []
        for store, rows in self._segments:
            col = store.column(name)
            parts.append(col if rows is None else col[rows])
        if len(parts) == 1:
            return parts[0].copy()
        if name == "label":
            return np.concatenate(parts).astype(np.int8)
        return _as_str_array(np.concatenate([p.astype(object) for p in parts]))

    @property
    def labels(self) -> np.ndarray:
        return self._column("label")

    @property
    def engines(self) -> np.ndarray:
        return self._column("engine")

    @property
    def paths(self) -> np.ndarray:
        return self._column("path")

    @property
    def splits(self) -> np.ndarray:
        return self._column("split")

    @property
    def sha256(self) -> np.ndarray:
        return self._column("sha256")

    @property
    def bank_names(self) -> np.ndarray:
        """``(n_rows,)`` name of the bank each row comes from (differs only after concat)."""
        parts = [
            np.full(store.count if rows is None else len(rows), _store_name(store), dtype=object)
            for store, rows in self._segments
        ]
        return _as_str_array(np.concatenate(parts)) if parts else np.zeros(0, dtype="<U1")

    def load_features(
        self, rows: Sequence[int] | np.ndarray | None = None, *, dtype: Any = np.float32
    ) -> np.ndarray:
        """Read features into memory.

        Args:
            rows: row positions (ints, or a boolean mask of length ``len(self)``) in this
                bank's order; None reads every row.
            dtype: output dtype (float32 at API boundaries).

        Returns:
            ``(n, dim)`` array.
        """
        if rows is None:
            parts = [
                self._read_segment(store, seg_rows, dtype) for store, seg_rows in self._segments
            ]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        idx = self._normalise_rows(rows)
        out = np.empty((idx.size, self.dim), dtype=dtype)
        offset = 0
        for store, seg_rows in self._segments:
            n = store.count if seg_rows is None else len(seg_rows)
            hit = np.flatnonzero((idx >= offset) & (idx < offset + n))
            if hit.size:
                local = idx[hit] - offset
                src = local if seg_rows is None else seg_rows[local]
                out[hit] = _gather(store.features, src)
            offset += n
        return out

    @staticmethod
    def _read_segment(store: _Store, rows: np.ndarray | None, dtype: Any) -> np.ndarray:
        if rows is None:
            # chunk by chunk into one preallocated output: the dtype conversion runs on
            # cache-sized blocks and zarr never assembles one huge intermediate array
            out = np.empty((store.count, store.dim), dtype=dtype)
            step = store.chunk_rows
            for a in range(0, store.count, step):
                b = min(a + step, store.count)
                _cast_into(out[a:b], np.asarray(store.features[a:b]))
            return out
        return _cast(_gather(store.features, rows), dtype)

    def _normalise_rows(self, rows: Any) -> np.ndarray:
        n = len(self)
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise BankError(f"a boolean row mask must have shape ({n},), not {idx.shape}")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.dtype.kind not in "iu":
            raise BankError(f"rows must be integers or a boolean mask, not {idx.dtype}")
        idx = idx.astype(np.int64).ravel()
        if idx.min() < -n or idx.max() >= n:
            raise BankError(f"rows out of range for a bank of {n} rows")
        return idx % n if n else idx

    def iter_features(
        self, *, chunk_rows: int | None = None, dtype: Any = np.float32
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream features in row order without holding the bank in memory.

        Yields:
            ``(start, stop, X)`` with ``X`` of shape ``(stop - start, dim)``; positions
            are rows of this bank (after any select/concat).
        """
        offset = 0
        for store, rows in self._segments:
            step = int(chunk_rows or store.chunk_rows)
            n = store.count if rows is None else len(rows)
            for a in range(0, n, step):
                b = min(a + step, n)
                if rows is None:
                    X = np.asarray(store.features[a:b])
                else:
                    X = _gather(store.features, rows[a:b])
                yield offset + a, offset + b, _cast(X, dtype)
            offset += n

    # ------------------------------------------------------------------ subsets
    def select(
        self,
        *,
        engines: str | Iterable[str] | None = None,
        splits: str | Iterable[str] | None = None,
        rows: Sequence[int] | np.ndarray | None = None,
    ) -> FeatureBank:
        """Lazy row subset with the same API.

        Args:
            engines: keep rows of these engines (each must occur in the bank).
            splits: keep rows of these splits (each must occur in the bank).
            rows: positions (kept in the given order) or a boolean mask, applied first.

        Raises:
            BankError: an engine/split that the bank does not hold (names the valid ones).
        """
        n = len(self)
        positions = np.arange(n) if rows is None else self._normalise_rows(rows)
        for label, values, col in (("engine", engines, "engine"), ("split", splits, "split")):
            if values is None:
                continue
            wanted = [values] if isinstance(values, str) else [str(v) for v in values]
            present = self._column(col)
            valid = sorted(set(present.tolist()))
            missing = [v for v in wanted if v not in valid]
            if missing:
                hint = (
                    " (this bank has no split column; use embed.assign_splits)"
                    if col == "split" and valid == [""]
                    else ""
                )
                raise BankError(
                    f"{label}(s) {missing!r} not in bank {self.name!r}; valid: {valid!r}{hint}"
                )
            positions = positions[np.isin(present[positions], wanted)]
        # map positions (any order) to runs of (store, stored rows)
        starts = np.cumsum(
            [0]
            + [
                store.count if seg_rows is None else len(seg_rows)
                for store, seg_rows in self._segments
            ]
        )
        seg_of = np.searchsorted(starts, positions, side="right") - 1
        segments: list[tuple[_Store, np.ndarray | None]] = []
        if positions.size == 0:
            segments.append((self._segments[0][0], np.zeros(0, dtype=np.int64)))
        breaks = np.flatnonzero(np.diff(seg_of)) + 1
        for run_pos, run_seg in zip(
            np.split(positions, breaks), np.split(seg_of, breaks), strict=True
        ):
            if run_pos.size == 0:
                continue
            store, seg_rows = self._segments[int(run_seg[0])]
            local = run_pos - starts[int(run_seg[0])]
            segments.append((store, local if seg_rows is None else seg_rows[local]))
        out = FeatureBank(segments, name=self._name, view=self._view)
        return out

    @classmethod
    def concat(
        cls, banks: Sequence[FeatureBank], *, allow_mixed_views: bool = False
    ) -> FeatureBank:
        """Stack banks of one backbone (rows in the given order).

        Raises:
            BackboneMismatchError: two banks from different backbones (or views, unless
                ``allow_mixed_views``), naming both.
        """
        banks = list(banks)
        if not banks:
            raise BankError("concat needs at least one bank; give a list of FeatureBank")
        require_one_backbone(banks)
        first = banks[0]
        for other in banks[1:]:
            if other.view != first.view and not allow_mixed_views:
                raise BackboneMismatchError(
                    f"bank {str(first.path)!r} has view {first.view!r} but bank "
                    f"{str(other.path)!r} has view {other.view!r}; concatenate banks of one "
                    "view, or pass allow_mixed_views=True"
                )
        views = list(dict.fromkeys(b.view for b in banks))
        segments = [seg for b in banks for seg in b._segments]
        name = "+".join(dict.fromkeys(b.name for b in banks))
        return cls(segments, name=name, view=views[0] if len(views) == 1 else "+".join(views))

    # ------------------------------------------------------------------ identity
    @property
    def digest(self) -> str:
        """Stable content digest of rows + backbone + view (blake2b-128, hex).

        Covers features (as stored), labels, engines, splits, sha256, the backbone
        identity and the view; not paths (the same images elsewhere give the same
        digest) nor attributes like ``created``. Computed once per object (reads all
        features).
        """
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"facebank-bank-v{FORMAT_VERSION}\n".encode())
            h.update(backbone_id(self.backbone).encode())
            h.update(json.dumps(self.backbone, sort_keys=True, default=str).encode())
            h.update(f"\nview={self.view}\nrows={len(self)}\ndim={self.dim}\n".encode())
            h.update(self.labels.tobytes())
            for col in ("engine", "split", "sha256"):
                h.update("\x1f".join(self._column(col).tolist()).encode())
                h.update(b"\x1e")
            for _, _, X in self.iter_features(dtype=self.storage_dtype):
                h.update(np.ascontiguousarray(X).tobytes())
            self._digest = h.hexdigest()
        return self._digest


def _store_name(store: _Store) -> str:
    return store.path.name.removesuffix(".zarr") or store.path.name


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


def _remove_partials(path: Path) -> None:
    """Delete temp files a killed writer left behind (zarr writes ``*.partial`` then renames)."""
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)


def _check_attrs(path: Path, attrs: Mapping[str, Any]) -> None:
    fmt = attrs.get("facebank_format")
    if fmt is None:
        if "backbone" in attrs and not attrs.get("count"):
            raise BankError(
                f"{str(path)!r} is an incomplete feature bank (its creation was interrupted "
                "before any row was written); rerun `facebank embed` with the same --out"
            )
        raise BankError(
            f"{str(path)!r} is a zarr group but not a facebank feature bank "
            "(no 'facebank_format' attribute); give a bank written by `facebank embed`"
        )
    if fmt != FORMAT_VERSION:
        raise BankError(
            f"bank {str(path)!r} has format {fmt!r}; this facebank reads format "
            f"{FORMAT_VERSION} - upgrade facebank or re-embed the images"
        )
    for key in ("backbone", "count"):
        if key not in attrs:
            raise BankError(f"bank {str(path)!r} lacks the {key!r} attribute; re-embed it")


def _check_arrays(store: _Store) -> None:
    missing = [k for k in ("features", *_COLUMNS) if k not in store.group]
    if missing:
        raise BankError(
            f"bank {str(store.path)!r} lacks arrays {missing}; check it with "
            "`facebank bank verify` and re-embed"
        )
    short = {
        k: store.array(k).shape[0]
        for k in ("features", *_COLUMNS)
        if store.array(k).shape[0] < store.count
    }
    if short:
        raise BankError(
            f"bank {str(store.path)!r} commits {store.count} rows but arrays {short} are "
            "shorter; the bank is damaged - run `facebank bank verify` and re-embed"
        )


def concat_banks(banks: Sequence[FeatureBank], *, allow_mixed_views: bool = False) -> FeatureBank:
    """Alias of :meth:`FeatureBank.concat`."""
    return FeatureBank.concat(banks, allow_mixed_views=allow_mixed_views)


def write_bank(
    path: str | os.PathLike,
    features: np.ndarray,
    *,
    labels: Sequence[int] | np.ndarray,
    engines: Sequence[str] | np.ndarray | str,
    paths: Sequence[str] | np.ndarray | None = None,
    splits: Sequence[str] | np.ndarray | str | None = None,
    sha256: Sequence[str] | np.ndarray | None = None,
    backbone: Mapping[str, Any] | None = None,
    view: str = "original",
    source: str = "synthetic",
    dtype: str = "float16",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> FeatureBank:
    """Write arrays as a complete bank in one go (tests, benchmarks, imports).

    Args:
        path: the ``NAME.zarr`` directory to make.
        features: ``(n, D)`` float array.
        labels: ``(n,)`` in {1, 0, -1}.
        engines: ``(n,)`` strings, or one string for every row.
        paths, sha256: ``(n,)``; default unique ids ``"row-000001"``...
        splits: ``(n,)`` or one string; default ``""`` (no split column).
        backbone: spec; None -> :func:`synthetic_backbone` of width D.

    Returns:
        The bank, opened read-only.
    """
    X = np.asarray(features)
    if X.ndim != 2:
        raise BankError(f"features must be a 2-D (n, D) array, not shape {X.shape}")
    n = X.shape[0]
    ids = np.array([f"row-{i + 1:06d}" for i in range(n)], dtype=str)

    def fill(v: Any, default: Any) -> np.ndarray:
        if v is None:
            return np.asarray(default, dtype=str)
        if isinstance(v, str):
            return np.full(n, v, dtype=object).astype(str)
        return np.asarray(v, dtype=str)

    spec = dict(backbone) if backbone is not None else synthetic_backbone(X.shape[1])
    with FeatureBank.create(
        path,
        backbone=spec,
        view=view,
        source=source,
        dtype=dtype,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
    ) as bank:
        bank.append(
            X,
            labels=np.asarray(labels),
            engines=fill(engines, ids),
            paths=fill(paths, ids),
            splits=fill(splits, np.full(n, "", dtype=object).astype(str) if n else []),
            sha256=fill(sha256, ids),
        )
    return FeatureBank.open(path)


@dataclass
class BankReport:
    """Result of :func:`verify_bank`.

    Attributes:
        path: the bank checked.
        rows: committed rows (``count``), or 0 when unreadable.
        problems: what is wrong (empty = the bank is sound).
        notes: harmless findings (e.g. uncommitted rows an interrupted writer left).
    """

    path: Path
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _chunk_file(path: Path, key: str, index: tuple[int, ...]) -> Path:
    return path / key / "c" / Path(*(str(i) for i in index))


def verify_bank(path: str | os.PathLike, *, max_listed: int = 10) -> BankReport:
    """Check a bank end to end: attributes, arrays, every chunk below ``count``, values.

    Detects: unreadable/missing metadata, wrong format version, missing attributes,
    missing arrays, ``count`` beyond an array's length, missing chunk files (zarr
    would silently return fill values), chunks that fail to decode, non-finite
    feature rows, labels outside {1, 0, -1}, empty engines/paths, repeated paths,
    bad split names, malformed ``failures``/``duplicates``, and consolidated
    metadata that disagrees with the arrays.

    Args:
        path: the ``NAME.zarr`` directory.
        max_listed: examples listed per kind of problem.

    Returns:
        A :class:`BankReport`; ``report.ok`` is True when nothing is wrong.
    """
    p = Path(path)
    rep = BankReport(path=p)
    if not (p / "zarr.json").is_file():
        rep.problems.append(f"{str(p)!r} has no zarr.json: not a feature bank (or it is missing)")
        return rep
    try:
        with open(p / "zarr.json", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        rep.problems.append(f"group metadata zarr.json is unreadable ({exc})")
        return rep
    attrs = doc.get("attributes") or {}
    if attrs.get("facebank_format") != FORMAT_VERSION:
        rep.problems.append(
            f"attribute facebank_format is {attrs.get('facebank_format')!r}, expected {FORMAT_VERSION}"
        )
    for key in ("backbone", "view", "count", "versions", "created", "source"):
        if key not in attrs:
            rep.problems.append(f"attribute {key!r} is missing")
    count = attrs.get("count", 0)
    if not isinstance(count, int) or count < 0:
        rep.problems.append(f"attribute count={count!r} is not a non-negative integer")
        return rep
    rep.rows = count
    bb = attrs.get("backbone") if isinstance(attrs.get("backbone"), dict) else {}
    try:
        group = zarr.open_group(str(p), mode="r", use_consolidated=False)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        rep.problems.append(f"zarr cannot open the group ({type(exc).__name__}: {exc})")
        return rep
    arrays: dict[str, zarr.Array] = {}
    for key in ("features", *_COLUMNS):
        try:
            arrays[key] = group[key]
        except Exception as exc:  # noqa: BLE001
            rep.problems.append(f"array {key!r} is missing or unreadable ({type(exc).__name__})")
    consolidated = ((doc.get("consolidated_metadata") or {}).get("metadata")) or {}
    for key, arr in arrays.items():
        want_ndim = 2 if key == "features" else 1
        if arr.ndim != want_ndim:
            rep.problems.append(f"array {key!r} has {arr.ndim} dimensions, expected {want_ndim}")
            continue
        if arr.shape[0] < count:
            rep.problems.append(f"count={count} but array {key!r} has only {arr.shape[0]} rows")
        elif arr.shape[0] > count:
            rep.notes.append(
                f"array {key!r} holds {arr.shape[0] - count} uncommitted rows beyond count "
                "(an interrupted embed; rerunning it resumes and overwrites them)"
            )
        names = arr.metadata.dimension_names
        if not names or names[0] != "row":
            rep.problems.append(
                f"array {key!r} has dimension_names {names!r}, expected ('row', ...)"
            )
        c = consolidated.get(key)
        if c is not None and (c.get("shape") or [None])[0] != count:
            rep.notes.append(
                f"consolidated metadata gives {key!r} {(c.get('shape') or ['?'])[0]} rows but "
                f"count is {count} (plain zarr/xarray readers will see that many)"
            )
    if "features" in arrays:
        f = arrays["features"]
        if bb.get("dim") is not None and f.ndim == 2 and f.shape[1] != bb.get("dim"):
            rep.problems.append(
                f"features have {f.shape[1]} columns but the backbone's dim is {bb.get('dim')}"
            )
        if str(f.dtype) not in _DTYPES:
            rep.problems.append(f"features dtype {f.dtype} is not one of {list(_DTYPES)}")
    if rep.problems:
        return rep
    # every chunk below count must exist (zarr silently fills missing ones) and decode
    missing: list[str] = []
    for key, arr in arrays.items():
        step = int(arr.chunks[0])
        for i in range(-(-count // step)):
            index = (i, 0) if arr.ndim == 2 else (i,)
            if arr.ndim == 2 and arr.shape[1] > arr.chunks[1]:
                index_list = [(i, j) for j in range(-(-arr.shape[1] // arr.chunks[1]))]
            else:
                index_list = [index]
            for idx in index_list:
                if not _chunk_file(p, key, idx).is_file():
                    missing.append(f"{key}/c/{'/'.join(map(str, idx))}")
    if missing:
        rep.problems.append(
            f"{len(missing)} chunk file(s) missing below count: {missing[:max_listed]}"
        )
        return rep
    values: dict[str, np.ndarray] = {}
    for key in _COLUMNS:
        try:
            raw = arrays[key][:count] if count else np.zeros(0)
            values[key] = np.asarray(raw, np.int8) if key == "label" else _as_str_array(raw)
        except Exception as exc:  # noqa: BLE001
            rep.problems.append(f"array {key!r} has a corrupt chunk ({type(exc).__name__}: {exc})")
    bad_rows: list[int] = []
    try:
        feats = arrays["features"]
        step = int(feats.chunks[0])
        for a in range(0, count, step):
            X = np.asarray(feats[a : min(a + step, count)])
            bad_rows.extend((a + np.flatnonzero(~np.isfinite(X).all(axis=1))).tolist())
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"array 'features' has a corrupt chunk ({type(exc).__name__}: {exc})")
    if bad_rows:
        rep.problems.append(
            f"{len(bad_rows)} feature row(s) hold NaN/inf: rows {bad_rows[:max_listed]}"
        )
    if "label" in values:
        bad = np.flatnonzero(~np.isin(values["label"], (-1, 0, 1)))
        if bad.size:
            rep.problems.append(
                f"{bad.size} label(s) outside {{1, 0, -1}}: rows {bad[:max_listed].tolist()}"
            )
    for key in ("engine", "path"):
        if key in values:
            empty = np.flatnonzero(values[key] == "")
            if empty.size:
                rep.problems.append(
                    f"{empty.size} empty {key} value(s): rows {empty[:max_listed].tolist()}"
                )
    if "path" in values:
        uniq, inverse, counts = np.unique(values["path"], return_inverse=True, return_counts=True)
        if (counts > 1).any():
            rep.problems.append(
                f"{int((counts > 1).sum())} path(s) stored more than once: "
                f"{uniq[counts > 1][:max_listed].tolist()}"
            )
    if "split" in values:
        bad_split = sorted(set(values["split"].tolist()) - {"", "train", "val", "test"})
        if bad_split:
            rep.problems.append(f"split values {bad_split} are not train/val/test/''")
    if "sha256" in values and count:
        looks_hex = np.array([bool(_HEX64.match(s)) for s in values["sha256"]])
        if looks_hex.any() and not looks_hex.all():
            rows = np.flatnonzero(~looks_hex)[:max_listed].tolist()
            rep.problems.append(f"sha256 values that are not 64 hex digits: rows {rows}")
    for key, fields in (("failures", ("path", "reason")), ("duplicates", ("path", "duplicate_of"))):
        val = attrs.get(key, [])
        if not isinstance(val, list) or not all(
            isinstance(d, dict) and all(k in d for k in fields) for d in val
        ):
            rep.problems.append(
                f"attribute {key!r} is not a list of {{{', '.join(fields)}}} records"
            )
    return rep
