# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""Benchmark: self-kNN (k=10) over a streamed feature bank, time and peak memory.

    python tests/benchmarks/bench_neighbours.py            # 100k x 768, Flat (exact) + IVF, 3 runs
    python tests/benchmarks/bench_neighbours.py --tiny     # seconds, for CI
    python tests/benchmarks/bench_neighbours.py --rows 1000000 --factory Flat   # GPU machine
    python tests/benchmarks/bench_neighbours.py --scale        # leaks + clusters, 200k vs 1M rows
    python tests/benchmarks/bench_neighbours.py --scale --tiny # seconds, for CI

The bank is written to disk once (with ``FeatureBank.create`` + ``append`` in chunks, in
its own process); every measured run is a fresh process that opens the bank, builds a
``NeighbourIndex`` by streaming it in ``--chunk-rows`` chunks, and runs ``self_knn``.
Peak RSS of that process is compared with the streaming budget: baseline (imports, open
bank, one warm-up search that allocates FAISS/BLAS workspaces) + 2 x one chunk + the
index + the returned ``D, I`` (n x k x 12 bytes). Approximate indexes report recall@k against exact
search on a sample of rows. Prints ONE JSON line (medians over runs, plus every run).

``--scale`` measures ``neighbours leaks`` and ``neighbours clusters`` (an IVF-PQ index,
run folder written) at two bank sizes, each in a fresh process: their peak RSS may grow
with the rows only by what the index and the per-row codes take (``index_mb``, a few
bytes a row), never by a whole string column or an ``(n, k)`` result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_now_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_bank(path: Path, *, rows: int, dim: int, engines: int, seed: int, chunk: int) -> None:
    """A bank of Gaussian clusters (one per engine) written chunk by chunk (low memory)."""
    import numpy as np

    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone

    rng = np.random.default_rng(seed)
    # Embedding-like: a centre per engine plus variation on a 32-d subspace plus small
    # isotropic noise (isotropic 768-d noise has no neighbourhood structure at all).
    centres = rng.normal(size=(engines, dim)).astype(np.float32)
    basis = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    with FeatureBank.create(
        path,
        backbone=synthetic_backbone(dim),
        source="synthetic",
        chunk_rows=min(chunk, 8192),
        overwrite=True,
    ) as bank:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            e = rng.integers(0, engines, n)
            X = (
                centres[e]
                + rng.normal(size=(n, 32)).astype(np.float32) @ basis
                + rng.normal(scale=0.1, size=(n, dim)).astype(np.float32)
            )
            ids = [f"{start + i:08d}" for i in range(n)]
            bank.append(
                X,
                labels=(e > 0).astype(np.int8),
                engines=[f"engine{j}" for j in e],
                paths=[f"img/{i}.png" for i in ids],
                splits=[""] * n,
                sha256=ids,
            )


def make_scale_bank(path: Path, *, rows: int, dim: int, seed: int) -> None:
    """Like :func:`make_bank`, with real 64-hex sha256s, train/test splits and a few
    exact copies (same file in both splits), so leaks has every column to read."""
    import hashlib

    import numpy as np

    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim)).astype(np.float32)
    basis = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    chunk = 65536
    with FeatureBank.create(
        path, backbone=synthetic_backbone(dim), source="synthetic", chunk_rows=8192, overwrite=True
    ) as bank:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            e = rng.integers(0, 10, n)
            X = (
                centres[e]
                + rng.normal(size=(n, 32)).astype(np.float32) @ basis
                + rng.normal(scale=0.1, size=(n, dim)).astype(np.float32)
            )
            ids = [start + i for i in range(n)]
            # one row in 1000 is the file of the row before it (an exact duplicate)
            shas = [hashlib.sha256(str(i - (i % 1000 == 1)).encode()).hexdigest() for i in ids]
            bank.append(
                X,
                labels=(e > 0).astype(np.int8),
                engines=[f"engine{j}" for j in e],
                paths=[f"engine{j}/{i:09d}.png" for i, j in zip(ids, e, strict=True)],
                splits=np.where(np.arange(start, start + n) % 2 == 0, "train", "test"),
                sha256=shas,
            )


def measure_analysis(args: argparse.Namespace) -> dict:
    """One analysis over the bank (in its own process): time, peak RSS, index size."""
    import faiss

    from facebank.analysis.neighbours import NeighbourIndex, engine_clusters, find_leaks
    from facebank.embed import FeatureBank

    bank = FeatureBank.open(args.bank)
    base = _rss_now_mb()
    t0 = time.perf_counter()
    index = NeighbourIndex(
        bank,
        factory=args.factory[-1],
        device="cpu",
        nprobe=args.nprobe,
        chunk_rows=args.chunk_rows,
    )
    t_build = time.perf_counter() - t0
    index_mb = faiss.serialize_index(index.index).nbytes / 2**20
    t1 = time.perf_counter()
    out = Path(args.out)
    if args.analysis == "leaks":
        res = find_leaks(index, threshold=0.99, k=args.k, out=out)
        found = {"pairs": len(res.pairs), "train_test": res.train_test}
    else:
        res = engine_clusters(index, k=args.k, n_boot=200, silhouette_max=2000, out=out)
        found = {"purity_micro": round(res.overall["micro"], 4)}
    return {
        "build_s": round(t_build, 2),
        "analysis_s": round(time.perf_counter() - t1, 2),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "index_mb": round(index_mb, 1),
        **found,
    }


