"""Benchmark: images/s of every registered backbone on a GPU, random weights, bf16.

    python tests/benchmarks/bench_backbones_gpu.py              # every real backbone, cuda,
                                                                # batch 256 (under 8 minutes
                                                                # on one recent GPU)
    python tests/benchmarks/bench_backbones_gpu.py --tiny       # tiny-* on the CPU, for CI

Each backbone is built with seeded random weights (``build_backbone(random_weights=True)``:
no download, the same architecture and preprocessing as the pretrained entry) and fed
synthetic preprocessed batches already on the device, so the figure is the model's
throughput alone (``Backbone.encode``: inference mode, bf16 autocast on CUDA) - decoding
is measured by ``bench_embed.py``. Per backbone: ``--warmup`` batches, then the median
time of ``--batches`` batches (CUDA synchronised), as images/s.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

from bench_embed import machine


def _throughput(name: str, *, device: str, batch: int, warmup: int, batches: int) -> dict:
    import torch

    from facebank.embed.backbones.registry import backbone_info, build_backbone

    t0 = time.perf_counter()
    b = build_backbone(backbone_info(name), device=device, random_weights=True)
    build_s = time.perf_counter() - t0
    x = torch.randn(batch, *b.spec.input_size, device=b.device)
    sync = torch.cuda.synchronize if b.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        b.encode(x)
    sync()
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        out = b.encode(x)
        sync()
        times.append(time.perf_counter() - t)
    assert out.shape == (batch, b.dim)
    med = statistics.median(times)
    row = {
        "images_per_s": round(batch / med, 1),
        "batch_s": round(med, 4),
        "input": list(b.spec.input_size),
        "dim": b.dim,
        "build_s": round(build_s, 1),
    }
    del b, x, out
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny-* backbones on the CPU (CI)")
    ap.add_argument("--backbones", default=None, help="comma-separated (default: every real one)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches", type=int, default=5)
    args = ap.parse_args(argv)
    from facebank.embed.backbones.registry import list_backbones

    names = list_backbones(include_test=False)
    if args.tiny:
        names, args.device, args.batch_size, args.warmup, args.batches = (
            ["tiny-cnn", "tiny-vit"], "cpu", 4, 1, 2,
        )  # fmt: skip
    if args.backbones:
        names = [n for n in args.backbones.split(",") if n]
    warnings.simplefilter("ignore")  # the random-weights warning, once per backbone
    rows = {}
    for name in names:
        try:
            rows[name] = _throughput(
                name,
                device=args.device,
                batch=args.batch_size,
                warmup=args.warmup,
                batches=args.batches,
            )
        except Exception as exc:  # one backbone must not lose the others' figures
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    figures = {
        "benchmark": "backbones_gpu",
        "tiny": args.tiny,
        "weights": "seeded random (throughput only)",
        "precision": "bf16 autocast" if args.device.startswith("cuda") else "float32",
        "batch_size": args.batch_size,
        "backbones": rows,
        "machine": machine(args.device),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
