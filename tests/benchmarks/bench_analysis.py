"""Benchmark of the evaluation analysis: prints ONE JSON line.

- ``metrics_s``: ``analysis.metrics.binary_metrics`` with 1,000 stratified bootstrap
  resamples on 1,000,000 scores (target <= 5 s on a 2-core machine).
- ``loeo_s``: ``analysis.protocols.leave_one_engine_out`` over 10 AI engines with the
  ``linear`` head on a 100,000-row synthetic bank of 768-d features (CLIP ViT-L/14 width;
  target <= 60 s), bank already on disk (reading it is timed, writing it is not).

Usage: ``python tests/benchmarks/bench_analysis.py [--tiny]`` (``--tiny``: seconds-long smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="small sizes, for a smoke test")
    args = ap.parse_args()

    import torch

    from facebank.analysis.metrics import binary_metrics
    from facebank.analysis.protocols import leave_one_engine_out
    from facebank.testing import synthetic_arrays, write_synthetic_bank

    n_scores, n_boot = (20_000, 100) if args.tiny else (1_000_000, 1000)
    n_engines, n_rows, dim = (3, 3_000, 32) if args.tiny else (10, 100_000, 768)

    rng = np.random.default_rng(0)
    y = (rng.random(n_scores) < 0.5).astype(np.int8)
    s = (rng.normal(size=n_scores) + 1.5 * y).astype(np.float32)
    t0 = time.perf_counter()
    m = binary_metrics(y, s, threshold=1.0, n_boot=n_boot, seed=0)
    metrics_s = time.perf_counter() - t0

    n_real = n_rows // 2
    per_engine = (n_rows - n_real) // n_engines
    spec = {"real": n_real, **{f"engine{i:02d}": per_engine for i in range(n_engines)}}
    data = synthetic_arrays(spec, dim=dim, seed=0, signal=1.5, spread=1.5)
    with tempfile.TemporaryDirectory(prefix="facebank-bench-analysis-") as tmp:
        bank_path = Path(tmp) / "bench.zarr"
        write_synthetic_bank(bank_path, data)
        t0 = time.perf_counter()
        res = leave_one_engine_out([bank_path], head="linear", seed=0, fpr=0.005)
        loeo_s = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "benchmark": "analysis",
                "tiny": args.tiny,
                "metrics_s": round(metrics_s, 3),
                "metrics_n_scores": n_scores,
                "metrics_n_boot": n_boot,
                "metrics_bootstrap": m.bootstrap,
                "loeo_s": round(loeo_s, 3),
                "loeo_rows": int(len(data["labels"])),
                "loeo_engines": n_engines,
                "loeo_dim": dim,
                "loeo_head": "linear",
                "loeo_tpr_in": round(res.average["tpr_in"], 4),
                "loeo_tpr_out": round(res.average["tpr_out"], 4),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "device": "cpu",
                "machine": platform.machine(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
