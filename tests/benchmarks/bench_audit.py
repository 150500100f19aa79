"""Benchmark of the confounds audit: prints ONE JSON line.

- ``audit_s``: ``analysis.audit`` on a 1,000,000-row bank with acquisition metadata
  (a realistic mix: JPEG/PNG/WebP, a dozen sizes, JPEG qualities, grayscale, EXIF/ICC
  flags; the label partly carried by format and size) and one head's scores: metadata
  baseline, 5-fold cross-validated probabilities, per-property AUCs with bootstrap
  intervals, per-class/engine distributions (target < 30 s on a 2-core machine). The
  bank is on disk before the clock starts; reading its columns is timed.
- ``audit_cpu_s``: the same step's CPU seconds (all threads), which a loaded shared
  machine does not inflate.
- ``write_s``: writing the audit's run folder (Markdown, CSVs, the figure).

Usage: ``python tests/benchmarks/bench_audit.py [--tiny]`` (``--tiny``: 20,000 rows).
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


def synthetic_metadata(
    n: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(metadata columns, labels, engines)`` of ``n`` rows, label partly carried by the files."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int8)
    engines = np.where(y == 0, "real", np.array(["gan", "sd", "flux"])[rng.integers(0, 3, n)])
    # fakes lean PNG, reals lean JPEG; 20% of each class breaks the pattern
    png = np.where(y == 1, rng.random(n) < 0.7, rng.random(n) < 0.2)
    webp = rng.random(n) < 0.05
    fmt = np.where(webp, "WEBP", np.where(png, "PNG", "JPEG"))
    sides = np.array([128, 160, 224, 250, 256, 283, 384, 512, 640, 768, 1024])
    side = sides[rng.integers(0, sides.size, n)] + rng.integers(0, 3, n) * (y == 0)
    width = side.astype(np.int32)
    height = (side * np.where(rng.random(n) < 0.3, 1.25, 1.0)).astype(np.int32)
    bpp = np.where(fmt == "PNG", rng.uniform(1.0, 2.5, n), rng.uniform(0.1, 0.6, n))
    gray = (y == 0) & (rng.random(n) < 0.05)
    quality = np.where(fmt == "JPEG", rng.choice([75, 85, 90, 95], n), -1).astype(np.int16)
    meta = {
        "file_format": fmt,
        "width": width,
        "height": height,
        "file_bytes": (bpp * width * height).astype(np.int64),
        "bytes_per_pixel": bpp.astype(np.float32),
        "pil_mode": np.where(gray, "L", "RGB"),
        "bits_per_channel": np.full(n, 8, np.int16),
        "animated": np.zeros(n, bool),
        "has_exif": (y == 0) & (rng.random(n) < 0.3),
        "has_icc": rng.random(n) < 0.1,
        "has_png_text": (fmt == "PNG") & (rng.random(n) < 0.2),
        "jpeg_quality": quality,
        "jpeg_subsampling": np.where(fmt == "JPEG", "4:2:0", ""),
        "meta_error": np.full(n, ""),
    }
    return meta, y, engines


def write_bench_bank(path: Path, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bank of ``n`` rows (4-d features) with metadata; returns (labels, head scores)."""
    from facebank.embed.bank.bank import FeatureBank
    from facebank.testing import synthetic_backbone

    meta, y, engines = synthetic_metadata(n, seed)
    rng = np.random.default_rng(seed + 1)
    scores = rng.normal(size=n) + 1.5 * y
    bank = FeatureBank.create(path, backbone=synthetic_backbone(4))
    step = 250_000
    for a in range(0, n, step):
        b = min(n, a + step)
        bank.append(
            rng.normal(size=(b - a, 4)).astype(np.float32),
            labels=y[a:b],
            engines=engines[a:b],
            paths=np.char.add("img/", np.arange(a, b).astype(str)),
            splits=np.full(b - a, ""),
            sha256=np.char.add("sha", np.arange(a, b).astype(str)),
            columns={k: v[a:b] for k, v in meta.items()},
        )
    bank.close()
    return y, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="20,000 rows, for a smoke test")
    args = ap.parse_args()
    from facebank.analysis.audit import audit

    n = 20_000 if args.tiny else 1_000_000
    with tempfile.TemporaryDirectory(prefix="facebank-bench-audit-") as tmp:
        path = Path(tmp) / "bench.zarr"
        y, scores = write_bench_bank(path, n)
        t0, c0 = time.perf_counter(), time.process_time()
        res = audit([path], scores={"head": (scores, 1.0)}, seed=0)
        audit_s, audit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        res.write(Path(tmp) / "run")
        write_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "benchmark": "audit",
                "tiny": args.tiny,
                "rows": n,
                "audit_s": round(audit_s, 2),
                # CPU seconds of this process (all threads): what a shared machine's load
                # does not inflate
                "audit_cpu_s": round(audit_cpu_s, 2),
                "write_s": round(write_s, 2),
                "target_audit_s": 30,
                "verdict": res.verdict,
                "metadata_auc": round(res.metadata_auc, 4),
                "uncertain_rows": res.uncertain_rows,
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "load_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
