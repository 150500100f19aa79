"""The heads benchmark runs (--tiny) and prints one JSON line with every figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_heads.py"


@pytest.mark.slow
def test_heads_benchmark_tiny_prints_one_json_line():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
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
