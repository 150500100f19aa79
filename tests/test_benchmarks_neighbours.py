"""Smoke runs of tests/benchmarks/bench_neighbours.py and bench_ivfpq.py (--tiny).

Each prints one JSON line. What their sizes can show: an IVF that probes every list finds
exactly the Flat index's neighbours; IVF-PQ finds more when it probes more and the
refine step re-ranks to near-exact; the memory of the streaming builds and of ``leaks``
and ``clusters`` grows by far less than the data when the rows grow. The self-kNN
``within_budget`` figure is not judged at 3,000 x 64: FAISS's and BLAS's fixed
workspaces (~40 MB) dwarf a 1.3 MB budget there; full runs judge it (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_neighbours_benchmark_tiny(tmp_path):
    """Smoke run: streamed self-kNN in fresh processes; IVF16 probing all 16 lists is exact."""
    res = subprocess.run(
        [
            sys.executable,
            "tests/benchmarks/bench_neighbours.py",
            "--tiny",
            "--bank",
            str(tmp_path / "b.zarr"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "neighbours.self_knn"
    assert (fig["rows"], fig["dim"], fig["k"], fig["repeat"]) == (3000, 64, 10, 1)
    assert fig["machine"]["cpu_count"] >= 1 and "torch_threads" in fig["machine"]
    assert set(fig["results"]) == {"Flat", "IVF16,Flat"}
    for name, r in fig["results"].items():
        med = r["median"]
        assert med["self_knn_s"] > 0 and med["add_s"] > 0 and med["rows_per_s"] > 0
        assert med["device"] in ("cpu", "cuda:0") and len(r["runs"]) == 1
        if name != "Flat":
            assert med["recall_at_k"] == 1.0  # 16 lists, all probed: exact
    assert (tmp_path / "b.zarr" / "zarr.json").is_file()


@pytest.mark.slow
def test_ivfpq_benchmark_tiny(tmp_path):
    """Smoke run: recall grows with nprobe, refine re-ranks, the build's memory streams."""
    res = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_ivfpq.py", "--tiny", "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # FAISS's OpenMP threads spin while they wait: on a busy shared CPU one thread is
        # faster for these tiny sizes
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "neighbours.ivfpq"
    assert (fig["rows"], fig["dim"], fig["queries"]) == (8000, 32, 300)
    assert fig["factories"] == ["IVF32,PQ8", "IVF32,PQ8,RFlat"] and fig["exact_s"] > 0
    pq, refine = fig["builds"]
    for b in (pq, refine):
        assert b["train_s"] > 0 and b["add_s"] > 0
        assert b["train_rows"] == 8000  # 40 a list, at least 10,000, at most the rows
    recalls = [s["recall_at_10"] for s in pq["searches"]]
    assert [s["nprobe"] for s in pq["searches"]] == [4, 32]
    assert 0.3 < recalls[0] <= recalls[1] <= 1.0  # more lists probed, never fewer found
    # the refine step re-ranks k * k_factor candidates on the full vectors
    by = {(s["nprobe"], s["k_factor"]): s["recall_at_10"] for s in refine["searches"]}
    assert set(by) == {(p, f) for p in (4, 32) for f in (1, 4, 16)}
    assert by[(32, 1)] == pytest.approx(recalls[1], abs=0.02)  # depth 1: PQ's own ranking
    assert by[(32, 16)] >= 0.95 > recalls[1]
    assert refine["index_mb"] > pq["index_mb"]  # it holds the float vectors
    # 4x the rows: the build streams chunks, so its peak grows by far less than 4x
    assert fig["build_peak_rss_mb_4x_rows"] < 1.5 * fig["build_peak_rss_mb"]


@pytest.mark.slow
def test_neighbours_scale_benchmark_tiny():
    """Smoke run: leaks finds the planted copies; memory grows by less than one column."""
    res = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_neighbours.py", "--scale", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "neighbours.scale" and fig["rows"] == [20_000, 100_000]
    leaks = fig["runs"]["leaks"]
    # every 1000th row copies the file of the row before it, in the other split
    assert [leaks[n]["train_test"] for n in ("20000", "100000")] == [20, 100]
    for analysis, grew in fig["growth"].items():
        # 80k more rows: reading a single string column whole would add more than this
        assert grew["peak_over_baseline_growth_mb"] < grew["one_whole_sha256_column_mb"], (
            analysis,
            grew,
        )
