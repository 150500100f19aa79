"""analysis.metrics against sklearn.metrics on random and adversarial inputs."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from facebank.analysis.metrics import (
    DEFAULT_FPRS,
    binary_metrics,
    fpr_label,
    per_engine_table,
    proportion_interval,
    threshold_at_fpr,
    tpr_at_fpr,
)
from facebank.core.errors import DataError

RNG = np.random.default_rng(0)


def _cases():
    """(name, y, scores): random, heavy ties, all-equal, one positive, one negative, perfect."""
    out = []
    for i in range(25):
        n = int(RNG.integers(2, 80))
        y = RNG.integers(0, 2, n)
        y[:2] = (0, 1)
        out.append((f"normal-{i}", y, RNG.normal(size=n) + 0.7 * y))
        out.append((f"ties-{i}", y, RNG.integers(0, 4, n).astype(float)))
    out.append(("all-equal", np.array([0, 1, 0, 1, 1, 0]), np.full(6, 0.3)))
    out.append(("single-positive", np.array([0] * 30 + [1]), RNG.normal(size=31)))
    out.append(("single-negative", np.array([0] + [1] * 30), RNG.normal(size=31)))
    out.append(("perfect", np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.8, 0.9])))
    out.append(("inverted", np.array([0, 0, 0, 1, 1]), np.array([0.8, 0.9, 0.95, 0.1, 0.2])))
    return out


CASES = _cases()


def _reference_eer(y, s):
    """EER by linear interpolation of (FPR, FNR) along sklearn's full ROC curve."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    for j in range(1, len(fpr)):
        d0, d1 = fnr[j - 1] - fpr[j - 1], fnr[j] - fpr[j]
        if d1 <= 0:
            w = d0 / (d0 - d1)
            return fpr[j - 1] + w * (fpr[j] - fpr[j - 1])
    raise AssertionError("no crossing")


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_threshold_free_metrics_match_sklearn(name, y, s):
    m = binary_metrics(y, s, n_boot=0)
    assert m.auc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m.ap == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m.eer == pytest.approx(_reference_eer(y, s), abs=1e-12)


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_tpr_at_fpr_is_best_sklearn_roc_point_within_target(name, y, s):
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    n_real = int((y == 0).sum())
    for a in (*DEFAULT_FPRS, 0.1, 0.25, 0.5):
        m = np.floor(a * n_real + 1e-9)
        expected = tpr[fpr * n_real <= m + 1e-9].max()
        assert tpr_at_fpr(y, s, a) == pytest.approx(expected, abs=1e-12)
        t = threshold_at_fpr(s[y == 0], a)
        assert (s[y == 0] > t).sum() <= m  # never above the target
        assert t in s[y == 0]  # a real score


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_threshold_metrics_match_sklearn(name, y, s):
    t = float(np.median(s))
    m = binary_metrics(y, s, threshold=t, n_boot=0)
    pred = (s > t).astype(int)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert m.recall == pytest.approx(skm.recall_score(y, pred))
    assert m.f1 == pytest.approx(skm.f1_score(y, pred, zero_division=0.0))
    if pred.sum():
        assert m.precision == pytest.approx(skm.precision_score(y, pred))
    else:
        assert np.isnan(m.precision)
    assert m.fpr == pytest.approx(pred[y == 0].mean())


def test_threshold_rule_with_200_reals_allows_exactly_one_false_positive():
    reals = np.arange(200, dtype=float)
    assert threshold_at_fpr(reals, 0.005) == 198.0  # only 199 scores above
    assert threshold_at_fpr(reals, 0.001) == 199.0  # < 1 image: nothing may be flagged
    assert threshold_at_fpr(reals, 0.01) == 197.0
    # ties at the top: two reals share the largest score; 0.5% allows one, so neither is flagged
    tied = np.concatenate([np.arange(198.0), [500.0, 500.0]])
    t = threshold_at_fpr(tied, 0.005)
    assert t == 500.0 and (tied > t).sum() == 0


def test_small_target_fpr_is_noted():
    y = np.array([0] * 50 + [1] * 50)
    s = np.linspace(0, 1, 100)
    m = binary_metrics(y, s, n_boot=0)
    assert any("0.1%" in n and "50 reals" in n for n in m.notes)
    assert m.tpr_at_fpr["0.1%"] == 1.0  # perfectly separated: all 50 fakes above the max real


def test_bootstrap_is_seeded_and_covers_the_estimate():
    y = np.array([0] * 300 + [1] * 300)
    s = RNG.normal(size=600) + y
    a = binary_metrics(y, s, threshold=0.5, n_boot=300, seed=1)
    b = binary_metrics(y, s, threshold=0.5, n_boot=300, seed=1)
    c = binary_metrics(y, s, threshold=0.5, n_boot=300, seed=2)
    assert a.ci == b.ci and a.ci != c.ci
    assert a.bootstrap == "exact"
    for k in ("auc", "ap", "eer", "accuracy", "recall", "f1", "fpr", "tpr@fpr=1%"):
        lo, hi = a.ci[k]
        value = a.to_dict()[k]
        assert lo <= value <= hi, k
        assert hi - lo > 0.005, k
    # AUC standard error ~ 0.016 here: a 95% interval of width ~0.06
    assert 0.03 < a.ci["auc"][1] - a.ci["auc"][0] < 0.12


