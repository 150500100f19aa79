"""Balanced AUCs: how well a score separates the classes *where the files cannot tell*.

A raw AUC pools every (AI, real) pair, including the pairs whose files alone give the
answer (a PNG fake against a JPEG real). Both AUCs below compare an AI row only with
real rows that look alike to the metadata, using each row's cross-fitted metadata
probability ``e`` (``heads.propensity``: from a model that never saw the row):

- **propensity-stratified AUC**: the rows are cut into ``STRATA`` strata at the
  quantiles of ``e``; the AUC is computed inside each stratum and pooled with weight
  ``n_real * n_fake`` of the stratum (i.e. the share of within-stratum pairs ranked
  right). A stratum with fewer than ``MIN_PER_CLASS`` rows of a class is dropped; the
  strata and rows dropped are counted.
- **overlap-weighted AUC**: every (AI, real) pair counts with weight ``(1 - e_ai) * e_real``
  (overlap weights, ``heads.propensity.overlap_weights``): pairs in which both rows could
  have been either class count most, pairs the files decide count nearly nothing.
  ``e`` is clipped to ``[0.01, 0.99]``; rows beyond the clip are counted.

A score that is only a function of the metadata has both balanced AUCs near 0.5 while
its raw AUC can be anything (tested). Intervals: 95 % percentile bootstrap, rows
resampled within each class.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from facebank.core.errors import DataError
from facebank.heads.propensity import CLIP, overlap_weights

__all__ = ["STRATA", "MIN_PER_CLASS", "BalancedAUC", "balanced_auc"]

# Five strata of the propensity remove most of the bias a covariate carries (Cochran 1968;
# Rosenbaum and Rubin 1984) while keeping rows of both classes in each.
STRATA = 5
# A stratum needs two rows of each class: one pair is an AUC of 0, 0.5 or 1.
MIN_PER_CLASS = 2


@dataclasses.dataclass
class BalancedAUC:
    """The two balanced AUCs of one score (module docstring).

    Attributes:
        stratified_auc, stratified_ci: propensity-stratified AUC and its 95 % interval
            (None when no stratum holds enough of both classes).
        overlap_auc, overlap_ci: overlap-weighted AUC and its 95 % interval.
        strata, strata_used: strata formed, and kept.
        dropped_strata, dropped_rows: strata (and their rows) with fewer than
            ``MIN_PER_CLASS`` rows of a class.
        no_overlap: rows whose propensity was beyond ``[CLIP, 1 - CLIP]`` (clipped).
        n: rows.
    """

    stratified_auc: float | None
    stratified_ci: list[float] | None
    overlap_auc: float | None
    overlap_ci: list[float] | None
    strata: int
    strata_used: int
    dropped_strata: int
    dropped_rows: int
    no_overlap: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def note(self) -> str:
        """Counts in words: what was dropped or clipped ("" when nothing)."""
        parts = []
        if self.dropped_strata:
            parts.append(
                f"{self.dropped_strata} of {self.strata} strata ({self.dropped_rows} rows) have "
                f"fewer than {MIN_PER_CLASS} rows of a class: dropped"
            )
        if self.no_overlap:
            parts.append(
                f"{self.no_overlap} rows have a metadata probability beyond "
                f"[{CLIP}, {1 - CLIP}] (no overlap): clipped"
            )
        return "; ".join(parts)


def _strata(e: np.ndarray, k: int) -> np.ndarray:
    edges = np.unique(np.quantile(e, np.linspace(0, 1, k + 1)[1:-1]))
    return np.searchsorted(edges, e, side="right")


@dataclasses.dataclass
class _Groups:
    """Rows grouped by (stratum, score), groups ascending in score within each stratum:
    any row weighting gives the pooled within-stratum AUC by two ``bincount``s (linear)."""

    g: np.ndarray  # (n,) group of each row
    stratum: np.ndarray  # (G,) stratum of each group
    first: np.ndarray  # (G,) index of the first group of that group's stratum
    n_strata: int

    @classmethod
    def of(cls, s: np.ndarray, strata: np.ndarray) -> _Groups:
        order = np.lexsort((s, strata))
        st, sv = strata[order], s[order]
        new = (
            np.r_[True, (st[1:] != st[:-1]) | (sv[1:] != sv[:-1])] if s.size else np.zeros(0, bool)
        )
        g = np.empty(s.size, np.int64)
        g[order] = np.cumsum(new) - 1
        stratum = st[new]
        first_of = np.r_[True, stratum[1:] != stratum[:-1]] if stratum.size else stratum
        starts = np.flatnonzero(first_of)
        first = starts[np.cumsum(first_of) - 1]
        return cls(g, stratum, first, int(strata.max()) + 1 if strata.size else 0)

    def auc(self, y: np.ndarray, w: np.ndarray) -> float:
        """``sum_k W0_k W1_k AUC_k / sum_k W0_k W1_k`` with row weights ``w`` (ties 1/2)."""
        G = self.stratum.size
        w0 = np.bincount(self.g, weights=w * (y == 0), minlength=G)
        w1 = np.bincount(self.g, weights=w * (y == 1), minlength=G)
        c0 = np.cumsum(w0)
        below = c0 - w0 - np.where(self.first > 0, c0[self.first - 1], 0.0)
        den = (
            np.bincount(self.stratum, weights=w0, minlength=self.n_strata)
            * np.bincount(self.stratum, weights=w1, minlength=self.n_strata)
        ).sum()
        return float((w1 * (below + 0.5 * w0)).sum() / den) if den > 0 else math.nan


def balanced_auc(
    y: Any,
    scores: Any,
    propensity: Any,
    *,
    strata: int = STRATA,
    n_boot: int = 200,
    seed: int = 0,
) -> BalancedAUC:
    """Propensity-stratified and overlap-weighted AUC of ``scores`` (module docstring).

    Which split chose what: nothing is tuned here; ``propensity`` must be out-of-fold
    (a model that did not see the row), the strata are its quantiles on these rows.

    Args:
        y: ``(n,)`` labels 0/1.
        scores: ``(n,)`` scores, higher = AI.
        propensity: ``(n,)`` cross-fitted metadata probability of AI.
        strata: number of quantile strata.
        n_boot: bootstrap resamples (0: no intervals).
        seed: seeds the bootstrap.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    e = np.asarray(propensity, dtype=np.float64).ravel()
    if not (y.shape == s.shape == e.shape):
        raise DataError(f"labels {y.shape}, scores {s.shape}, propensity {e.shape} differ")
    if not (np.isfinite(s).all() and np.isfinite(e).all()):
        raise DataError("scores and propensities must be finite: leave out rows without them")
    # rows in score order: the bootstrap's draws depend on the order, so it is fixed
    order = np.argsort(s, kind="stable")
    y, s, e = y[order], s[order], e[order]
    st = _strata(e, strata) if y.size else np.zeros(0, np.int64)
    n_st = int(st.max()) + 1 if st.size else 0
    keep, dropped_rows = [], 0
    for k in range(n_st):
        m = st == k
        if min((y[m] == 0).sum(), (y[m] == 1).sum()) >= MIN_PER_CLASS:
            keep.append(k)
        else:
            dropped_rows += int(m.sum())
    w, n_clip = overlap_weights(y, e)
    kept = np.isin(st, keep)  # dropped strata weigh nothing
    within = _Groups.of(s, st)
    overall = _Groups.of(s, np.zeros(y.size, np.int64))
    strat = within.auc(y, kept.astype(float)) if keep else math.nan
    over = overall.auc(y, w) if y.size else math.nan
    cis: list[list[float] | None] = [None, None]
    if n_boot and y.size and (y == 0).any() and (y == 1).any():
        rng = np.random.default_rng(seed)
        boots = np.full((n_boot, 2), np.nan)
        idx = [np.flatnonzero(y == c) for c in (0, 1)]
        for b in range(n_boot):
            c = np.zeros(y.size)
            for rows in idx:
                c[rows] = np.bincount(rng.integers(0, rows.size, rows.size), minlength=rows.size)
            boots[b] = (within.auc(y, c * kept) if keep else math.nan, overall.auc(y, w * c))
        for j, point in enumerate((strat, over)):
            v = boots[:, j][np.isfinite(boots[:, j])]
            if math.isfinite(point) and v.size:
                cis[j] = [float(x) for x in np.percentile(v, [2.5, 97.5])]
    return BalancedAUC(
        stratified_auc=None if math.isnan(strat) else float(strat),
        stratified_ci=cis[0],
        overlap_auc=None if math.isnan(over) else float(over),
        overlap_ci=cis[1],
        strata=n_st,
        strata_used=len(keep),
        dropped_strata=n_st - len(keep),
        dropped_rows=dropped_rows,
        no_overlap=n_clip,
        n=int(y.size),
    )
