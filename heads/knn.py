"""``knn``: a FAISS k-nearest-neighbour vote over the training rows.

Cosine similarity on L2-normalised features by default (``metric="cosine"``: rows are
normalised, the index is inner-product); ``metric="l2"`` uses squared Euclidean
distance on the raw features. The index is described by a FAISS factory string
(``"Flat"`` exact; ``"IVF1024,Flat"``, ``"HNSW32"`` approximate) with ``nprobe`` /
``ef_search`` set apart. The default ``factory="auto"`` is exact ``Flat`` below
``AUTO_EXACT_ROWS`` (50,000) training rows and ``IVF{nlist},Flat`` above, with ``nlist`` the
power of two nearest ``sqrt(n)`` and ``nprobe = nlist / 4`` (a quarter of the rows scanned;
see ``auto_factory``). The chosen index is kept as ``factory_`` / ``nprobe_``. The index is
saved as FAISS's own serialised bytes (a data format, not code) inside
``weights.safetensors``.

Large query batches against an IVF index go through FAISS's ``contrib.big_batch_search``
(``facebank.heads._faiss.search``): each inverted list is compared with all the queries
that probe it in one BLAS product, instead of every query reading its lists on its own
(13x faster for 10,000 queries at nprobe 16 of 256 lists on 100k x 768 rows; the same
neighbours; docs/neighbours.md).

``decision_function`` = ``log((a + 0.5) / (r + 0.5))`` where ``a`` and ``r`` are the
(weighted) numbers of AI and real neighbours: a smoothed vote log-odds, 0 at a tie.
``score_samples`` = mean similarity to the k neighbours (cosine) or minus the mean
squared distance (l2): higher = more normal; ``ood_score = -score_samples``;
``outlier_decision_function = score_samples - offset_`` with ``offset_`` the
``ood_contamination`` quantile over training rows (self-matches excluded).
"""

from __future__ import annotations

import contextlib
from numbers import Real
from typing import Any, ClassVar

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from facebank.core.errors import DataError, HeadError, UnknownNameError

from ._faiss import build_index, search, set_knobs, train_sample_rows
from ._torch import fixed_blocks
from .base import AT_LEAST_ONE, SEED, BaseHead

__all__ = ["KNNHead"]

# Rows used to estimate offset_; a self-kNN over a 1M-row bank would dominate fit time.
_OFFSET_ROWS = 512
# IVF k-means runs on this many sampled rows per list (FAISS samples 256 per list itself).
_TRAIN_PER_LIST = 64
# factory="auto": exact search below this many training rows, IVF above.
AUTO_EXACT_ROWS = 50_000


def auto_factory(n_rows: int) -> tuple[str, int | None]:
    """The ``(factory, nprobe)`` that ``factory="auto"`` picks for ``n_rows`` training rows.

    Exact ``"Flat"`` below :data:`AUTO_EXACT_ROWS`; above, ``"IVF{nlist},Flat"`` with
    ``nlist`` the power of two nearest ``sqrt(n_rows)`` (256 at 100k rows, 1024 at 1M) and
    ``nprobe = nlist // 4``. On the heads benchmark's unstructured Gaussian data (the
    hardest case for an IVF) that finds 93% of the exact 10 nearest neighbours at 100k rows
    and moves the vote's AUC by about 0.001; real embeddings cluster, which raises recall.
    """
    if n_rows < AUTO_EXACT_ROWS:
        return "Flat", None
    nlist = 2 ** round(np.log2(np.sqrt(n_rows)))
    return f"IVF{nlist},Flat", nlist // 4


