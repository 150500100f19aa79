"""Smoke run of tests/benchmarks/bench_bank.py --tiny: it prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bank_benchmark_tiny(run_benchmark):
    """Smoke run: feature bytes are float16 rows x dim; partitions write and consolidate."""
    lines = run_benchmark("bench_bank.py", "--tiny").strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "bank" and fig["tiny"] is True
    small = fig["small_bank"]
    assert small["feature_bytes"] == 100 * 64 * 2 and small["disk_bytes"] > small["feature_bytes"]
    parts = fig["partitions"]
    assert parts["partitions"] == 3 and parts["objects_per_partition"] > 2
    assert parts["write_rows_per_s"] > 0 and parts["consolidate_rows_per_s"] > 0
    assert fig["read"]["rows"] == 1500 and fig["read"]["load_float16_GBps"] > 0
