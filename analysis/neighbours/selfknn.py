"""Exact self-kNN of a flat float32 matrix, each block product used for rows and columns.

The similarity (or distance) of rows ``i`` and ``j`` is the same number seen from either
side, so the blocks ``(a, b)`` with ``b >= a`` suffice: the product ``X_a X_b^T`` feeds
the heaps of ``a``'s rows and, transposed, those of ``b``'s rows - half the GEMM FLOPs
of searching every row against the index. The heaps are FAISS's own (``ResultHeap``),
as in its search. A worker thread feeds the heaps from one product while the next
product is computed (two product buffers and one transpose buffer of
``SELF_BLOCK_ROWS``^2 floats: 108 MB).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["SELF_BLOCK_ROWS", "symmetric_self_knn"]

# Exact self-search block: three 3072 x 3072 float32 buffers (36 MB each) at a time;
# sgemm runs as fast at 3072 as at 4096 on a 2-core AVX2 CPU.
SELF_BLOCK_ROWS = 3072


def symmetric_self_knn(
    X: np.ndarray,
    k: int,
    *,
    block_rows: int = SELF_BLOCK_ROWS,
    cosine: bool,
    exclude_self: bool,
    step: Callable[[], object] = lambda: None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(D, I)``: each row's ``k`` nearest rows of ``X`` (itself excluded on request).

    Args:
        X: ``(n, d)`` float32 rows (unit rows for ``cosine``).
        k: neighbours per row.
        block_rows: rows per block of the products.
        cosine: inner products, descending (else squared L2 distances, ascending,
            clamped at 0 as FAISS computes them).
        exclude_self: mask each row's own entry on the diagonal blocks, so exact
            duplicates stay neighbours.
        step: called once per block pair done (a progress bar's advance).
    """
    import faiss

    n = X.shape[0]
    sq = np.empty(0, np.float32) if cosine else np.einsum("ij,ij->i", X, X)
    heap = faiss.ResultHeap(n, k, keep_max=cosine)
    B = min(block_rows, n)
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
    with ThreadPoolExecutor(1) as worker, ThreadPoolExecutor(2) as pool:
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
