"""Smoke run of tests/benchmarks/bench_heads.py --tiny: one JSON line with every figure.

2,000 rows x 64 say nothing about speed; they can show that every head learns the
benchmark's data, that ``linear`` finds sklearn's solution, and that ``knn``'s default
``factory="auto"`` is exact below 50,000 rows (the same neighbours as ``Flat``).
"""

import json

import pytest


@pytest.mark.slow
def test_heads_benchmark_tiny_prints_one_json_line(run_benchmark):
    """Smoke run: heads learn, linear agrees with sklearn, knn auto is exact at this size."""
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
    # below 50,000 training rows factory="auto" is the exact Flat index: same neighbours
    assert row["knn_index"] == "Flat" and row["knn-exact_index"] == "Flat"
    assert row["knn_recall_at_10"] == 1.0 and row["knn_auc"] == row["knn-exact_auc"]
    assert (
        row["sklearn_logreg_s"] > 0 and abs(row["linear_auc"] - row["sklearn_logreg_auc"]) <= 0.005
    )
