"""Benchmark of the cross-fitted audit (``audit --cv 5``): prints ONE JSON line.

- ``audit_s``: ``analysis.audit(cv=5, cv_heads=("linear", "mlp"))`` on a bank of
  100,000 rows x 768 features with acquisition metadata (``bench_audit.synthetic_metadata``:
  the label partly carried by format and size) and features that carry it too: the
  metadata model and both heads are fitted on 4 folds and score the fifth, five times,
  each head plain and balanced (``balance=True``, the default), plus the split audit
  around it. Target: < 120 s on the 2-core machine. The bank is on disk before the clock
  starts; reading its features is timed.
- ``audit_cpu_s``: the same step's CPU seconds (all threads).
- ``fits``: head fits made (folds x heads x plain/balanced).

Usage: ``python tests/benchmarks/bench_audit_cv.py [--tiny] [--no-balance]``
(``--tiny``: 1,000 rows x 16 features, the mlp capped at 20 steps: a smoke test).
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
from bench_audit import synthetic_metadata


def write_cv_bank(path: Path, n: int, dim: int, *, seed: int = 0) -> None:
    """``n`` rows x ``dim`` float16 features: a weak face signal along one direction and
    a file signal (PNG) along another, with the metadata columns."""
    from facebank.embed.bank.bank import FeatureBank
    from facebank.testing import synthetic_backbone

    meta, y, engines = synthetic_metadata(n, seed)
    rng = np.random.default_rng(seed + 2)
    bank = FeatureBank.create(path, backbone=synthetic_backbone(dim))
    step = 25_000
    for a in range(0, n, step):
        b = min(n, a + step)
        X = rng.normal(size=(b - a, dim)).astype(np.float32)
        X[:, 0] += 0.8 * y[a:b]
        X[:, 1] += 1.0 * (meta["file_format"][a:b] == "PNG")
        bank.append(
            X,
            labels=y[a:b],
            engines=engines[a:b],
            paths=np.char.add("img/", np.arange(a, b).astype(str)),
            splits=np.full(b - a, ""),
            sha256=np.char.add("sha", np.arange(a, b).astype(str)),
            columns={k: v[a:b] for k, v in meta.items()},
        )
    bank.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="1,000 rows x 16, for a smoke test")
    ap.add_argument("--no-balance", action="store_true", help="plain training only")
    args = ap.parse_args()
    from facebank.analysis.audit import audit
    from facebank.heads import create_head

    n, dim = (1_000, 16) if args.tiny else (100_000, 768)
    heads = {
        "linear": create_head("linear"),
        "mlp": create_head("mlp", max_steps=20) if args.tiny else create_head("mlp"),
    }
    with tempfile.TemporaryDirectory(prefix="facebank-bench-audit-cv-") as tmp:
        path = Path(tmp) / "bench.zarr"
        write_cv_bank(path, n, dim)
        t0, c0 = time.perf_counter(), time.process_time()
        res = audit([path], cv=5, cv_heads=heads, balance=not args.no_balance, seed=0)
        audit_s, audit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    cf = res.crossfit or {}
    plain = {h: v["plain"] for h, v in cf.get("heads", {}).items()}
    print(
        json.dumps(
            {
                "benchmark": "audit_cv",
                "tiny": args.tiny,
                "rows": n,
                "dim": dim,
                "folds": cf.get("k"),
                "fits": cf.get("k", 0) * len(heads) * (1 if args.no_balance else 2),
                "audit_s": round(audit_s, 2),
                "audit_cpu_s": round(audit_cpu_s, 2),
                "target_audit_s": 120,
                "uncertain_rows": (cf.get("uncertain") or {}).get("n"),
                "auc_plain": {h: round(b["auc"], 4) for h, b in plain.items()},
                "overlap_auc_plain": {h: round(b["overlap_auc"], 4) for h, b in plain.items()},
                "metadata_overlap_auc": round((cf.get("metadata") or {})["overlap_auc"], 4),
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "load_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
