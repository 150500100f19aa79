"""Benchmark of ``facebank triage``: prints ONE JSON line.

Triage of ``--images`` stand-in images (the AI images of a stand-in dataset made with
another seed, as one unknown source) against a run of the demo's size
(``facebank demo``: 200 images per class, ``efficientnet-lite1``, the default views and
heads), with the default few-shot ladder and draws. Each repeat triages into a fresh
folder, so embedding is timed every time.

- ``total_s``: the whole ``analysis.triage`` call (target < 120 s on a 2-core machine);
- ``embed_s``: embedding NEW under every view of the run;
- ``rest_s``: everything but embedding - the five answers, the figures, the page
  (target < 30 s);
- ``total_cpu_s``: CPU seconds of this process over the whole call (all its threads; the
  decoding worker processes not counted), which a loaded shared machine does not inflate;
- medians over ``--repeats``; ``load_1min``: the machine's load average at the end.

The run is built first when ``--run`` is not given (not timed: ``facebank demo`` in
``--work``, reused by a later call with the same ``--work``).

Usage: ``python tests/benchmarks/bench_triage.py [--tiny] [--run RUN] [--work DIR]
[--repeats N]`` (``--tiny``: ``tiny-cnn``, 30 images per class, one view, 25 NEW images,
shots 0 and 5).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def new_manifest(root: Path, n: int, seed: int = 1) -> Path:
    """A manifest of ``n`` AI images of a stand-in dataset made with ``seed``."""
    from facebank.embed.inputs.standin import make_standin_dataset

    data = make_standin_dataset(root / "new-data", n_per_class=n, seed=seed)
    rows = sorted(p for p in data.rglob("*.png") if p.parent.name != "real")[:n]
    manifest = root / "new.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "engine"])
        w.writerows([str(p.resolve()), -1, "new"] for p in rows)
    return manifest


def build_run(work: Path, *, tiny: bool) -> Path:
    """The demo's run (or a tiny one) in ``work``; reused when already there."""
    if tiny:
        from facebank.analysis.experiment import run_experiment
        from facebank.embed.inputs.standin import make_standin_dataset

        data = make_standin_dataset(work / "data", n_per_class=30, seed=0)
        run_experiment(
            data,
            backbone="tiny-cnn",
            out=work / "run",
            views=(),
            heads=("linear", "prototype"),
            progress=False,
        )
        return work / "run"
    from facebank.analysis.demo import run_demo

    return run_demo(work / "demo", progress=False).run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="smoke size (seconds)")
    ap.add_argument("--run", type=Path, default=None, help="an experiment run to triage against")
    ap.add_argument("--work", type=Path, default=None, help="folder for the run and the data")
    ap.add_argument("--images", type=int, default=None, help="NEW images (default 200; tiny 25)")
    ap.add_argument("--repeats", type=int, default=1, help="triages timed; the median is shown")
    args = ap.parse_args()

    import torch

    from facebank.analysis.triage import TriageConfig, triage

    n = args.images or (25 if args.tiny else 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        run = args.run or build_run(work, tiny=args.tiny)
        new = new_manifest(work, n)
        config = TriageConfig(shots=(0, 5)) if args.tiny else TriageConfig()
        times: dict[str, list[float]] = {"total_s": [], "embed_s": [], "rest_s": [], "cpu": []}
        for i in range(args.repeats):
            out = work / f"triage-{i}-{time.time_ns()}"
            c0, t0 = time.process_time(), time.perf_counter()
            res = triage(new, run=run, out=out, config=config, device="cpu")
            cpu, total = time.process_time() - c0, time.perf_counter() - t0
            embed = sum(v for k, v in res.seconds.items() if k.startswith("embed "))
            times["total_s"].append(total)
            times["embed_s"].append(embed)
            times["rest_s"].append(total - embed)
            times["cpu"].append(cpu)
        b = res.backbones[0]
        st = b.sources[0]
        med = {k: round(statistics.median(v), 2) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "benchmark": "triage",
                    "tiny": args.tiny,
                    "backbone": b.backbone,
                    "run": str(run),
                    "views": list(b.embedding),
                    "heads": sorted({d["head"] for d in st.detect}),
                    "n_new": st.n,
                    "repeats": args.repeats,
                    "total_s": med["total_s"],
                    "embed_s": med["embed_s"],
                    "rest_s": med["rest_s"],
                    "total_cpu_s": med["cpu"],
                    "all_total_s": [round(v, 2) for v in times["total_s"]],
                    "all_rest_s": [round(v, 2) for v in times["rest_s"]],
                    "target_total_s": 120,
                    "target_rest_s": 30,
                    "verdict": res.verdict,
                    "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(),
                    "load_1min": round(os.getloadavg()[0], 2),
                    "machine": platform.processor() or platform.machine(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
