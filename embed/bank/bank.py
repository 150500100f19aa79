"""Feature banks: one dataset embedded by one backbone under one view, in one Zarr v3 group.

Format version 2 (``docs/bank-format.md``; version-1 banks are still read)::

    NAME.zarr/                      zarr v3 group (a local folder or an fsspec URL)
        features  (row, dim)  float16 (or float32), row-chunked (optionally sharded), lz4
        label     (row,)      int8     1 = AI-generated, 0 = real, -1 = unknown
        engine    (row,)      string   e.g. "real", "sdxl"
        path      (row,)      string   relative to the source root
        split     (row,)      string   "train" / "val" / "test" / "" (none)
        sha256    (row,)      string   hex digest of the file bytes
        file_format, width, ... (row,)  acquisition metadata, one array per key of
                                        ``embed.metadata.METADATA_SCHEMA`` (format 2)
        _partitions/                    independently committed partitions (see
                                        ``embed.partitions``), absorbed by ``consolidate``
        attrs: facebank_format=2, backbone{...}, view, source, versions, created,
               count (rows committed), columns (metadata columns), partitions
               {index: rows} (absorbed), failures [{path, reason}],
               duplicates [{path, engine, split, sha256, duplicate_of}]

Crash safety. The group's ``zarr.json`` is written as one object (temp file + rename
locally, one PUT on an object store). An append (1) resizes every array to
``count + n`` rows, (2) writes the new rows, and only then (3) rewrites the group's
``zarr.json`` with the new ``count``. A writer killed at any moment therefore leaves
a bank whose first ``count`` rows are complete; rows beyond ``count`` are invisible
to :class:`FeatureBank` and plain zarr/xarray readers and are overwritten by the
next append. A clean ``close()`` trims every array to exactly ``count`` rows. One
writer at a time: an ``flock`` on a local bank folder (released by the kernel when a
writer dies), a lease object with an owner and an expiry on an object store.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import BackboneMismatchError, BankError
from facebank.core.stores import Location
from facebank.embed.backbones.compat import backbone_id, require_one_backbone
from facebank.embed.bank._lock import BankLock, LeaseLock, writer_lock
from facebank.embed.bank._store import (
    DEFAULT_CHUNK_ROWS,
    FORMAT_VERSION,
    Store,
    as_column,
    as_str_array,
    cast,
    cast_into,
    check_arrays,
    check_attrs,
    column_dtype,
    gather,
    is_bank,
    pending_partitions,
    read_group_attrs,
    remove_partials,
)
from facebank.embed.bank.verify import missing_objects
from facebank.embed.bank.writing import BankPath, BankWriting, arrays_backbone
from facebank.embed.inputs.metadata import METADATA_SCHEMA, ROW_SCHEMA

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_CHUNK_ROWS",
    "FeatureBank",
    "open_banks",
    "write_bank",
    "concat_banks",
]


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
        return out[(slice(None),) + tuple(cols)] if cols else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._bank.load_features()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<features {self.shape} stored as {self.storage_dtype} in {self._bank.name!r}>"


class FeatureBank(BankWriting):
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
        segments: list[tuple[Store, np.ndarray | None]],
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
        self._lock: BankLock | LeaseLock | None = None  # held while open for writing

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: BankPath,
        *,
        mode: str = "r",
        storage_options: Mapping[str, Any] | None = None,
    ) -> FeatureBank:
        """Open a bank: ``mode="r"`` read-only, ``mode="a"`` to append (takes the writer lock).

        Committed partitions not yet consolidated are read as further rows (in
        partition order); ``mode="a"`` absorbs them into the bank's own arrays first.

        Args:
            path: the ``NAME.zarr`` folder, or an fsspec URL (``s3://bucket/NAME.zarr``).
            mode: ``"r"`` or ``"a"``.
            storage_options: fsspec options of a URL (endpoint, credentials); never recorded.

        Raises:
            BankError: missing, not a bank, from a newer format, unreachable or inconsistent.
            BankLockedError: ``mode="a"`` while another process writes the bank.
        """
        if mode not in ("r", "a"):
            raise BankError(f"mode {mode!r} is not valid; use 'r' (read) or 'a' (append)")
        loc = Location(path, storage_options=storage_options)
        loc.check_reachable()
        if not loc.exists():
            raise BankError(
                f"feature bank {loc.url!r} does not exist; make one with "
                "`facebank embed SOURCE --backbone NAME --out BANK.zarr`"
            )
        if not is_bank(loc):
            raise BankError(
                f"{loc.url!r} is not a feature bank (no zarr.json inside); give the "
                "NAME.zarr folder written by `facebank embed`"
            )
        lock = None
        if mode == "a":
            lock = writer_lock(loc).acquire()
            remove_partials(loc)
        try:
            attrs = read_group_attrs(loc)
            check_attrs(loc, attrs)
            if mode == "a" and int(attrs["facebank_format"]) < FORMAT_VERSION:
                raise BankError(
                    f"bank {loc.url!r} is in format {attrs['facebank_format']} (no acquisition "
                    f"metadata); run `facebank bank backfill {loc.url}` to upgrade it before "
                    "appending, or embed into a new --out"
                )
            try:
                store = Store.open(loc, writable=mode == "a")
                check_arrays(store)
                store.children()  # every array's own zarr.json must parse
            except BankError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BankError(
                    f"bank {loc.url!r} is damaged ({type(exc).__name__}: {exc}); check it with "
                    "`facebank bank verify` and re-embed into a new --out"
                ) from None
            if mode == "a":
                lost = missing_objects(
                    loc, {k: store.array(k) for k in store.array_names}, store.count
                )
                if lost:
                    raise BankError(
                        f"bank {loc.url!r} has lost {len(lost)} stored chunk(s) below its "
                        f"committed rows ({lost[:3]}); appending would hide the loss - check it "
                        "with `facebank bank verify` and re-embed into a new --out"
                    )
            segments: list[tuple[Store, np.ndarray | None]] = [(store, None)]
            if mode == "r":
                for _index, part in pending_partitions(loc, store.attrs):
                    segments.append((part, None))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        bank = cls(segments)
        bank._lock = lock
        if mode == "a":
            try:
                bank._absorb_partitions()
            except BaseException:
                bank.close()
                raise
        return bank

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(store.count if rows is None else len(rows) for store, rows in self._segments)

    def __repr__(self) -> str:
        return (
            f"FeatureBank({self.name!r}, rows={len(self)}, dim={self.dim}, "
            f"backbone={self.backbone.get('name')!r}, view={self.view!r})"
        )

    @property
    def path(self) -> Path | str:
        """Folder of the (first) underlying bank; its URL when it lives on another store."""
        return self._segments[0][0].path

    @property
    def url(self) -> str:
        """Where the (first) underlying bank lives: a local path or a URL (no credentials)."""
        return self._segments[0][0].loc.url

    @property
    def format(self) -> int:
        """Format version of the (first) underlying bank (1 or 2)."""
        return self._segments[0][0].format

    @property
    def name(self) -> str:
        """Display name: the folder stem (``faces`` for ``faces.zarr``); ``a+b`` for concats."""
        if self._name is not None:
            return self._name
        return _store_name(self._segments[0][0])

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

    def _stores(self) -> list[Store]:
        seen: list[Store] = []
        for store, _ in self._segments:
            if all(store is not s for s in seen):
                seen.append(store)
        return seen

    @staticmethod
    def _require_column(store: Store, name: str) -> None:
        if name not in store.column_names:
            raise BankError(
                f"bank {store.loc.url!r} (format {store.format}) holds no acquisition "
                f"metadata column {name!r}; run `facebank bank backfill {store.loc.url} "
                "--source DIR` to read it from the source files"
            )

    def _column(self, name: str) -> np.ndarray:
        parts = []
        for store, rows in self._segments:
            if name not in ROW_SCHEMA:  # (a bank from before a ROW_SCHEMA column reads "none")
                self._require_column(store, name)
            col = store.column(name)
            parts.append(col if rows is None else col[rows])
        if len(parts) == 1:
            return parts[0].copy()
        if column_dtype(name) == "str":
            return as_str_array(np.concatenate([p.astype(object) for p in parts]))
        return np.concatenate(parts)

    @staticmethod
    def column_kind(name: str) -> str:
        """Storage dtype of row column ``name``: ``"str"``, ``"int8"``, ``"float32"`` ...

        Raises:
            BankError: ``name`` is not a bank column (the valid ones listed).
        """
        return column_dtype(name)

    def column(self, name: str) -> np.ndarray:
        """One row column by name: a core one or a key of ``METADATA_SCHEMA``.

        Returns:
            ``(n_rows,)`` array of the column's dtype (str columns as ``<U``).

        Raises:
            BankError: an unknown name (the valid ones listed), or a metadata column of a
                format-1 bank (with the ``facebank bank backfill`` fix).
        """
        column_dtype(name)  # unknown names fail with the valid list
        return self._column(name)

    @property
    def has_metadata(self) -> bool:
        """True when every underlying bank stores the acquisition metadata columns."""
        return all(set(METADATA_SCHEMA) <= set(s.column_names) for s in self._stores())

    def metadata(self) -> dict[str, np.ndarray]:
        """Acquisition metadata of every row: ``{key of METADATA_SCHEMA: (n_rows,) array}``.

        Raises:
            BankError: a format-1 bank, with the ``facebank bank backfill`` fix.
        """
        return {key: self._column(key) for key in METADATA_SCHEMA}

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
    def groups(self) -> np.ndarray:
        """``(n_rows,)`` group of each row (a manifest's ``group`` column: identity,
        source...); ``""`` = none, which is every row of a bank from before the column."""
        return self._column("group")

    @property
    def pairs(self) -> np.ndarray:
        """``(n_rows,)`` pair of each row (a manifest's ``pair``: the path of the real a fake
        was made from, or a video's name); ``""`` = none."""
        return self._column("pair")

    @property
    def face_found(self) -> np.ndarray:
        """``(n_rows,)`` int8: 1 = the ``face`` view found a face, 0 = it did not (row kept
        uncropped), -1 = not a face view. Banks from before the column get it from their
        ``face_not_found`` attribute (paths of rows without a face)."""
        parts = []
        for store, rows in self._segments:
            col = store.column("face_found")
            if "face_found" not in store.column_names:
                col = _face_found_from_attrs(store)
            parts.append(col if rows is None else col[rows])
        return np.concatenate(parts) if parts else np.zeros(0, np.int8)

    @property
    def bank_names(self) -> np.ndarray:
        """``(n_rows,)`` name of the bank each row comes from (differs only after concat)."""
        parts = [
            np.full(store.count if rows is None else len(rows), _store_name(store), dtype=object)
            for store, rows in self._segments
        ]
        return as_str_array(np.concatenate(parts)) if parts else np.zeros(0, dtype="<U1")

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
                out[hit] = gather(store.features, src)
            offset += n
        return out

    @staticmethod
    def _read_segment(store: Store, rows: np.ndarray | None, dtype: Any) -> np.ndarray:
        if rows is None:
            # chunk by chunk into one preallocated output: the dtype conversion runs on
            # cache-sized blocks and zarr never assembles one huge intermediate array
            out = np.empty((store.count, store.dim), dtype=dtype)
            step = store.chunk_rows
            for a in range(0, store.count, step):
                b = min(a + step, store.count)
                cast_into(out[a:b], np.asarray(store.features[a:b]))
            return out
        return cast(gather(store.features, rows), dtype)

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
                    X = gather(store.features, rows[a:b])
                yield offset + a, offset + b, cast(X, dtype)
            offset += n

    def iter_columns(
        self, names: Sequence[str], *, chunk_rows: int | None = None
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Stream row columns in row order, across partitions, without holding them whole.

        Unlike :attr:`paths`, :attr:`sha256`... (read whole and cached), memory is one
        chunk of each named column: what a pass over 10^7 rows needs. On a
        :meth:`select` subset only the chunks holding its rows are read.

        Yields:
            ``(start, stop, {name: (stop - start,) array})``; str columns as ``<U``.
        """
        kinds = {name: column_dtype(name) for name in names}  # unknown names fail here
        offset = 0
        for store, rows in self._segments:
            for name in names:
                if name not in ROW_SCHEMA:  # (from before a ROW_SCHEMA column: "none")
                    self._require_column(store, name)
            step = int(chunk_rows or store.chunk_rows)
            n = store.count if rows is None else len(rows)
            for a in range(0, n, step):
                b = min(a + step, n)
                cols = {}
                for name, kind in kinds.items():
                    if name not in store.column_names:  # a ROW_SCHEMA column, not stored
                        cols[name] = as_column(name, None, b - a)
                        continue
                    arr = store.array(name)
                    raw = arr[a:b] if rows is None else gather(arr, rows[a:b])
                    cols[name] = (
                        as_str_array(raw)
                        if kind == "str"
                        else np.asarray(raw).astype(kind if kind != "bool" else bool)
                    )
                yield offset + a, offset + b, cols
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
        segments: list[tuple[Store, np.ndarray | None]] = []
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
            h.update(b"facebank-bank-v1\n")  # unchanged by format 2: same rows, same digest
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


def _face_found_from_attrs(store: Store) -> np.ndarray:
    """``face_found`` of a bank written before the column: 0 for the paths its
    ``face_not_found`` attribute lists, 1 for the other rows of a face view, else -1."""
    ops = str(store.attrs.get("view", "original")).split("+")
    if not any(op.split(":")[0] == "face" for op in ops):
        return np.full(store.count, -1, dtype=np.int8)
    missing = set(store.attrs.get("face_not_found") or ())
    paths = store.column("path")
    return np.where(np.isin(paths, list(missing)), 0, 1).astype(np.int8)


def _store_name(store: Store) -> str:
    return store.loc.name.removesuffix(".zarr") or store.loc.name


def open_banks(
    banks: BankPath | FeatureBank | Sequence[BankPath | FeatureBank], *, what: str = "banks"
) -> list[FeatureBank]:
    """Banks as given (open ones kept, paths and URLs opened read-only); at least one.

    Raises:
        BankError: nothing given, or a bank that cannot be opened.
    """
    if isinstance(banks, (str, os.PathLike, FeatureBank)):
        banks = [banks]
    out = [FeatureBank.open(b) if isinstance(b, (str, os.PathLike)) else b for b in banks]
    if not out:
        raise BankError(f"no {what} given; pass at least one feature bank (NAME.zarr)")
    return out


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
    columns: Mapping[str, Any] | None = None,
) -> FeatureBank:
    """Write arrays as a complete bank in one go (tests, benchmarks, imports).

    Args:
        path: the ``NAME.zarr`` directory to make.
        features: ``(n, D)`` float array.
        labels: ``(n,)`` in {1, 0, -1}.
        engines: ``(n,)`` strings, or one string for every row.
        paths, sha256: ``(n,)``; default unique ids ``"row-000001"``...
        splits: ``(n,)`` or one string; default ``""`` (no split column).
        backbone: spec; None -> a "synthetic" spec of width D.
        columns: the other row columns (metadata, ``group``, ``face_found``), as for
            :meth:`FeatureBank.append`.

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

    spec = dict(backbone) if backbone is not None else arrays_backbone(X.shape[1])
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
            columns=columns,
        )
    return FeatureBank.open(path)
