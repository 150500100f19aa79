"""Smoke runs of tests/benchmarks/bench_backbones*.py --tiny: one JSON line of figures.

At 16 images of two random-weight tiny backbones the timings say nothing about speed
(model loading dominates); what the size can show is that the joint run stores the same
features as each backbone alone, and that the figures are computed from the timings.
"""

from __future__ import annotations

import json

import pytest


def _run(run_benchmark, script: str) -> dict:
    lines = run_benchmark(script, "--tiny").strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.slow
def test_backbones_benchmark_tiny(run_benchmark):
    """Smoke run: the joint embedding stores each backbone's own features."""
    fig = _run(run_benchmark, "bench_backbones.py")
    assert fig["benchmark"] == "backbones" and fig["tiny"] is True
    assert set(fig["single_s"]) == {"tiny-cnn", "tiny-vit"} and fig["together_s"] > 0
    slowest = max(fig["single_s"].values())
    assert fig["ratio_to_slowest_single"] == pytest.approx(fig["together_s"] / slowest, rel=0.01)
    fastest = min(fig["single_s"].values())
    assert fig["ratio_to_fastest_single"] == pytest.approx(fig["together_s"] / fastest, rel=0.01)
    total = sum(fig["single_s"].values())
    assert fig["ratio_to_separate_runs"] == pytest.approx(fig["together_s"] / total, rel=0.01)
    assert fig["decode_s_per_image"] > 0 and fig["machine"]["device"] == "cpu"
    # Decoding once: the backbone with the larger input (tiny-cnn, 160 px) sees the pixels
    # of its run alone. The 128-px JPEGs are decoded once at the larger backbone's JPEG
    # draft size, where tiny-vit's run alone (64 px) decodes at half scale: its features
    # move by JPEG's DCT downscaling against a resize, a few thousandths of a unit vector.
    diff = fig["max_abs_diff_vs_single"]
    assert set(diff) == {"tiny-cnn", "tiny-vit"}
    assert diff["tiny-cnn"] <= 1e-3, diff
    assert diff["tiny-vit"] <= 2e-2, diff


@pytest.mark.slow
def test_backbones_gpu_benchmark_runs_tiny_on_the_cpu(run_benchmark):
    """Smoke run: the GPU benchmark's code path on the CPU in float32 (no speed figure)."""
    fig = _run(run_benchmark, "bench_backbones_gpu.py")
    assert fig["benchmark"] == "backbones_gpu" and fig["precision"] == "float32"
    from facebank.embed.backbones.registry import backbone_info

    for name in ("tiny-cnn", "tiny-vit"):
        row = fig["backbones"][name]
        described = backbone_info(name).describe()  # the library's config, nothing built
        assert row["images_per_s"] > 0, row
        assert row["dim"] == described["dim"] and row["input"] == list(described["input_size"])
