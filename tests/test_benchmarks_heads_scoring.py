"""Smoke run of tests/benchmarks/bench_heads_scoring.py --tiny: one JSON line with every figure.

2,000 rows x 64 say nothing about speed; they can show that every timed head scores, and
that a row scored alone equals the same row scored among 2,000 (the fixed-block
contract the timing relies on).
"""

import json

import pytest


@pytest.mark.slow
def test_heads_scoring_benchmark_tiny_prints_one_json_line(run_benchmark):
    """Smoke run: one-row and batch timings for each head, one-row scores equal the batch's."""
    stdout = run_benchmark("bench_heads_scoring.py", "--tiny", "--repeats", "1")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["benchmark"] == "heads_scoring" and out["tiny"] is True
    assert out["machine"]["device"] == "cpu" and out["rows"] == 2000
    assert set(out["results"]) == {"linear", "mlp", "prototype"}
    for name, row in out["results"].items():
        assert row["one_row_ms"] > 0 and row["batch_s"] > 0, name
        assert row["one_row_equals_batch"] is True, name
