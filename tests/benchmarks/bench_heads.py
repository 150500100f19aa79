"""Benchmark of the heads: fit time per head on generated fp16 banks; prints ONE JSON line.

For each size (rows x 768, the CLIP ViT-L/14 width; features generated as float16 like a
bank, converted to float32 at the head boundary as ``FeatureBank.load_features`` does):
fit seconds and held-out AUC of every head, next to sklearn ``LogisticRegression``
(lbfgs, its defaults) on the same data in the same run; ``knn`` also fit + predict on
10,000 queries (``knn`` = its default ``factory="auto"``, an IVF above 50k rows, with
recall@10 against ``knn-exact`` = ``factory="Flat"`` on 1,000 of the queries). Targets on
a 2-core CPU at 100k x 768: linear <= 3 s and no slower than sklearn, mlp (defaults)
<= 15 s, prototype <= 10 s, knn fit+predict 10k queries <= 10 s.
Device: cuda when available (``--device``), else CPU. One-time import/warm-up costs are
paid by a warm-up fit on 256 rows before anything is timed.

The data: two classes (55% real) with per-dimension scales decaying like an embedding
spectrum, the AI class shifted along a random direction, 3% label noise - hard enough
that no head reaches AUC 1.

Usage: ``python tests/benchmarks/bench_heads.py [--tiny] [--sizes 10000,100000] [--with-1m]
[--heads linear,mlp,...] [--device auto|cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

DIM = 768
N_TEST = 10_000
N_QUERIES = 10_000


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 features (n, dim) and labels (n,), generated in chunks."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(1234)  # the same class geometry for every seed
    scale = (1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)).astype(np.float32)
    mu = dirs.standard_normal(dim).astype(np.float32) * scale
    mu *= 2.0 / np.linalg.norm(mu / scale)  # Mahalanobis separation 2 -> Bayes AUC ~0.92
    X = np.empty((n, dim), np.float16)
    y = (rng.random(n) < 0.45).astype(np.int64)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        X[a:b] = rng.standard_normal((b - a, dim), dtype=np.float32) * scale + y[a:b, None] * mu
    flip = rng.random(n) < 0.03
    y[flip] = 1 - y[flip]
    return X, y


def timed(fn, label: str = ""):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    if label:  # progress on stderr; stdout stays one JSON line
        print(f"{label}: {dt:.2f} s", file=sys.stderr, flush=True)
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="2,000 rows x 64: a seconds-long smoke run")
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated row counts")
    ap.add_argument("--with-1m", action="store_true", help="also 1,000,000 rows (needs ~6 GB RAM)")
    ap.add_argument(
        "--heads",
        default="linear,mlp,prototype,wide-mlp,knn,knn-exact",
        help="heads to time; knn = factory 'auto' (IVF above 50k rows), knn-exact = factory 'Flat'",
    )
    ap.add_argument("--no-sklearn", action="store_true", help="skip the sklearn reference")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="limit torch, FAISS and BLAS (sklearn) to N threads (0 = libraries' defaults)",
    )
    args = ap.parse_args()
    if args.threads:
        import faiss
        import torch as _torch
        from threadpoolctl import threadpool_limits

        _torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from facebank.heads import create_head
    from facebank.heads.base import resolve_device

    device = resolve_device(args.device)
    dim = 64 if args.tiny else DIM
    sizes = [2000] if args.tiny else [int(s) for s in args.sizes.split(",") if s]
    if args.with_1m and not args.tiny:
        sizes.append(1_000_000)
    names = [h for h in args.heads.split(",") if h]
    tiny_params = {
        "mlp": {"max_steps": 30},
        "wide-mlp": {"max_steps": 30, "width": 128, "lr": 1e-2},
        "prototype": {"max_steps": 30},
    }
    X_test16, y_test = make_data(2000 if args.tiny else N_TEST, dim, seed=99)
    X_test = X_test16.astype(np.float32)
    # one-time costs (imports inside torch.optim / faiss, kernel warm-up) are paid by a
    # warm-up fit on 256 rows so that the figures are per-fit times
    Xw, yw = X_test[:256], y_test[:256]
    for name in names:
        if name != "knn-exact":
            create_head(name, device=device, **tiny_params.get(name, {})).fit(
                Xw, yw
            ).decision_function(Xw)
    LogisticRegression().fit(Xw, yw)
    results = []
    for n in sizes:
        X16, y = make_data(n, dim, seed=0)
        X = X16.astype(np.float32)  # the head boundary: float32, as FeatureBank.load_features
        row: dict = {"rows": n, "dim": dim}
        if not args.no_sklearn:
            sk, t = timed(
                lambda X=X, y=y: LogisticRegression(max_iter=100).fit(X, y), f"{n} sklearn"
            )
            row["sklearn_logreg_s"] = round(t, 3)
            row["sklearn_logreg_auc"] = round(
                float(roc_auc_score(y_test, sk.decision_function(X_test))), 4
            )
        neighbours = {}
        for name in names:
            params = dict(device=device, **(tiny_params.get(name, {}) if args.tiny else {}))
            head_name = name
            if name == "knn-exact":
                head_name = "knn"
                params.update(factory="Flat")
            head, t = timed(
                lambda head_name=head_name, params=params, X=X, y=y: create_head(
                    head_name, **params
                ).fit(X, y),
                f"{n} {name}",
            )
            row[f"{name}_fit_s"] = round(t, 3)
            if head_name == "knn":
                q = X_test[:N_QUERIES]
                _, tq = timed(lambda head=head, q=q: head.decision_function(q))
                row[f"{name}_fit_predict_10k_s"] = round(t + tq, 3)
                row["knn_queries"] = len(q)
                row[f"{name}_index"] = f"{head.factory_}" + (
                    f" nprobe {head.nprobe_}" if head.nprobe_ else ""
                )
                neighbours[name] = head.kneighbors(q[:1000])[1]
            row[f"{name}_auc"] = round(
                float(roc_auc_score(y_test, head.decision_function(X_test))), 4
            )
            if name == "linear":
                row["linear_n_iter"] = [head.n_iter_warm_, head.n_iter_]
            del head
        if len(neighbours) == 2:
            pairs = zip(neighbours["knn"], neighbours["knn-exact"], strict=True)
            row["knn_recall_at_10"] = round(
                float(np.mean([len(set(a) & set(b)) for a, b in pairs])) / 10, 3
            )
        if "linear_fit_s" in row and "sklearn_logreg_s" in row:
            row["linear_vs_sklearn_speedup"] = round(
                row["sklearn_logreg_s"] / max(row["linear_fit_s"], 1e-9), 2
            )
        results.append(row)
        del X, X16
    out = {
        "benchmark": "heads",
        "tiny": bool(args.tiny),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "threads_flag": args.threads,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "targets_100k_cpu_s": {
            "linear": 3.0,
            "mlp": 15.0,
            "prototype": 10.0,
            "knn_fit_predict_10k": 10.0,
        },
        "note": (
            "knn = factory 'auto' (the default: Flat below 50k rows, else IVF, "
            "nprobe nlist/4); knn-exact = 'Flat'"
        ),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