def scale(args: argparse.Namespace) -> dict:
    """leaks and clusters at two sizes; each (size, analysis) in a fresh process."""
    # tiny: large enough that the 5x bank's columns (~30 MB read whole) stand out of the
    # few MB by which the peak RSS of one run differs from the next
    sizes = [args.rows or (20_000 if args.tiny else 200_000)]
    sizes.append(args.rows_large or 5 * sizes[0])
    dim = args.dim or (16 if args.tiny else 128)
    factory = (args.factory or ["IVF256,PQ4" if args.tiny else "IVF1024,PQ16"])[-1]
    nprobe = args.nprobe or (2 if args.tiny else 8)
    chunk = args.chunk_rows or (4096 if args.tiny else 65536)
    work = Path(tempfile.mkdtemp(prefix="facebank-bench-nb-scale-"))
    runs: dict[str, dict] = {}
    try:
        for rows in sizes:
            bank = work / f"b{rows}.zarr"
            t0 = time.perf_counter()
            make_scale_bank(bank, rows=rows, dim=dim, seed=args.seed)
            made = round(time.perf_counter() - t0, 1)
            for analysis in ("leaks", "clusters"):
                cmd = [sys.executable, __file__, "--_child", "--_analysis", analysis]
                cmd += ["--bank", str(bank), "--factory", factory, "--nprobe", str(nprobe)]
                cmd += ["--k", str(args.k), "--chunk-rows", str(chunk)]
                cmd += ["--_out", str(work / f"run-{analysis}-{rows}")]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit(f"{analysis} at {rows} rows failed:\n{res.stderr[-3000:]}")
                fig = json.loads(res.stdout.strip().splitlines()[-1])
                runs.setdefault(analysis, {})[str(rows)] = {**fig, "bank_write_s": made}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = (str(n) for n in sizes)
    growth = {}
    for analysis, by_size in runs.items():
        a, b = by_size[small], by_size[large]
        grew = (b["peak_rss_mb"] - b["baseline_rss_mb"]) - (a["peak_rss_mb"] - a["baseline_rss_mb"])
        index_grew = b["index_mb"] - a["index_mb"]
        # what a whole sha256 column alone would add (numpy <U64: 256 bytes a row)
        whole_column = (sizes[1] - sizes[0]) * 256 / 2**20
        growth[analysis] = {
            "peak_over_baseline_growth_mb": round(grew, 1),
            "index_growth_mb": round(index_grew, 1),
            "per_extra_row_bytes": round(grew * 2**20 / (sizes[1] - sizes[0]), 1),
            "one_whole_sha256_column_mb": round(whole_column, 1),
        }
    return {
        "benchmark": "neighbours.scale",
        "rows": sizes,
        "dim": dim,
        "factory": factory,
        "nprobe": nprobe,
        "k": args.k,
        "chunk_rows": chunk,
        "runs": runs,
        "growth": growth,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    }


