# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""FAISS helpers shared by the ``knn`` head and the neighbour analysis.

One place for what both need from FAISS: the device an index lives on, building an index
from a factory string with a clear error, runtime knobs, and the CPU search that sends big
query batches against an IVF-Flat index through FAISS's own ``contrib.big_batch_search``.

Cosine similarity is an inner product of L2-normalised rows. IVF indexes that encode
*residuals* (``IVF...,PQ...``, ``IVF...,SQ8``) are built with the L2 metric instead: on unit
vectors ``|q - x|^2 = 2 - 2 cos(q, x)``, so the ranking is the same, and residual codes
(and ``big_batch_search``'s handling of them) are exact for L2 only. :func:`search`
converts such distances back (``cos = 1 - d / 2``), so callers always see similarities.
faiss is imported inside the functions: importing facebank never loads it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from facebank.core.devices import resolve_device
from facebank.core.errors import DataError, UnknownNameError
from facebank.core.types import Metric

__all__ = [
    "METRICS",
    "Metric",
    "build_index",
    "check_finite",
    "drop_self",
    "gpu_available",
    "resolve_faiss_device",
    "search",
    "set_knobs",
    "train_sample_rows",
]

METRICS: tuple[str, ...] = ("cosine", "l2")
_DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
# big_batch_search pays off once each inverted list is read by several queries of a batch:
# it then compares a list with all its queries in one BLAS product (measured in
# tests/benchmarks/bench_ivfpq.py).
_BIG_BATCH_QUERIES_PER_LIST = 8
# IVF k-means needs ~39 points per centroid before FAISS warns; more costs time and the
# sample is held in RAM while k-means runs (40 x 65,536 lists x 768-d x 4 B = 8 GB at the
# top of the range, 126 MB at 1,024 lists). PQ codebooks want >= 256 x 39 points.
_TRAIN_PER_LIST = 40
_TRAIN_MIN = 10_000


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_faiss_device(device: str) -> str:
    """``"auto"`` -> ``"cuda:0"`` when faiss has GPU support and sees a GPU, else ``"cpu"``.

    ``"cuda"`` / ``"cuda:N"`` without a GPU-enabled faiss is an error naming the fix.
    """
    if str(device).strip().lower() == "mps":
        raise UnknownNameError(f"unknown FAISS device {device!r}; valid: {_DEVICES}")
    dev = resolve_device(
        device,
        gpu_available=gpu_available,
        gpu_fix="this faiss build has no GPU support or sees no GPU: install faiss-gpu "
        "(pip install 'facebank[gpu]') on a CUDA machine, or use device='cpu'",
    )
    return "cuda:0" if dev == "cuda" else dev


def _faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise UnknownNameError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _ivf(index: Any) -> Any | None:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def build_index(dim: int, factory: str, metric: str) -> Any:
    """An empty FAISS index for ``factory`` (``"Flat"``, ``"IVF1024,Flat"``, ``"IVF65536,PQ64"``).

    ``metric="cosine"`` gives an inner-product index for unit rows, except for IVF indexes
    with residual codes, which get L2 (see the module docstring; :func:`search` returns
    similarities either way). An invalid string raises ``UnknownNameError`` with examples.
    """
    import faiss

    mt = _faiss_metric(metric)
    try:
        index = faiss.index_factory(int(dim), str(factory), mt)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].split(":")[-1].strip() if str(exc) else ""
        raise UnknownNameError(
            f"FAISS cannot build index {factory!r} for {dim}-d features ({reason}); valid "
            "examples: 'Flat', 'IVF1024,Flat', 'HNSW32', 'IVF4096,PQ64' (see the FAISS index "
            "factory docs)"
        ) from None
    ivf = _ivf(index)
    if metric == "cosine" and ivf is not None and bool(getattr(ivf, "by_residual", False)):
        index = faiss.index_factory(int(dim), str(factory), faiss.METRIC_L2)
        ivf = _ivf(index)
    if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
        # the factory turns on polysemous training, which only serves polysemous
        # filtering (polysemous_ht, never set here) and makes PQ training ~20x slower
        faiss.downcast_index(ivf).do_polysemous_training = False
    return index


