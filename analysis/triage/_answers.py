"""The five answers of a triage, computed from arrays (no I/O but reading banks and heads).

Which split chose what (every function below follows it):

- **train** rows of the run (its ``splits.csv``) fit every density, centroid, index and
  few-shot head, and the 2-D map's PCA;
- **validation** rows set every threshold: the OOD flag thresholds on known-engine
  validation rows (``OOD_FLAG_FPR`` of them flagged), the real-only threshold and each
  head's threshold on validation **reals** at ``fpr``;
- **test** rows of the run and the images of ``NEW`` are only ever scored: set-level
  AUROC (NEW vs known test rows), flag rates, FPR on held-out (test) reals.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError

from .._evalcommon import read_splits_csv
from ..metrics import binary_metrics, proportion_interval, threshold_at_fpr

__all__ = [
    "Known",
    "load_known",
    "rate",
    "is_it_new",
    "resemblance",
    "detection",
    "few_shot_curve",
    "metadata_check",
]

# A rate on fewer images is an anecdote: 20 gives an interval about +-20 points wide
# (the same floor as ``analysis.ood.MIN_NEW_ROWS``).
MIN_RATE_ROWS = 20
# The OOD flag threshold flags this share of known-engine validation images: a new-engine
# alarm, not a real-vs-AI decision (the experiment's own OOD step uses the same 5 %).
OOD_FLAG_FPR = 0.05
# Components of the densities (real-only PPCA, per-engine Gaussians): enough for the
# directions that separate engines, few enough to be estimated from a few hundred rows.
DENSITY_COMPONENTS = 32
# Rows of NEW kept for testing at the largest k: fewer makes each point's TPR a coin toss.
MIN_FEW_SHOT_TEST = 10
N_BOOT = 500


@dataclasses.dataclass
class Known:
    """One view of the run's labelled rows in memory, with the run's splits.

    Attributes:
        X: (n, D) float32 features; Xn: the same L2-normalised (cosine geometry).
        y: (n,) labels 0/1; engines, sha256, paths: (n,) strings; split: (n,) names.
        metadata: ``{column: (n,) array}`` or None (a bank without metadata).
        bank: the (row-selected) ``FeatureBank``.
    """

    X: np.ndarray
    y: np.ndarray
    engines: np.ndarray
    sha256: np.ndarray
    paths: np.ndarray
    split: np.ndarray
    metadata: dict[str, np.ndarray] | None
    bank: Any

    @functools.cached_property
    def Xn(self) -> np.ndarray:
        return _unit(self.X)

    def mask(self, split: str, label: int | None = None) -> np.ndarray:
        m = self.split == split
        return m if label is None else m & (self.y == label)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def load_known(bank_path: Path, splits_csv: Path) -> Known:
    """The labelled rows of a run bank that the run's ``splits.csv`` places in a split."""
    from facebank.embed import FeatureBank

    bank = FeatureBank.open(bank_path)
    split_of = read_splits_csv(splits_csv)
    sha = np.asarray(bank.sha256, dtype=str)
    split = np.array([split_of.get(s, "") for s in sha.tolist()], dtype=object).astype(str)
    y = np.asarray(bank.labels, dtype=np.int64)
    keep = np.flatnonzero((split != "") & (y >= 0))
    sel = bank.select(rows=keep)
    return Known(
        X=sel.load_features().astype(np.float32, copy=False),
        y=y[keep],
        engines=np.asarray(bank.engines, dtype=str)[keep],
        sha256=sha[keep],
        paths=np.asarray(bank.paths, dtype=str)[keep],
        split=split[keep],
        metadata={k: np.asarray(v)[keep] for k, v in bank.metadata().items()}
        if bank.has_metadata
        else None,
        bank=sel,
    )


def rate(hits: int, n: int) -> dict[str, Any]:
    """A flag rate with its Clopper-Pearson 95% interval; ``too_few`` below MIN_RATE_ROWS."""
    lo, hi = proportion_interval(int(hits), int(n))
    return {
        "rate": hits / n if n else None,
        "ci": [lo, hi],
        "hits": int(hits),
        "n": int(n),
        "too_few": n < MIN_RATE_ROWS,
    }


