"""Smoke run of tests/benchmarks/bench_analysis.py --tiny: it prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_analysis_benchmark_tiny(run_benchmark):
    """Smoke run: metrics and leave-one-engine-out run end to end; rates are rates."""
    stdout = run_benchmark("bench_analysis.py", "--tiny")
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
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
