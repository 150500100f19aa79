"""Smoke run of tests/benchmarks/bench_ray_gpu.py --tiny: both engines load the saved
random weights through ``--weights PATH`` and make the same bank; one JSON line of figures.

16 images on the CPU say nothing about throughput; what they show is that the two engines
agree (same weights file, same features). GPU utilisation is sampled only where
``nvidia-smi`` exists, and checked only there.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_gpu_benchmark_tiny_runs_both_engines_on_one_weights_file(
    ray_cluster, run_benchmark, tmp_path
):
    """Smoke run: the local and Ray engines make the same bank from one weights file."""
    pytest.importorskip("ray.data")
    from facebank.embed import FeatureBank

    stdout = run_benchmark("bench_ray_gpu.py", "--tiny", "--work", str(tmp_path))
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "ray_gpu" and fig["tiny"] is True
    sampled = shutil.which("nvidia-smi") is not None
    for run in ("local", "ray"):
        assert fig[run]["rows"] == 16 and fig[run]["end_to_end_images_per_s"] > 0
        util = fig[run]["gpu_util_mean"]
        if sampled:  # a percentage, or None when the run ended before the first 0.5 s sample
            assert util is None or 0 <= util <= 100, util
        else:
            assert util is None
    assert fig["ratio_ray_vs_local"] > 0
    local, ray = FeatureBank.open(tmp_path / "local.zarr"), FeatureBank.open(tmp_path / "ray.zarr")
    sha = local.backbone["weights_sha256"]
    assert sha and len(sha) == 64 and ray.backbone["weights_sha256"] == sha  # the saved file
    order = np.argsort(ray.sha256)
    np.testing.assert_allclose(
        local.load_features()[np.argsort(local.sha256)],
        ray.load_features()[order],
        rtol=2e-3,
        atol=2e-3,
    )
