# ruff: noqa: E741  (FAISS convention: results are named D, I - STYLE.md 7)
"""FAISS nearest-neighbour analysis of feature banks.

Questions it answers: do generator engines form their own clusters in a backbone's
space (and how cleanly), which banked images a verdict rests on (forensics), whether
test images are near-copies of training images (leaks), and what the space looks like
in 2-D.

Everything is built on :class:`NeighbourIndex`, a thin wrapper around a FAISS index
described by a factory string (``"Flat"`` exact, ``"IVF1024,Flat"``, ``"HNSW32"``...)
with runtime knobs (``nprobe``, ``ef_search``) set apart. Banks are streamed in
chunks both for the add and for the self-search, so banks larger than RAM work as long
as the index itself fits. The exact self-search on the CPU works on the index's own
rows block by block and uses each block product twice - for its rows and, transposed,
for its columns - so it costs half of ``ntotal`` searches.

Conventions: ``metric="cosine"`` searches inner products of L2-normalised rows, so
``D`` is a cosine *similarity* (higher = closer); ``metric="l2"`` gives *squared*
Euclidean distances (lower = closer), as FAISS does. No threshold here is tuned on
any split: the leak threshold is the user's, the clustering has no free parameter
chosen from the data.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from facebank.embed.compat import backbone_id, require_one_backbone
from facebank.embed.errors import (
    BankError,
    DataError,
    FacebankError,
    ImageDecodeError,
    UnknownNameError,
)

from facebank.embed.runs import markdown_table, start_run, write_json

__all__ = [
    "NeighbourIndex",
    "NeighbourRecord",
    "IndexRows",
    "ClusterResult",
    "LeakResult",
    "EmbeddingMap",
    "engine_clusters",
    "find_leaks",
    "embedding_map",
    "resolve_image_path",
    "write_maps",
    "write_query",
    "METRICS",
]

log = logging.getLogger(__name__)

METRICS = ("cosine", "l2")
_DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"

# 64k rows x 768-d float32 is 200 MB: large enough that FAISS's blocked GEMM search runs
# at full speed, small enough that two chunks sit beside a big index.
DEFAULT_CHUNK_ROWS = 65536
# Rows per read from a bank: reads decode into temporaries several times their size,
# so they are kept small and converted straight into the float32 chunk buffer.
_READ_ROWS = 8192
# IVF training: FAISS warns below 39 points per centroid; more costs time and memory
# (the sample is held in RAM while k-means runs: 40 x 1024 lists x 768-d = 126 MB).
_TRAIN_PER_LIST = 40
_TRAIN_MIN = 10_000
# Exact self-search block: three 3072 x 3072 float32 buffers (36 MB each) at a time;
# sgemm runs as fast at 3072 as at 4096 on a 2-core AVX2 CPU.
_SELF_BLOCK_ROWS = 3072


# --------------------------------------------------------------------------- metadata


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
    p = Path(path)
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


@dataclass(frozen=True)
class NeighbourRecord:
    """One neighbour of one query (``NeighbourIndex.query`` returns lists of these).

    Attributes:
        query: the query's display name (image path, ``"row 17"`` or ``"query 0"``).
        query_index: position of the query in the call.
        query_image: the query's image file when known and present, else ``None``.
        rank: 1 for the nearest neighbour.
        row: the neighbour's row in the index (over all banks).
        similarity: cosine similarity (``metric="cosine"``), else ``None``.
        distance: ``1 - similarity`` for cosine, squared Euclidean distance for l2.
        path, engine, label, split, sha256, bank: the neighbour's bank metadata.
        image_path: the neighbour's image file when it exists here, else ``None``.
    """

    query: str
    query_index: int
    query_image: str | None
    rank: int
    row: int
    similarity: float | None
    distance: float
    path: str
    engine: str
    label: int
    split: str
    sha256: str
    bank: str
    image_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data access


def _is_bank(obj: Any) -> bool:
    return hasattr(obj, "iter_features") and hasattr(obj, "backbone")


def _open_banks(data: Any) -> list[Any]:
    """FeatureBank | path | a list of them -> list of banks (opened)."""
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    if not items:
        raise DataError("no banks given; pass at least one FeatureBank (or bank path)")
    banks = []
    for item in items:
        if isinstance(item, (str, Path)):
            from facebank.embed import FeatureBank

            item = FeatureBank.open(item)
        if not _is_bank(item):
            raise DataError(
                f"expected a FeatureBank, a bank path or an (n, D) array, got {type(item).__name__}"
            )
        banks.append(item)
    require_one_backbone(banks)
    for b in banks:
        if len(b) == 0:
            raise BankError(
                f"bank {str(b.path)!r} has no rows; embed images into it first "
                "(facebank embed SOURCE --out BANK) or leave it out"
            )
    return banks


class _Source:
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
            cols["path"].append(np.asarray(b.paths, dtype=object))
            cols["engine"].append(np.asarray(b.engines, dtype=object))
            cols["label"].append(np.asarray(b.labels, dtype=np.int8))
            cols["split"].append(np.asarray(b.splits, dtype=object))
            cols["sha256"].append(np.asarray(b.sha256, dtype=object))
            names = getattr(b, "bank_names", None)  # per-row names of a concatenated bank
            cols["bank"].append(
                np.asarray(names, dtype=object)
                if names is not None and len(names) == n
                else np.full(n, str(b.name), dtype=object)
            )
            cols["bank_id"].append(np.full(n, i, dtype=np.int32))
            cols["local_row"].append(np.arange(n))
        return IndexRows(
            **{k: np.concatenate(v) for k, v in cols.items()},
            sources=tuple(str(b.meta.get("source", "") or "") for b in self.banks),
            bank_paths=tuple(str(b.path) for b in self.banks),
        )

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


def _check_finite(X: np.ndarray, start: int) -> None:
    # row sums are NaN/inf exactly when a row holds one (features are far from overflow),
    # and cost n floats instead of an (n, D) boolean temporary
    finite = np.isfinite(X.sum(axis=1))
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite)[0])
        raise DataError(f"row {bad} has NaN or infinite features; re-embed or drop that row")


# --------------------------------------------------------------------------- device


def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when faiss has GPU support and sees a GPU, else 'cpu'."""
    dev = str(device).lower()
    if dev == "auto":
        return "cuda:0" if _gpu_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev in ("cuda", "gpu") or dev.startswith("cuda:"):
        if not _gpu_available():
            raise FacebankError(
                f"device={device!r} asks for FAISS on a GPU, but this faiss build has no GPU "
                "support or sees no GPU; install faiss-gpu (pip install 'facebank[gpu]') on a "
                "CUDA machine, or use device='cpu'"
            )
        return "cuda:0" if dev in ("cuda", "gpu") else dev
    raise UnknownNameError(f"unknown device {device!r}; valid: {_DEVICES}")