class KNNHead(BaseHead):
    """FAISS k-NN vote (see the module docstring).

    Parameters
    ----------
    k : int, default=10
        Neighbours per query, >= 1.
    metric : {"cosine", "l2"}, default="cosine"
        ``"cosine"``: L2-normalised rows, inner product; ``"l2"``: squared Euclidean
        distance on the raw features.
    factory : str, default="auto"
        ``"auto"`` (exact below 50,000 training rows, IVF above: see
        :func:`auto_factory`) or a FAISS index factory string, e.g. ``"Flat"`` (always
        exact), ``"IVF256,Flat"``, ``"HNSW32"``.
    weights : {"uniform", "similarity"}, default="uniform"
        ``"uniform"`` vote, or each vote weighted by ``exp((s - 1) / 0.1)`` of its cosine
        similarity (``exp(-d / median)`` for l2).
    nprobe : int or None, default=None
        IVF cells visited at search time, >= 1 (``None`` = FAISS's default of 1, or
        ``nlist / 4`` for an index ``"auto"`` chose).
    ef_search : int or None, default=None
        HNSW search depth, >= 1 (``None`` = FAISS's default).
    ood_contamination : float, default=0.01
        Fraction of training rows below ``offset_``, in [0, 0.5].
    device : str, default="auto"
        ``"auto"`` uses a FAISS GPU index when faiss has GPU support and cuda is present.
    seed : int, default=0
        Seeds FAISS's k-means for IVF factories and the rows ``offset_`` is taken on.

    Attributes
    ----------
    index_ : faiss.Index
        The index of the training rows (normalised for ``metric="cosine"``).
    labels_ : ndarray of shape (n_train,)
        The training rows' labels (int8), in index order.
    factory_ : str
        The factory string used (what ``"auto"`` chose).
    nprobe_ : int or None
        The ``nprobe`` used at search time.
    offset_ : float
        ``score_samples`` quantile of the training rows at ``ood_contamination``
        (self-matches excluded): ``outlier_decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during ``fit``.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: 0 = real, 1 = AI-generated.
    n_train_ : int
        Training rows used (rows labelled -1 are left out).
    threshold_ : float
        Flag rows with ``decision_function(X) > threshold_``; 0.0 after ``fit``, set on
        validation reals by ``calibrate``.
    calibration_ : dict or None
        How ``threshold_`` was set (``fpr``, ``n_reals``, ``split``, ``n_above``); ``None``
        until ``calibrate``.
    score_calibration_ : dict or None
        The probability calibration ``heads.calibration.calibrate_head`` fitted on
        validation rows; ``None`` until then.

    Examples
    --------
    >>> import numpy as np
    >>> from facebank.heads.knn import KNNHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 8)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)  # 1 = AI-generated, 0 = real
    >>> head = KNNHead(k=5, device="cpu").fit(X, y)
    >>> head.factory_, head.labels_.shape
    ('Flat', (200,))
    >>> bool((head.predict(X) == y).mean() > 0.8)
    True
    """

    name = "knn"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "k": [AT_LEAST_ONE],
        "metric": [StrOptions({"cosine", "l2"})],
        "factory": [str],
        "weights": [StrOptions({"uniform", "similarity"})],
        "nprobe": [None, AT_LEAST_ONE],
        "ef_search": [None, AT_LEAST_ONE],
        "ood_contamination": [Interval(Real, 0, 0.5, closed="both")],
        "device": [str],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        k: int = 10,
        metric: str = "cosine",
        factory: str = "auto",
        weights: str = "uniform",
        nprobe: int | None = None,
        ef_search: int | None = None,
        ood_contamination: float = 0.01,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.k = k
        self.metric = metric
        self.factory = factory
        self.weights = weights
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.ood_contamination = ood_contamination
        self.device = device
        self.seed = seed

    def _prep(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if self.metric == "cosine":
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(X, dtype=np.float32)

    def _make_index(self, dim: int, n_rows: int):
        if self.metric not in ("cosine", "l2"):
            raise DataError(f"metric={self.metric!r} is not 'cosine' or 'l2'")
        factory, self.nprobe_ = str(self.factory), self.nprobe
        if factory == "auto":
            factory, auto_nprobe = auto_factory(n_rows)
            self.nprobe_ = self.nprobe if self.nprobe is not None else auto_nprobe
        self.factory_ = factory
        try:
            return build_index(dim, factory, self.metric)
        except UnknownNameError as exc:  # a head's parameters are data errors, as in fit()
            raise DataError(f"invalid knn factory string: {exc}; or 'auto'") from None

    def _tune(self, index) -> None:
        # not strict: factory="auto" may pick Flat, which has no nprobe
        set_knobs(index, nprobe=self.nprobe_, ef_search=self.ef_search, strict=False)

    def _fit(self, X: np.ndarray, y: np.ndarray, engines: Any) -> None:
        if int(self.k) < 1:
            raise DataError(f"k={self.k!r} must be >= 1")
        if self.weights not in ("uniform", "similarity"):
            raise DataError(f"weights={self.weights!r} is not 'uniform' or 'similarity'")
        Xp = self._prep(X)
        index = self._make_index(X.shape[1], len(X))
        if not index.is_trained:
            self._train(index, Xp)
        index.add(Xp)
        self.index_ = index
        self._gpu_index = None
        self.labels_ = y.astype(np.int8)
        self._tune(self.index_)
        rng = np.random.default_rng(int(self.seed))
        rows = rng.choice(len(Xp), size=min(len(Xp), _OFFSET_ROWS), replace=False)
        sims, idx = self._search(Xp[rows], min(int(self.k) + 1, len(Xp)))
        keep = idx != rows[:, None]  # drop each row's self-match
        ref = np.array(
            [self._normality(s[m][: int(self.k)]) for s, m in zip(sims, keep, strict=True)]
        )
        self.offset_ = float(np.quantile(ref, float(self.ood_contamination)))

    def _train(self, index, Xp: np.ndarray) -> None:
        """Train an IVF/PQ index on a seeded sample of ``_TRAIN_PER_LIST`` rows per list."""
        import faiss

        with contextlib.suppress(RuntimeError):  # not an IVF (e.g. PQ alone): nothing to seed
            faiss.extract_index_ivf(index).cp.seed = int(self.seed)
        size = train_sample_rows(index, len(Xp), per_list=_TRAIN_PER_LIST, minimum=0)
        rows = Xp
        if len(Xp) > size:  # k-means on a sample: 4x faster than FAISS's own 256 per list
            rng = np.random.default_rng(int(self.seed))
            rows = Xp[np.sort(rng.choice(len(Xp), size=size, replace=False))]
        index.train(rows)

    def _search(self, Xp: np.ndarray, k: int):
        import faiss

        index = self.index_
        if self._device().startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
            if getattr(self, "_gpu_index", None) is None:
                self._gpu_res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
            return search(self._gpu_index, Xp, k, metric=self.metric)
        return search(index, Xp, k, metric=self.metric)

    def _normality(self, sims: np.ndarray) -> float:
        if sims.size == 0:
            return float("nan")
        return float(sims.mean()) if self.metric == "cosine" else float(-sims.mean())

    def _neighbours(self, X: np.ndarray, k: int | None = None):
        """``(D, I)`` searched in zero-padded blocks of ``EVAL_BLOCK`` queries.

        FAISS computes distances with BLAS from 20 queries up and with its own SIMD loop
        below, and BLAS sums in an order that depends on the batch's shape: searching in
        blocks of one shape keeps a row's neighbours and score independent of its batch.
        """
        k = min(int(k or self.k), self.index_.ntotal)
        Ds, Is = [], []
        for rows, block in fixed_blocks(self._prep(X), dtype=np.float32):
            D, I = self._search(block, k)  # noqa: E741
            Ds.append(D[:rows].copy())
            Is.append(I[:rows].copy())
        return np.concatenate(Ds), np.concatenate(Is)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        D, I = self._neighbours(X)  # noqa: E741
        valid = I >= 0
        lab = np.where(valid, self.labels_[np.clip(I, 0, None)], -1)
        if self.weights == "uniform":
            w = valid.astype(np.float64)
        elif self.metric == "cosine":
            w = np.exp((D - 1.0) / 0.1) * valid
        else:
            scale = np.median(D[valid]) + 1e-12 if valid.any() else 1.0
            w = np.exp(-D / scale) * valid
        if self.weights != "uniform":  # rescale so the weights sum to the number of neighbours
            w = w / np.maximum(w.sum(1, keepdims=True), 1e-300) * valid.sum(1, keepdims=True)
        a = (w * (lab == 1)).sum(1)
        r = (w * (lab == 0)).sum(1)
        return np.log((a + 0.5) / (r + 0.5))

    def kneighbors(self, X: Any, k: int | None = None):
        """``(D, I)``: similarities (cosine) or squared distances (l2), and training row ids."""
        return self._neighbours(self._check_X(X), k)

    def score_samples(self, X: Any) -> np.ndarray:
        """(n_samples,) mean similarity to the k nearest training rows: higher = more normal."""
        D, _ = self.kneighbors(X)
        return D.mean(1) if self.metric == "cosine" else -D.mean(1)

    def ood_score(self, X: Any) -> np.ndarray:
        """(n_samples,) ``-score_samples``: higher = further from the training rows."""
        return -self.score_samples(X)

    def outlier_decision_function(self, X: Any) -> np.ndarray:
        """(n_samples,) ``score_samples - offset_``: negative = outlier."""
        return self.score_samples(X) - self.offset_

    def _get_state(self):
        import faiss

        blob = faiss.serialize_index(self.index_)
        meta = {"offset": self.offset_, "factory": self.factory_, "nprobe": self.nprobe_}
        return {"index": np.asarray(blob, dtype=np.uint8), "labels": self.labels_}, meta

    def _set_state(self, tensors, meta):
        import faiss

        try:
            self.index_ = faiss.deserialize_index(
                np.ascontiguousarray(tensors["index"], dtype=np.uint8)
            )
        except RuntimeError as exc:
            raise HeadError(
                f"the stored FAISS index cannot be read ({str(exc).splitlines()[-1]}); re-train "
                "the head"
            ) from None
        self.factory_ = str(meta.get("factory", self.factory))
        self.nprobe_ = meta.get("nprobe", self.nprobe)
        self._tune(self.index_)
        self._gpu_index = None
        self.labels_ = np.asarray(tensors["labels"], dtype=np.int8)
        self.offset_ = float(meta["offset"])
