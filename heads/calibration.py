"""Calibrated probabilities, thresholds at fixed FPRs and precision at a base rate.

A head's ``decision_function`` ranks images but is not a probability. ``calibrate_head``
fits, on **validation rows only** (reals and AI images of the val split, never test),
a monotone map from score to ``P(AI-generated | score)`` and stores it on the head as
``score_calibration_`` (saved in ``head.json``):

- ``method="platt"`` (default): ``p = sigmoid(a * score + b)``, fitted by maximum
  likelihood on Platt's smoothed targets (``(n_ai + 1) / (n_ai + 2)`` for AI rows,
  ``1 / (n_real + 2)`` for reals), which is what scikit-learn's
  ``CalibratedClassifierCV(method="sigmoid")`` does. Two parameters: stable on a few
  hundred rows, and it keeps the order of the scores.
- ``method="isotonic"``: scikit-learn's ``IsotonicRegression`` (clipped to [0, 1],
  out-of-range scores clipped), a step function. More flexible, needs more rows
  (a few thousand), ties scores within a step.

The probability is calibrated **at the validation split's class balance**.
``probability_at_prevalence`` moves it to another base rate by Bayes' rule (the odds
are multiplied by ``prior_odds(prevalence) / prior_odds(val)``), and
``precision_at_prevalence`` says what fraction of flagged images are AI at a threshold
when a fraction ``prevalence`` of all images are: ``TPR * pi / (TPR * pi + FPR * (1 - pi))``.

The thresholds at 0.1%, 0.5% and 1% FPR come from the validation reals with
``threshold_at_fpr`` (the same rule as ``BaseHead.calibrate``); each is stored with the
TPR it gives on the validation AI rows, so the precision at a base rate can be stated
without the test split. A calibration fitted on fewer than ``MIN_CALIBRATION_ROWS``
validation rows is kept but flagged (``CalibrationWarning``, ``few_rows`` in the dict).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from facebank.core.errors import CalibrationWarning, DataError

from .base import allowed_false_positives, threshold_at_fpr

__all__ = [
    "CALIBRATION_FPRS",
    "MIN_CALIBRATION_ROWS",
    "ScoreCalibration",
    "fit_calibration",
    "calibrate_head",
    "probability_at_prevalence",
    "precision_at_prevalence",
]

#: The operating points stored with every calibration (the FPRs the metrics report).
CALIBRATION_FPRS = (0.001, 0.005, 0.01)
#: Below this many validation rows a fitted probability is too noisy to trust.
MIN_CALIBRATION_ROWS = 20

Method = Literal["platt", "isotonic"]


@dataclass(frozen=True)
class ScoreCalibration:
    """A fitted score -> probability map and the operating points of the validation rows.

    Attributes:
        method: ``"platt"`` or ``"isotonic"``.
        params: ``{"a", "b"}`` (Platt) or ``{"x", "y"}`` (isotonic knots, ascending).
        n_rows, n_real, n_ai: validation rows it was fitted on.
        val_prevalence: ``n_ai / n_rows``; the base rate the probability is calibrated at.
        thresholds: one dict per FPR: ``fpr``, ``threshold``, ``n_real_above``,
            ``tpr_val`` (fraction of val AI rows above), ``n_ai``.
        split: always ``"val"``.
        few_rows: fitted on fewer than ``MIN_CALIBRATION_ROWS`` rows.
    """

    method: str
    params: dict[str, Any]
    n_rows: int
    n_real: int
    n_ai: int
    val_prevalence: float
    thresholds: list[dict[str, float]] = field(default_factory=list)
    split: str = "val"
    few_rows: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ScoreCalibration:
        return cls(**doc)

    def probability(self, scores: Any) -> np.ndarray:
        """``(n,)`` P(AI-generated) at the validation base rate for ``(n,)`` raw scores."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if self.method == "platt":
            z = self.params["a"] * s + self.params["b"]
            return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        x = np.asarray(self.params["x"], dtype=np.float64)
        y = np.asarray(self.params["y"], dtype=np.float64)
        return np.interp(s, x, y)

    def threshold(self, fpr: float) -> dict[str, float]:
        """The stored operating point at ``fpr`` (one of ``CALIBRATION_FPRS``)."""
        for t in self.thresholds:
            if math.isclose(t["fpr"], fpr):
                return t
        have = [t["fpr"] for t in self.thresholds]
        raise DataError(f"no threshold stored at fpr={fpr!r}; stored FPRs: {have}")


