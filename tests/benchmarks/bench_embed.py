"""Benchmark: JPEG decode, end-to-end embedding, and feature-bank reads.

    python tests/benchmarks/bench_embed.py            # 512 + 1024 px JPEGs; tiny-cnn, tiny-vit,
                                                # efficientnet-lite1 on --device auto
    python tests/benchmarks/bench_embed.py --tiny     # seconds, for CI
    python tests/benchmarks/bench_embed.py --backbones clip-vit-l-14,efficientnet-b1 \\
        --images 4096 --batch-size 256 --device cuda   # GPU machine

Measures, on generated photo-like JPEGs (smooth random content + grain, quality 90, 4:2:0):

- ``decode``: one process decoding with :func:`embed.images.load_image` in JPEG draft
  mode (``draft_size`` = 224) and resizing the shorter side to 224 (bicubic) - the
  worker's per-image work before the backbone's tensor transform - in images per
  CPU-second of that process (= per core, robust to other load) and per wall second;
  plus a full-resolution decode for comparison.
- ``end_to_end``: :func:`embed.embed_source` (DataLoader workers, backbone, bank
  writes) in images/s of the embedding loop, per backbone and image size.
- ``metadata``: the CPU cost per image of capturing the acquisition metadata
  (:mod:`embed.metadata`) in the decode the worker does anyway, against the decode
  alone and against each backbone's end-to-end time per image.
- ``bank_read``: a synthetic bank of ``--bank-rows`` x ``--dim`` float16 rows read back
  with ``load_features`` (stored dtype, and float32 conversion) and ``iter_features``,
  in GB/s of stored bytes (warm page cache: the case of a bank read repeatedly).

Prints ONE JSON line (medians of ``--repeats`` runs for decode and bank reads).
``--parts decode,bank`` skips the end-to-end runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def make_jpegs(folder: Path, *, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs of ``size`` x ``size`` under ``folder/{real,fake}/``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        engine = "real" if i % 2 == 0 else "fake"
        (folder / engine).mkdir(parents=True, exist_ok=True)
        # low-frequency content (a 12x12 colour field upsampled) plus grain: decodes
        # like a photo, unlike white noise (every DCT coefficient set) or flat colour
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        img = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 6, img.shape)
        path = folder / engine / f"{i:05d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def bench_decode(paths: list[Path], *, side: int = 224, repeats: int = 3) -> dict:
    from PIL import Image

    from facebank.embed.inputs.images import load_image

    def resize(img):
        w, h = img.size
        s = side / min(w, h)
        return img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC)

    for p in paths:  # warm the page cache: measure decoding, not the disk
        p.read_bytes()
    out = {}
    for label, draft in (("draft_resize", side), ("full_resize", None)):
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for p in paths:
                resize(load_image(p, draft_size=draft))
            wall.append(len(paths) / (time.perf_counter() - t))
            cpu.append(len(paths) / (time.process_time() - c))
        # per CPU-second of this one process = per core, whatever else the machine runs
        out[f"{label}_images_per_cpu_s"] = round(statistics.median(cpu), 1)
        out[f"{label}_images_per_s_wall"] = round(statistics.median(wall), 1)
    return out


def bench_metadata(paths: list[Path], *, side: int = 224, repeats: int = 3) -> dict:
    """CPU time per image of the metadata capture, against the worker's decode.

    The capture is timed on its own (``header_metadata`` on the opened file, then
    ``finish_metadata`` on the loaded image - exactly what
    :func:`load_image_and_metadata` adds to :func:`load_image`), because the
    difference of two whole-decode timings drowns a 0.05 ms step in machine noise.
    Per CPU-second of this process (robust to other load).
    """
    from PIL import Image

    from facebank.embed.inputs.images import load_image
    from facebank.embed.inputs.metadata import finish_metadata, header_metadata

    for p in paths:
        p.read_bytes()
    decode, capture = [], []
    for _ in range(repeats):
        c = time.process_time()
        for p in paths:
            load_image(p, draft_size=side)
        decode.append((time.process_time() - c) / len(paths) * 1e3)
        spent = 0.0
        for p in paths:
            with Image.open(p) as img:
                c = time.process_time()
                meta = header_metadata(img, file_bytes=p.stat().st_size)
                spent += time.process_time() - c
                img.draft("RGB", (side, side))
                img.load()
                c = time.process_time()
                finish_metadata(meta, img)
                spent += time.process_time() - c
        capture.append(spent / len(paths) * 1e3)
    a, m = statistics.median(decode), statistics.median(capture)
    return {
        "decode_ms_per_image": round(a, 3),
        "metadata_ms_per_image": round(m, 4),
        "metadata_pct_of_decode": round(100 * m / a, 2),
    }


def bench_end_to_end(
    src: Path, *, backbone: str, device: str, batch_size: int, workers: int | None, tmp: Path
) -> dict:
    from facebank.embed import create_backbone, embed_source

    create_backbone(backbone, device=device)  # imports and weights resolved outside the timing
    out = tmp / f"e2e-{backbone}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = embed_source(
            src,
            backbone=backbone,
            out=out,
            device=device,
            batch_size=batch_size,
            num_workers=workers,
            progress=False,
        )
    shutil.rmtree(out, ignore_errors=True)
    return {
        "images_per_s": round(s.images_per_s, 1),
        "embedded": s.embedded,
        "failed": len(s.failed),
        "device": s.device,
    }


def bench_bank_read(tmp: Path, *, rows: int, dim: int, repeats: int = 3) -> dict:
    import numpy as np

    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone

    path = tmp / "read.zarr"
    rng = np.random.default_rng(0)
    step = 65536
    with FeatureBank.create(path, backbone=synthetic_backbone(dim), overwrite=True) as bank:
        for a in range(0, rows, step):
            n = min(step, rows - a)
            ids = [f"r{a + i}" for i in range(n)]
            bank.append(
                rng.normal(size=(n, dim)).astype(np.float32),
                labels=np.zeros(n, np.int8),
                engines=["e"] * n,
                paths=ids,
                splits=[""] * n,
                sha256=ids,
            )
    bank = FeatureBank.open(path)
    nbytes = rows * dim * 2
    bank.load_features(dtype=np.float16)  # warm the page cache

    def timed(fn) -> tuple[float, float]:
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(nbytes / (time.perf_counter() - t) / 1e9)
            cpu.append(nbytes / max(time.process_time() - c, 1e-9) / 1e9)
        return round(statistics.median(wall), 2), round(statistics.median(cpu), 2)

    def stream():
        for _ in bank.iter_features(dtype=np.float16):
            pass

    out = {"rows": rows, "dim": dim, "stored_mb": round(nbytes / 2**20, 1)}
    for name, fn in (
        ("load_float16", lambda: bank.load_features(dtype=np.float16)),
        ("load_float32", lambda: bank.load_features()),
        ("iter_float16", stream),
    ):
        # GB/s of stored bytes: wall clock, and per CPU-second of the process
        out[f"{name}_GBps"], out[f"{name}_GBps_per_cpu_s"] = timed(fn)
    return out


def machine(device: str) -> dict:
    import torch

    from facebank.core.devices import resolve_device

    dev = torch.device(resolve_device(device))
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long CI run")
    ap.add_argument("--backbones", default="tiny-cnn,tiny-vit,efficientnet-lite1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="512,1024", help="JPEG sides in pixels")
    ap.add_argument("--images", type=int, default=256, help="JPEGs per size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoder workers (default auto)")
    ap.add_argument("--bank-rows", type=int, default=262144)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="decode,metadata,e2e,bank", help="which measurements to run")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.tiny:
        args.backbones, args.sizes, args.images = "tiny-cnn", "256", 12
        args.bank_rows, args.dim, args.batch_size, args.repeats = 4096, 64, 8, 1
        if args.workers is None:
            args.workers = 0

    result: dict = {"benchmark": "embed", "tiny": args.tiny, "machine": machine(args.device)}
    result["workers"] = "auto" if args.workers is None else args.workers
    result["batch_size"] = args.batch_size
    decode: dict = {}
    meta: dict = {}
    e2e: dict = {}
    with tempfile.TemporaryDirectory(prefix="facebank-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for size in (int(s) for s in args.sizes.split(",")):
            src = tmp / f"jpeg{size}"
            paths = make_jpegs(src, n=args.images, size=size)
            if "decode" in parts:
                decode[str(size)] = bench_decode(paths, repeats=args.repeats)
            if "metadata" in parts:
                meta[str(size)] = bench_metadata(paths, repeats=max(3, args.repeats))
            for name in args.backbones.split(",") if "e2e" in parts else ():
                e2e.setdefault(name, {})[str(size)] = bench_end_to_end(
                    src,
                    backbone=name,
                    device=args.device,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    tmp=tmp,
                )
        result["images_per_size"] = args.images
        result["decode"] = decode
        result["end_to_end"] = e2e
        # the capture's CPU cost against each backbone's end-to-end time per image (wall,
        # every worker together): the share of embed time metadata adds at most
        for size, m in meta.items():
            for name, runs in e2e.items():
                if size in runs and runs[size]["images_per_s"] > 0:
                    per_image_ms = 1e3 / runs[size]["images_per_s"]
                    m[f"pct_of_embed_{name}"] = round(
                        100 * m["metadata_ms_per_image"] / per_image_ms, 2
                    )
        result["metadata"] = meta
        if "bank" in parts:
            result["bank_read"] = bench_bank_read(
                tmp, rows=args.bank_rows, dim=args.dim, repeats=args.repeats
            )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
