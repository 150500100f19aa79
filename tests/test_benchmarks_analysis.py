"""tests/benchmarks/bench_analysis.py runs with --tiny and prints one JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_analysis.py"


@pytest.mark.slow
def test_analysis_benchmark_tiny():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, out.stdout
    figures = json.loads(lines[0])
    assert figures["benchmark"] == "analysis" and figures["tiny"] is True
    for key in (
        "metrics_s",
        "loeo_s",
        "cpu_count",
        "torch_threads",
        "device",
        "loeo_rows",
        "metrics_n_scores",
    ):
        assert key in figures, key
    assert figures["metrics_s"] > 0 and figures["loeo_s"] > 0
    assert 0 <= figures["loeo_tpr_out"] <= 1 and 0 <= figures["loeo_tpr_in"] <= 1
