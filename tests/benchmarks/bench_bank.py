"""Benchmark: what a bank costs on disk and how partitions write and consolidate.

    python tests/benchmarks/bench_bank.py          # 400-row small bank; 8 x 25k-row partitions
    python tests/benchmarks/bench_bank.py --tiny   # seconds, for CI

Measures, on random float16 features (random features barely compress: the worst case):

- ``small_bank``: a ``--small-rows`` x ``--dim`` bank written by ``write_bank``: bytes on
  disk (apparent sizes of every file) against the bytes of its features.
- ``partitions``: ``--partitions`` partitions of ``--partition-rows`` rows written with
  ``write_partition`` (objects per partition, rows/s), then ``consolidate`` into a bank
  sharded every ``--shard-rows`` rows (rows/s, objects of the consolidated bank), and
  the same rows in an unsharded bank for the object count.
- ``read``: ``load_features`` of the consolidated bank (GB/s of stored bytes, warm cache).

Prints ONE JSON line (medians of ``--repeats`` runs where repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facebank.embed import FeatureBank, consolidate, write_bank, write_partition
from facebank.testing import synthetic_backbone


def disk_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, number of files) below ``path``."""
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


def columns(i: int, n: int) -> dict[str, np.ndarray]:
    return {
        "label": np.full(n, i % 2),
        "engine": np.full(n, "sdxl"),
        "path": np.array([f"p{i}/{j:07d}.jpg" for j in range(n)]),
        "sha256": np.array([f"{i:032x}{j:032x}" for j in range(n)]),
        "width": np.full(n, 512),
        "file_format": np.full(n, "JPEG"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small sizes for CI")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--small-rows", type=int, default=400)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--partition-rows", type=int, default=25_000)
    ap.add_argument("--shard-rows", type=int, default=65_536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.tiny:
        args.dim, args.small_rows, args.partitions = 64, 100, 3
        args.partition_rows, args.shard_rows, args.repeats = 500, 1024, 1
    chunk_rows = min(8192, args.shard_rows)
    rng = np.random.default_rng(0)
    out: dict = {"benchmark": "bank", "tiny": bool(args.tiny)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        X = rng.normal(size=(args.small_rows, args.dim)).astype(np.float16)
        write_bank(root / "small.zarr", X, labels=np.zeros(len(X), int), engines="real")
        size, files = disk_bytes(root / "small.zarr")
        out["small_bank"] = {
            "rows": args.small_rows,
            "dim": args.dim,
            "feature_bytes": int(X.nbytes),
            "disk_bytes": size,
            "files": files,
            "disk_over_features": round(size / X.nbytes, 2),
        }

        parts = [
            rng.normal(size=(args.partition_rows, args.dim)).astype(np.float16)
            for _ in range(args.partitions)
        ]
        write_s, cons_s, per_part_objects, sharded_files = [], [], 0, 0
        for r in range(args.repeats):
            path = root / f"p{r}.zarr"
            bank = FeatureBank.create(
                path,
                backbone=synthetic_backbone(args.dim),
                chunk_rows=chunk_rows,
                shard_rows=args.shard_rows,
            )
            t0 = time.perf_counter()
            for i, P in enumerate(parts):
                write_partition(path, i, features=P, columns=columns(i, len(P)))
            write_s.append(time.perf_counter() - t0)
            per_part_objects = disk_bytes(next((path / "_partitions").glob("000000-*")))[1] + 1
            t0 = time.perf_counter()
            done = consolidate(bank)
            cons_s.append(time.perf_counter() - t0)
            bank.close()
            sharded_files = disk_bytes(path)[1]
        rows = args.partitions * args.partition_rows
        flat = root / "flat.zarr"
        with FeatureBank.create(
            flat, backbone=synthetic_backbone(args.dim), chunk_rows=chunk_rows
        ) as b:
            for i, P in enumerate(parts):
                c = columns(i, len(P))
                b.append(
                    P,
                    labels=c["label"],
                    engines=c["engine"],
                    paths=c["path"],
                    splits=np.full(len(P), ""),
                    sha256=c["sha256"],
                    columns={"width": c["width"], "file_format": c["file_format"]},
                )
        out["partitions"] = {
            "partitions": args.partitions,
            "rows_per_partition": args.partition_rows,
            "objects_per_partition": per_part_objects,
            "write_rows_per_s": round(rows / statistics.median(write_s)),
            "consolidate_rows_per_s": round(rows / statistics.median(cons_s)),
            "shard_rows": args.shard_rows,
            "chunk_rows": chunk_rows,
            "files_sharded": sharded_files,
            "files_unsharded": disk_bytes(flat)[1],
        }
        reads = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            F = done.load_features(dtype=np.float16)
            reads.append(time.perf_counter() - t0)
        out["read"] = {
            "rows": len(F),
            "load_float16_GBps": round(F.nbytes / statistics.median(reads) / 1e9, 3),
        }
    out["machine"] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