def test_binned_bootstrap_agrees_with_exact_bootstrap():
    n = 6000
    y = (RNG.random(n) < 0.5).astype(int)
    s = RNG.normal(size=n) + 1.2 * y
    exact = binary_metrics(y, s, threshold=0.4, n_boot=400, seed=0, max_bins=100_000)
    binned = binary_metrics(y, s, threshold=0.4, n_boot=400, seed=0, max_bins=500)
    assert exact.bootstrap == "exact" and binned.bootstrap.startswith("binned")
    assert binned.auc == exact.auc  # point estimates are always exact
    for k in ("auc", "ap", "eer", "accuracy", "fpr", "recall", "tpr@fpr=1%"):
        w = exact.ci[k][1] - exact.ci[k][0]
        assert abs(binned.ci[k][0] - exact.ci[k][0]) < 0.35 * w + 1e-3, k
        assert abs(binned.ci[k][1] - exact.ci[k][1]) < 0.35 * w + 1e-3, k


def test_bootstrap_of_a_million_scores_is_fast():
    n = 1_000_000
    y = (RNG.random(n) < 0.5).astype(np.int8)
    s = RNG.normal(size=n).astype(np.float32) + y
    t0 = time.perf_counter()
    m = binary_metrics(y, s, threshold=0.5, n_boot=200, seed=0)
    assert time.perf_counter() - t0 < 10  # the full 1,000 resamples are timed by the benchmark
    assert m.ci["auc"][0] < m.auc < m.ci["auc"][1]


@pytest.mark.parametrize(
    "y,s,match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "no real images"),
        ([0, 0], [0.1, 0.2], "no AI-generated images"),
        ([0, 1, -1], [0.1, 0.2, 0.3], "unknown label"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1], "different lengths"),
    ],
)
def test_bad_input_is_a_clear_error(y, s, match):
    with pytest.raises(DataError, match=match):
        binary_metrics(y, s)


def test_threshold_at_fpr_bad_input():
    with pytest.raises(DataError, match="needs real images"):
        threshold_at_fpr([], 0.005)
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        threshold_at_fpr([0.1, 0.2], 1.5)


def test_per_engine_table_counts_rates_and_small_engines():
    y = np.array([0] * 20 + [1] * 30 + [1] * 4)
    engines = np.array(["real"] * 20 + ["sdxl"] * 30 + ["tiny"] * 4)
    s = np.concatenate([np.linspace(0, 1, 20), np.linspace(0.5, 1.5, 30), [2.0, 2.0, 0.0, 0.0]])
    with pytest.warns(UserWarning, match="'tiny' has only 4 images"):
        rows = per_engine_table(y, s, engines, threshold=0.9)
    by = {r["engine"]: r for r in rows}
    assert [r["engine"] for r in rows] == ["sdxl", "tiny", "real"]
    assert by["real"]["metric"] == "fpr" and by["real"]["n_flagged"] == int((s[:20] > 0.9).sum())
    assert by["sdxl"]["rate"] == pytest.approx((s[20:50] > 0.9).mean())
    assert by["tiny"]["rate"] == 0.5 and by["tiny"]["warning"]
    # small engines get wide, exact intervals
    assert by["tiny"]["ci_high"] - by["tiny"]["ci_low"] > 0.7
    assert by["sdxl"]["warning"] == ""


def test_proportion_interval_is_clopper_pearson():
    from scipy.stats import binomtest

    for k, n in [(0, 5), (3, 10), (10, 10), (47, 200)]:
        ref = binomtest(k, n).proportion_ci(method="exact")
        lo, hi = proportion_interval(k, n)
        assert lo == pytest.approx(ref.low) and hi == pytest.approx(ref.high)


def test_to_dict_and_table_rows_are_flat_and_complete():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    m = binary_metrics(y, s, threshold=0.5, n_boot=50)
    d = m.to_dict()
    for k in ("auc", "ap", "eer", "tpr@fpr=0.5%", "accuracy", "f1", "auc_ci", "threshold"):
        assert k in d
    assert {r["metric"] for r in m.table_rows()} >= {"auc", "f1", "tpr@fpr=0.1%"}
    assert fpr_label(0.005) == "0.5%"


def test_no_warning_for_normal_engines():
    y = np.array([0] * 12 + [1] * 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_engine_table(y, np.arange(24.0), np.array(["real"] * 12 + ["x"] * 12), threshold=5)


def test_table_rows_say_the_fpr_beside_each_tpr_and_why_a_value_is_missing():
    from facebank.analysis.metrics import binary_metrics

    y = np.array([0] * 200 + [1] * 50)
    s = np.concatenate([np.linspace(0, 1, 200), np.linspace(0.5, 1.5, 50)])
    m = binary_metrics(y, s, threshold=10.0, n_boot=0)  # nothing flagged
    rows = {r["metric"]: r for r in m.table_rows()}
    assert math.isnan(rows["precision"]["value"])
    assert rows["precision"]["note"].startswith("n/a: no image scores above the threshold")
    assert "FPR 0.00% on the same rows" in rows["recall"]["note"]
    # 0.5% of 200 reals = 1 image: the ROC point's threshold realises exactly 0.50%
    assert m.realised_fpr_at["0.5%"] == pytest.approx(0.005)
    assert "realised FPR 0.50%" in rows["tpr@fpr=0.5%"]["note"]
    assert m.realised_fpr_at["0.1%"] == 0.0 and "realised FPR 0.00%" in rows["tpr@fpr=0.1%"]["note"]


def test_fmt_ci_reads_n_a_for_undefined_values():
    from facebank.analysis._evalcommon import fmt_ci

    assert fmt_ci(float("nan"), float("nan"), float("nan")) == "n/a"
    assert fmt_ci(0.5, 0.4, 0.6) == "50.0% [40.0%, 60.0%]"
    assert fmt_ci(0.9, float("nan"), float("nan"), pct=False) == "0.900"
