"""tests/benchmarks/bench_backbones*.py --tiny run and print one JSON line of figures."""

from __future__ import annotations

import json

import pytest


def _run(run_benchmark, script: str) -> dict:
    lines = run_benchmark(script, "--tiny").strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.slow
def test_backbones_benchmark_tiny(run_benchmark):
    fig = _run(run_benchmark, "bench_backbones.py")
    assert fig["benchmark"] == "backbones" and fig["tiny"] is True
    assert set(fig["single_s"]) == {"tiny-cnn", "tiny-vit"} and fig["together_s"] > 0
    slowest = max(fig["single_s"].values())
    assert fig["ratio_to_slowest_single"] == pytest.approx(fig["together_s"] / slowest, rel=0.01)
    fastest = min(fig["single_s"].values())
    assert fig["ratio_to_fastest_single"] == pytest.approx(fig["together_s"] / fastest, rel=0.01)
    assert fig["ratio_to_separate_runs"] <= fig["ratio_to_slowest_single"]
    assert fig["decode_s_per_image"] > 0 and fig["machine"]["device"] == "cpu"


@pytest.mark.slow
def test_backbones_gpu_benchmark_runs_tiny_on_the_cpu(run_benchmark):
    fig = _run(run_benchmark, "bench_backbones_gpu.py")
    assert fig["benchmark"] == "backbones_gpu" and fig["precision"] == "float32"
    for name in ("tiny-cnn", "tiny-vit"):
        row = fig["backbones"][name]
        assert row["images_per_s"] > 0 and row["dim"] > 0, row
