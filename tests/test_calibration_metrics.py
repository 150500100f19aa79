"""analysis.calibration_metrics against scikit-learn and an implementation written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_curve

from facebank.analysis.calibration_metrics import calibration_metrics
from facebank.core.errors import DataError

RNG = np.random.default_rng(7)
Y = RNG.integers(0, 2, 300)
P = np.clip(1 / (1 + np.exp(-(2.0 * Y - 1 + RNG.normal(size=300)))), 0.001, 0.999)


def _by_hand(y, p, bins, prior):
    """Loops, the textbook way."""
    n = len(y)
    nll = -sum(math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p, strict=True)) / n
    lr = [(pi / (1 - pi)) / (prior / (1 - prior)) for pi in p]
    fake = [math.log2(1 + 1 / r) for r, yi in zip(lr, y, strict=True) if yi == 1]
    real = [math.log2(1 + r) for r, yi in zip(lr, y, strict=True) if yi == 0]
    cllr = 0.5 * (sum(fake) / len(fake) + sum(real) / len(real))
    ece = ece_bal = 0.0
    n1, n0 = sum(y), n - sum(y)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i in range(n) if lo <= p[i] < hi or (b == bins - 1 and p[i] == 1.0)]
        if not idx:
            continue
        ece += (
            len(idx)
            / n
            * abs(sum(y[i] for i in idx) / len(idx) - sum(p[i] for i in idx) / len(idx))
        )
        w = [0.5 / n1 if y[i] else 0.5 / n0 for i in idx]
        W = sum(w)
        ece_bal += abs(
            sum(wi * y[i] for wi, i in zip(w, idx, strict=True))
            - sum(wi * p[i] for wi, i in zip(w, idx, strict=True))
        )
        assert W > 0
    return nll, cllr, ece, ece_bal


def _eer_from_roc(y, p):
    fpr, tpr, _ = roc_curve(y, p)
    fnr = 1 - tpr
    j = int(np.argmax(fnr - fpr <= 0))
    d0, d1 = fnr[j - 1] - fpr[j - 1], fnr[j] - fpr[j]
    w = d0 / (d0 - d1)
    return fpr[j - 1] + w * (fpr[j] - fpr[j - 1])


def test_measures_match_sklearn_and_a_loop_implementation():
    m = calibration_metrics(Y, P, bins=10, false_alarm=0.05, prior=0.4)
    assert m.nll == pytest.approx(log_loss(Y, P))
    assert m.brier == pytest.approx(brier_score_loss(Y, P))
    nll, cllr, ece, ece_bal = _by_hand(Y.tolist(), P.tolist(), 10, 0.4)
    assert m.nll == pytest.approx(nll)
    assert m.cllr_bits == pytest.approx(cllr)
    assert m.ece == pytest.approx(ece)
    assert m.ece_class_balanced == pytest.approx(ece_bal)
    assert m.eer == pytest.approx(_eer_from_roc(Y, P), abs=1e-9)
    fpr, tpr, _ = roc_curve(Y, P)
    assert m.pd_at_false_alarm == pytest.approx(tpr[fpr <= 0.05].max())
    assert m.bins == 10 and "10 equal-width bins" in m.table_rows()[3]["note"]


def test_a_constant_half_is_one_bit_and_a_sharp_wrong_system_is_worse():
    half = calibration_metrics(Y, np.full(Y.size, 0.5))
    assert half.cllr_bits == pytest.approx(1.0)
    wrong = calibration_metrics(Y, np.where(Y == 1, 0.1, 0.9))
    assert wrong.cllr_bits > 1 and wrong.ece > 0.5


def test_bad_probabilities_and_one_class_are_refused():
    with pytest.raises(DataError, match="within"):
        calibration_metrics(Y, P + 1)
    with pytest.raises(DataError, match="no real"):
        calibration_metrics(np.ones(5), np.full(5, 0.5))
