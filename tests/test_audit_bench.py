"""tests/benchmarks/bench_audit.py runs with --tiny and prints one JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_audit.py"


@pytest.mark.slow  # a subprocess that imports the stack and draws the audit figure
def test_audit_benchmark_tiny():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert figures["benchmark"] == "audit" and figures["tiny"] is True and figures["rows"] == 20_000
    assert figures["audit_s"] > 0
    # the synthetic files carry the label partly (format, size): the audit must see it
    assert figures["verdict"] in ("confounded", "partly confounded")
    assert 0.6 < figures["metadata_auc"] < 1.0
