"""Rows to index - one or more banks, or an in-memory array - behind one chunked API.

Features are only ever read in chunks (``iter_raw``, ``iter_chunks``) or by row number
(``load_rows``), so nothing here holds all features at once. Row metadata comes two ways:
:class:`IndexRows` (every column as an object array, for reports and forensics) and
:meth:`FeatureSource.codes` (one column as small integer codes plus a vocabulary, a few bytes a
row, for the analyses that must scale to 10^7 rows).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import BankError, DataError
from facebank.embed.backbones.compat import require_one_backbone
from facebank.embed.bank.bank import open_banks
from facebank.embed.inputs.datasets import decode_path

__all__ = ["IndexRows", "resolve_image_path"]


@dataclass(frozen=True)
class IndexRows:
    """Metadata of the rows of an index, one entry per row (all arrays shaped ``(n,)``).

    ``bank`` is the name of the bank each row came from; ``bank_id`` indexes ``sources``
    and ``bank_paths`` (the bank's recorded source root, used to find the image files).
    """

    path: np.ndarray
    engine: np.ndarray
    label: np.ndarray
    split: np.ndarray
    sha256: np.ndarray
    bank: np.ndarray
    bank_id: np.ndarray
    local_row: np.ndarray
    sources: tuple[str, ...]
    bank_paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.path)

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a plain dict (path, engine, label, split, sha256, bank, row)."""
        return {
            "row": int(i),
            "path": str(self.path[i]),
            "engine": str(self.engine[i]),
            "label": int(self.label[i]),
            "split": str(self.split[i]),
            "sha256": str(self.sha256[i]),
            "bank": str(self.bank[i]),
        }

    def image_path(self, i: int) -> Path | None:
        """The image file of row ``i`` when it exists on this machine, else ``None``."""
        return resolve_image_path(self.sources[int(self.bank_id[i])], str(self.path[i]))


def resolve_image_path(source: str, path: str) -> Path | None:
    """Find a banked image on disk: ``path`` is relative to the bank's source root.

    The source is a folder (``SOURCE/<engine>/...``) or a CSV manifest (paths relative
    to the CSV's folder). Returns ``None`` when the file is not there (a bank moved to
    another machine, a synthetic bank), so callers can draw a placeholder instead.
    """
    if not path:
        return None
    p = Path(decode_path(path))  # the stored form of a non-UTF-8 name -> the OS name
    candidates = [p] if p.is_absolute() else []
    if source and not p.is_absolute():
        root = Path(source)
        candidates.append((root.parent if root.suffix.lower() == ".csv" else root) / p)
    for c in candidates:
        try:
            if c.is_file():
                return c
        except OSError:
            continue
    return None


def _is_bank(obj: Any) -> bool:
    return hasattr(obj, "iter_features") and hasattr(obj, "backbone")


def _open_banks(data: Any) -> list[Any]:
    """FeatureBank | path | a list of them -> list of banks (opened by ``open_banks``)."""
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    for item in items:
        if not isinstance(item, (str, os.PathLike)) and not _is_bank(item):
            raise DataError(
                f"expected a FeatureBank, a bank path or an (n, D) array, got {type(item).__name__}"
            )
    try:
        banks = open_banks(items)
    except BankError as exc:
        if items:
            raise
        raise DataError(str(exc)) from None
    require_one_backbone(banks)
    for b in banks:
        if len(b) == 0:
            raise BankError(
                f"bank {str(b.path)!r} has no rows; embed images into it first "
                "(facebank embed SOURCE --out BANK) or leave it out"
            )
    return banks


# columns a bank exposes as properties, by IndexRows field name
# Rows of metadata read at a time: a chunk of 64-character sha256 strings as numpy <U64
# is 256 bytes a row, 16 MB at 65,536 rows.
_COLUMN_ROWS = 65536
_BANK_COLUMNS = {
    "path": "paths",
    "engine": "engines",
    "label": "labels",
    "split": "splits",
    "sha256": "sha256",
}


class FeatureSource:
    """Rows to index: one or more banks, or an in-memory array, behind one chunked API."""

    def __init__(self, data: Any) -> None:
        if isinstance(data, np.ndarray) or (
            hasattr(data, "__array__")
            and not _is_bank(data)
            and not isinstance(data, (list, tuple))
        ):
            X = np.asarray(data)
            if X.ndim != 2:
                raise DataError(f"features must be a 2-D array (n, D), got shape {X.shape}")
            if X.shape[0] == 0:
                raise DataError("features array has no rows; pass at least one row")
            self.array: np.ndarray | None = X
            self.banks: list[Any] = []
            self.offsets = np.array([0, X.shape[0]])
            self.dim = int(X.shape[1])
            self.backbone: dict | None = None
            self.view = "original"
            self._rows: IndexRows | None = None
            return
        self.array = None
        self.banks = _open_banks(data)
        self.offsets = np.cumsum([0] + [len(b) for b in self.banks])
        self.dim = int(self.banks[0].dim)
        self.backbone = dict(self.banks[0].backbone)
        self.view = str(self.banks[0].view)
        self._rows = None

    @property
    def data(self) -> Any:
        """What this source was built from (the array, or the list of banks)."""
        return self.array if self.array is not None else self.banks

    @property
    def bank_paths(self) -> list[str]:
        return [str(b.path) for b in self.banks] if self.array is None else [""]

    @property
    def rows(self) -> IndexRows:
        """Row metadata, read from the banks on first use (a self-search never needs it)."""
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows

    def _read_rows(self) -> IndexRows:
        if self.array is not None:
            n = len(self.array)
            return IndexRows(
                path=np.array([f"row-{i:06d}" for i in range(n)], dtype=object),
                engine=np.full(n, "", dtype=object),
                label=np.full(n, -1, dtype=np.int8),
                split=np.full(n, "", dtype=object),
                sha256=np.full(n, "", dtype=object),
                bank=np.full(n, "array", dtype=object),
                bank_id=np.zeros(n, dtype=np.int32),
                local_row=np.arange(n),
                sources=("",),
                bank_paths=("",),
            )
        cols: dict[str, list[np.ndarray]] = defaultdict(list)
        for i, b in enumerate(self.banks):
            n = len(b)
            for field_name, attr in _BANK_COLUMNS.items():
                dtype = np.int8 if field_name == "label" else object
                cols[field_name].append(np.asarray(getattr(b, attr), dtype=dtype))
            cols["bank"].append(self._bank_names(i))
            cols["bank_id"].append(np.full(n, i, dtype=np.int32))
            cols["local_row"].append(np.arange(n))
        return IndexRows(
            **{k: np.concatenate(v) for k, v in cols.items()},
            sources=tuple(str(b.meta.get("source", "") or "") for b in self.banks),
            bank_paths=tuple(str(b.path) for b in self.banks),
        )

    def _bank_names(self, i: int) -> np.ndarray:
        b = self.banks[i]
        names = getattr(b, "bank_names", None)  # per-row names of a concatenated bank
        if names is not None and len(names) == len(b):
            return np.asarray(names, dtype=object)
        return np.full(len(b), str(b.name), dtype=object)

    def iter_columns(
        self, names: Sequence[str], *, chunk_rows: int = _COLUMN_ROWS
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Row columns in row order, ``chunk_rows`` at a time, over every bank (and every
        partition of a bank): ``(start, stop, {name: (stop - start,) array})``.

        ``names`` are bank columns (``path``, ``engine``, ``label``, ``split``, ``sha256``,
        ``group``...) or ``bank_id``. Memory is one chunk of each column, never a whole one,
        so this is what the analyses that must scale to 10^7 rows read metadata with.
        """
        if self._rows is not None or self.array is not None:
            for start in range(0, len(self), chunk_rows):
                stop = min(start + chunk_rows, len(self))
                yield start, stop, {n: self._row_field(n)[start:stop] for n in names}
            return
        stored = [n for n in names if n != "bank_id"]  # the bank's own column names
        for i, (off, bank) in enumerate(zip(self.offsets[:-1], self.banks, strict=False)):
            for start, stop, out in bank.iter_columns(stored, chunk_rows=chunk_rows):
                if "bank_id" in names:
                    out["bank_id"] = np.full(stop - start, i, dtype=np.int32)
                yield int(off + start), int(off + stop), out

    def _row_field(self, name: str) -> np.ndarray:
        return self.rows.bank_id if name == "bank_id" else getattr(self.rows, name)

    def take(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Columns ``names`` (and ``bank``, the bank's name) of the given global rows only.

        Only the bank chunks that hold those rows are read (``FeatureBank.select`` +
        ``iter_columns``). Returns ``{name: (len(rows),) array}`` in the order of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self._rows is not None or self.array is not None:
            return {n: np.asarray(self._row_field(n))[rows] for n in (*names, "bank")}
        out = {n: np.empty(len(rows), dtype=object) for n in (*names, "bank")}
        bank_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for b in np.unique(bank_of):
            sel = np.flatnonzero(bank_of == b)
            local = rows[sel] - self.offsets[b]
            order = np.argsort(local, kind="stable")
            subset = self.banks[b].select(rows=local[order])
            pos = sel[order]
            for start, stop, cols in subset.iter_columns(names, chunk_rows=_COLUMN_ROWS):
                for n in names:
                    out[n][pos[start:stop]] = cols[n]
            names_of = getattr(subset, "bank_names", None)
            out["bank"][pos] = (
                names_of if names_of is not None else np.full(len(pos), str(self.banks[b].name))
            )
        return out

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """One metadata column as ``(codes, vocabulary)``: ``vocabulary[codes[i]]`` is row i's.

        Read chunk by chunk (``iter_columns``), so only one chunk of strings is alive at a
        time; codes are the smallest integer type that fits (a byte a row for engines and
        splits). ``name`` is ``"engine"``, ``"split"``, ``"label"`` or ``"bank_id"``.
        """
        codes, vocabs = self.encode([name])
        return codes[name], vocabs[name]

    def encode(
        self, names: Sequence[str], *, chunk_rows: int = _COLUMN_ROWS
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """Several columns as codes and vocabularies in ONE streamed pass (see :meth:`codes`)."""
        coders = {name: Encoder(len(self), numeric=name == "bank_id") for name in names}
        for start, stop, cols in self.iter_columns(names, chunk_rows=chunk_rows):
            for name in names:
                coders[name].add(start, stop, cols[name])
        done = {name: coders[name].finish() for name in names}
        return {k: v[0] for k, v in done.items()}, {k: v[1] for k, v in done.items()}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def iter_raw(self, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, X)`` with X as stored (float16 banks stay float16: half the
        memory of a float32 chunk; callers convert into a buffer they own)."""
        if self.array is not None:
            for start in range(0, len(self), chunk_rows):
                stop = min(start + chunk_rows, len(self))
                yield start, stop, self.array[start:stop]
            return
        for off, bank in zip(self.offsets[:-1], self.banks, strict=False):
            dtype = np.dtype(getattr(bank, "storage_dtype", np.float32))
            if dtype.kind != "f":
                dtype = np.dtype(np.float32)
            for start, stop, X in bank.iter_features(chunk_rows=chunk_rows, dtype=dtype):
                yield int(off + start), int(off + stop), X

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, X)`` over all rows in order; X float32 (stop-start, D)."""
        if self.array is not None:
            for start in range(0, len(self), chunk_rows):
                stop = min(start + chunk_rows, len(self))
                yield start, stop, np.ascontiguousarray(self.array[start:stop], dtype=np.float32)
            return
        for off, bank in zip(self.offsets[:-1], self.banks, strict=False):
            for start, stop, X in bank.iter_features(chunk_rows=chunk_rows, dtype=np.float32):
                yield int(off + start), int(off + stop), np.ascontiguousarray(X, dtype=np.float32)

    def load_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Features of the given global rows, float32 ``(len(rows), D)``, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            bad = rows[(rows < 0) | (rows >= len(self))][0]
            raise DataError(
                f"row {int(bad)} is out of range; the index has rows 0..{len(self) - 1}"
            )
        if self.array is not None:
            return np.ascontiguousarray(self.array[rows], dtype=np.float32)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        bank_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for b in np.unique(bank_of):
            sel = np.flatnonzero(bank_of == b)
            local = rows[sel] - self.offsets[b]
            order = np.argsort(local, kind="stable")
            X = self.banks[b].load_features(rows=local[order], dtype=np.float32)
            out[sel[order]] = X
        return out


class Encoder:
    """Strings of ``n`` rows, given chunk by chunk, as small integer codes + a vocabulary.

    ``finish()`` returns ``(codes, vocabulary)`` with the vocabulary sorted as
    ``np.unique`` sorts it (numerically with ``numeric``), codes the smallest int type.
    """

    def __init__(self, n: int, *, numeric: bool = False) -> None:
        self.codes = np.zeros(n, dtype=np.int32)
        self.seen: dict[str, int] = {}
        self.numeric = numeric

    def add(self, start: int, stop: int, values: np.ndarray) -> None:
        local, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
        remap = np.array([self.seen.setdefault(str(v), len(self.seen)) for v in local], np.int32)
        self.codes[start:stop] = remap[inv.reshape(-1)]

    def finish(self) -> tuple[np.ndarray, list[str]]:
        words = sorted(self.seen, key=lambda w: (int(w) if self.numeric else 0, w))
        order = np.zeros(max(len(words), 1), dtype=np.int32)
        for new, w in enumerate(words):
            order[self.seen[w]] = new
        return _small(order[self.codes]), words


def _small(codes: np.ndarray) -> np.ndarray:
    top = int(codes.max()) if codes.size else 0
    for dtype in (np.int8, np.int16, np.int32):
        if top <= np.iinfo(dtype).max:
            return codes.astype(dtype)
    return codes.astype(np.int64)


def sample_rows(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """All rows ``0..n-1``, or a sorted seeded uniform sample of ``limit`` of them."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=int(limit), replace=False))
