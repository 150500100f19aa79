# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""Benchmark: an IVF-PQ ``NeighbourIndex`` built from a bank chunk by chunk - build time,
peak RSS, recall@10 against exact search.

    python tests/benchmarks/bench_ivfpq.py                 # 200k x 768, 2k queries, 2 factories
    python tests/benchmarks/bench_ivfpq.py --rows 1000000 --queries 10000 \
        --factory IVF1024,PQ64 --factory IVF1024,PQ64,RFlat   # the issue's 1M (quiet machine)
    python tests/benchmarks/bench_ivfpq.py --tiny          # seconds, for CI
    python tests/benchmarks/bench_ivfpq.py --on-disk       # inverted lists in a file (mmap)

Data: embedding-like clustered rows (a centre per engine, variation on a 32-d subspace,
small isotropic noise), written once into a float16 bank in its own process. Queries are
fresh rows from the same distribution (not in the bank). Three more processes, so each
peak RSS is its own: (1) exact top-10 of the queries, streaming the bank chunk by chunk
(FAISS ``knn`` per chunk merged in a ``ResultHeap``); (2) the IVF-PQ build - train on a
seeded sample of 40 rows per list (``train_s``), add chunk by chunk (``add_s``), FAISS on
``--threads`` OpenMP threads - then searches of the 10k queries at several ``nprobe``
(through ``faiss.contrib.big_batch_search`` where it applies) and, for a refine factory
(``...,RFlat``, ``...,Refine(SQ8)``), several re-rank depths ``k_factor``; one build
process per ``--factory``; (3) in
``--tiny``, the same build at 4x the rows, to show that peak memory does not follow the
rows. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rows(rng, n: int, centres, basis):
    import numpy as np

    e = rng.integers(0, len(centres), n)
    X = (
        centres[e]
        + rng.normal(size=(n, basis.shape[0])).astype(np.float32) @ basis
        + rng.normal(scale=0.1, size=(n, basis.shape[1])).astype(np.float32)
    )
    return X.astype(np.float32), e


def _space(dim: int, engines: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(engines, dim)).astype(np.float32)
    basis = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    return centres, basis


