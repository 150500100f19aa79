"""tests/benchmarks/bench_embed.py --tiny: a smoke test. At 12 images of tiny-cnn it
shows that the forward pass and embed run on the same images and that the figures are
put together as documented; it says nothing about speed (12 images time nothing)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_embed_benchmark_tiny(run_benchmark):
    lines = run_benchmark("bench_embed.py", "--tiny", "--device", "cpu").strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "embed" and fig["tiny"] is True
    assert fig["machine"]["cpu_count"] >= 1 and fig["machine"]["device"] == "cpu"
    assert len(fig["load_before"]) == len(fig["load_after"]) == 3
    assert set(fig["model_vs_embed"]["tiny-cnn"]) == {"mix"}  # no realfaces in --tiny
    run = fig["model_vs_embed"]["tiny-cnn"]["mix"]
    # the same images on both sides: every one pre-decoded and every one embedded
    assert run["images"] == run["embedded"] == fig["images"] == 12
    assert run["forward_images_per_s"] > 0 and run["embed_images_per_s"] > 0
    assert run["ratio"] == pytest.approx(
        run["embed_images_per_s"] / run["forward_images_per_s"], rel=0.01
    )
    assert run["runtime"]["decode"] == "cpu"  # auto on a CPU
    assert set(fig["decode"]) == {"256"}
    for key in ("draft_resize_images_per_cpu_s", "full_resize_images_per_s_wall"):
        assert fig["decode"]["256"][key] > 0
    meta = fig["metadata"]["256"]
    assert meta["metadata_ms_per_image"] > 0 and "pct_of_embed_tiny-cnn" in meta
    read = fig["bank_read"]
    assert (read["rows"], read["dim"]) == (4096, 64)
    for key in ("load_float16_GBps", "load_float32_GBps", "iter_float16_GBps_per_cpu_s"):
        assert read[key] > 0