def _auroc(s_known: np.ndarray, s_new: np.ndarray, seed: int) -> dict[str, Any]:
    """NEW (positive) vs known test rows; higher score = more unusual."""
    if s_new.size == 0 or s_known.size == 0:
        return {"auroc": None, "auroc_ci": [None, None], "too_few": True}
    y = np.r_[np.zeros(s_known.size, int), np.ones(s_new.size, int)]
    bm = binary_metrics(y, np.r_[s_known, s_new], n_boot=N_BOOT, seed=seed)
    return {
        "auroc": float(bm.auc),
        "auroc_ci": list(bm.ci.get("auc", (None, None))),
        "too_few": s_new.size < MIN_RATE_ROWS,
    }


# ----------------------------------------------------------------------------- is it new?


def knn_distance(index: Any, X: np.ndarray, k: int) -> np.ndarray:
    """(n,) cosine distance to the k-th nearest training row (higher = more unusual)."""
    k = int(min(k, index.ntotal))
    D, _ = index.search(np.asarray(X, dtype=np.float32), k)
    return 1.0 - D[:, k - 1].astype(np.float64)


def real_only_model(known: Known, seed: int) -> Any:
    """Probabilistic PCA (a Gaussian: low-rank plus isotropic noise) of the **train reals**."""
    from sklearn.decomposition import PCA

    Xr = known.Xn[known.mask("train", 0)].astype(np.float64)
    if len(Xr) < 3:
        raise DataError(f"the run has {len(Xr)} train reals; a real-only density needs 3")
    q = int(min(DENSITY_COMPONENTS, len(Xr) - 2, Xr.shape[1] - 1))
    return PCA(n_components=max(q, 1), random_state=seed).fit(Xr)


def _ood_block(s: np.ndarray, known: Known, s_new: np.ndarray, seed: int) -> dict[str, Any]:
    val, test = known.split == "val", known.split == "test"
    thr = threshold_at_fpr(s[val], OOD_FLAG_FPR)
    return {
        **_auroc(s[test], s_new, seed),
        "threshold": thr,
        "flag": rate(int((s_new > thr).sum()), s_new.size),
        "known_test_flag": float((s[test] > thr).mean()) if test.any() else None,
    }


