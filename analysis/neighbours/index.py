# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""``NeighbourIndex``: a FAISS index over feature banks, with the banks' row metadata.

A thin wrapper around a FAISS index described by a factory string (``"Flat"`` exact,
``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF65536,PQ64"``...) with runtime knobs (``nprobe``,
``ef_search``) set apart. Banks are streamed in chunks both for the add and for the
self-search. Indexes that need training train on a seeded sample; rows are then added
chunk by chunk, so building never holds more than one chunk of features. With
``on_disk=DIR`` an IVF index is added partition by partition into shard files that are
merged into FAISS's on-disk inverted lists (``faiss.contrib.ondisk.merge_ondisk``): the
codes live in a memory-mapped file and memory stays bounded whatever the row count. The
exact self-search on the CPU works on the index's own rows block by block and uses each
block product twice - for its rows and, transposed, for its columns - so it costs half of
``ntotal`` searches. Big query batches against an IVF index on the CPU go through
``faiss.contrib.big_batch_search`` (``facebank.heads._faiss.search``).

Conventions: ``metric="cosine"`` searches inner products of L2-normalised rows, so
``D`` is a cosine *similarity* (higher = closer); ``metric="l2"`` gives *squared*
Euclidean distances (lower = closer), as FAISS does. No threshold here is tuned on
any split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError, ImageDecodeError
from facebank.core.stores import is_url, local_path
from facebank.embed.backbones.compat import backbone_id
from facebank.embed.inputs.datasets import decode_path, encode_path
from facebank.heads._faiss import (
    METRICS,
    build_index,
    check_finite,
    drop_self,
    resolve_faiss_device,
    search,
    set_knobs,
    train_sample_rows,
)

from . import selfknn
from ._source import FeatureSource, IndexRows

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "METRICS",
    "NeighbourIndex",
    "NeighbourRecord",
]

# 64k rows x 768-d float32 is 200 MB: large enough that FAISS's blocked GEMM search runs
# at full speed, small enough that two chunks sit beside a big index.
DEFAULT_CHUNK_ROWS = 65536
# Rows per read from a bank: reads decode into temporaries several times their size,
# so they are kept small and converted straight into the float32 chunk buffer.
_READ_ROWS = 8192

