"""tests/benchmarks/bench_embed_gpu.py --tiny: a smoke test on the CPU. It shows that the
script runs every step and that the banks of --decode cpu and --decode gpu (here through
torchvision's CPU JPEG decoder) hold the same rows within the stated tolerance; a speed
needs the GPU run."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_embed_gpu_benchmark_tiny_runs_both_decoders_to_agreeing_banks(run_benchmark, tmp_path):
    from facebank.embed import FeatureBank

    stdout = run_benchmark("bench_embed_gpu.py", "--tiny", "--work", str(tmp_path))
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "embed_gpu" and fig["tiny"] is True
    assert fig["forward"]["images_per_s"] > 0
    for mode in ("cpu", "gpu"):
        run = fig[f"decode_{mode}"]
        assert run["rows"] == 16 and run["failed"] == 0 and run["runtime"]["decode"] == mode
        assert run["gpu_util_mean"] is None  # no nvidia-smi on the CI machine
    assert fig["decode_gpu"]["decoded_on_cpu"] == 0  # baseline 8-bit JPEGs only
    a, b = (FeatureBank.open(tmp_path / f"decode-{m}.zarr") for m in ("cpu", "gpu"))
    assert list(a.sha256) == list(b.sha256)
    fa, fb = a.load_features().astype(np.float64), b.load_features().astype(np.float64)
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cos.min() >= 0.999
