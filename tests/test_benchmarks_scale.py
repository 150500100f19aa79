"""tests/benchmarks/bench_scale.py --tiny runs and prints one JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_scale.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_benchmark_tiny():
    pytest.importorskip("ray.data")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=580
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, out.stdout
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "scale" and fig["tiny"] is True
    assert "ray_1" not in fig  # --tiny times one cluster size (CI time); full runs both
    for run in ("local", "ray_2"):
        assert fig[run]["images_per_s"] > 0 and fig[run]["rows"] == 16
        assert fig[run]["first_batch_s"] > 0 and fig[run]["steady_images_per_s"] >= 0
    # the local runner's DataLoader hands over 2 batches of 8: a steady rate exists
    assert fig["local"]["steady_images_per_s"] > 0
    assert fig["ratio_ray2_vs_local"] > 0 and fig["wall_ratio_ray2_vs_local"] > 0
    assert fig["partition"]["write_s"] > 0