log = logging.getLogger(__name__)
# A neighbour this close is the query itself (its own row, or the same pixels): float32
# cosine of a unit vector with itself is 1 within ~1e-6.
_SAME_FEATURES = 1.0 - 1e-5
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


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
        query_file: the query's file (the image given, or a banked row's path), else
            ``None`` (feature queries).
        self_match: why the neighbour is the query itself, ``""`` when it is not:
            ``"same file"`` (same sha256 as the query's file) or ``"same features"``
            (identical after normalisation: a re-encoded copy of the same pixels, or the
            query's own row).
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
    query_file: str | None = None
    self_match: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        k_factor: refine runtime knob (``"...,RFlat"``, ``"...,Refine(SQ8)"``): the
            approximate index returns ``k * k_factor`` candidates that the refine codes
            re-rank (FAISS's default 1 re-ranks only the ``k`` found).
        chunk_rows: rows read from the bank at a time, for the add and the self-search.
        seed: seeds the IVF/PQ training sample.
        on_disk: a folder for an IVF index's inverted lists: rows are added partition by
            partition (``chunk_rows`` each) into shard files merged into FAISS's on-disk
            inverted lists (``index.ivfdata``), memory-mapped at search time. ``None``
            keeps the index in RAM.
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
        k_factor: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        seed: int = 0,
        gpu_float16: bool = False,
        on_disk: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        self._common(data, factory, metric, nprobe, ef_search, k_factor, chunk_rows, progress)
        self.seed = int(seed)
        self.device = resolve_faiss_device(device)
        # absolute: index.faiss records where its index.ivfdata is, read from any cwd
        self.on_disk = None if on_disk is None else Path(on_disk).absolute()
        cpu_index = build_index(self.dim, self.factory, metric)
        if self.on_disk is not None:
            self._check_on_disk(cpu_index)
        if not cpu_index.is_trained:
            self._train(cpu_index)
        if self.on_disk is not None:
            self.index = self._add_on_disk(cpu_index)
        else:
            self.index = self._to_device(cpu_index, gpu_float16=gpu_float16)
        self._set_knobs()
        if self.on_disk is None:
            self._add_all()

    def _common(
        self,
        data: Any,
        factory: str,
        metric: str,
        nprobe: int | None,
        ef_search: int | None,
        k_factor: int | None,
        chunk_rows: int,
        progress: bool,
    ) -> None:
        if int(chunk_rows) < 1:
            raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.factory = str(factory)
        self.metric = metric
        self.chunk_rows = int(chunk_rows)
        self.progress = progress
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.k_factor = k_factor
        self._source = FeatureSource(data)
        self.dim = self._source.dim
        self.backbone = self._source.backbone
        self.view = self._source.view

    @classmethod
    def open(
        cls,
        folder: str | Path,
        data: Any,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        progress: bool = False,
    ) -> NeighbourIndex:
        """An index written by ``facebank neighbours index`` (:func:`write_index`), over
        the banks it was built from, searched on the CPU; on-disk lists stay on disk.

        Args:
            folder: the run folder (or its ``index/`` folder).
            data: the same banks, in the same order, as when the index was built.
            nprobe, ef_search, k_factor, chunk_rows, progress: as for the constructor.

        Raises:
            DataError: no index there, or banks that are not the ones it was built from.
        """
        import json

        import faiss

        folder = Path(folder)
        run = folder.parent if folder.name == "index" else folder
        path = run / "index" / "index.faiss"
        if not path.is_file() or not (run / "metrics.json").is_file():
            raise DataError(
                f"{str(folder)!r} holds no index/index.faiss and metrics.json; give the run "
                "folder written by `facebank neighbours index BANK --out DIR`"
            )
        made = json.loads((run / "metrics.json").read_text())
        self = cls.__new__(cls)
        self._common(
            data, made["factory"], made["metric"], nprobe, ef_search, k_factor, chunk_rows, progress
        )
        # by folder name: a bank may be given by another path (or moved) since
        built_from = [Path(str(b)).name for b in made.get("banks", [])]
        given = [Path(str(b)).name for b in self._source.bank_paths]
        if built_from != given or int(made["ntotal"]) != len(self._source):
            raise DataError(
                f"the index in {str(run)!r} was built from {made.get('banks')} "
                f"({made['ntotal']} rows), not from {self._source.bank_paths} "
                f"({len(self._source)} rows); give those banks, or build a new index"
            )
        self.seed = int(json.loads((run / "config.json").read_text()).get("seed", 0))
        self.device = "cpu"
        self.on_disk = path.parent if made.get("on_disk") else None
        # ONDISK_SAME_DIR: the lists are looked up beside index.faiss, wherever it moved
        self.index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
        self._set_knobs()
        return self

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
            f"ntotal={self.ntotal}, dim={self.dim}, device={self.device!r}"
            + (f", on_disk={str(self.on_disk)!r})" if self.on_disk is not None else ")")
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """A float32 C-contiguous copy of queries, L2-normalised for cosine."""
        import faiss

        X = np.array(X, dtype=np.float32, order="C", copy=True)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise DataError(
                f"queries must have shape (n, {self.dim}) to match the index, got {X.shape}"
            )
        check_finite(X, 0)
        if self.metric == "cosine":
            faiss.normalize_L2(X)
        return X

    def _train(self, index: Any) -> None:
        import faiss

        n = len(self._source)
        size = train_sample_rows(index, n, factory=self.factory)
        with contextlib.suppress(RuntimeError):  # not an IVF: nothing to seed
            faiss.extract_index_ivf(index).cp.seed = self.seed
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
        set_knobs(
            self.index,
            nprobe=self.nprobe,
            ef_search=self.ef_search,
            k_factor=self.k_factor,
            gpu=self.device != "cpu",
            factory=self.factory,
        )

    def _check_on_disk(self, index: Any) -> None:
        import faiss

        try:
            faiss.extract_index_ivf(index)
        except RuntimeError:
            raise DataError(
                f"on_disk needs an IVF index (e.g. 'IVF4096,PQ64'), got {self.factory!r}; "
                "drop on_disk or use an IVF factory"
            ) from None
        if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
            # merge_ondisk moves the IVF lists only: the re-rank copy would be lost
            raise DataError(
                f"on_disk keeps an IVF index's lists on disk, but {self.factory!r} also holds "
                "a re-rank copy of every row that it cannot; drop on_disk or the refine step"
            )
        if self.device != "cpu":
            raise DataError("on_disk indexes are searched on the CPU; use device='cpu'")
        if self.on_disk.exists() and any(self.on_disk.iterdir()):
            raise DataError(
                f"on_disk folder {str(self.on_disk)!r} is not empty; give a new folder "
                "(the index's inverted lists are written there)"
            )

    def _add_on_disk(self, trained: Any) -> Any:
        """Add the rows partition by partition into shards, merged into on-disk lists.

        Each partition (``chunk_rows`` rows) is added to an empty copy of the trained
        index and written as a shard file; ``merge_ondisk`` memory-maps the shards and
        copies their lists into ``on_disk/index.ivfdata``. Peak memory: one chunk of
        features plus one shard's codes. The shards are removed afterwards.
        """
        import faiss
        from faiss.contrib.ondisk import merge_ondisk

        self.on_disk.mkdir(parents=True, exist_ok=True)
        shard_dir = Path(tempfile.mkdtemp(prefix="shards-", dir=self.on_disk))
        try:
            shards = []
            for start, _stop, X in self._prepared_chunks("indexing"):
                shard = faiss.clone_index(trained)
                shard.add_with_ids(X, np.arange(start, start + len(X), dtype=np.int64))
                shards.append(str(shard_dir / f"shard_{len(shards):06d}.index"))
                faiss.write_index(shard, shards[-1])
                del shard
            merge_ondisk(trained, shards, str(self.on_disk / "index.ivfdata"))
            faiss.write_index(trained, str(self.on_disk / "index.faiss"))
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)
        return trained

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
                    check_finite(X, start)
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
                check_finite(buf[start:stop], start)
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
        return search(self.index, X, k, metric=self.metric)

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
        n = self.ntotal
        D = np.empty((n, k), dtype=np.float32)
        I = np.empty((n, k), dtype=np.int64)
        for start, stop, Dc, Ic in self.iter_self_knn(k, exclude_self=exclude_self):
            D[start:stop], I[start:stop] = Dc, Ic
        return D, I

    def iter_self_knn(
        self, k: int, *, exclude_self: bool = True
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """:meth:`self_knn` chunk by chunk: ``(start, stop, D, I)`` for rows ``start:stop``.

        Approximate indexes search one chunk of rows at a time, so memory is one chunk of
        features and its results, whatever ``ntotal`` - what analyses over 10^7 rows use.
        The exact CPU search (``"Flat"``) computes all rows at once (its index already
        holds every row) and yields its result in chunks.
        """
        k = self._check_k(k, exclude_self=exclude_self)
        if self._flat_on_cpu():
            D, I = self._self_knn_symmetric(k, exclude_self=exclude_self)
            for start in range(0, self.ntotal, self.chunk_rows):
                stop = min(start + self.chunk_rows, self.ntotal)
                yield start, stop, D[start:stop], I[start:stop]
            return
        kk = k + 1 if exclude_self else k
        for start, stop, X in self._prepared_chunks("self-search"):
            Dc, Ic = self._search(X, kk)
            if exclude_self:
                Dc, Ic = drop_self(Dc, Ic, np.arange(start, stop))
            yield start, stop, Dc, Ic

    def _flat_on_cpu(self) -> bool:
        import faiss

        return self.device == "cpu" and type(faiss.downcast_index(self.index)) in (
            faiss.IndexFlat,
            faiss.IndexFlatIP,
            faiss.IndexFlatL2,
        )

    def _self_knn_symmetric(self, k: int, *, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        """Exact self-kNN over a CPU flat index (:func:`.selfknn.symmetric_self_knn`)."""
        import faiss

        index = faiss.downcast_index(self.index)
        n, d = self.ntotal, self.dim
        X = faiss.rev_swig_ptr(index.codes.data(), n * d * 4).view(np.float32).reshape(n, d)
        B = min(selfknn.SELF_BLOCK_ROWS, n)
        n_blocks = -(-n // B)
        with self._progress("self-search", total=n_blocks * (n_blocks + 1) // 2) as step:
            return selfknn.symmetric_self_knn(
                X,
                k,
                block_rows=B,
                cosine=self.metric == "cosine",
                exclude_self=exclude_self,
                step=step,
            )

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
        failures: list[tuple[str, str]] | None = None,
    ) -> list[list[NeighbourRecord]]:
        """Nearest banked images of each query, as records (for notebooks and the CLI).

        Args:
            queries: features ``(n, D)``, or image files (or URLs), embedded with the
                banks' backbone and view (``embed.encode_images``).
            k: neighbours per query.
            names: display names of feature queries (default ``"query i"``; an image
                query is named by its file, as ``encode_path`` writes names).
            device, weights: passed to the backbone when embedding image files.
            failures: where given, an image that cannot be read or decoded is appended
                as ``(name, reason)`` and left out, as ``embed`` does; otherwise it is
                an error.

        Returns:
            One list of ``k`` :class:`NeighbourRecord` per query that was searched,
            nearest first.
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
            X = self.embed_images(paths, device=device, weights=weights, failures=failures)
            if failures:
                bad = {p for p, _ in failures}
                paths = [p for p in paths if encode_path(p) not in bad]
            labels = list(names) if names is not None else [encode_path(p) for p in paths]
            images = paths
        D, I = self.search(X, k)
        shas = [_file_sha256(p) if p else "" for p in images]  # (read once more: small)
        return self._records(D, I, labels, images, files=images, shas=shas)

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
            D, I = drop_self(D, I, np.asarray(rows))
        labels = [f"row {r} ({self.rows.engine[r]}: {self.rows.path[r]})" for r in rows]
        images = [_str_or_none(self.rows.image_path(r)) for r in rows]
        files = [decode_path(str(self.rows.path[r])) for r in rows]  # OS names, as for images
        shas = [str(self.rows.sha256[r]) for r in rows]
        return self._records(D, I, labels, images, files=files, shas=shas)

    def embed_images(
        self,
        paths: Sequence[str | Path],
        *,
        device: str = "auto",
        weights: str | None = None,
        failures: list[tuple[str, str]] | None = None,
    ) -> np.ndarray:
        """Features ``(n, D)`` of image files, embedded with the banks' backbone and view
        (what :meth:`query` searches with; e.g. to score the same images with a head).

        ``failures``: as in :meth:`query` (the rows returned are the images that did not
        fail, in order)."""
        paths = [str(p) for p in paths]
        if not paths:
            raise DataError("no query images given; pass image files or use --rows")
        missing = [p for p in paths if not is_url(p) and not Path(local_path(p)).is_file()]
        if missing and failures is None:
            raise ImageDecodeError(
                f"query image {encode_path(missing[0])!r} does not exist; give an existing "
                "image file"
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
        if enc.failures and failures is not None:
            failures.extend((encode_path(p), reason) for p, reason in enc.failures)
        elif enc.failures:
            path, reason = enc.failures[0]
            raise ImageDecodeError(
                f"query image {encode_path(path)!r} could not be decoded ({reason}); give a "
                "readable image file (JPEG, PNG, WebP, ...)"
            )
        return np.asarray(enc.features, dtype=np.float32)

    def _records(
        self,
        D: np.ndarray,
        I: np.ndarray,
        labels: Sequence[str],
        images: Sequence[str | None],
        *,
        files: Sequence[str | None] | None = None,
        shas: Sequence[str] | None = None,
    ) -> list[list[NeighbourRecord]]:
        out = []
        files = files if files is not None else [None] * len(labels)
        shas = shas if shas is not None else [""] * len(labels)
        for q, (drow, irow) in enumerate(zip(D, I, strict=False)):
            recs = []
            for rank, (d, i) in enumerate(zip(drow, irow, strict=False), start=1):
                if i < 0:
                    continue
                sim = float(d) if self.metric == "cosine" else None
                sha = str(self.rows.sha256[i])
                if shas[q] and _SHA256.fullmatch(shas[q]) and sha.lower() == shas[q].lower():
                    match = "same file"
                elif (sim is not None and sim >= _SAME_FEATURES) or (sim is None and d <= 0):
                    match = "same features"
                else:
                    match = ""
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
                        query_file=files[q],
                        self_match=match,
                    )
                )
            out.append(recs)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the FAISS index to ``folder/index.faiss`` (``faiss.read_index`` reads it).

        An on-disk index is already written (``on_disk/index.faiss`` + ``index.ivfdata``):
        ``folder`` must then be its own folder. A GPU index is copied to the CPU first.
        Returns the ``index.faiss`` path.
        """
        import faiss

        folder = Path(folder).absolute()
        if self.on_disk is not None:
            if folder != self.on_disk:
                raise DataError(
                    f"this index lives on disk in {str(self.on_disk)!r}; its files are "
                    f"already written there, not in {str(folder)!r}"
                )
            return self.on_disk / "index.faiss"
        folder.mkdir(parents=True, exist_ok=True)
        cpu = self.index if self.device == "cpu" else faiss.index_gpu_to_cpu(self.index)
        faiss.write_index(cpu, str(folder / "index.faiss"))
        return folder / "index.faiss"

    def load_rows(self, rows: Sequence[int]) -> np.ndarray:
        """Raw (not normalised) float32 features of the given rows, ``(len(rows), D)``."""
        return self._source.load_rows(rows)

    def iter_chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream the raw rows as ``(start, stop, X)`` chunks of ``chunk_rows``."""
        return self._source.iter_chunks(self.chunk_rows)


def _str_or_none(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _file_sha256(path: str) -> str:
    """sha256 of a query image (a local file or a URL), as the bank records its rows'."""
    from facebank.embed.inputs.images import open_input

    try:
        return open_input(path)[1]
    except ImageDecodeError:  # gone since it was embedded: no same-file match
        return ""