def _platt(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.optimize import minimize

    n_real = float((y == 0).sum())
    n_ai = float((y == 1).sum())
    target = np.where(y == 1, (n_ai + 1.0) / (n_ai + 2.0), 1.0 / (n_real + 2.0))
    # scores of a few heads reach the hundreds; fit on a unit scale, convert back
    scale = max(1.0, float(np.abs(scores).max()))
    s = scores / scale

    def loss_grad(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * s + ab[1]
        # log(1 + e^z) - t z, written stably
        loss = np.logaddexp(0.0, z) - target * z
        g = 1.0 / (1.0 + np.exp(-z)) - target
        return float(loss.sum()), np.array([g @ s, g.sum()])

    ab0 = np.array([0.0, math.log((n_ai + 1.0) / (n_real + 1.0))])
    res = minimize(
        loss_grad,
        ab0,
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-8, "ftol": 64 * np.finfo(float).eps},
    )
    return {"a": float(res.x[0] / scale), "b": float(res.x[1])}


def _isotonic(scores: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def fit_calibration(
    scores: Any,
    y: Any,
    *,
    method: Method = "platt",
    fprs: tuple[float, ...] = CALIBRATION_FPRS,
) -> ScoreCalibration:
    """Fit a score -> probability map and the operating points on validation rows.

    Which split chose what: everything here comes from the rows given, which must be
    **validation** rows (the caller's promise); nothing is measured on test rows.

    Args:
        scores: (n,) raw head scores (``decision_function``) of validation rows.
        y: (n,) labels 1 (AI-generated) / 0 (real); rows labelled -1 are ignored.
        method: ``"platt"`` or ``"isotonic"`` (see the module docstring).
        fprs: FPRs whose thresholds are set on the validation reals.

    Returns:
        ``ScoreCalibration``. Warns ``CalibrationWarning`` below ``MIN_CALIBRATION_ROWS``.

    Raises:
        DataError: unknown method, mismatched lengths, non-finite scores, or a class missing.
    """
    if method not in ("platt", "isotonic"):
        raise DataError(
            f"calibration method {method!r} is not known; valid: 'platt' (default), 'isotonic'"
        )
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"{s.size} scores but {y.size} labels; pass one label per score")
    keep = y != -1
    s, y = s[keep], y[keep].astype(np.int64)
    if not np.isfinite(s).all():
        raise DataError("calibration scores contain NaN or inf; check the head's output")
    n_real, n_ai = int((y == 0).sum()), int((y == 1).sum())
    if n_real == 0 or n_ai == 0:
        raise DataError(
            f"calibration needs validation reals and AI images; got {n_real} reals and {n_ai} AI "
            "rows - add both classes to the val split"
        )
    params = _platt(s, y) if method == "platt" else _isotonic(s, y)
    real, ai = s[y == 0], s[y == 1]
    points = []
    for fpr in fprs:
        t = threshold_at_fpr(real, fpr)
        points.append(
            {
                "fpr": float(fpr),
                "threshold": t,
                "n_real_above": int((real > t).sum()),
                "n_real_allowed": allowed_false_positives(fpr, real.size),
                "tpr_val": float((ai > t).mean()),
                "n_ai": int(ai.size),
            }
        )
    few = s.size < MIN_CALIBRATION_ROWS
    if few:
        warnings.warn(
            f"calibration fitted on only {s.size} validation rows ({n_real} real, {n_ai} AI); "
            f"its probabilities are unreliable below {MIN_CALIBRATION_ROWS} - add validation rows",
            CalibrationWarning,
            stacklevel=2,
        )
    return ScoreCalibration(
        method=method,
        params=params,
        n_rows=int(s.size),
        n_real=n_real,
        n_ai=n_ai,
        val_prevalence=n_ai / s.size,
        thresholds=points,
        few_rows=few,
    )


def calibrate_head(head: Any, X_val: Any, y_val: Any, *, method: Method = "platt") -> Any:
    """Fit ``fit_calibration`` on the head's scores of validation rows; store it on the head.

    Args:
        head: a fitted head.
        X_val: (n, n_features) validation features (reals and AI images).
        y_val: (n,) their labels.
        method: ``"platt"`` or ``"isotonic"``.

    Returns:
        The head, with ``score_calibration_`` (a dict, as saved in ``head.json``).
    """
    cal = fit_calibration(head.decision_function(X_val), y_val, method=method)
    head.score_calibration_ = cal.to_dict()
    return head


def _check_prevalence(prevalence: float) -> float:
    p = float(prevalence)
    if not 0.0 < p < 1.0:
        raise DataError(
            f"prevalence must be in (0, 1), got {prevalence!r}; e.g. 0.01 if 1% of images are AI"
        )
    return p


def probability_at_prevalence(
    probability: Any, *, val_prevalence: float, prevalence: float
) -> np.ndarray:
    """Move probabilities calibrated at ``val_prevalence`` to base rate ``prevalence`` (Bayes).

    Returns:
        (n,) P(AI-generated) if a fraction ``prevalence`` of all images were AI-generated.
    """
    pi = _check_prevalence(prevalence)
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-12, 1 - 1e-12)
    v = min(max(float(val_prevalence), 1e-12), 1 - 1e-12)
    odds = p / (1 - p) * (pi / (1 - pi)) / (v / (1 - v))
    return odds / (1 + odds)


def precision_at_prevalence(tpr: float, fpr: float, *, prevalence: float) -> float:
    """Fraction of flagged images that are AI when a fraction ``prevalence`` of all are.

    ``TPR * pi / (TPR * pi + FPR * (1 - pi))``; ``nan`` when nothing is flagged (TPR = FPR = 0).
    """
    pi = _check_prevalence(prevalence)
    num = float(tpr) * pi
    den = num + float(fpr) * (1 - pi)
    return num / den if den > 0 else float("nan")