def make_data(args: argparse.Namespace) -> None:
    """Write the bank (chunk by chunk) and the query file."""
    import numpy as np

    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone

    centres, basis = _space(args.dim, 10, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    with FeatureBank.create(
        args.bank,
        backbone=synthetic_backbone(args.dim),
        source="synthetic",
        chunk_rows=8192,
        overwrite=True,
    ) as bank:
        for start in range(0, args.rows, 65536):
            n = min(65536, args.rows - start)
            X, e = _rows(rng, n, centres, basis)
            ids = [f"{start + i:09d}" for i in range(n)]
            bank.append(
                X,
                labels=(e > 0).astype(np.int8),
                engines=[f"engine{j}" for j in e],
                paths=[f"img/{i}.png" for i in ids],
                splits=[""] * n,
                sha256=ids,
            )
    Q, _ = _rows(np.random.default_rng(args.seed + 2), args.queries, centres, basis)
    np.save(args.work / "queries.npy", Q)


def exact(args: argparse.Namespace) -> dict:
    """Exact cosine top-k of the queries, streaming the bank."""
    import faiss
    import numpy as np

    from facebank.embed import FeatureBank

    faiss.omp_set_num_threads(args.threads)
    bank = FeatureBank.open(args.bank)
    Q = np.load(args.work / "queries.npy")
    faiss.normalize_L2(Q)
    heap = faiss.ResultHeap(len(Q), args.k, keep_max=True)
    t0 = time.perf_counter()
    for start, _stop, X in bank.iter_features(chunk_rows=args.chunk_rows, dtype=np.float32):
        X = np.ascontiguousarray(X)
        faiss.normalize_L2(X)
        D, I = faiss.knn(Q, X, args.k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, I + start)
    heap.finalize()
    np.save(args.work / "exact_I.npy", heap.I)
    return {"exact_s": round(time.perf_counter() - t0, 2), "exact_peak_rss_mb": _peak_rss_mb()}


def build(args: argparse.Namespace) -> dict:
    """Build one index (``args.factory[-1]``) from the bank and search the queries at
    several nprobe (and re-rank depths for a refine index)."""
    import faiss
    import numpy as np

    from facebank.analysis.neighbours import NeighbourIndex
    from facebank.embed import FeatureBank
    from facebank.heads._faiss import train_sample_rows

    faiss.omp_set_num_threads(args.threads)
    factory = args.factory[-1]
    bank = FeatureBank.open(args.bank)
    import_rss = _peak_rss_mb()
    timing = {"train_s": 0.0, "train_rows": 0}
    train = NeighbourIndex._train

    def timed_train(self, index):  # the build's two phases, timed apart
        t = time.perf_counter()
        train(self, index)
        timing["train_s"] = time.perf_counter() - t
        timing["train_rows"] = train_sample_rows(index, len(self._source))

    NeighbourIndex._train = timed_train
    t0 = time.perf_counter()
    index = NeighbourIndex(
        bank,
        factory=factory,
        metric="cosine",
        device="cpu",
        chunk_rows=args.chunk_rows,
        on_disk=args.work / "ondisk" if args.on_disk else None,
    )
    build_s = time.perf_counter() - t0
    build_peak = _peak_rss_mb()
    out = {
        "factory": factory,
        "build_s": round(build_s, 2),
        "train_s": round(timing["train_s"], 2),
        "add_s": round(build_s - timing["train_s"], 2),
        "train_rows": timing["train_rows"],
        "build_peak_rss_mb": round(build_peak, 1),
        "rss_before_build_mb": round(import_rss, 1),
        "index_mb": round(faiss.serialize_index(index.index).nbytes / 2**20, 1)
        if not args.on_disk
        else None,
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    if args.skip_search:
        return out
    Q = np.load(args.work / "queries.npy")
    I_ex = np.load(args.work / "exact_I.npy")
    refine = "RFlat" in factory or "Refine(" in factory
    searches = []
    space = faiss.ParameterSpace()
    for nprobe in args.nprobe:
        for k_factor in args.k_factor if refine else [None]:
            space.set_index_parameter(index.index, "nprobe", nprobe)
            if k_factor is not None:
                space.set_index_parameter(index.index, "k_factor_rf", k_factor)
            t1 = time.perf_counter()
            _, I = index.search(Q, args.k)
            dt = time.perf_counter() - t1
            hits = [len(set(a) & set(b)) / args.k for a, b in zip(I, I_ex, strict=True)]
            searches.append(
                {
                    "nprobe": nprobe,
                    **({"k_factor": k_factor} if k_factor is not None else {}),
                    "recall_at_10": round(float(np.mean(hits)), 4),
                    "search_s": round(dt, 2),
                    "queries_per_s": round(len(Q) / dt, 1),
                }
            )
    out["searches"] = searches
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def _child(args: argparse.Namespace, phase: str, **extra: object) -> dict:
    cmd = [sys.executable, __file__, "--_phase", phase]
    for key, value in {**vars(args), **extra}.items():
        if key in ("_phase", "tiny") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif key == "factory":  # a repeated option
            for v in value:
                cmd += [flag, str(v)]
        elif isinstance(value, list):
            cmd += [flag, *map(str, value)]
        else:
            cmd += [flag, str(value)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{res.stderr[-3000:]}")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="8k x 32, IVF32,PQ8: a CI smoke test")
    p.add_argument("--rows", type=int, default=None, help="bank rows (default 200,000)")
    p.add_argument("--dim", type=int, default=None, help="feature size (default 768)")
    p.add_argument("--queries", type=int, default=None, help="query rows (default 2,000)")
    p.add_argument(
        "--factory",
        action="append",
        default=None,
        help="FAISS factory; repeat (default IVF512,PQ64 and IVF512,PQ64,RFlat)",
    )
    p.add_argument("--nprobe", type=int, nargs="+", default=None, help="default 8 16 32 64")
    p.add_argument(
        "--k-factor", type=int, nargs="+", default=None, help="refine re-rank depths (1 4 16)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="FAISS OpenMP threads (default: all CPUs)"
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default 65536)")
    p.add_argument("--on-disk", action="store_true", help="inverted lists on disk (mmap)")
    p.add_argument("--work", type=Path, default=None, help="folder for the bank (default tmp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bank", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--skip-search", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._phase:
        phases = {"make": make_data, "exact": exact, "build": build}
        print(json.dumps(phases[args._phase](args) or {}))
        return

    # sized for minutes (5-10 estimated on the loaded 2-core VM from a 50k-row run, not
    # run at this size); 1M x 768 with 10k queries took ~45 min there (exact search 29)
    args.rows = args.rows or (8000 if args.tiny else 200_000)
    args.dim = args.dim or (32 if args.tiny else 768)
    args.queries = args.queries or (300 if args.tiny else 2_000)
    args.factory = args.factory or (
        ["IVF32,PQ8", "IVF32,PQ8,RFlat"] if args.tiny else ["IVF512,PQ64", "IVF512,PQ64,RFlat"]
    )
    args.nprobe = args.nprobe or ([4, 32] if args.tiny else [8, 16, 32, 64])
    args.k_factor = args.k_factor or [1, 4, 16]
    args.threads = args.threads or os.cpu_count() or 1
    args.chunk_rows = args.chunk_rows or (1024 if args.tiny else 65536)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="facebank-bench-ivfpq-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    args.bank = args.work / "bench.zarr"

    t0 = time.perf_counter()
    if not (args.bank / "zarr.json").exists() or not (args.work / "queries.npy").exists():
        _child(args, "make")
    make_s = time.perf_counter() - t0
    ex = _child(args, "exact")
    builds = [_child(args, "build", factory=[f]) for f in args.factory]
    result = {
        "benchmark": "neighbours.ivfpq",
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "factories": args.factory,
        "threads": args.threads,
        "metric": "cosine",
        "chunk_rows": args.chunk_rows,
        "on_disk": args.on_disk,
        "make_bank_s": round(make_s, 1),
        **ex,
        "builds": builds,
    }
    if args.tiny:  # the same build over 4x the rows: peak memory must not follow the rows
        big = argparse.Namespace(**{**vars(args), "rows": 4 * args.rows})
        big.work = args.work / "x4"
        big.work.mkdir(exist_ok=True)
        big.bank = big.work / "bench.zarr"
        _child(big, "make")
        grown = _child(big, "build", skip_search=True, factory=args.factory[:1])
        result["build_peak_rss_mb_4x_rows"] = grown["build_peak_rss_mb"]
        result["build_peak_rss_mb"] = builds[0]["build_peak_rss_mb"]
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
