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
from facebank.heads.propensity import CLIP, overlap_weights, weighted_auc

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


def _stratified(y, s, strata, keep, c) -> float:
    """Pairs-weighted mean of the within-stratum AUCs (rows weighted by counts ``c``)."""
    num = den = 0.0
    for k in keep:
        m = strata == k
        cy = c[m]
        pairs = cy[y[m] == 0].sum() * cy[y[m] == 1].sum()
        if pairs > 0:
            num += pairs * weighted_auc(y[m], s[m], cy)
            den += pairs
    return num / den if den > 0 else math.nan


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
    # sorted by score once: every AUC below sorts already sorted data (timsort: linear)
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
    ones = np.ones(y.size)
    strat = _stratified(y, s, st, keep, ones) if keep else math.nan
    over = weighted_auc(y, s, w) if y.size else math.nan
    cis: list[list[float] | None] = [None, None]
    if n_boot and y.size and (y == 0).any() and (y == 1).any():
        rng = np.random.default_rng(seed)
        boots = np.full((n_boot, 2), np.nan)
        idx = [np.flatnonzero(y == c) for c in (0, 1)]
        for b in range(n_boot):
            c = np.zeros(y.size)
            for rows in idx:
                c[rows] = np.bincount(rng.integers(0, rows.size, rows.size), minlength=rows.size)
            boots[b] = (
                _stratified(y, s, st, keep, c) if keep else math.nan,
                weighted_auc(y, s, w * c),
            )
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