def train_sample_rows(
    index: Any,
    n_rows: int,
    *,
    per_list: int = _TRAIN_PER_LIST,
    minimum: int = _TRAIN_MIN,
    factory: str = "",
) -> int:
    """Rows to train ``index`` on: ``per_list`` per IVF list, at least ``minimum`` (PQ and
    HNSW codebooks), at most ``n_rows``.

    Raises ``DataError`` when an IVF index has more lists than there are rows.
    """
    ivf = _ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    if nlist and n_rows < nlist:
        raise DataError(
            f"index {factory or 'IVF'!r} has {nlist} lists but only {n_rows} rows to train on; "
            f"use fewer lists (e.g. 'IVF{max(1, int(np.sqrt(n_rows)))},Flat') or 'Flat'"
        )
    return int(min(n_rows, max(minimum, per_list * nlist)))


def set_knobs(
    index: Any,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    k_factor: int | None = None,
    gpu: bool = False,
    strict: bool = True,
    factory: str = "",
) -> None:
    """Set ``nprobe`` (IVF), ``efSearch`` (HNSW) and ``k_factor`` (re-rank depth of a
    refine index, ``...,RFlat`` / ``...,Refine(SQ8)``) through FAISS's ``ParameterSpace``.

    With ``strict`` a knob the index does not have raises ``DataError`` naming the index
    kinds it belongs to; without it the knob is ignored (``factory="auto"`` may pick Flat).
    """
    import faiss

    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    knobs = {
        "nprobe": ("nprobe", "IVF", "IVF1024,Flat"),
        "efSearch": ("ef_search", "HNSW", "HNSW32"),
        "k_factor_rf": ("k_factor", "refine", "IVF1024,PQ64,RFlat"),
    }
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", k_factor)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError:
            if not strict:
                continue
            knob, kind, example = knobs[name]
            raise DataError(
                f"{knob}={value} does not apply to index {factory or 'this'!r}; it is a knob of "
                f"{kind} indexes - drop it or use a factory such as {example!r}"
            ) from None


def check_finite(X: np.ndarray, start: int = 0) -> None:
    """Raise ``DataError`` naming the first row (numbered from ``start``) with NaN or inf."""
    # row sums are NaN/inf exactly when a row holds one (features are far from overflow),
    # and cost n floats instead of an (n, D) boolean temporary
    finite = np.isfinite(X.sum(axis=1))
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite)[0])
        raise DataError(f"row {bad} has NaN or infinite features; re-embed or drop that row")


def _big_batch_applies(index: Any, nq: int) -> bool:
    import faiss

    ivf = faiss.downcast_index(index)
    # IVF-Flat only: big_batch_search decodes PQ/SQ lists to floats and multiplies them,
    # while FAISS's own PQ search reads one table entry per code byte (cheaper per row)
    return type(ivf) is faiss.IndexIVFFlat and nq * int(ivf.nprobe) >= (
        _BIG_BATCH_QUERIES_PER_LIST * int(ivf.nlist)
    )


def _knn_clipped(xq: np.ndarray, xb: np.ndarray, k: int, metric: int) -> tuple[Any, Any]:
    import faiss

    # a list shorter than k: ask for what it holds (big_batch_search maps ids through the
    # list, where a -1 "not found" would wrongly pick the list's last row)
    return faiss.knn(xq, xb, min(int(k), len(xb)), metric=metric)


def search(index: Any, X: np.ndarray, k: int, *, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(D, I)`` of the ``k`` nearest rows for queries ``X`` (float32, prepared).

    On the CPU, a batch that reads each list of an IVF-Flat index several times goes
    through ``faiss.contrib.big_batch_search`` (each list meets all its queries in one BLAS
    product; same lists, exact distances, so the same neighbours up to float rounding).
    ``D`` is a cosine similarity (descending) for ``metric="cosine"``,
    a squared L2 distance (ascending) for ``"l2"``; ``I`` is ``-1`` where an approximate
    index found fewer than ``k`` rows.
    """
    import faiss

    if _big_batch_applies(index, len(X)):
        from faiss.contrib.big_batch_search import big_batch_search

        # big_batch_search prints a progress line per list at every verbosity
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            D, I = big_batch_search(faiss.downcast_index(index), X, int(k), knn=_knn_clipped)
    else:
        D, I = index.search(X, int(k))
    if metric == "cosine" and index.metric_type == faiss.METRIC_L2:
        D = 1.0 - D / 2.0  # unit rows: |q - x|^2 = 2 - 2 cos
        D[I < 0] = -np.inf
    return D, I


def drop_self(D: np.ndarray, I: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` results per row, remove the row itself (or, if absent, the last result).

    ``own`` is ``(n,)``: the index row of each query.
    """
    n, kk = I.shape
    is_self = I == own[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, kk - 1] = True
    # keep the first occurrence only (a row appears at most once in FAISS results)
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    return D[keep].reshape(n, kk - 1), I[keep].reshape(n, kk - 1)