def measure(args: argparse.Namespace) -> dict:
    """One measured run (in its own process)."""
    import faiss
    import numpy as np

    from facebank.analysis.neighbours import NeighbourIndex
    from facebank.embed import FeatureBank

    factory = args.factory[-1]
    bank = FeatureBank.open(args.bank)
    # warm-up: FAISS/BLAS allocate per-thread workspaces on the first search; they are
    # a fixed cost of the library, not of the bank, so they belong to the baseline
    warm = np.random.default_rng(0).random((4096, bank.dim), dtype=np.float32)
    NeighbourIndex(warm[:1024], device=args.device).search(warm, 11)
    del warm
    base = _rss_now_mb()
    t0 = time.perf_counter()
    index = NeighbourIndex(
        bank,
        factory=factory,
        device=args.device,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        chunk_rows=args.chunk_rows,
        gpu_float16=args.gpu_float16,
    )
    t_add = time.perf_counter() - t0
    after_add = _rss_now_mb()
    t1 = time.perf_counter()
    D, I = index.self_knn(args.k)
    t_search = time.perf_counter() - t1
    peak = _peak_rss_mb()
    n, d = len(bank), bank.dim
    chunk_mb = args.chunk_rows * d * 4 / 2**20
    index_mb = n * d * 4 / 2**20 if factory == "Flat" else max(after_add - base, 0.0)
    if index.device != "cpu":
        index_mb = 0.0  # the index lives in GPU memory
    outputs_mb = n * args.k * (4 + 8) / 2**20  # the returned D (float32) and I (int64)
    out = {
        "add_s": round(t_add, 3),
        "self_knn_s": round(t_search, 3),
        "total_s": round(t_add + t_search, 3),
        "rows_per_s": round(n / (t_add + t_search), 1),
        "device": index.device,
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(base, 1),
        "chunk_mb": round(chunk_mb, 1),
        "index_mb": round(index_mb, 1),
        "peak_over_baseline_mb": round(peak - base, 1),
        "outputs_mb": round(outputs_mb, 1),
        "budget_mb": round(2 * chunk_mb + index_mb + outputs_mb, 1),
        "within_budget": bool(peak - base <= 2 * chunk_mb + index_mb + outputs_mb),
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    if factory != "Flat":  # recall@k of the approximate index on a sample of rows
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(500, n), replace=False))
        full = faiss.IndexFlatIP(d)
        for _s, _e, C in bank.iter_features(chunk_rows=args.chunk_rows):
            faiss.normalize_L2(C)
            full.add(C)
        Q = bank.load_features(rows=sample)
        faiss.normalize_L2(Q)
        _, I_ex = full.search(Q, args.k + 1)
        hits = [
            len(set(I[r]) & (set(I_ex[j]) - {sample[j]})) / args.k for j, r in enumerate(sample)
        ]
        out["recall_at_k"] = round(float(np.mean(hits)), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="3k x 64, one run: a CI smoke test")
    p.add_argument("--rows", type=int, default=None, help="bank rows (default 100000)")
    p.add_argument("--dim", type=int, default=None, help="feature size (default 768)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--chunk-rows", type=int, default=None, help="rows per streamed chunk (default 32768)"
    )
    p.add_argument(
        "--factory",
        action="append",
        default=None,
        help="FAISS factory string; repeat (default: Flat and IVF1024,Flat)",
    )
    p.add_argument(
        "--nprobe", type=int, default=None, help="IVF lists probed (default 8; tiny 16 = all)"
    )
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--gpu-float16", action="store_true", help="float16 vectors on the GPU")
    p.add_argument("--repeat", type=int, default=None, help="measured runs (default 3; tiny 1)")
    p.add_argument("--bank", type=Path, default=None, help="reuse (or make) the bank here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", action="store_true", help="leaks + clusters at two sizes")
    p.add_argument("--rows-large", type=int, default=None, help="--scale: second size (5x)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_analysis", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._child:
        args.analysis, args.out = args._analysis, args._out
        print(json.dumps(measure_analysis(args) if args.analysis else measure(args)))
        return
    if args.scale:
        print(json.dumps(scale(args)))
        return

    rows = args.rows or (3000 if args.tiny else 100_000)
    dim = args.dim or (64 if args.tiny else 768)
    # 32768 x 768 float32 = 96 MB: the budget (2 chunks + index) then has room for the
    # fixed FAISS/zarr workspaces (~50 MB), and 100k rows still stream in 4 chunks
    chunk = args.chunk_rows or (512 if args.tiny else 32768)
    factories = args.factory or (["Flat", "IVF16,Flat"] if args.tiny else ["Flat", "IVF1024,Flat"])
    repeat = args.repeat or (1 if args.tiny else 3)
    tmp = None
    bank = args.bank
    if bank is None:
        tmp = tempfile.TemporaryDirectory(prefix="facebank-bench-nb-")
        bank = Path(tmp.name) / "bench.zarr"
    t0 = time.perf_counter()
    if not (bank / "zarr.json").exists():  # written here: the measured runs are other processes
        make_bank(bank, rows=rows, dim=dim, engines=10, seed=args.seed, chunk=8192)
    t_make = time.perf_counter() - t0

    results = {}
    for factory in factories:
        nprobe = (
            args.nprobe
            if args.nprobe is not None
            else ((16 if args.tiny else 8) if factory.startswith("IVF") else None)
        )
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            "--bank",
            str(bank),
            "--k",
            str(args.k),
            "--chunk-rows",
            str(chunk),
            "--factory",
            factory,
            "--device",
            args.device,
        ]
        if nprobe is not None:
            cmd += ["--nprobe", str(nprobe)]
        if args.ef_search is not None:
            cmd += ["--ef-search", str(args.ef_search)]
        if args.gpu_float16:
            cmd.append("--gpu-float16")
        runs = []
        for _ in range(repeat):
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"measured run failed ({factory}):\n{res.stderr[-3000:]}")
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        med = {
            key: statistics.median(r[key] for r in runs)
            for key in runs[0]
            if isinstance(runs[0][key], (int, float)) and not isinstance(runs[0][key], bool)
        }
        med["within_budget"] = all(r["within_budget"] for r in runs)
        med["device"] = runs[0]["device"]
        results[factory] = {"nprobe": nprobe, "median": med, "runs": runs}

    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    print(
        json.dumps(
            {
                "benchmark": "neighbours.self_knn",
                "rows": rows,
                "dim": dim,
                "k": args.k,
                "chunk_rows": chunk,
                "repeat": repeat,
                "bank_write_s": round(t_make, 2),
                "results": results,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "torch_threads": torch_threads,
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                },
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
