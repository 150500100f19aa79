"""Benchmark: several backbones in one embedding (one decode) against one backbone alone.

    python tests/benchmarks/bench_backbones.py            # efficientnet-lite0 + lite1 (real
                                                          # weights), 256 JPEGs of 512 px, CPU,
                                                          # median of 3
    python tests/benchmarks/bench_backbones.py --backbones efficientnet-lite1,tiny-vit
    python tests/benchmarks/bench_backbones.py --tiny     # seconds, for CI

The default pair is two backbones of similar cost: with a nearly free second backbone
(``tiny-vit``) the ratio says little about what decoding once saves.

For each backbone: :func:`embed.embed_source` alone into a fresh bank; then
:func:`embed.multi.embed_source_multi` with all of them (each image read, hashed and
decoded once). Times are wall seconds of the whole call (scan, model load, decode,
encode, bank writes), medians of ``--repeats``. Figures:

- ``ratio_to_slowest_single``: several backbones together / the slowest one alone
  (the target is < 1.6 for two backbones); ``ratio_to_fastest_single`` the same against
  the fastest one (the stricter reading);
- ``ratio_to_separate_runs``: together / the sum of the separate runs;
- ``decode_s_per_image``: one process decoding (draft mode) and resizing, per image -
  the work that decoding once saves;
- ``max_abs_diff_vs_single``: per backbone, the largest difference between the features
  the joint run stored and those of its run alone (rows matched by sha256): decoding
  once must not change what a backbone sees.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from bench_embed import machine, make_jpegs


def _decode_seconds(files: list[Path], side: int) -> float:
    from PIL import Image

    from facebank.embed.inputs.images import load_image

    t = time.perf_counter()
    for f in files:
        img = load_image(f, draft_size=side)
        scale = side / min(img.size)
        img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return (time.perf_counter() - t) / max(1, len(files))


def _max_abs_diff(a: Path, b: Path) -> float:
    """Largest feature difference between two banks of the same images (rows by sha256)."""
    import numpy as np

    from facebank.embed import FeatureBank

    ba, bb = FeatureBank.open(a), FeatureBank.open(b)
    xa = ba.load_features()[np.argsort(ba.sha256)].astype(np.float32)
    xb = bb.load_features()[np.argsort(bb.sha256)].astype(np.float32)
    return float(np.abs(xa - xb).max())


def run(args: argparse.Namespace) -> dict:
    from facebank.embed.runner.local import embed_source
    from facebank.embed.runner.multi import embed_source_multi

    names = [n for n in args.backbones.split(",") if n]
    kw = {
        "device": args.device,
        "progress": False,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-backbones-"))
    try:
        src = tmp / "src"
        files = make_jpegs(src, n=args.images, size=args.size)
        for name in names:  # weights resolved and libraries imported outside the timing
            embed_source(src, backbone=name, out=tmp / f"warm-{name}.zarr", **kw)
        single: dict[str, list[float]] = {n: [] for n in names}
        together: list[float] = []
        for r in range(args.repeats):
            for name in names:
                t = time.perf_counter()
                s = embed_source(src, backbone=name, out=tmp / f"{name}-{r}.zarr", **kw)
                single[name].append(time.perf_counter() - t)
                assert s.embedded == args.images, s
            t = time.perf_counter()
            outs = [tmp / f"multi-{r}-{name}.zarr" for name in names]
            res = embed_source_multi(src, backbones=names, outs=outs, **kw)
            together.append(time.perf_counter() - t)
            assert all(s.embedded == args.images for s in res), res
        med = {n: statistics.median(v) for n, v in single.items()}
        multi = statistics.median(together)
        return {
            "benchmark": "backbones",
            "tiny": args.tiny,
            "backbones": names,
            "images": args.images,
            "image_px": args.size,
            "repeats": args.repeats,
            "single_s": {n: round(v, 3) for n, v in med.items()},
            "together_s": round(multi, 3),
            "ratio_to_slowest_single": round(multi / max(med.values()), 3),
            "ratio_to_fastest_single": round(multi / min(med.values()), 3),
            "ratio_to_separate_runs": round(multi / sum(med.values()), 3),
            "target_ratio": 1.6,
            "decode_s_per_image": round(_decode_seconds(files[: min(64, len(files))], 224), 5),
            "max_abs_diff_vs_single": {
                n: _max_abs_diff(tmp / f"{n}-0.zarr", tmp / f"multi-0-{n}.zarr") for n in names
            },
            "machine": machine(args.device),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long CI run")
    ap.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite1")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=512, help="JPEG side in pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (auto)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.tiny:
        args.backbones, args.images, args.size, args.repeats = "tiny-cnn,tiny-vit", 16, 128, 1
        args.batch_size, args.workers = 8, 0
    warnings.simplefilter("ignore")  # test-only backbone warnings; figures only on stdout
    figures = run(args)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
