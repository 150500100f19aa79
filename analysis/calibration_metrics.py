"""Calibration measures the detection literature reports, for probabilities of "AI-generated".

A score that ranks well can still be miscalibrated, most of all across domains. For
probabilities ``p`` (label 1 = AI) on ``n`` rows:

- **NLL** (log-loss, nats): ``-mean(y log p + (1 - y) log(1 - p))``, ``p`` clipped to
  ``[1e-15, 1 - 1e-15]``; as ``sklearn.metrics.log_loss``.
- **Cllr** (bits): the log-likelihood-ratio cost of Brümmer and du Preez,
  ``(mean_AI log2(1 + 1/LR) + mean_real log2(1 + LR)) / 2`` with
  ``LR = odds(p) / odds(prior)``; ``prior`` is the AI share the probability was
  calibrated at (the validation split's for a head's calibrated probability; 0.5 when
  unknown). 1 bit = a system that says nothing; 0 = perfect and calibrated.
- **Brier**: ``mean((p - y)^2)``; as ``sklearn.metrics.brier_score_loss``.
- **ECE**: ``BINS`` equal-width bins of ``p`` on ``[0, 1]`` (the last bin closed);
  ``sum_b n_b / n * |mean(y)_b - mean(p)_b|``.
- **class-balanced ECE**: the same with each class weighing one half (a row of class
  ``c`` weighs ``1 / (2 n_c)``), so a rare class is not drowned by the common one.
- **EER** and **Pd at a false-alarm rate** (``FALSE_ALARM``, 0.5 % by default): from
  ``analysis.metrics.binary_metrics`` - the ROC of these rows (the threshold behind
  Pd is taken from these reals, as ``tpr_at_fpr``).

Which split chose what: nothing is tuned here; the caller says where the probability
map was fitted (for a head: validation rows).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from facebank.core.errors import DataError

from .metrics import binary_metrics, fpr_label

__all__ = ["BINS", "FALSE_ALARM", "CalibrationMetrics", "calibration_metrics"]

# 15 equal-width bins: the usual choice since Guo et al. 2017, so ECEs compare across papers.
BINS = 15
# the project's operating point (2311.08577's 0.5 % FPR)
FALSE_ALARM = 0.005
_EPS = 1e-15


@dataclasses.dataclass
class CalibrationMetrics:
    """Calibration of one set of probabilities (module docstring for each measure)."""

    n_real: int
    n_fake: int
    nll: float
    cllr_bits: float
    brier: float
    ece: float
    ece_class_balanced: float
    bins: int
    eer: float
    pd_at_false_alarm: float
    false_alarm: float
    prior: float
    probability: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per measure with what it was computed on."""
        fa = fpr_label(self.false_alarm)
        return [
            {"measure": "NLL (nats)", "value": self.nll, "note": "log-loss"},
            {"measure": "Cllr (bits)", "value": self.cllr_bits, "note": f"prior {self.prior:.3g}"},
            {"measure": "Brier", "value": self.brier, "note": ""},
            {"measure": "ECE", "value": self.ece, "note": f"{self.bins} equal-width bins"},
            {
                "measure": "class-balanced ECE",
                "value": self.ece_class_balanced,
                "note": f"{self.bins} equal-width bins, each class weighs 1/2",
            },
            {"measure": "EER", "value": self.eer, "note": "ROC of these rows"},
            {
                "measure": f"Pd at false-alarm rate {fa}",
                "value": self.pd_at_false_alarm,
                "note": f"threshold from these {self.n_real} reals",
            },
        ]


def _ece(y: np.ndarray, p: np.ndarray, w: np.ndarray, bins: int) -> float:
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    W = np.bincount(b, weights=w, minlength=bins)
    wy = np.bincount(b, weights=w * y, minlength=bins)
    wp = np.bincount(b, weights=w * p, minlength=bins)
    used = W > 0
    return float((np.abs(wy[used] - wp[used])).sum() / W.sum())


def calibration_metrics(
    y: Any,
    probability: Any,
    *,
    bins: int = BINS,
    false_alarm: float = FALSE_ALARM,
    prior: float = 0.5,
    source: str = "",
) -> CalibrationMetrics:
    """NLL, Cllr, Brier, ECE, class-balanced ECE, EER and Pd at ``false_alarm``.

    Args:
        y: ``(n,)`` labels 0/1, both classes present.
        probability: ``(n,)`` probabilities of AI in ``[0, 1]``.
        bins: equal-width ECE bins.
        false_alarm: the false-alarm rate (FPR) of the stated Pd.
        prior: the AI share the probabilities are calibrated at (for Cllr's LR).
        source: where the probabilities come from, in words (kept in the result).
    """
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(probability, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise DataError(f"labels {y.shape} and probabilities {p.shape} have different lengths")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("probabilities must be finite and within [0, 1]")
    if not 0 < prior < 1:
        raise DataError(f"prior={prior!r} is not valid; give the AI share in (0, 1)")
    if bins < 1:
        raise DataError(f"bins={bins!r} is not valid; give at least 1")
    bm = binary_metrics(y, p, n_boot=0, fprs=(false_alarm,))  # both classes checked here
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    pc = np.clip(p, _EPS, 1 - _EPS)
    nll = float(-np.mean(np.where(y == 1, np.log(pc), np.log1p(-pc))))
    llr = np.log(pc) - np.log1p(-pc) - math.log(prior / (1 - prior))
    # log2(1 + e^{-x}) = logaddexp(0, -x) / ln 2, stable for large |x|
    cllr = 0.5 * (np.logaddexp(0, -llr[y == 1]).mean() + np.logaddexp(0, llr[y == 0]).mean())
    w_bal = np.where(y == 1, 0.5 / n1, 0.5 / n0)
    return CalibrationMetrics(
        n_real=n0,
        n_fake=n1,
        nll=nll,
        cllr_bits=float(cllr / math.log(2)),
        brier=float(np.mean((p - y) ** 2)),
        ece=_ece(y, p, np.ones(y.size), bins),
        ece_class_balanced=_ece(y, p, w_bal, bins),
        bins=int(bins),
        eer=float(bm.eer),
        pd_at_false_alarm=float(bm.tpr_at_fpr[fpr_label(false_alarm)]),
        false_alarm=float(false_alarm),
        prior=float(prior),
        probability=source,
    )
