"""Benchmark: embedding on one GPU with JPEGs decoded on the CPU and on the GPU, beside
the forward pass alone.

    python tests/benchmarks/bench_embed_gpu.py          # ViT-L/14 (random weights), 224 px
                                                        # input, 16,000 synthetic 256 px JPEGs;
                                                        # under 8 minutes on an H100/H200
    python tests/benchmarks/bench_embed_gpu.py --tiny   # tiny-vit on the CPU, for CI

What it does, in order:

1. writes ``--images`` synthetic photo-like JPEGs (``--size`` px) with ``--jpeg-workers``
   processes;
2. saves seeded random weights of the backbone's image tower to a safetensors file
   (``build_backbone(random_weights=True)``, as ``bench_ray_gpu.py``): no download, and
   a network's speed does not depend on its weights;
3. ``forward``: the forward pass alone (``Backbone.encode``) on batches already on the
   device, at the model's input size - the ceiling of any pipeline;
4. ``decode_cpu``: :func:`embed.embed_source` with ``decode="cpu"`` (decoder processes
   on every core but one, uint8 pixels to the device);
5. ``decode_gpu``: the same with ``decode="gpu"`` (JPEG bytes to the model's process,
   ``torchvision.io.decode_jpeg`` in batches on the device, resize and crop there).

Figures: images/s of each (for embed: the loop's rate, its steady rate after the first
batch, and the whole call's rate with model loading), each embed rate as a fraction of
the forward pass, and GPU utilisation sampled with ``nvidia-smi`` (``null`` without it).
Prints ONE JSON line. ``--tiny`` runs the same steps on the CPU (``decode="gpu"`` then
goes through torchvision's CPU JPEG decoder), which checks the script, not a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def bench_forward(backbone: str, weights: Path, *, device: str, batch: int, n: int) -> dict:
    """Images/s of ``Backbone.encode`` on pre-made batches already on the device."""
    import torch

    from facebank.embed import create_backbone

    bb = create_backbone(backbone, device=device, weights=weights)
    side = bb.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=gen).to(bb.device)
    steps = max(1, n // batch)
    bb.encode(x)  # warm-up: cuDNN/cuBLAS choices, allocator
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)
    t = time.perf_counter()
    for _ in range(steps):
        bb.encode(x)
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)
    seconds = time.perf_counter() - t
    return {"images": steps * batch, "images_per_s": round(steps * batch / seconds, 1)}


def bench_embed(src: Path, out: Path, *, decode: str, sampler_cls: type, **kw) -> dict:
    from facebank.embed import embed_source

    shutil.rmtree(out, ignore_errors=True)
    with sampler_cls() as sampler:
        t = time.perf_counter()
        s = embed_source(src, out=out, decode=decode, progress=False, **kw)
        wall = time.perf_counter() - t
    return {
        "rows": s.rows,
        "failed": len(s.failed),
        "images_per_s": round(s.images_per_s, 1),
        "steady_images_per_s": round(s.steady_images_per_s, 1),
        "call_images_per_s": round(s.rows / wall, 1),
        "first_batch_s": round(s.first_batch_s, 2),
        "decoded_on_cpu": s.decoded_on_cpu,
        "runtime": s.runtime,
        **sampler.summary(),
    }


def run(args: argparse.Namespace) -> dict:
    from bench_embed import machine
    from bench_ray_gpu import GpuSampler, make_jpegs, random_weights_file

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-embed-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "benchmark": "embed_gpu",
        "tiny": args.tiny,
        "backbone": args.backbone,
        "weights": "seeded random (saved to a safetensors file)",
        "images": args.images,
        "image_px": args.size,
        "batch_size": args.batch_size,
        "device": args.device,
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        src = work / "src"
        t = time.perf_counter()
        if not src.is_dir():
            make_jpegs(src, n=args.images, size=args.size, workers=args.jpeg_workers)
        result["jpegs_s"] = round(time.perf_counter() - t, 1)
        weights = random_weights_file(args.backbone, work / "weights.safetensors")
        result["forward"] = bench_forward(
            args.backbone, weights, device=args.device, batch=args.batch_size, n=args.images
        )
        kw = {
            "backbone": args.backbone,
            "weights": weights,
            "batch_size": args.batch_size,
            "device": args.device,
        }
        for mode in ("cpu", "gpu"):
            figures = bench_embed(
                src, work / f"decode-{mode}.zarr", decode=mode, sampler_cls=GpuSampler, **kw
            )
            figures["of_forward"] = round(
                figures["images_per_s"] / max(result["forward"]["images_per_s"], 1e-9), 3
            )
            result[f"decode_{mode}"] = figures
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    result["machine"] = machine(args.device)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny-vit on the CPU, 16 images (CI)")
    ap.add_argument("--backbone", default="clip-vit-l-14", help="an open_clip registry entry")
    ap.add_argument("--images", type=int, default=16_000)
    ap.add_argument("--size", type=int, default=256, help="JPEG side in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--jpeg-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=None, help="keep the JPEGs and banks here (reused)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.backbone, args.images, args.size, args.device = "tiny-vit", 16, 96, "cpu"
        args.batch_size, args.jpeg_workers = 8, 1
    warnings.simplefilter("ignore")  # test-only backbone warnings; figures only on stdout
    figures = run(args)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
