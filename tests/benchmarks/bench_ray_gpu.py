"""Benchmark: the Ray path on one GPU, end to end, beside the local runner.

    python tests/benchmarks/bench_ray_gpu.py            # ViT-L/14 (random weights), 224 px,
                                                        # 20,000 synthetic JPEGs, one GPU;
                                                        # under 8 minutes on an H100/H200
    python tests/benchmarks/bench_ray_gpu.py --tiny     # tiny-vit on the CPU, for CI

What it does, in order:

1. writes ``--images`` synthetic photo-like JPEGs (``--size`` px) with ``--jpeg-workers``
   processes;
2. saves seeded random weights of the backbone's image tower to a safetensors file, so
   both engines load the model through the real ``--weights PATH`` code (no download;
   the speed of a network does not depend on its weights);
3. ``local``: :func:`embed.embed_source` on ``--device`` (DataLoader decode workers);
4. ``ray``: :func:`embed.ray_engine.embed_source_ray` on a local cluster of all CPUs and
   GPUs of the machine, one encoder actor per GPU (``--gpus-per-worker 1``; CPU decode
   tasks feed it through Ray's object store);
5. meanwhile a thread samples ``nvidia-smi`` GPU utilisation every 0.5 s (``null``
   where there is no ``nvidia-smi``).

Figures per engine: end-to-end images/s (wall clock, model load included), the loop's
images/s and its steady rate (first batch excluded), time to the first batch, and the
mean/median GPU utilisation over the run. The target is >= 2,500 images/s on the Ray
path. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _write_jpegs(args: tuple[Path, int, int, int]) -> int:
    import numpy as np
    from PIL import Image

    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        engine = "real" if i % 2 == 0 else "fake"
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        img = small.resize((size, size), Image.BICUBIC)
        img.save(folder / engine / f"{i:07d}.jpg", quality=90)
    return stop - start


def make_jpegs(folder: Path, *, n: int, size: int, workers: int) -> None:
    for engine in ("real", "fake"):
        (folder / engine).mkdir(parents=True, exist_ok=True)
    step = max(1, -(-n // max(1, workers)))
    jobs = [(folder, a, min(a + step, n), size) for a in range(0, n, step)]
    if workers <= 1:
        for job in jobs:
            _write_jpegs(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_write_jpegs, jobs)) == n


def random_weights_file(name: str, path: Path) -> Path:
    """The registry's seeded random weights of an open_clip entry's image tower
    (``build_backbone(random_weights=True)``), saved as an open_clip checkpoint's
    ``visual.*`` tensors."""
    from safetensors.torch import save_file

    from facebank.embed.backbones.registry import backbone_info, build_backbone

    info = backbone_info(name)
    if info.library != "open_clip":
        raise SystemExit(f"--backbone {name}: this script writes open_clip weights only")
    tower = build_backbone(info, device="cpu", random_weights=True).module
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(path))
    return path


class GpuSampler:
    """Samples ``nvidia-smi`` utilisation (%) in a thread; ``samples`` stays empty without it."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.every):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_median": None}
        return {
            "gpu_util_mean": round(statistics.fmean(self.samples), 1),
            "gpu_util_median": round(statistics.median(self.samples), 1),
        }


def _figures(summary: object, wall: float, sampler: GpuSampler) -> dict:
    rows = summary.rows  # type: ignore[attr-defined]
    return {
        "rows": rows,
        "end_to_end_images_per_s": round(rows / wall, 1),
        "loop_images_per_s": round(summary.images_per_s, 1),  # type: ignore[attr-defined]
        "steady_images_per_s": round(summary.steady_images_per_s, 1),  # type: ignore[attr-defined]
        "first_batch_s": round(summary.first_batch_s, 2),  # type: ignore[attr-defined]
        "wall_s": round(wall, 2),
        **sampler.summary(),
    }


def run(args: argparse.Namespace) -> dict:
    from facebank.embed import embed_source
    from facebank.ray_engine.embedding import RayOptions, embed_source_ray

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-ray-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "benchmark": "ray_gpu",
        "tiny": args.tiny,
        "backbone": args.backbone,
        "weights": "seeded random (saved to a safetensors file)",
        "images": args.images,
        "image_px": args.size,
        "batch_size": args.batch_size,
        "device": args.device,
        "target_images_per_s": 2500,
    }
    try:
        src = work / "src"
        t = time.perf_counter()
        if not src.is_dir():
            make_jpegs(src, n=args.images, size=args.size, workers=args.jpeg_workers)
        result["jpegs_s"] = round(time.perf_counter() - t, 1)
        weights = random_weights_file(args.backbone, work / "weights.safetensors")
        kw = {"backbone": args.backbone, "weights": weights, "batch_size": args.batch_size}
        if "local" in args.engines:
            with GpuSampler() as sampler:
                t = time.perf_counter()
                s = embed_source(
                    src, out=work / "local.zarr", device=args.device, progress=False, **kw
                )
                result["local"] = _figures(s, time.perf_counter() - t, sampler)
        if "ray" in args.engines:
            import ray

            own = not ray.is_initialized()
            if own:
                ray.init(include_dashboard=False, log_to_driver=False)
            gpus = 1.0 if args.device.startswith("cuda") else 0.0
            try:
                with GpuSampler() as sampler:
                    t = time.perf_counter()
                    s = embed_source_ray(
                        src,
                        out=work / "ray.zarr",
                        progress=False,
                        ray_options=RayOptions(
                            workers=1, gpus_per_worker=gpus, partition_rows=args.partition_rows
                        ),
                        **kw,
                    )
                    result["ray"] = _figures(s, time.perf_counter() - t, sampler)
                result["ray"]["cluster"] = {
                    k: float(v)
                    for k, v in ray.cluster_resources().items()
                    if k in ("CPU", "GPU", "memory")
                }
            finally:
                if own:
                    ray.shutdown()
        if "local" in result and "ray" in result:
            a, b = result["local"], result["ray"]
            result["ratio_ray_vs_local"] = round(
                b["end_to_end_images_per_s"] / max(a["end_to_end_images_per_s"], 1e-9), 3
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    from bench_embed import machine

    result["machine"] = machine(args.device)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny-vit on the CPU, 16 images (CI)")
    ap.add_argument("--backbone", default="clip-vit-l-14", help="an open_clip registry entry")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=256, help="JPEG side in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--partition-rows", type=int, default=4096)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engines", default="local,ray", help="comma-separated: local, ray")
    ap.add_argument("--jpeg-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=None, help="keep the JPEGs and banks here (reused)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.backbone, args.images, args.size, args.device = "tiny-vit", 16, 64, "cpu"
        args.batch_size, args.partition_rows, args.jpeg_workers = 8, 8, 1
    args.engines = [e for e in args.engines.split(",") if e]
    warnings.simplefilter("ignore")  # test-only backbone warnings; figures only on stdout
    figures = run(args)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
