# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""heads._faiss: the FAISS helpers the knn head and the neighbour analysis share."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from facebank.core.errors import DataError, UnknownNameError
from facebank.heads import _faiss


@pytest.fixture(autouse=True)
def one_thread():
    # FAISS's OpenMP threads spin while waiting; on a shared 2-core machine tiny k-means
    # runs take seconds with 2 threads and milliseconds with 1
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def data(n=3000, nq=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d)).astype(np.float32),
        rng.standard_normal((nq, d)).astype(np.float32),
    )


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8", "IVF32,SQ8"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_finds_what_faiss_ivf_search_finds(factory, metric):
    X, Q = data()
    if metric == "cosine":
        faiss.normalize_L2(X)
        faiss.normalize_L2(Q)
    index = _faiss.build_index(32, factory, metric)
    index.train(X)
    index.add(X)
    _faiss.set_knobs(index, nprobe=4)
    # 500 queries x 4 probes >= 8 x 32 lists: IVF-Flat goes through big_batch_search; PQ and
    # SQ lists keep FAISS's own search (table lookups beat decoding them for a BLAS product)
    assert _faiss._big_batch_applies(index, len(Q)) == factory.endswith("Flat")
    for k in (1, 10, 150):  # 150 > some lists' sizes: results merge across lists
        D_ref, I_ref = index.search(Q, k)
        if metric == "cosine" and index.metric_type == faiss.METRIC_L2:
            D_ref = 1 - D_ref / 2
        D, I = _faiss.search(index, Q, k, metric=metric)
        assert D.shape == I.shape == (500, k)
        assert np.allclose(D, D_ref, atol=1e-3)
        same = [set(a) == set(b) for a, b in zip(I, I_ref, strict=True)]
        assert np.mean(same) > 0.98  # only float-rounding ties may swap at the k-th place


def test_big_batch_search_fills_with_minus_one_like_faiss():
    X, _ = data(n=200, d=8, seed=1)
    index = _faiss.build_index(8, "IVF16,Flat", "l2")
    index.train(X)
    index.add(X)
    index.nprobe = 1  # one list of ~12 rows cannot fill k = 40
    Q = np.repeat(X[:50], 4, axis=0)  # 200 queries x 1 probe >= 8 x 16 lists: big batch
    assert _faiss._big_batch_applies(index, len(Q))
    D_ref, I_ref = index.search(Q, 40)
    D, I = _faiss.search(index, Q, 40, metric="l2")
    assert ((I == -1) == (I_ref == -1)).all() and (I == -1).any()
    assert (np.sort(I, axis=1) == np.sort(I_ref, axis=1)).all()


def test_cosine_residual_indexes_are_built_on_l2_and_searched_as_similarities():
    assert _faiss.build_index(16, "IVF8,PQ4", "cosine").metric_type == faiss.METRIC_L2
    assert _faiss.build_index(16, "IVF8,Flat", "cosine").metric_type == faiss.METRIC_INNER_PRODUCT
    assert _faiss.build_index(16, "Flat", "cosine").metric_type == faiss.METRIC_INNER_PRODUCT
    X, Q = data(n=2000, nq=20, d=16)
    faiss.normalize_L2(X)
    faiss.normalize_L2(Q)
    index = _faiss.build_index(16, "IVF8,PQ8", "cosine")
    index.train(X)
    index.add(X)
    index.nprobe = 8
    D, I = _faiss.search(index, Q, 5, metric="cosine")
    exact = (Q @ X.T)[np.arange(20)[:, None], I]
    assert (np.diff(D, axis=1) <= 1e-6).all()  # similarities, descending
    assert np.abs(D - exact).max() < 0.1  # PQ8 of 16-d rows: a small quantisation error


def test_bad_factory_metric_knob_and_device_say_what_is_valid():
    with pytest.raises(UnknownNameError, match="valid examples"):
        _faiss.build_index(16, "NotAnIndex", "cosine")
    with pytest.raises(UnknownNameError, match="cosine, l2"):
        _faiss.build_index(16, "Flat", "manhattan")
    with pytest.raises(DataError, match="knob of IVF"):
        _faiss.set_knobs(_faiss.build_index(16, "Flat", "l2"), nprobe=4)
    _faiss.set_knobs(_faiss.build_index(16, "Flat", "l2"), nprobe=4, strict=False)
    with pytest.raises(UnknownNameError, match="cuda:N"):
        _faiss.resolve_faiss_device("tpu")
    with pytest.raises(DataError, match="64 lists but only 10 rows"):
        _faiss.train_sample_rows(_faiss.build_index(16, "IVF64,Flat", "l2"), 10)


def test_drop_self_removes_the_row_or_the_last_result():
    D = np.array([[1.0, 0.9, 0.8], [1.0, 1.0, 0.7]], dtype=np.float32)
    I = np.array([[0, 5, 6], [7, 8, 9]])  # row 1's own id (1) is crowded out by duplicates
    D2, I2 = _faiss.drop_self(D, I, np.array([0, 1]))
    assert I2.tolist() == [[5, 6], [7, 8]]
    assert np.array_equal(D2, np.array([[0.9, 0.8], [1.0, 1.0]], dtype=np.float32))
