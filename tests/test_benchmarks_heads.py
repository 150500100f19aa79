"""The heads benchmark runs (--tiny) and prints one JSON line with every figure."""

import json

import pytest


@pytest.mark.slow
def test_heads_benchmark_tiny_prints_one_json_line(run_benchmark):
    stdout = run_benchmark("bench_heads.py", "--tiny", "--device", "cpu")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["benchmark"] == "heads" and out["tiny"] is True
    assert out["machine"]["cpu_count"] >= 1 and out["machine"]["device"] == "cpu"
    (row,) = out["results"]
    for name in ("linear", "mlp", "prototype", "wide-mlp", "knn"):
        assert row[f"{name}_fit_s"] > 0
        assert 0.5 < row[f"{name}_auc"] <= 1.0
    assert row["knn_fit_predict_10k_s"] >= row["knn_fit_s"]
    assert (
        row["sklearn_logreg_s"] > 0 and abs(row["linear_auc"] - row["sklearn_logreg_auc"]) <= 0.005
    )