# --------------------------------------------------------------------------- the index


class NeighbourIndex:
    """A FAISS index over one or more feature banks (or an array), with row metadata.

    Args:
        data: a ``FeatureBank``, a bank path, a list of them (same backbone; rows are
            numbered bank after bank), or a float array ``(n, D)``.
        factory: FAISS index factory string: ``"Flat"`` (exact, default),
            ``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF256,PQ32"``... Indexes that need
            training are trained on a seeded random sample of the rows.
        metric: ``"cosine"`` (rows L2-normalised, inner product; ``D`` = similarity,
            higher = closer) or ``"l2"`` (``D`` = squared distance, lower = closer).
        device: ``"auto"`` (FAISS GPU when faiss has GPU support and a GPU is present,
            else CPU), ``"cpu"``, ``"cuda"`` / ``"cuda:N"``. Chosen here, never at import.
        nprobe: IVF runtime knob (inverted lists visited per query).
        ef_search: HNSW runtime knob (search beam width).
        chunk_rows: rows read from the bank at a time, for the add and the self-search.
        seed: seeds the IVF/PQ training sample.
        gpu_float16: store and compare vectors in float16 on the GPU (banks store float16
            anyway; about 2x less memory and tensor-core speed, cosine rounding ~1e-3).
        progress: show rich progress bars while adding and self-searching.

    Attributes:
        rows: :class:`IndexRows` (path, engine, label, split, sha256, bank per row).
        ntotal: number of indexed rows. dim: feature size. device: the device used.
        backbone: backbone spec of the banks (``None`` for an array).
    """

    def __init__(
        self,
        data: Any,
        *,
        factory: str = "Flat",
        metric: str = "cosine",
        device: str = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        seed: int = 0,
        gpu_float16: bool = False,
        progress: bool = False,
    ) -> None:
        import faiss

        if metric not in METRICS:
            raise UnknownNameError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if int(chunk_rows) < 1:
            raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.factory = str(factory)
        self.metric = metric
        self.chunk_rows = int(chunk_rows)
        self.seed = int(seed)
        self.progress = progress
        self.nprobe = nprobe
        self.ef_search = ef_search
        self._source = _Source(data)
        self.dim = self._source.dim
        self.backbone = self._source.backbone
        self.view = self._source.view
        self.device = _resolve_device(device)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        try:
            cpu_index = faiss.index_factory(self.dim, self.factory, faiss_metric)
        except RuntimeError as exc:
            raise UnknownNameError(
                f"FAISS cannot build index {factory!r} for {self.dim}-d features "
                f"({str(exc).splitlines()[-1].split(':')[-1].strip()}); valid examples: "
                "'Flat', 'IVF1024,Flat', 'HNSW32', 'IVF256,PQ32' (see the FAISS index factory docs)"
            ) from None
        if not cpu_index.is_trained:
            self._train(cpu_index)
        self.index = self._to_device(cpu_index, gpu_float16=gpu_float16)
        self._set_knobs()
        self._add_all()

    # -- building -----------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def rows(self) -> IndexRows:
        """:class:`IndexRows`: path, engine, label, split, sha256, bank of every row."""
        return self._source.rows

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"NeighbourIndex(factory={self.factory!r}, metric={self.metric!r}, "
            f"ntotal={self.ntotal}, dim={self.dim}, device={self.device!r})"
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """A float32 C-contiguous copy of queries, L2-normalised for cosine."""
        import faiss

        X = np.array(X, dtype=np.float32, order="C", copy=True)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise DataError(
                f"queries must have shape (n, {self.dim}) to match the index, got {X.shape}"
            )
        _check_finite(X, 0)
        if self.metric == "cosine":
            faiss.normalize_L2(X)
        return X

    def _train(self, index: Any) -> None:
        import faiss

        n = len(self._source)
        try:
            nlist = int(faiss.extract_index_ivf(index).nlist)
        except RuntimeError:
            nlist = 0
        size = min(n, max(_TRAIN_MIN, _TRAIN_PER_LIST * nlist))
        if nlist and n < nlist:
            raise DataError(
                f"index {self.factory!r} has {nlist} lists but only {n} rows to train on; "
                f"use fewer lists (e.g. 'IVF{max(1, int(math.sqrt(n)))},Flat') or 'Flat'"
            )
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(n, size=size, replace=False))
        X = self._prepare(self._source.load_rows(rows))
        log.info("training %s on %d of %d rows", self.factory, size, n)
        index.train(X)

    def _to_device(self, index: Any, *, gpu_float16: bool) -> Any:
        if self.device == "cpu":
            return index
        import faiss

        gpu = int(self.device.split(":")[1]) if ":" in self.device else 0
        self._gpu_res = faiss.StandardGpuResources()
        opts = faiss.GpuClonerOptions()
        opts.useFloat16 = bool(gpu_float16)
        try:
            return faiss.index_cpu_to_gpu(self._gpu_res, gpu, index, opts)
        except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
            log.warning("index %r stays on the CPU: %s", self.factory, str(exc).splitlines()[-1])
            self.device = "cpu"
            return index

    def _set_knobs(self) -> None:
        import faiss

        space = faiss.ParameterSpace() if self.device == "cpu" else faiss.GpuParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search)):
            if value is None:
                continue
            try:
                space.set_index_parameter(self.index, name, float(value))
            except RuntimeError:
                knob = "nprobe" if name == "nprobe" else "ef_search"
                kind = "IVF" if name == "nprobe" else "HNSW"
                raise DataError(
                    f"{knob}={value} does not apply to index {self.factory!r}; it is a knob of "
                    f"{kind} indexes - drop it or use a factory such as "
                    f"{'IVF1024,Flat' if kind == 'IVF' else 'HNSW32'!r}"
                ) from None

    def _raw_chunks(self, desc: str) -> Iterator[tuple[int, int, np.ndarray]]:
        with self._progress(desc, total=len(self._source)) as advance:
            for start, stop, X in self._source.iter_raw(min(self.chunk_rows, _READ_ROWS)):
                yield start, stop, X
                advance(stop - start)

    def _prepared_chunks(self, desc: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """``chunk_rows`` chunks in ONE reused float32 buffer, checked and normalised.

        The bank is read in pieces of at most ``_READ_ROWS`` rows (in its storage dtype)
        that are converted straight into the buffer, so memory is one float32 chunk plus
        a small fixed read buffer. Each yielded array is valid until the next request.
        """
        import faiss

        n = len(self._source)
        buf = np.empty((min(self.chunk_rows, n), self.dim), dtype=np.float32)
        start = fill = 0
        for first, stop, raw in self._raw_chunks(desc):
            pos = first  # next row of this piece to copy
            while pos < stop:
                take = min(stop - pos, len(buf) - fill)
                buf[fill : fill + take] = raw[pos - first : pos - first + take]
                fill += take
                pos += take
                if fill == len(buf) or start + fill == n:
                    X = buf[:fill]
                    _check_finite(X, start)
                    if self.metric == "cosine":
                        faiss.normalize_L2(X)
                    yield start, start + fill, X
                    start, fill = start + fill, 0
            del raw

    def _add_all(self) -> None:
        import faiss

        n, d = len(self._source), self.dim
        if self._flat_on_cpu():
            # Fill a pre-sized buffer: add() grows a std::vector, whose reallocation
            # briefly holds the old and the new copy (2x the index at the last chunk).
            index = faiss.downcast_index(self.index)
            index.codes.resize(n * d * 4)
            buf = faiss.rev_swig_ptr(index.codes.data(), n * d * 4).view(np.float32).reshape(n, d)
            for start, stop, raw in self._raw_chunks("indexing"):
                buf[start:stop] = raw  # converts float16 -> float32 in place
                del raw
                _check_finite(buf[start:stop], start)
                if self.metric == "cosine":
                    faiss.normalize_L2(buf[start:stop])
            index.ntotal = n
            return
        if hasattr(self.index, "reserve"):  # GPU flat indexes
            self.index.reserve(n)
        for _start, _stop, X in self._prepared_chunks("indexing"):
            self.index.add(X)  # copies X into the index

    # -- searching ----------------------------------------------------------------

    def _check_k(self, k: int, *, exclude_self: bool = False) -> int:
        k = int(k)
        limit = self.ntotal - (1 if exclude_self else 0)
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        if k > limit:
            what = "other rows" if exclude_self else "rows"
            raise DataError(
                f"k={k} is larger than the index: it holds {self.ntotal} rows ({limit} {what} "
                f"to return); use k <= {limit} or add more rows"
            )
        return k

    def search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed rows of each query row.

        Args:
            X: queries ``(n_queries, D)`` (any float dtype; not modified).
            k: neighbours per query, ``1 <= k <= ntotal``.

        Returns:
            ``(D, I)``, both ``(n_queries, k)``: ``D`` float32 cosine similarity
            (``metric="cosine"``, descending) or squared L2 distance (``"l2"``,
            ascending); ``I`` int64 rows of the index (``-1`` where an approximate index
            found fewer than ``k``). Ties keep FAISS's order (lower row first).
        """
        k = self._check_k(k)
        return self._search(self._prepare(X), k)

    def _search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device != "cpu":
            return self.index.search(X, k)
        from facebank.heads.knn import search_cpu  # IVF lists searched list by list for big batches

        return search_cpu(self.index, X, k)

    def self_knn(self, k: int, *, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of every indexed row, streaming the rows in chunks.

        Args:
            k: neighbours per row.
            exclude_self: drop each row from its own list. The row itself is removed by
                id; when exact duplicates crowd it out of the ``k + 1`` results, the last
                result is dropped instead, so a duplicate still counts as a neighbour.

        Returns:
            ``(D, I)`` shaped ``(ntotal, k)``, as :meth:`search`.
        """
        k = self._check_k(k, exclude_self=exclude_self)
        if self._flat_on_cpu():
            return self._self_knn_symmetric(k, exclude_self=exclude_self)
        kk = k + 1 if exclude_self else k
        n = self.ntotal
        D = np.empty((n, k), dtype=np.float32)
        I = np.empty((n, k), dtype=np.int64)
        for start, stop, X in self._prepared_chunks("self-search"):
            Dc, Ic = self._search(X, kk)
            if exclude_self:
                Dc, Ic = _drop_self(Dc, Ic, np.arange(start, stop))
            D[start:stop], I[start:stop] = Dc, Ic
        return D, I

    def _flat_on_cpu(self) -> bool:
        import faiss

        return self.device == "cpu" and type(faiss.downcast_index(self.index)) in (
            faiss.IndexFlat,
            faiss.IndexFlatIP,
            faiss.IndexFlatL2,
        )

    def _self_knn_symmetric(self, k: int, *, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        """Exact self-kNN over a CPU flat index, each block product used for rows and columns.

        The similarity (or distance) of rows ``i`` and ``j`` is the same number seen from
        either side, so the blocks ``(a, b)`` with ``b >= a`` suffice: the product
        ``X_a X_b^T`` feeds the heaps of ``a``'s rows and, transposed, those of ``b``'s
        rows - half the GEMM FLOPs of searching every row against the index. The heaps
        are FAISS's own (``ResultHeap``), as in its search. A worker thread feeds the heaps
        from one product while the next product is computed (two product buffers and
        one transpose buffer of ``_SELF_BLOCK_ROWS``^2 floats: 108 MB). With
        ``exclude_self`` a row's own entry is masked on the diagonal blocks, so exact
        duplicates stay neighbours.
        """
        import faiss

        index = faiss.downcast_index(self.index)
        n, d = self.ntotal, self.dim
        X = faiss.rev_swig_ptr(index.codes.data(), n * d * 4).view(np.float32).reshape(n, d)
        cosine = self.metric == "cosine"
        sq = None if cosine else np.einsum("ij,ij->i", X, X)
        heap = faiss.ResultHeap(n, k, keep_max=cosine)
        B = min(_SELF_BLOCK_ROWS, n)
        products = [np.empty(B * B, np.float32), np.empty(B * B, np.float32)]
        transposed = np.empty(B * B, np.float32)

        def feed(S: np.ndarray, a0: int, b0: int) -> None:
            (na, nb), a1, b1 = S.shape, a0 + S.shape[0], b0 + S.shape[1]
            if not cosine:  # squared distances as FAISS computes them, clamped at 0
                S *= -2
                S += sq[a0:a1, None]
                S += sq[None, b0:b1]
                np.maximum(S, 0, out=S)
            if a0 == b0 and exclude_self:
                np.fill_diagonal(S, -np.inf if cosine else np.inf)
            heap.heaps.addn(nb, faiss.swig_ptr(S), b0, a0, na)
            if a0 != b0:
                T = transposed[: S.size].reshape(nb, na)
                _transpose(S, out=T, pool=pool)
                heap.heaps.addn(na, faiss.swig_ptr(T), a0, b0, nb)

        starts = list(range(0, n, B))
        pairs = [(a0, b0) for i, a0 in enumerate(starts) for b0 in starts[i:]]
        pending = None
        with (
            ThreadPoolExecutor(1) as worker,
            ThreadPoolExecutor(2) as pool,
            self._progress("self-search", total=len(pairs)) as step,
        ):
            for p, (a0, b0) in enumerate(pairs):
                a1, b1 = min(a0 + B, n), min(b0 + B, n)
                # alternate buffers: the worker still reads the previous product
                S = products[p % 2][: (a1 - a0) * (b1 - b0)].reshape(a1 - a0, b1 - b0)
                np.matmul(X[a0:a1], X[b0:b1].T, out=S)  # while the worker feeds the last one
                if pending is not None:
                    pending.result()
                    step()
                pending = worker.submit(feed, S, a0, b0)
            if pending is not None:
                pending.result()
                step()
        heap.finalize()
        return heap.D, heap.I

    @contextlib.contextmanager
    def _progress(self, desc: str, total: int) -> Iterator[Any]:
        """An ``advance(n=1)`` callable that moves a rich progress bar when ``progress`` is on."""
        if not self.progress:
            yield lambda n=1: None
            return
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(desc, total=total)
            yield lambda n=1: bar.advance(task, n)

    def query(
        self,
        queries: np.ndarray | Sequence[str | Path],
        k: int = 10,
        *,
        names: Sequence[str] | None = None,
        device: str = "auto",
        weights: str | None = None,
    ) -> list[list[NeighbourRecord]]:
        """Nearest banked images of each query, as records (for notebooks and the CLI).

        Args:
            queries: features ``(n, D)``, or image files, embedded with the banks'
                backbone and view (``embed.encode_images``).
            k: neighbours per query.
            names: display names of feature queries (default ``"query i"``).
            device, weights: passed to the backbone when embedding image files.

        Returns:
            One list of ``k`` :class:`NeighbourRecord` per query, nearest first.
        """
        images: list[str | None]
        if isinstance(queries, np.ndarray) or (
            hasattr(queries, "__array__") and not isinstance(queries, (list, tuple))
        ):
            X = np.asarray(queries)
            if X.ndim == 1:
                X = X[None, :]
            labels = list(names) if names is not None else [f"query {i}" for i in range(len(X))]
            images = [None] * len(X)
        else:
            paths = [str(p) for p in queries]
            X = self._embed_images(paths, device=device, weights=weights)
            labels = list(names) if names is not None else paths
            images = paths
        D, I = self.search(X, k)
        return self._records(D, I, labels, images)

    def query_rows(
        self, rows: Sequence[int], k: int = 10, *, exclude_self: bool = True
    ) -> list[list[NeighbourRecord]]:
        """Nearest neighbours of indexed rows (forensics of banked images by row number).

        Args:
            rows: row numbers of the index (over all banks, bank after bank).
            k: neighbours per query row.
            exclude_self: leave the query row out of its own list.
        """
        rows = [int(r) for r in rows]
        if not rows:
            raise DataError("no rows given; pass row numbers such as 3,17")
        k = self._check_k(k, exclude_self=exclude_self)
        X = self._source.load_rows(rows)
        D, I = self.search(X, k + 1 if exclude_self else k)
        if exclude_self:
            D, I = _drop_self(D, I, np.asarray(rows))
        labels = [f"row {r} ({self.rows.engine[r]}: {self.rows.path[r]})" for r in rows]
        images = [_str_or_none(self.rows.image_path(r)) for r in rows]
        return self._records(D, I, labels, images)

    def _embed_images(self, paths: list[str], *, device: str, weights: str | None) -> np.ndarray:
        if not paths:
            raise DataError("no query images given; pass image files or use --rows")
        for p in paths:
            if not Path(p).is_file():
                raise ImageDecodeError(
                    f"query image {p!r} does not exist; give an existing image file"
                )
        if self.backbone is None:
            raise DataError(
                "this index was built from an array, so it has no backbone to embed images "
                "with; build it from a FeatureBank or pass features"
            )
        if (
            self.backbone.get("library") in (None, "numpy")
            or self.backbone.get("name") == "synthetic"
        ):
            raise DataError(
                f"the bank's backbone {backbone_id(self.backbone)} cannot embed images (a "
                "synthetic bank); query by rows (--rows 3,17) or pass features"
            )
        from facebank.embed import encode_images

        enc = encode_images(
            paths, backbone=self.backbone, view=self.view, device=device, weights=weights
        )
        if enc.failures:
            path, reason = enc.failures[0]
            raise ImageDecodeError(
                f"query image {str(path)!r} could not be decoded ({reason}); give a readable "
                "image file (JPEG, PNG, WebP, ...)"
            )
        return np.asarray(enc.features, dtype=np.float32)

    def _records(
        self, D: np.ndarray, I: np.ndarray, labels: Sequence[str], images: Sequence[str | None]
    ) -> list[list[NeighbourRecord]]:
        out = []
        for q, (drow, irow) in enumerate(zip(D, I, strict=False)):
            recs = []
            for rank, (d, i) in enumerate(zip(drow, irow, strict=False), start=1):
                if i < 0:
                    continue
                sim = float(d) if self.metric == "cosine" else None
                recs.append(
                    NeighbourRecord(
                        query=str(labels[q]),
                        query_index=q,
                        query_image=images[q],
                        rank=rank,
                        row=int(i),
                        similarity=sim,
                        distance=1.0 - float(d) if self.metric == "cosine" else float(d),
                        path=str(self.rows.path[i]),
                        engine=str(self.rows.engine[i]),
                        label=int(self.rows.label[i]),
                        split=str(self.rows.split[i]),
                        sha256=str(self.rows.sha256[i]),
                        bank=str(self.rows.bank[i]),
                        image_path=_str_or_none(self.rows.image_path(int(i))),
                    )
                )
            out.append(recs)
        return out

    def load_rows(self, rows: Sequence[int]) -> np.ndarray:
        """Raw (not normalised) float32 features of the given rows, ``(len(rows), D)``."""
        return self._source.load_rows(rows)

    def iter_chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream the raw rows as ``(start, stop, X)`` chunks of ``chunk_rows``."""
        return self._source.iter_chunks(self.chunk_rows)


def _str_or_none(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _transpose(
    S: np.ndarray, *, out: np.ndarray, pool: ThreadPoolExecutor, strip: int = 16
) -> None:
    """``out[:] = S.T``, in strips of ``strip`` rows split between the ``pool``'s threads.

    Strips are 4-5x faster than numpy's plain strided copy of a 4096 x 4096 block (whose
    writes would miss the cache every time); numpy releases the GIL while copying.
    """

    def strips(lo: int, hi: int) -> None:
        for i in range(lo, hi, strip):
            out[:, i : i + strip] = S[i : i + strip].T

    half = S.shape[0] // 2 // strip * strip
    for f in [pool.submit(strips, 0, half), pool.submit(strips, half, S.shape[0])]:
        f.result()


def _drop_self(D: np.ndarray, I: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` results per row, remove the row itself (or the last result)."""
    n, kk = I.shape
    is_self = I == own[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, kk - 1] = True
    # keep the first occurrence only (a row appears at most once in FAISS results)
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    return D[keep].reshape(n, kk - 1), I[keep].reshape(n, kk - 1)


# --------------------------------------------------------------------------- clusters


@dataclass
class ClusterResult:
    """How cleanly engines cluster in a backbone's space (``engine_clusters``).

    Attributes:
        engines: engine names (``real`` first, then sorted), the order of ``confusion``'s
            rows and columns.
        purity: one dict per engine: engine, n, purity (mean fraction of an image's k
            neighbours of its own engine), lo/hi (bootstrap 95% interval over images),
            chance (the purity random neighbours would give).
        overall: purity over all images (micro) and the mean over engines (macro), with
            bootstrap intervals.
        confusion: ``(E, E)`` row-normalised: fraction of engine-e images' neighbours of
            engine f. confusion_counts: the raw neighbour counts.
        silhouette: silhouette of the engine labels on cosine distance (None for one
            engine); silhouette_n rows used (a seeded subsample above the limit).
        kmeans: FAISS k-means with as many clusters as engines: nmi, ari, n_clusters.
    """

    engines: list[str]
    k: int
    purity: list[dict[str, Any]]
    overall: dict[str, Any]
    confusion: np.ndarray
    confusion_counts: np.ndarray
    silhouette: float | None
    silhouette_n: int
    kmeans: dict[str, Any]
    n_rows: int
    factory: str
    metric: str
    banks: list[str] = field(default_factory=list)
    run_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["confusion"] = self.confusion.tolist()
        d["confusion_counts"] = self.confusion_counts.tolist()
        d["run_dir"] = str(self.run_dir) if self.run_dir else None
        return d

    def markdown(self) -> str:
        """Per-engine purity table plus the clustering summary, as Markdown."""
        lines = [
            f"### kNN engine purity (k={self.k}, {self.factory}, {self.metric}, {self.n_rows} rows)\n",
            markdown_table(self.purity, ["engine", "n", "purity", "lo", "hi", "chance"]),
            "",
            markdown_table(
                [
                    {
                        "measure": "purity (micro)",
                        "value": self.overall["micro"],
                        "lo": self.overall["micro_lo"],
                        "hi": self.overall["micro_hi"],
                    },
                    {
                        "measure": "purity (macro)",
                        "value": self.overall["macro"],
                        "lo": self.overall["macro_lo"],
                        "hi": self.overall["macro_hi"],
                    },
                    {
                        "measure": f"silhouette (cosine, n={self.silhouette_n})",
                        "value": self.silhouette,
                    },
                    {
                        "measure": f"k-means NMI ({self.kmeans['n_clusters']} clusters)",
                        "value": self.kmeans["nmi"],
                    },
                    {
                        "measure": f"k-means ARI ({self.kmeans['n_clusters']} clusters)",
                        "value": self.kmeans["ari"],
                    },
                ],
                ["measure", "value", "lo", "hi"],
            ),
        ]
        return "\n".join(lines)


def _bootstrap_mean(
    values: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (resampling items)."""
    m = len(values)
    if m == 0 or n_boot <= 0:
        return (math.nan, math.nan)
    means = np.empty(n_boot)
    batch = max(1, 2_000_000 // m)  # bound the (batch, m) index matrix to ~16 MB
    for s in range(0, n_boot, batch):
        b = min(batch, n_boot - s)
        means[s : s + b] = values[rng.integers(0, m, size=(b, m))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _sample_rows(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=int(limit), replace=False))


def engine_clusters(
    banks: Any,
    *,
    k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    n_clusters: int | None = None,
    silhouette_max: int = 5000,
    kmeans_max: int = 100_000,
    factory: str = "Flat",
    metric: str = "cosine",
    device: str = "auto",
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: str | Path | None = None,
    progress: bool = False,
) -> ClusterResult:
    """Per-engine kNN purity, neighbour-engine confusion, silhouette and k-means NMI/ARI.

    No hyperparameter or threshold is chosen from the data (all splits are pooled: this
    describes the space, it does not evaluate a detector).

    Args:
        banks: a bank, bank path, list of them (same backbone), or an index already built.
        k: neighbours per image (the image itself excluded).
        n_boot: bootstrap resamples (over images) for the purity intervals.
        seed: seeds the bootstrap, the silhouette subsample and k-means.
        n_clusters: k-means clusters (default: the number of engines).
        silhouette_max: silhouette on a seeded subsample of this many rows above it
            (its cost is quadratic).
        kmeans_max: k-means trains on at most this many rows (seeded), then every row is
            assigned to its nearest centroid.
        factory, metric, device, nprobe, ef_search, chunk_rows: see :class:`NeighbourIndex`.
        out: run folder for config.json, metrics.json, purity.md, confusion.png/csv,
            purity.png (``None``: write nothing).

    Returns:
        A :class:`ClusterResult`.
    """
    import faiss
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    index = (
        banks
        if isinstance(banks, NeighbourIndex)
        else NeighbourIndex(
            banks,
            factory=factory,
            metric=metric,
            device=device,
            nprobe=nprobe,
            ef_search=ef_search,
            chunk_rows=chunk_rows,
            seed=seed,
            progress=progress,
        )
    )
    rng = np.random.default_rng(seed)
    engines_row = index.rows.engine.astype(str)
    names = sorted(set(engines_row.tolist()), key=lambda e: (e != "real", e))  # real first
    code = {e: i for i, e in enumerate(names)}
    y = np.array([code[e] for e in engines_row], dtype=np.int64)
    n, E = len(y), len(names)

    _, I = index.self_knn(k)
    valid = I >= 0
    nb = np.where(valid, y[np.clip(I, 0, None)], -1)
    same = (nb == y[:, None]).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)

    counts = np.zeros((E, E), dtype=np.int64)
    np.add.at(counts, (np.repeat(y, k)[valid.ravel()], nb.ravel()[valid.ravel()]), 1)
    confusion = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    per_engine = []
    engine_means = []
    for e, name in enumerate(names):
        vals = same[y == e]
        lo, hi = _bootstrap_mean(vals, n_boot=n_boot, rng=rng)
        per_engine.append(
            {
                "engine": name,
                "n": int(len(vals)),
                "purity": float(vals.mean()),
                "lo": lo,
                "hi": hi,
                "chance": (len(vals) - 1) / max(n - 1, 1),
            }
        )
        engine_means.append(vals)
    micro_lo, micro_hi = _bootstrap_mean(same, n_boot=n_boot, rng=rng)
    # macro interval: resample images within each engine, average the engine means
    macro_boot = (
        np.mean(
            [
                [v[rng.integers(0, len(v), len(v))].mean() for v in engine_means]
                for _ in range(min(n_boot, 200))
            ],
            axis=1,
        )
        if n_boot > 0
        else np.array([math.nan])
    )
    overall = {
        "micro": float(same.mean()),
        "micro_lo": micro_lo,
        "micro_hi": micro_hi,
        "macro": float(np.mean([v.mean() for v in engine_means])),
        "macro_lo": float(np.percentile(macro_boot, 2.5)),
        "macro_hi": float(np.percentile(macro_boot, 97.5)),
    }

    silhouette, sil_n = None, 0
    if 2 <= E < n:
        sub = _sample_rows(n, silhouette_max, rng)
        if len(np.unique(y[sub])) >= 2 and len(sub) > len(np.unique(y[sub])):
            Xs = index.load_rows(sub)
            silhouette = float(silhouette_score(Xs, y[sub], metric="cosine"))
            sil_n = int(len(sub))

    n_clusters = int(n_clusters or E)
    km: dict[str, Any] = {"n_clusters": n_clusters, "nmi": None, "ari": None, "train_rows": 0}
    if 2 <= n_clusters <= n:
        sub = _sample_rows(n, kmeans_max, rng)
        Xk = index._prepare(index.load_rows(sub))
        kmeans = faiss.Kmeans(
            index.dim,
            n_clusters,
            niter=25,
            seed=seed,
            spherical=metric == "cosine",
            max_points_per_centroid=max(256, len(sub) // n_clusters + 1),
            verbose=False,
            min_points_per_centroid=1,  # small banks are fine; FAISS would only warn
        )
        kmeans.train(Xk)
        assign = np.empty(n, dtype=np.int64)
        for start, stop, X in index._prepared_chunks("k-means"):
            _, a = kmeans.index.search(X, 1)
            assign[start:stop] = a[:, 0]
        km.update(
            nmi=float(normalized_mutual_info_score(y, assign)),
            ari=float(adjusted_rand_score(y, assign)),
            train_rows=int(len(sub)),
        )

    result = ClusterResult(
        engines=names,
        k=k,
        purity=per_engine,
        overall=overall,
        confusion=confusion,
        confusion_counts=counts,
        silhouette=silhouette,
        silhouette_n=sil_n,
        kmeans=km,
        n_rows=n,
        factory=index.factory,
        metric=index.metric,
        banks=list(index.rows.bank_paths),
    )
    if out is not None:
        result.run_dir = _write_clusters(
            result,
            out,
            seed=seed,
            n_boot=n_boot,
            silhouette_max=silhouette_max,
            kmeans_max=kmeans_max,
            nprobe=nprobe,
            ef_search=ef_search,
        )
    return result


def _write_clusters(result: ClusterResult, out: str | Path, **config: Any) -> Path:
    from . import _plots_neighbours as plots

    run = start_run(
        out,
        command="neighbours clusters",
        config={
            "banks": result.banks,
            "k": result.k,
            "factory": result.factory,
            "metric": result.metric,
            **config,
        },
    )
    write_json(run / "metrics.json", result.to_dict())
    (run / "purity.md").write_text(result.markdown())
    with open(run / "confusion.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["engine", *result.engines])
        for name, row in zip(result.engines, result.confusion, strict=False):
            w.writerow([name, *(f"{v:.6f}" for v in row)])
    from .plots import save_figure

    save_figure(
        plots.confusion_heatmap(result.confusion, result.engines, k=result.k), run / "confusion.png"
    )
    save_figure(plots.purity_plot(result.purity, k=result.k), run / "purity.png")
    return run


# --------------------------------------------------------------------------- leaks


@dataclass
class LeakResult:
    """Near-duplicate and exact-duplicate pairs across splits and banks (``find_leaks``).

    A pair is reported when its two rows differ in split or in bank. ``pairs`` holds one
    dict per pair (row_a/row_b, similarity, kind ``"exact"`` (same sha256) or
    ``"near"`` (cosine >= threshold), and bank/split/engine/path of both sides);
    ``counts`` one dict per split pair (split_a, split_b, near, exact, total).
    ``train_test`` counts the pairs joining a ``train`` row and a ``test`` row: the
    leaks that invalidate a test score (``has_train_test_leak``).
    """

    threshold: float
    k: int
    pairs: list[dict[str, Any]]
    counts: list[dict[str, Any]]
    n_rows: int
    banks: list[str]
    run_dir: Path | None = None

    @property
    def train_test(self) -> int:
        return sum(1 for p in self.pairs if {p["split_a"], p["split_b"]} == {"train", "test"})

    @property
    def has_train_test_leak(self) -> bool:
        return self.train_test > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "k": self.k,
            "n_rows": self.n_rows,
            "banks": self.banks,
            "n_pairs": len(self.pairs),
            "n_exact": sum(p["kind"] == "exact" for p in self.pairs),
            "n_near": sum(p["kind"] == "near" for p in self.pairs),
            "train_test": self.train_test,
            "has_train_test_leak": self.has_train_test_leak,
            "counts": self.counts,
        }

    def markdown(self) -> str:
        return (
            f"### Duplicates across splits/banks (cosine >= {self.threshold}, k={self.k})\n\n"
            + markdown_table(self.counts, ["split_a", "split_b", "near", "exact", "total"])
        )


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PAIR_COLUMNS = (
    "kind",
    "similarity",
    "row_a",
    "bank_a",
    "split_a",
    "engine_a",
    "path_a",
    "row_b",
    "bank_b",
    "split_b",
    "engine_b",
    "path_b",
)


def find_leaks(
    banks: Any,
    *,
    threshold: float = 0.95,
    k: int = 10,
    factory: str = "Flat",
    device: str = "auto",
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: str | Path | None = None,
    progress: bool = False,
) -> LeakResult:
    """Near-duplicate (cosine >= ``threshold``) and exact (same sha256) pairs across splits/banks.

    Each row's ``k`` nearest neighbours are checked, so an image with more than ``k``
    near-copies reports its ``k`` closest; exact duplicates are found by sha256 whatever
    their number. Pairs inside one split of one bank are not leaks and are not reported.
    The threshold is the caller's; nothing is tuned here.

    Args:
        banks: a bank, bank path or list of them (same backbone).
        threshold: cosine similarity at or above which two images are near-duplicates.
        k: neighbours examined per image.
        out: run folder for config.json, metrics.json, leaks.md and pairs.csv.

    Returns:
        A :class:`LeakResult`.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise DataError(
            f"threshold={threshold} is not a cosine similarity; use a value in [-1, 1], e.g. 0.95"
        )
    index = (
        banks
        if isinstance(banks, NeighbourIndex)
        else NeighbourIndex(
            banks,
            factory=factory,
            metric="cosine",
            device=device,
            nprobe=nprobe,
            ef_search=ef_search,
            chunk_rows=chunk_rows,
            progress=progress,
        )
    )
    if index.metric != "cosine":
        raise DataError("find_leaks needs a cosine index (metric='cosine')")
    rows = index.rows
    n = len(rows)
    side = np.array(
        [f"{b}\x00{s}" for b, s in zip(rows.bank_id, rows.split, strict=False)], dtype=object
    )
    found: dict[tuple[int, int], tuple[str, float]] = {}

    k = min(int(k), n - 1) if n > 1 else 0
    if k >= 1:
        D, I = index.self_knn(k)
        qi, kj = np.nonzero((D >= threshold) & (I >= 0))
        a, b, sims = qi, I[qi, kj], D[qi, kj]
        cross = side[a] != side[b]
        for x, y, s in zip(a[cross], b[cross], sims[cross], strict=False):
            key = (int(min(x, y)), int(max(x, y)))
            found[key] = ("near", max(float(s), found.get(key, ("", -2.0))[1]))

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(rows.sha256):
        # only real content hashes: synthetic banks carry row ids ("row-000001") there
        if _SHA256.fullmatch(str(h)):
            by_sha[str(h).lower()].append(i)
    exact_pairs = []
    for members in by_sha.values():
        if len(members) < 2:
            continue
        for ai in range(len(members)):
            for bi in range(ai + 1, len(members)):
                x, y = members[ai], members[bi]
                if side[x] != side[y]:
                    exact_pairs.append((x, y))
    if exact_pairs:
        ea = np.array([p[0] for p in exact_pairs])
        eb = np.array([p[1] for p in exact_pairs])
        Xa, Xb = index._prepare(index.load_rows(ea)), index._prepare(index.load_rows(eb))
        for x, y, s in zip(ea, eb, (Xa * Xb).sum(axis=1), strict=False):
            found[(int(x), int(y))] = ("exact", float(s))

    pairs = []
    for (x, y), (kind, s) in sorted(found.items()):
        pairs.append(
            {
                "kind": kind,
                "similarity": s,
                "row_a": x,
                "bank_a": str(rows.bank[x]),
                "split_a": str(rows.split[x]),
                "engine_a": str(rows.engine[x]),
                "path_a": str(rows.path[x]),
                "row_b": y,
                "bank_b": str(rows.bank[y]),
                "split_b": str(rows.split[y]),
                "engine_b": str(rows.engine[y]),
                "path_b": str(rows.path[y]),
            }
        )
    tally: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for p in pairs:
        sa, sb = sorted([p["split_a"] or "(none)", p["split_b"] or "(none)"])
        tally[(sa, sb)][p["kind"]] += 1
    counts = [
        {
            "split_a": sa,
            "split_b": sb,
            "near": c["near"],
            "exact": c["exact"],
            "total": c["near"] + c["exact"],
        }
        for (sa, sb), c in sorted(tally.items())
    ]
    result = LeakResult(
        threshold=float(threshold),
        k=k,
        pairs=pairs,
        counts=counts,
        n_rows=n,
        banks=list(rows.bank_paths),
    )
    if out is not None:
        run = start_run(
            out,
            command="neighbours leaks",
            config={
                "banks": result.banks,
                "threshold": result.threshold,
                "k": k,
                "factory": index.factory,
                "metric": "cosine",
            },
        )
        write_json(run / "metrics.json", result.to_dict())
        (run / "leaks.md").write_text(result.markdown())
        with open(run / "pairs.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(_PAIR_COLUMNS))
            w.writeheader()
            for p in pairs:
                w.writerow({**p, "similarity": f"{p['similarity']:.6f}"})
        result.run_dir = run
    return result


# --------------------------------------------------------------------------- 2-D map


@dataclass
class EmbeddingMap:
    """A 2-D picture of the space (``embedding_map``).

    Attributes:
        coords: ``(m, 2)`` float32 coordinates. rows: ``(m,)`` index rows shown.
        engines, labels: ``(m,)`` of the shown rows. method: "pca" or "tsne".
        n_total: rows in the banks; subsampled: whether a seeded subsample is shown.
        explained_variance: PCA's explained variance ratio of the 2 axes (PCA only).
    """

    coords: np.ndarray
    rows: np.ndarray
    engines: np.ndarray
    labels: np.ndarray
    method: str
    n_total: int
    seed: int
    max_points: int
    explained_variance: list[float] | None = None

    @property
    def subsampled(self) -> bool:
        return len(self.rows) < self.n_total


_MAP_METHODS = ("pca", "tsne")


def embedding_map(
    banks: Any,
    *,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    normalise: bool = True,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> EmbeddingMap:
    """2-D PCA or t-SNE (sklearn) of the banks' rows, on a seeded subsample above a limit.

    Args:
        banks: a bank, bank path, list of them, or a :class:`NeighbourIndex`.
        method: ``"pca"`` or ``"tsne"`` (t-SNE runs on the first 50 PCA components).
        max_points: above this many rows a seeded uniform subsample is drawn (the figure
            says so); t-SNE is quadratic-ish in the number of points.
        seed: seeds the subsample, PCA's solver and t-SNE.
        normalise: L2-normalise rows first (the cosine geometry the index uses).
        perplexity: t-SNE perplexity (clipped below the number of points).
        max_iter: t-SNE optimisation steps (sklearn's default 1000; at least 250).

    Returns:
        An :class:`EmbeddingMap`.
    """
    from sklearn.decomposition import PCA

    if method not in _MAP_METHODS:
        raise UnknownNameError(f"unknown map method {method!r}; valid: {', '.join(_MAP_METHODS)}")
    source = banks._source if isinstance(banks, NeighbourIndex) else _Source(banks)
    n = len(source)
    if n < 3:
        raise DataError(f"a 2-D map needs at least 3 rows, the banks hold {n}")
    rng = np.random.default_rng(seed)
    rows = _sample_rows(n, max_points, rng)
    X = source.load_rows(rows).astype(np.float64)
    if normalise:
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    explained = None
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(X)
        explained = [float(v) for v in pca.explained_variance_ratio_]
    else:
        from sklearn.manifold import TSNE

        n_comp = min(50, X.shape[1], len(X))
        Xp = PCA(n_components=n_comp, random_state=seed).fit_transform(X) if X.shape[1] > 50 else X
        coords = TSNE(
            n_components=2,
            perplexity=min(perplexity, (len(X) - 1) / 3),
            init="pca",
            random_state=seed,
            max_iter=int(max_iter),
        ).fit_transform(Xp)
    return EmbeddingMap(
        coords=coords.astype(np.float32),
        rows=rows,
        engines=source.rows.engine[rows].astype(str),
        labels=source.rows.label[rows].astype(np.int8),
        method=method,
        n_total=n,
        seed=seed,
        max_points=int(max_points),
        explained_variance=explained,
    )


def write_maps(
    banks: Any,
    *,
    out: str | Path,
    methods: Sequence[str] = ("pca", "tsne"),
    max_points: int = 5000,
    seed: int = 0,
) -> tuple[Path, list[EmbeddingMap]]:
    """``embedding_map`` for each method, written as ``map_<method>.png`` + metrics.json.

    Returns:
        ``(run_dir, maps)``.
    """
    from . import _plots_neighbours as plots
    from .plots import save_figure

    source = _Source(banks)
    run = start_run(
        out,
        command="neighbours map",
        config={
            "banks": list(source.rows.bank_paths),
            "methods": list(methods),
            "max_points": max_points,
            "seed": seed,
        },
    )
    maps, metrics = [], {}
    for m in methods:
        emap = embedding_map(_source_data(source), method=m, max_points=max_points, seed=seed)
        save_figure(plots.embedding_scatter(emap), run / f"map_{m}.png")
        maps.append(emap)
        metrics[m] = {
            "points": int(len(emap.rows)),
            "n_total": emap.n_total,
            "subsampled": emap.subsampled,
            "explained_variance": emap.explained_variance,
            "engines": dict(Counter(emap.engines.tolist())),
        }
    write_json(run / "metrics.json", metrics)
    return run, maps


def _source_data(source: _Source) -> Any:
    return source.array if source.array is not None else source.banks


def write_query(
    records: list[list[NeighbourRecord]],
    *,
    out: str | Path,
    config: Mapping[str, Any],
) -> Path:
    """Write forensics results: neighbours.csv, neighbours.md and grid.png in a run folder."""
    from . import _plots_neighbours as plots
    from .plots import save_figure

    run = start_run(out, command="neighbours query", config=dict(config))
    flat = [r.to_dict() for recs in records for r in recs]
    cols = [
        "query",
        "rank",
        "similarity",
        "distance",
        "engine",
        "label",
        "split",
        "bank",
        "row",
        "path",
        "sha256",
        "image_path",
        "query_image",
    ]
    with open(run / "neighbours.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(flat)
    (run / "neighbours.md").write_text(
        markdown_table(
            flat, ["query", "rank", "similarity", "engine", "label", "split", "path"], digits=4
        )
    )
    write_json(run / "metrics.json", {"queries": len(records), "neighbours": flat})
    save_figure(plots.neighbour_grid(records), run / "grid.png")
    return run
