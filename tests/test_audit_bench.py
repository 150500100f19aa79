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


@pytest.mark.slow  # 20 head fits and 60 metadata-model fits
def test_cross_fitted_audit_benchmark_tiny(run_benchmark):
    """Smoke test: the script runs end to end and its figures are the cross-fit's; at 1,000
    rows it says nothing about the 2-minute target."""
    stdout = run_benchmark("bench_audit_cv.py", "--tiny")
    (line,) = [ln for ln in stdout.splitlines() if ln.strip()]
    figures = json.loads(line)
    assert figures["benchmark"] == "audit_cv" and figures["rows"] == 1_000
    assert figures["folds"] == 5 and figures["fits"] == 20
    # the metadata model's own overlap-weighted AUC is ~0.5 (what the weights are for)
    assert abs(figures["metadata_overlap_auc"] - 0.5) < 0.1
    assert set(figures["auc_plain"]) == {"linear", "mlp"}
