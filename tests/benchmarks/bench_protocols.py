"""Benchmark of the few-shot protocol: prints ONE JSON line.

``few_shot_s``: ``analysis.fewshot.few_shot`` over 10 AI engines x 8 shot counts
(0, 5, 10, 20, 50, 100, 200, 500) x 3 seeded draws with the ``linear`` head on a
100,000-row synthetic bank (``--dim`` features, default 768, the CLIP ViT-L/14 width),
bank already on disk (reading it is timed, writing it is not); target <= 60 s.
That is 10 x (1 + 7 x 3) = 220 head fits on ~63,000 rows each, plus the one fit on
every engine that each engine's k = 0 fit starts from (``linear``'s warm start).
``--held N`` holds out only the first N engines (N x 22 fits on the same bank), for a
run on a busy machine; ``--shot-weight balanced`` weighs the k images as an engine.

Usage: ``python tests/benchmarks/bench_protocols.py [--tiny] [--dim D] [--held N]
[--shot-weight none|balanced]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--dim", type=int, default=None, help="feature width (default 768; tiny 16)")
    ap.add_argument("--held", type=int, default=None, help="hold out only the first N engines")
    ap.add_argument("--shot-weight", default="none", choices=("none", "balanced"))
    args = ap.parse_args()

    import torch

    from facebank.analysis.fewshot import few_shot
    from facebank.testing import synthetic_arrays, write_synthetic_bank

    if args.tiny:
        n_engines, n_rows, dim, shots, draws = 3, 3_000, 16, (0, 5, 20), 2
    else:
        n_engines, n_rows, dim, shots, draws = (
            10,
            100_000,
            768,
            (0, 5, 10, 20, 50, 100, 200, 500),
            3,
        )
    dim = args.dim or dim
    n_real = n_rows // 2
    per_engine = (n_rows - n_real) // n_engines
    spec = {"real": n_real, **{f"engine{i:02d}": per_engine for i in range(n_engines)}}
    data = synthetic_arrays(spec, dim=dim, seed=0, signal=1.5, spread=1.5)
    with tempfile.TemporaryDirectory(prefix="facebank-bench-protocols-") as tmp:
        bank_path = Path(tmp) / "bench.zarr"
        write_synthetic_bank(bank_path, data)
        t0 = time.perf_counter()
        held = sorted(e for e in spec if e != "real")[: args.held] if args.held else None
        res = few_shot(
            [bank_path],
            head="linear",
            shots=shots,
            draws=draws,
            seed=0,
            fpr=0.005,
            engines=held,
            shot_weight=args.shot_weight,
        )
        seconds = time.perf_counter() - t0
    avg = {str(r["k"]): round(r["tpr_mean"], 4) for r in res.average}
    print(
        json.dumps(
            {
                "benchmark": "protocols",
                "tiny": args.tiny,
                "few_shot_s": round(seconds, 3),
                "fits": len(res.points),
                "rows": int(len(data["labels"])),
                "engines": n_engines,
                "held_out": len(res.engines),
                "shot_weight": args.shot_weight,
                "shots": list(shots),
                "draws": draws,
                "dim": dim,
                "head": "linear",
                "avg_tpr_by_k": avg,
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_1min": round(os.getloadavg()[0], 2),
                "device": "cpu",
                "machine": platform.machine(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