def is_it_new(
    known: Known,
    X_new: np.ndarray,
    *,
    index: Any,
    prototype: Any | None,
    k: int,
    fpr: float,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """OOD scores of NEW against the known engines, and the real-only score.

    Returns:
        ``(answer, per_image)``: ``answer["prototype"]`` (None without a prototype head),
        ``answer["knn"]``, ``answer["real_only"]``; ``per_image`` holds (n_new,) arrays
        ``ood_prototype``, ``knn_distance``, ``real_only``, ``real_only_flag``.
    """
    Xn_new = _unit(X_new)
    per: dict[str, np.ndarray] = {}
    ans: dict[str, Any] = {"prototype": None}
    if prototype is not None:
        s_known = np.asarray(prototype.ood_score(known.X), dtype=np.float64)
        per["ood_prototype"] = np.asarray(prototype.ood_score(X_new), dtype=np.float64)
        ans["prototype"] = _ood_block(s_known, known, per["ood_prototype"], seed)
    s_known = knn_distance(index, known.Xn, k)
    per["knn_distance"] = knn_distance(index, Xn_new, k)
    kk = int(min(k, index.ntotal))
    ans["knn"] = {"k": kk, **_ood_block(s_known, known, per["knn_distance"], seed)}
    model = real_only_model(known, seed)
    s_real = -model.score_samples(known.Xn.astype(np.float64))
    per["real_only"] = -model.score_samples(Xn_new.astype(np.float64))
    val_r, test_r = known.mask("val", 0), known.mask("test", 0)
    thr = threshold_at_fpr(s_real[val_r], fpr)
    per["real_only_flag"] = per["real_only"] > thr
    ans["real_only"] = {
        "components": int(model.n_components_),
        "n_train_reals": int(known.mask("train", 0).sum()),
        "threshold": thr,
        "flag": rate(int(per["real_only_flag"].sum()), per["real_only"].size),
        "fpr_test_reals": rate(int((s_real[test_r] > thr).sum()), int(test_r.sum())),
        "auroc_vs_test_reals": _auroc(s_real[test_r], per["real_only"], seed)["auroc"],
    }
    return ans, per


# ----------------------------------------------------------------------------- resemblance


def _shares(names: np.ndarray, candidates: Sequence[str]) -> dict[str, float]:
    c = Counter(names.tolist())
    n = max(len(names), 1)
    return {e: c.get(e, 0) / n for e in candidates}


def _gaussian_attribution(known: Known, Xn_new: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """Per-engine Gaussians (shared Ledoit-Wolf covariance) in a PCA space of the train rows:
    each NEW image goes to the engine of highest likelihood (FSD's attribution rule)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    tr = known.split == "train"
    Xt = known.Xn[tr].astype(np.float64)
    q = int(min(DENSITY_COMPONENTS, len(Xt) - 1, Xt.shape[1]))
    pca = PCA(n_components=q, random_state=seed).fit(Xt)
    Z, Zn = pca.transform(Xt), pca.transform(Xn_new.astype(np.float64))
    eng = known.engines[tr]
    names = sorted(set(eng.tolist()))
    means = np.stack([Z[eng == e].mean(axis=0) for e in names])
    resid = Z - means[np.searchsorted(names, eng)]
    prec = LedoitWolf().fit(resid).precision_
    d = Zn[:, None, :] - means[None, :, :]
    ll = -0.5 * np.einsum("nej,jk,nek->ne", d, prec, d)  # shared covariance: same constant
    best = np.asarray(names)[ll.argmax(axis=1)]
    mean_ll = {e: float(ll[:, i].mean()) for i, e in enumerate(names)}
    return best, mean_ll


def _silhouette(known: Known, Xn_new: np.ndarray, seed: int) -> float | None:
    """Mean silhouette (cosine) of NEW's rows with NEW as its own cluster among the
    engines of the train rows (a seeded sample of at most 2000): > 0 = a cluster of its own."""
    from sklearn.metrics import silhouette_samples

    tr = np.flatnonzero(known.split == "train")
    if len(Xn_new) < 2 or tr.size < 2:
        return None
    rng = np.random.default_rng(seed)
    if tr.size > 2000:
        tr = np.sort(rng.choice(tr, 2000, replace=False))
    X = np.r_[known.Xn[tr], Xn_new]
    lab = np.r_[known.engines[tr], np.full(len(Xn_new), "\x00new")]
    s = silhouette_samples(X, lab, metric="cosine")
    return float(s[tr.size :].mean())


def resemblance(
    known: Known, X_new: np.ndarray, *, index: Any, k: int, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Which known engine (``real`` included) NEW's images sit nearest to, three ways.

    Returns:
        ``(answer, per_image)``: per engine the share of NEW placed on it by the nearest
        centroid, the majority of the ``k`` nearest train rows, and the per-engine
        Gaussians; ``nearest_engine`` (the centroid rule's most frequent engine), its
        share, ``silhouette``; ``per_image`` holds ``nearest_centroid``, ``knn_majority``,
        ``gaussian_engine``.
    """
    Xn_new = _unit(X_new)
    tr = known.split == "train"
    eng = known.engines[tr]
    names = sorted(set(eng.tolist()), key=lambda e: (e != "real", e))
    C = _unit(np.stack([known.Xn[tr][eng == e].mean(axis=0) for e in names]))
    centroid = np.asarray(names)[(Xn_new @ C.T).argmax(axis=1)]
    kk = int(min(k, index.ntotal))
    _, idx = index.search(Xn_new.astype(np.float32), kk)
    train_eng = np.asarray(index.rows.engine, dtype=str)
    majority = np.array([Counter(train_eng[i[i >= 0]].tolist()).most_common(1)[0][0] for i in idx])
    gauss, mean_ll = _gaussian_attribution(known, Xn_new, seed)
    shares = {
        "centroid": _shares(centroid, names),
        "knn": _shares(majority, names),
        "gaussian": _shares(gauss, names),
    }
    nearest = max(names, key=lambda e: (shares["centroid"][e], shares["knn"][e]))
    ai = [e for e in names if e != "real"]
    nearest_ai = max(ai, key=lambda e: (shares["centroid"][e], shares["knn"][e])) if ai else None
    ans = {
        "engines": names,
        "shares": shares,
        "gaussian_mean_loglik": mean_ll,
        "nearest_engine": nearest,
        "nearest_share": shares["centroid"][nearest],
        "nearest_ai_engine": nearest_ai,
        "k": kk,
        "silhouette": _silhouette(known, Xn_new, seed),
    }
    per = {"nearest_centroid": centroid, "knn_majority": majority, "gaussian_engine": gauss}
    return ans, per


# ----------------------------------------------------------------------------- detection


def detection(
    heads: Mapping[str, Any], known: Known, X_new: np.ndarray, *, view: str, trained_on: str
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Each head's flag rate on NEW at its frozen threshold, beside that threshold's FPR on
    the run's test reals of the same view.

    Returns:
        ``(rows, scores)``: one row per head; ``scores[head]`` (n_new,) NEW's scores.
    """
    rows, scores = [], {}
    test_r = known.mask("test", 0)
    for name, head in heads.items():
        thr = float(head.threshold_)
        s = np.asarray(head.decision_function(X_new), dtype=np.float64)
        s_real = np.asarray(head.decision_function(known.X[test_r]), dtype=np.float64)
        scores[name] = s
        rows.append(
            {
                "head": name,
                "view": view,
                "trained_on": trained_on,
                "threshold": thr,
                "tpr": rate(int((s > thr).sum()), s.size),
                "fpr_test_reals": rate(int((s_real > thr).sum()), s_real.size),
            }
        )
    return rows, scores


# ----------------------------------------------------------------------------- few-shot


def _protocol_data(known: Known) -> Any:
    from .._protocol_core import ProtocolData

    return ProtocolData(
        known.X, known.y, known.engines, known.split, "the run's splits.csv", [], [], {}
    )


def few_shot_curve(
    known: Known,
    X_new: np.ndarray,
    *,
    head: str,
    params: Mapping[str, Any],
    shots: Sequence[int],
    draws: int,
    target_tpr: float,
    fpr: float,
    seed: int,
    engine: str = "new",
) -> dict[str, Any]:
    """TPR on the rest of NEW (at the threshold set on validation reals at ``fpr``) of a
    head retrained on the run's train rows plus k images of NEW, for each k.

    k = 0 is one fit; each k > 0 is ``draws`` seeded draws. Shot counts that leave fewer
    than ``MIN_FEW_SHOT_TEST`` images of NEW to test on are dropped (``stopped`` says so).
    Heads with ``warm_start`` continue from the k = 0 fit (``analysis.fewshot`` does the
    same). ``k_reached`` is the smallest k whose mean TPR over draws reaches
    ``target_tpr``, else None.
    """
    from .._protocol_core import train_and_test

    n = len(X_new)
    if n < MIN_RATE_ROWS:
        return {
            "skipped": f"too few for a rate: NEW has {n} images (a curve needs {MIN_RATE_ROWS})"
        }
    ks = sorted({int(k) for k in shots if 0 <= int(k) <= n - MIN_FEW_SHOT_TEST})
    if not ks:
        if not list(shots):
            return {"skipped": "no shot count given"}
        return {
            "skipped": f"every k of {sorted(shots)} leaves fewer than {MIN_FEW_SHOT_TEST} of "
            f"NEW's {n} images to test on"
        }
    d = _protocol_data(known)
    Xb, yb, eb = d.rows(d.train)
    nb = len(Xb)
    bx = np.concatenate([Xb, np.zeros((max(ks), Xb.shape[1]), Xb.dtype)])
    by = np.r_[yb, np.ones(max(ks), yb.dtype)]
    be = np.r_[eb, np.full(max(ks), engine)]
    points, k0 = [], None
    for k in ks:
        for draw in range(1 if k == 0 else draws):
            rng = np.random.default_rng([seed, k, draw])
            pick = rng.choice(n, size=k, replace=False) if k else np.zeros(0, int)
            bx[nb : nb + k] = X_new[pick]
            fitted = train_and_test(
                d, bx[: nb + k], by[: nb + k], be[: nb + k], head=head, params=params, fpr=fpr,
                warm_from=k0 if k else None,
            )  # fmt: skip
            if k == 0:
                k0 = fitted.estimator
            rest = np.setdiff1d(np.arange(n), pick)
            r = fitted.rate(X_new[rest])
            points.append(
                {
                    "k": k,
                    "draw": draw,
                    "tpr": r.rate,
                    "n_test": r.n,
                    "fpr_test_reals": fitted.fpr_test_reals,
                }
            )
    curve = []
    for k in ks:
        t = np.array([p["tpr"] for p in points if p["k"] == k])
        f = np.array([p["fpr_test_reals"] for p in points if p["k"] == k])
        curve.append(
            {
                "k": k,
                "tpr_mean": float(t.mean()),
                "tpr_min": float(t.min()),
                "tpr_max": float(t.max()),
                "fpr_test_reals": float(np.nanmean(f)),
                "n_draws": int(t.size),
            }
        )
    reached = next((c["k"] for c in curve if c["tpr_mean"] >= target_tpr), None)
    asked = sorted({int(k) for k in shots})
    return {
        "head": head,
        "curve": curve,
        "points": points,
        "k_reached": reached,
        "target_tpr": target_tpr,
        "n_new": n,
        "stopped": (
            f"k > {n - MIN_FEW_SHOT_TEST} dropped: NEW has {n} images and {MIN_FEW_SHOT_TEST} "
            "are kept for testing"
            if asked and asked[-1] > n - MIN_FEW_SHOT_TEST
            else None
        ),
    }


# ----------------------------------------------------------------------------- metadata


def metadata_check(
    known: Known, new_meta: Mapping[str, np.ndarray] | None, *, seed: int
) -> dict[str, Any]:
    """Can file properties alone tell NEW from the run's reals?

    The audit's metadata-only model (``heads.propensity``), cross-validated over every row
    (5 stratified folds: each row scored by a model that never saw it), its AUC with a
    bootstrap interval, each property's AUC alone (fitted on a seeded half of the rows,
    scored on the other) and the audit's verdict rule (``analysis.audit.audit_verdict``).
    """
    from facebank.heads.propensity import encode_metadata, group_folds, out_of_fold_proba

    from ..audit import audit_verdict
    from ..audit._properties import properties_alone

    if known.metadata is None or new_meta is None:
        return {"skipped": "the banks hold no acquisition metadata (format 1 or arrays)"}
    reals = known.y == 0
    n_new = len(next(iter(new_meta.values())))
    meta = {
        k: np.r_[np.asarray(known.metadata[k])[reals], np.asarray(new_meta[k])] for k in new_meta
    }
    y = np.r_[np.zeros(int(reals.sum()), np.int64), np.ones(n_new, np.int64)]
    every = np.ones(y.size, dtype=bool)
    enc = encode_metadata(meta, every, every)
    p = out_of_fold_proba(enc, y, group_folds(y, np.arange(y.size), k=5, seed=seed), seed)
    auc: float | None = None
    ci: list[float] | None = None
    if np.isfinite(p).all() and (y == 0).any() and (y == 1).any():
        bm = binary_metrics(y, p, n_boot=N_BOOT, seed=seed)
        auc = float(bm.auc)
        ci = [float(v) for v in bm.ci["auc"]] if "auc" in bm.ci else None
    half = np.random.default_rng(seed).random(y.size) < 0.5
    props = properties_alone(enc, y, ~half, half, seed)
    verdict, carriers = audit_verdict(auc, ci, props)
    return {
        "verdict": verdict,
        "carriers": carriers,
        "auc": auc,
        "auc_ci": ci,
        "properties": props,
        "shortcut": verdict != "no metadata shortcut found",
    }


def finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
