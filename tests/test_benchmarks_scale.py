"""Smoke run of tests/benchmarks/bench_scale.py --tiny: it prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_benchmark_tiny(ray_cluster, run_benchmark):
    """Smoke run, in-process on the session's cluster (no interpreter or cluster of its own).

    16 images say nothing about scaling; the run shows both engines embed every image and
    the local runner reaches a steady rate after its first batch.
    """
    pytest.importorskip("ray.data")
    stdout = run_benchmark("bench_scale.py", "--tiny")
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
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
