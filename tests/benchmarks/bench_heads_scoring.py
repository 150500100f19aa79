"""Benchmark of the heads' scoring: ``decision_function`` latency and throughput; ONE JSON line.

For each head (``linear``, ``mlp``, ``prototype`` by default, at their default
architectures, fitted briefly on 5,000 generated rows: the fit's quality does not change
the cost of scoring): the median over ``--repeats`` of

- ``one_row_ms``: one ``decision_function`` call on one row, averaged over ``--calls``
  consecutive calls on different rows (the per-image cost of a service scoring images
  one at a time);
- ``batch_s``: one call on ``--rows`` rows (a bank scored at once).

Every call goes through the fixed 256-row float64 blocks of ``heads._torch.predict_blocks``,
so the one-row figure is the cost of one padded block plus the per-call overhead. The
1-row scores are checked to equal the same rows' scores in the large call, bit for bit
(``one_row_equals_batch``).

Usage: ``python tests/benchmarks/bench_heads_scoring.py [--tiny] [--rows 100000]
[--calls 100] [--repeats 3] [--heads linear,mlp,prototype] [--device cpu] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

DIM = 768
FIT_ROWS = 5000
# enough Adam steps to leave the initialisation, few enough that fitting stays seconds
FIT_PARAMS = {name: {"max_steps": 50} for name in ("mlp", "prototype", "wide-mlp")}


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 features (n, dim), two classes shifted apart, and labels (n,)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(np.int64)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X[:, : dim // 8] += 0.5 * y[:, None]
    return X, y


def cpu_name() -> str:
    """The CPU's model name (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def time_head(head, X: np.ndarray, *, calls: int, repeats: int) -> dict:
    """Median one-row latency (ms) and large-call time (s) of ``head.decision_function``."""
    one_row, batch = [], []
    singles = np.empty(calls)
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(calls):
            singles[i] = head.decision_function(X[i : i + 1])[0]
        one_row.append((time.perf_counter() - t) / calls * 1e3)
        t = time.perf_counter()
        scores = head.decision_function(X)
        batch.append(time.perf_counter() - t)
    return {
        "one_row_ms": round(statistics.median(one_row), 3),
        "one_row_ms_runs": [round(v, 3) for v in one_row],
        "batch_s": round(statistics.median(batch), 6),
        "batch_s_runs": [round(v, 6) for v in batch],
        "one_row_equals_batch": bool(np.array_equal(singles, scores[:calls])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="2,000 rows x 64, 10 calls: a smoke run")
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the large call")
    ap.add_argument("--calls", type=int, default=100, help="one-row calls per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported")
    ap.add_argument("--heads", default="linear,mlp,prototype", help="comma-separated heads")
    ap.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = its default)")
    args = ap.parse_args()

    import torch

    from facebank.heads import create_head
    from facebank.heads.base import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dim, rows, calls = (64, 2000, 10) if args.tiny else (DIM, args.rows, args.calls)
    X_fit, y_fit = make_data(FIT_ROWS if not args.tiny else 1000, dim, seed=0)
    X, _ = make_data(rows, dim, seed=1)
    results = {}
    for name in [h for h in args.heads.split(",") if h]:
        head = create_head(name, device=device, **FIT_PARAMS.get(name, {})).fit(X_fit, y_fit)
        head.decision_function(X[:1])  # one-time costs (lazy imports, first kernels)
        results[name] = time_head(head, X, calls=calls, repeats=args.repeats)
    out = {
        "benchmark": "heads_scoring",
        "tiny": bool(args.tiny),
        "rows": rows,
        "dim": dim,
        "calls": calls,
        "repeats": args.repeats,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
