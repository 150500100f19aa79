"""Benchmark: embedding against the model's own speed, JPEG decode, and feature-bank reads.

    python tests/benchmarks/bench_embed.py            # efficientnet-lite1 on --device auto:
                                                # a PNG/JPEG mix like realfaces, and
                                                # ../shared/realfaces when present
    python tests/benchmarks/bench_embed.py --tiny     # seconds, for CI
    python tests/benchmarks/bench_embed.py --backbones clip-vit-l-14,efficientnet-b1 \\
        --images 4096 --batch-size 256 --device cuda   # GPU machine

Measures:

- ``model_vs_embed`` (the headline): in this one process and on the same images,
  the backbone's forward pass alone on pre-decoded tensors (``Backbone.encode`` on
  float32 batches of ``--batch-size`` made beforehand, torch on every core) and
  :func:`embed.embed_source` end to end (read, hash, decode, transform, encode, bank
  writes; the loop's images/s, model loading excluded as it is from the forward
  pass), alternated ``--repeats`` times so a change of machine load hits both; the
  medians and ``ratio`` = end-to-end / forward (the target is >= 0.9 on a CPU). Run
  on a generated mix like realfaces (58% PNG at 128/256/448 px, 42% JPEG at
  150/250/768 px) and on ``--realfaces`` (``--realfaces-images`` of them, PNG and
  JPEG in their own proportion) when that folder exists. The machine's load average
  before and after is part of the figures. Both sides run with the heap ``embed`` sets
  up (``heap``: freed memory kept, :mod:`core.memory`); ``FACEBANK_MALLOC=system``
  measures both without it. ``decode_cpu_ms_per_image`` is the per-image work before
  the model on one core, and ``ratio_ceiling`` = model CPU / (model + decode CPU) the
  best ratio reachable where the model alone keeps every core busy (a CPU).

and, on generated photo-like JPEGs (smooth random content + grain, quality 90, 4:2:0):

- ``decode``: one process decoding with :func:`embed.images.load_image` in JPEG draft
  mode (``draft_size`` = 224) and resizing the shorter side to 224 (bicubic) - the
  worker's per-image work before the backbone's tensor transform - in images per
  CPU-second of that process (= per core, robust to other load) and per wall second;
  plus a full-resolution decode for comparison.
- ``metadata``: the CPU cost per image of capturing the acquisition metadata
  (:mod:`embed.metadata`) in the decode the worker does anyway, against the decode
  alone and against each backbone's end-to-end time per image.
- ``bank_read``: a synthetic bank of ``--bank-rows`` x ``--dim`` float16 rows read back
  with ``load_features`` (stored dtype, and float32 conversion) and ``iter_features``,
  in GB/s of stored bytes (warm page cache: the case of a bank read repeatedly).

Prints ONE JSON line (medians of ``--repeats`` runs). ``--parts decode,bank`` skips
the model runs.
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

# ../shared/realfaces relative to the repository (skipped when absent)
REALFACES = Path(__file__).resolve().parents[2].parent / "shared" / "realfaces"


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


def _photo(rng, size: int):
    import numpy as np
    from PIL import Image

    # low-frequency content (a 12x12 colour field upsampled) plus grain: decodes
    # like a photo, unlike white noise (every DCT coefficient set) or flat colour
    small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    img = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


# realfaces' mix: 58% PNG (mostly 128-448 px), 42% JPEG (150, 250 and 768 px)
MIX = (("png", 128), ("jpg", 150), ("png", 256), ("jpg", 250), ("png", 448), ("jpg", 768))
MIX_WEIGHTS = (0.30, 0.15, 0.18, 0.15, 0.10, 0.12)


def make_mix(folder: Path, *, n: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like images, PNG and JPEG of several sizes, under ``folder/{real,fake}/``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(MIX), size=n, p=MIX_WEIGHTS)
    paths = []
    for i, k in enumerate(kinds):
        ext, size = MIX[int(k)]
        engine = folder / ("real" if i % 2 == 0 else "fake")
        engine.mkdir(parents=True, exist_ok=True)
        path = engine / f"{i:05d}.{ext}"
        _photo(rng, size).save(path, **({"quality": 90} if ext == "jpg" else {}))
        paths.append(path)
    return paths


def realfaces_manifest(root: Path, tmp: Path, *, n: int) -> Path | None:
    """A manifest of ``n`` realfaces images taken evenly over the sorted list, or None."""
    if not root.is_dir():
        return None
    exts = (".jpg", ".jpeg", ".png")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)
    if not files:
        return None
    step = max(1, len(files) // n)
    pick = files[::step][:n]
    lines = ["path,label,engine"]
    for p in pick:
        rel = p.relative_to(root)
        lines.append(f"{p},{0 if rel.parts[0] == 'real' else 1},{rel.parts[-2]}")
    out = tmp / "realfaces.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def _predecoded(source: Path, bb, batch_size: int) -> tuple[list, int, float]:
    """The images of ``source`` decoded and transformed as the runner does, in float32
    batches on the CPU, and the CPU milliseconds per image of that work in one thread
    (read, hash, decode, metadata, resize/crop to uint8: ``load_one``, timed on a second,
    warm pass; the uint8 pixels are then normalised as the model's side does, which gives
    the backbone transform's float32 input bit for bit)."""
    import torch

    from facebank.embed.inputs.datasets import scan_source
    from facebank.embed.inputs.decode import load_one, pixel_transform
    from facebank.embed.inputs.views import parse_view

    view = parse_view("original")
    files = [item.file for item in scan_source(source).items]
    pt = pixel_transform(bb.transform)
    pixels = pt or bb.transform
    for f in files:  # the page cache warm, as for the end-to-end runs after the first
        load_one(f, view=view, transform=pixels, draft_size=bb.input_size)
    xs = []
    c = time.thread_time()
    for f in files:
        _, x, reason, _ = load_one(f, view=view, transform=pixels, draft_size=bb.input_size)
        if reason is None:
            xs.append(x)
    decode_ms = (time.thread_time() - c) / max(len(files), 1) * 1e3
    batches = [torch.stack(xs[a : a + batch_size]) for a in range(0, len(xs), batch_size)]
    if pt is not None:
        batches = [pt.normalise(x, "cpu") for x in batches]
    return batches, len(xs), decode_ms


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_model_vs_embed(
    source: Path,
    *,
    backbone: str,
    device: str,
    batch_size: int,
    workers: int | None,
    threads: int | None,
    decode: str,
    repeats: int,
    tmp: Path,
) -> dict:
    """The forward pass alone and ``embed`` end to end, alternated, on the same images.

    Both run with the heap ``embed`` sets up (:func:`core.memory.keep_freed_memory`,
    called here before the first forward pass; ``FACEBANK_MALLOC=system`` measures both
    without it).
    """
    import torch

    from facebank.core.memory import keep_freed_memory
    from facebank.embed import create_backbone, embed_source
    from facebank.embed.inputs.decode import available_cores, torch_threads

    heap = keep_freed_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone(backbone, device=device)
    batches, n, decode_ms = _predecoded(source, bb, batch_size)
    cores = available_cores()
    forward, e2e, wall, runtime, embedded = [], [], [], {}, 0
    cpu_forward, cpu_embed = [], []
    for r in range(repeats):
        with torch_threads(cores), torch.inference_mode():
            bb.encode(batches[0])  # warm-up (allocator, oneDNN kernels)
            t, c = time.perf_counter(), _cpu_seconds()
            for x in batches:
                bb.encode(x)
            forward.append(n / (time.perf_counter() - t))
            cpu_forward.append((_cpu_seconds() - c) / n * 1e3)
        out = tmp / f"e2e-{backbone}-{r}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t, c = time.perf_counter(), _cpu_seconds()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = embed_source(
                source, backbone=backbone, out=out, device=device, batch_size=batch_size,
                num_workers=workers, threads=threads, decode=decode, progress=False,
            )  # fmt: skip
        wall.append(s.rows / (time.perf_counter() - t))
        # (the whole call: model loading and bank writes included; decoder processes
        # count once they have exited)
        cpu_embed.append((_cpu_seconds() - c) / max(s.rows, 1) * 1e3)
        shutil.rmtree(out, ignore_errors=True)
        e2e.append(s.images_per_s)
        runtime, embedded = s.runtime, s.embedded
    f, e = statistics.median(forward), statistics.median(e2e)
    model_ms = statistics.median(cpu_forward)
    return {
        "images": n,
        "embedded": embedded,
        "heap": heap,
        "forward_images_per_s": round(f, 1),
        "forward_torch_threads": cores,
        "embed_images_per_s": round(e, 1),
        "embed_call_images_per_s": round(statistics.median(wall), 1),
        "ratio": round(e / f, 3) if f > 0 else None,
        # the model's ceiling: the forward pass alone varies more with load (its later
        # runs in one process have come out at half its first), so the best run too
        "forward_best_images_per_s": round(max(forward), 1),
        "ratio_to_best_forward": round(e / max(forward), 3) if max(forward) > 0 else None,
        # CPU time per image (this process and its finished children): the work each
        # side does, which the machine's load changes less than the wall clock
        "forward_cpu_ms_per_image": round(statistics.median(cpu_forward), 2),
        "embed_cpu_ms_per_image": round(statistics.median(cpu_embed), 2),
        # the per-image work before the model, on one core; where the model already
        # keeps every core busy (a CPU), decoding adds to it, and the best ratio
        # ``embed`` can reach is the model's share of the two
        "decode_cpu_ms_per_image": round(decode_ms, 2),
        "ratio_ceiling": round(model_ms / (model_ms + decode_ms), 3) if model_ms > 0 else None,
        "runs_forward": [round(v, 1) for v in forward],
        "runs_embed": [round(v, 1) for v in e2e],
        "runtime": runtime,
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


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long CI run")
    ap.add_argument("--backbones", default="efficientnet-lite1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="512,1024", help="JPEG sides of the decode figures")
    ap.add_argument("--images", type=int, default=240, help="images per generated set")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoder workers (default auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default auto)")
    ap.add_argument("--decode", default="auto", help="auto, cpu or gpu")
    ap.add_argument("--realfaces", default=str(REALFACES), help="real-image folder, if present")
    ap.add_argument("--realfaces-images", type=int, default=240)
    ap.add_argument("--bank-rows", type=int, default=262144)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="model,decode,metadata,bank", help="what to measure")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.tiny:
        args.backbones, args.sizes, args.images, args.realfaces = "tiny-cnn", "256", 12, ""
        args.bank_rows, args.dim, args.batch_size, args.repeats = 4096, 64, 8, 1

    result: dict = {"benchmark": "embed", "tiny": args.tiny, "machine": machine(args.device)}
    result["load_before"] = _load()
    result["batch_size"] = args.batch_size
    decode: dict = {}
    meta: dict = {}
    model: dict = {}
    with tempfile.TemporaryDirectory(prefix="facebank-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sets: dict[str, Path] = {}
        if "model" in parts:
            make_mix(tmp / "mix", n=args.images)
            sets["mix"] = tmp / "mix"
            real = realfaces_manifest(Path(args.realfaces), tmp, n=args.realfaces_images)
            if args.realfaces and real is not None:
                sets["realfaces"] = real
        for name in args.backbones.split(",") if sets else ():
            for label, source in sets.items():
                model.setdefault(name, {})[label] = bench_model_vs_embed(
                    source, backbone=name, device=args.device, batch_size=args.batch_size,
                    workers=args.workers, threads=args.threads, decode=args.decode,
                    repeats=args.repeats, tmp=tmp,
                )  # fmt: skip
        sizes = args.sizes.split(",") if parts & {"decode", "metadata"} else []
        for size in (int(s) for s in sizes):
            paths = make_jpegs(tmp / f"jpeg{size}", n=args.images, size=size)
            if "decode" in parts:
                decode[str(size)] = bench_decode(paths, repeats=args.repeats)
            if "metadata" in parts:
                meta[str(size)] = bench_metadata(paths, repeats=max(3, args.repeats))
        result["images"] = args.images
        result["model_vs_embed"] = model
        result["decode"] = decode
        # the capture's CPU cost against each backbone's end-to-end time per image (wall,
        # every worker together): the share of embed time metadata adds at most
        for m in meta.values():
            for name, runs in model.items():
                if runs["mix"]["embed_images_per_s"] > 0:
                    per_image_ms = 1e3 / runs["mix"]["embed_images_per_s"]
                    m[f"pct_of_embed_{name}"] = round(
                        100 * m["metadata_ms_per_image"] / per_image_ms, 2
                    )
        result["metadata"] = meta
        if "bank" in parts:
            result["bank_read"] = bench_bank_read(
                tmp, rows=args.bank_rows, dim=args.dim, repeats=args.repeats
            )
    result["load_after"] = _load()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
