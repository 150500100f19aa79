"""Calibrated probabilities: checked against scikit-learn on the same validation rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from facebank.core.errors import CalibrationWarning, DataError
from facebank.heads import create_head, load_head
from facebank.heads.calibration import (
    MIN_CALIBRATION_ROWS,
    ScoreCalibration,
    calibrate_head,
    fit_calibration,
    precision_at_prevalence,
    probability_at_prevalence,
)


def _rows(n: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] += shift * y
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _rows(400, 0)
    head = create_head("linear").fit(X, y)
    X_val, y_val = _rows(300, 1)
    return head, X_val, y_val


@pytest.mark.parametrize(("method", "sk_method"), [("platt", "sigmoid"), ("isotonic", "isotonic")])
def test_probability_matches_calibrated_classifier_cv(fitted, method, sk_method):
    head, X_val, y_val = fitted
    calibrate_head(head, X_val, y_val, method=method)
    cal = ScoreCalibration.from_dict(head.score_calibration_)
    ref = CalibratedClassifierCV(FrozenEstimator(head), method=sk_method).fit(X_val, y_val)
    X_new, _ = _rows(200, 2)
    ours = cal.probability(head.decision_function(X_new))
    theirs = ref.predict_proba(X_new)[:, 1]
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    assert cal.split == "val" and cal.n_rows == len(y_val)


def test_probability_is_monotone_and_calibrated(fitted):
    head, X_val, y_val = fitted
    cal = fit_calibration(head.decision_function(X_val), y_val)
    s = np.linspace(-5, 5, 50)
    p = cal.probability(s)
    assert np.all(np.diff(p) >= 0) and 0 < p[0] < p[-1] < 1
    # the mean probability on the rows it was fitted on is close to their AI fraction
    assert abs(cal.probability(head.decision_function(X_val)).mean() - y_val.mean()) < 0.02


def test_thresholds_at_three_fprs_from_val_reals(fitted):
    head, X_val, y_val = fitted
    cal = fit_calibration(head.decision_function(X_val), y_val)
    real = head.decision_function(X_val[y_val == 0])
    assert [t["fpr"] for t in cal.thresholds] == [0.001, 0.005, 0.01]
    for t in cal.thresholds:
        assert (real > t["threshold"]).sum() <= t["n_real_allowed"]
    # a looser FPR never gives a higher threshold
    th = [t["threshold"] for t in cal.thresholds]
    assert th[0] >= th[1] >= th[2]


def test_few_rows_warn_and_are_flagged():
    s = np.array([-1.0, 0.5, 2.0, -0.3, 1.1])
    y = np.array([0, 1, 1, 0, 1])
    with pytest.warns(CalibrationWarning, match="only 5 validation rows"):
        cal = fit_calibration(s, y)
    assert cal.few_rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = fit_calibration(np.r_[s, s, s, s], np.r_[y, y, y, y])
    assert len(ok.thresholds) == 3 and not ok.few_rows and MIN_CALIBRATION_ROWS == 20


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="needs validation reals and AI"):
        fit_calibration([0.1, 0.2], [0, 0])
    with pytest.raises(DataError, match="'platt'"):
        fit_calibration([0.1, 0.2], [0, 1], method="beta")
    with pytest.raises(DataError, match="prevalence must be in"):
        precision_at_prevalence(0.9, 0.005, prevalence=1.5)


def test_prevalence_precision_and_probability():
    # 90% TPR at 0.5% FPR, 1% of images AI: 0.009 / (0.009 + 0.00495)
    assert precision_at_prevalence(0.9, 0.005, prevalence=0.01) == pytest.approx(0.6452, abs=1e-4)
    # a probability at the val base rate moves down when AI images are rarer
    p = probability_at_prevalence([0.5], val_prevalence=0.5, prevalence=0.01)
    assert p[0] == pytest.approx(0.01)
    assert np.isnan(precision_at_prevalence(0.0, 0.0, prevalence=0.01))


def test_saved_head_keeps_its_calibration(fitted, tmp_path):
    head, X_val, y_val = fitted
    calibrate_head(head, X_val, y_val)
    head.save(tmp_path / "h")
    back = load_head(tmp_path / "h")
    assert back.score_calibration_ == head.score_calibration_
    refit = create_head("linear").fit(X_val, y_val)
    assert refit.score_calibration_ is None
