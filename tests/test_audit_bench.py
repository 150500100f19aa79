"""Smoke run of tests/benchmarks/bench_audit.py --tiny: it prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # draws the audit figure on 20,000 rows
def test_audit_benchmark_tiny(run_benchmark):
    """Smoke run on 20,000 synthetic rows whose files carry the label: the audit sees it."""
    stdout = run_benchmark("bench_audit.py", "--tiny")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert figures["benchmark"] == "audit" and figures["tiny"] is True and figures["rows"] == 20_000
    assert figures["audit_s"] > 0
    # the synthetic files carry the label partly (format, size): the audit must see it
    assert figures["verdict"] in ("confounded", "partly confounded")
    assert 0.6 < figures["metadata_auc"] < 1.0
