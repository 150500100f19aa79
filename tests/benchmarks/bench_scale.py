"""Benchmark: the Ray Data engine against the local runner on the same images.

    python tests/benchmarks/bench_scale.py                 # real faces, efficientnet-lite1
    python tests/benchmarks/bench_scale.py --images 762 --repeats 3
    python tests/benchmarks/bench_scale.py --images 512 --partition-rows 128 --repeats 3  # lead
    python tests/benchmarks/bench_scale.py --tiny          # seconds-scale CI run

Measures, on the same images (``--source``, default ``../shared/realfaces``; the
first ``--images`` files in sorted order through a manifest; generated JPEGs when the
folder is absent or with ``--tiny``):

- ``local``: :func:`embed.embed_source` (DataLoader decode workers, automatic count)
  in images/s of its embedding loop;
- ``ray_1`` / ``ray_2``: :func:`embed.ray_engine.embed_source_ray` on a local cluster
  of ``num_cpus=2`` with 1 and 2 encoder actors, in images/s of the driver's loop
  (first batch requested to last partition committed; actor start and model loads
  included), plus the wall time with cluster start (run in-process by the test suite,
  the suite's running cluster is used and ``cluster_start_s`` is about 0);
- per engine also ``first_batch_s`` (loop start to the first batch in hand: decode
  workers or actors starting, model loads, the first decode - paid once per run) and
  ``steady_images_per_s`` (after the first batch, up to the last; start-up and the
  final commit/consolidation excluded);
- ``ratio_ray2_vs_local``: the target is >= 0.85 (Ray within 15% of local at 2 workers);
  ``steady_ratio_ray2_vs_local`` the same on steady-state rates (what a long run
  converges to, start-up amortised); ``wall_ratio_ray2_vs_local`` = local wall time /
  Ray wall time without the cluster start (end to end as a user waits, both sides
  loading their models, on a cluster that is already up);
- ``partition``: the cost of one partition commit (``write_partition`` of
  ``--partition-rows`` rows of the backbone's width, then its share of
  ``consolidate``), the per-partition overhead of the partitioned bank.

Prints ONE JSON line: medians over ``--repeats`` (runs alternate between the engines
so machine load drifts onto all of them alike).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

REALFACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "realfaces"


def _manifest(source: Path, n: int, folder: Path) -> Path:
    """A CSV manifest of the first ``n`` images of ``source/<engine>/**`` (sorted)."""
    from facebank.embed import scan_source

    items = scan_source(source, real_names=("real",)).items[:n]
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "engine"])
        for it in items:
            w.writerow([it.file, it.label, it.engine])
    return path


def _generated(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        engine = "real" if i % 2 == 0 else "fake"
        (folder / engine).mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((256, 256), Image.BICUBIC).save(folder / engine / f"{i:05d}.jpg", quality=90)
    return folder


def _local(source: Path, out: Path, backbone: str, batch_size: int) -> dict:
    from facebank.embed import embed_source

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    s = embed_source(source, backbone=backbone, out=out, batch_size=batch_size, progress=False)
    return {
        "images_per_s": s.images_per_s,
        "steady_images_per_s": s.steady_images_per_s,
        "first_batch_s": s.first_batch_s,
        "wall_s": time.perf_counter() - t,
        "rows": s.rows,
    }


def _ray(source: Path, out: Path, backbone: str, batch_size: int, workers: int, rows: int) -> dict:
    import ray

    from facebank.ray_engine.embedding import RayOptions, embed_source_ray

    shutil.rmtree(out, ignore_errors=True)
    # a cluster already running in this process (the test suite's, when run in-process)
    # is used as it is, and left running; a script run always starts and stops its own
    own = not ray.is_initialized()
    t = time.perf_counter()
    if own:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t
    try:
        s = embed_source_ray(
            source,
            backbone=backbone,
            out=out,
            batch_size=batch_size,
            progress=False,
            ray_options=RayOptions(workers=workers, partition_rows=rows),
        )
    finally:
        if own:
            ray.shutdown()
    return {
        "images_per_s": s.images_per_s,
        "steady_images_per_s": s.steady_images_per_s,
        "first_batch_s": s.first_batch_s,
        "wall_s": time.perf_counter() - t,
        "cluster_start_s": started,
        "rows": s.rows,
    }


def _partition_cost(folder: Path, *, rows: int, dim: int, repeats: int) -> dict:
    import numpy as np

    from facebank.embed import FeatureBank
    from facebank.embed.bank.partitions import consolidate, write_partition
    from facebank.testing import synthetic_backbone

    path = folder / "parts.zarr"
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    bank = FeatureBank.create(path, backbone=synthetic_backbone(dim))
    writes = []
    for k in range(repeats):
        ids = np.array([f"p{k}-{i}" for i in range(rows)])
        cols = {"label": np.zeros(rows, np.int8), "engine": np.full(rows, "e"), "path": ids}
        cols["sha256"] = ids
        X = rng.normal(size=(rows, dim)).astype(np.float32)
        t = time.perf_counter()
        write_partition(bank, k, features=X, columns=cols)
        writes.append(time.perf_counter() - t)
    t = time.perf_counter()
    consolidate(bank)
    merge = (time.perf_counter() - t) / repeats
    bank.close()
    return {
        "rows": rows,
        "dim": dim,
        "write_s": round(statistics.median(writes), 4),
        "consolidate_s_per_partition": round(merge, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-scale CI run")
    ap.add_argument("--source", type=Path, default=REALFACES)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--backbone", default="efficientnet-lite1")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--partition-rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--engines",
        default=None,
        help="comma-separated subset of local,ray_1,ray_2 (local is always run; default all"
        " three, with --tiny local,ray_2: one cluster start fewer in CI)",
    )
    args = ap.parse_args(argv)
    if args.tiny:
        args.images, args.backbone, args.batch_size, args.partition_rows = 16, "tiny-cnn", 8, 8
    if args.engines is None:
        args.engines = "local,ray_2" if args.tiny else "local,ray_1,ray_2"
    warnings.simplefilter("ignore")

    result: dict = {"benchmark": "scale", "tiny": args.tiny, "backbone": args.backbone}
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(prefix="facebank-scale-") as tmpdir:
        tmp = Path(tmpdir)
        if not args.tiny and args.source.is_dir():
            source = _manifest(args.source.resolve(), args.images, tmp)
            result["images"] = f"{args.images} real files from {args.source.name}"
        else:
            source = _generated(tmp / "gen", args.images)
            result["images"] = f"{args.images} generated 256 px JPEGs"
        chosen = {e.strip() for e in args.engines.split(",")} | {"local"}
        workers = [w for w in (1, 2) if f"ray_{w}" in chosen]
        runs: dict[str, list[dict]] = {"local": [], **{f"ray_{w}": [] for w in workers}}
        for _ in range(args.repeats):
            runs["local"].append(_local(source, tmp / "l.zarr", args.backbone, args.batch_size))
            for w in workers:
                runs[f"ray_{w}"].append(
                    _ray(
                        source,
                        tmp / "r.zarr",
                        args.backbone,
                        args.batch_size,
                        w,
                        args.partition_rows,
                    )
                )
        for name, got in runs.items():
            result[name] = {
                key: round(statistics.median(r[key] for r in got), 2)
                for key in got[0]
                if key != "rows"
            }
            result[name]["rows"] = got[0]["rows"]
        # start-up (actors, model loads, first decode) apart: what a long run converges to
        local_steady = result["local"]["steady_images_per_s"]
        for w in workers:
            result[f"ratio_ray{w}_vs_local"] = round(
                result[f"ray_{w}"]["images_per_s"] / result["local"]["images_per_s"], 3
            )
            # end to end, as a user waits for it (model loads, writes, consolidation
            # included on both sides), with the cluster already running (started once)
            ray_wall = result[f"ray_{w}"]["wall_s"] - result[f"ray_{w}"]["cluster_start_s"]
            result[f"wall_ratio_ray{w}_vs_local"] = (
                round(result["local"]["wall_s"] / ray_wall, 3) if ray_wall > 0 else None
            )
            steady = result[f"ray_{w}"]["steady_images_per_s"]
            result[f"steady_ratio_ray{w}_vs_local"] = (
                round(steady / local_steady, 3) if local_steady > 0 else None
            )
        dim = 1280 if args.backbone == "efficientnet-lite1" else 64
        result["partition"] = _partition_cost(
            tmp, rows=args.partition_rows, dim=dim, repeats=max(3, args.repeats)
        )
        result["partition_rows"] = args.partition_rows
        result["machine"]["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
