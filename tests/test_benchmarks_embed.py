"""Smoke run of tests/benchmarks/bench_embed.py --tiny: it prints one JSON line of figures."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_embed_benchmark_tiny(run_benchmark):
    """Smoke run: every stage is timed and the end-to-end run embeds every image."""
    lines = run_benchmark("bench_embed.py", "--tiny", "--device", "cpu").strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "embed" and fig["tiny"] is True
    assert fig["machine"]["cpu_count"] >= 1 and fig["machine"]["device"] == "cpu"
    assert "torch_threads" in fig["machine"]
    assert set(fig["decode"]) == {"256"}
    for key in ("draft_resize_images_per_cpu_s", "full_resize_images_per_s_wall"):
        assert fig["decode"]["256"][key] > 0
    meta = fig["metadata"]["256"]
    assert meta["metadata_ms_per_image"] > 0 and "pct_of_embed_tiny-cnn" in meta
    e2e = fig["end_to_end"]["tiny-cnn"]["256"]
    assert e2e["embedded"] == fig["images_per_size"] == 12 and e2e["failed"] == 0
    assert e2e["images_per_s"] > 0
    read = fig["bank_read"]
    assert (read["rows"], read["dim"]) == (4096, 64)
    for key in ("load_float16_GBps", "load_float32_GBps", "iter_float16_GBps_per_cpu_s"):
        assert read[key] > 0
