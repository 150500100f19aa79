"""Held-out-engine evaluation of ``facebank triage`` on ``realfaces``.

For every realfaces engine with at least ``--min-images`` images (18 by default): an
``experiment`` without it, then ``triage`` of its images against that run - is it called
new, which engine is it placed nearest, does each head catch it at 0.5 % FPR, how many of
its images reach 90 % TPR. ``realfaces`` (762 public face images) is not shipped with
facebank; the script reads ``../shared/realfaces`` (or ``--data``), exits cleanly when it
is absent, and never copies an image: manifests with absolute paths go in ``--out``.

The whole set is embedded ONCE per view with ``efficientnet-lite1`` into ``OUT/banks``
(resumable); each held-out experiment and each triage starts from that bank's rows
(written as the run's and the triage's own banks, so ``experiment`` and ``triage`` find
every image embedded and only train and analyse). Views: ``original`` and the
``normalise`` laundering control. Families: a FLUX variant placed nearest another FLUX
variant, a StyleGAN nearest another StyleGAN, a Stable Diffusion nearest another one.

Usage::

    python examples/realfaces_triage.py [--data ../shared/realfaces] [--out runs/realfaces-triage]
        [--engines flux1_dev,sd21] [--heads linear,mlp,prototype]

Prints one JSON line per engine, then the Markdown table (also ``OUT/table.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "realfaces"
BACKBONE = "efficientnet-lite1"
VIEWS = {"original": "original", "normalise:size=256:q=90": "normalise-size256-q90"}


def family(engine: str) -> str:
    """``flux1_dev`` -> ``flux``, ``stylegan2_sfhq`` -> ``stylegan``, ``sd21`` -> ``sd``."""
    for fam in ("flux", "stylegan", "sd", "dalle"):
        if engine.startswith(fam):
            return fam
    return engine


def write_manifest(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "engine"])
        w.writeheader()
        w.writerows(rows)
    return path


def read_rows(data: Path) -> list[dict[str, str]]:
    """realfaces' MANIFEST.csv as ``path,label,engine`` rows with absolute paths."""
    out = []
    with open(data / "MANIFEST.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            real = r["class"] == "real"
            out.append(
                {
                    "path": str((data / r["path"]).resolve()),
                    "label": "0" if real else "1",
                    "engine": "real" if real else r["engine"],
                }
            )
    return out


def embed_all(rows: list[dict[str, str]], out: Path) -> dict[str, Path]:
    """Every realfaces image, once per view (resumable)."""
    from facebank.embed import embed_source

    manifest = write_manifest(rows, out / "realfaces.csv")
    banks = {}
    for view, slug in VIEWS.items():
        banks[view] = out / "banks" / f"{slug}.zarr"
        embed_source(manifest, backbone=BACKBONE, out=banks[view], view=view, progress=False)
    return banks


def copy_rows(full: Path, keep: np.ndarray, dest: Path, *, label: int | None = None) -> None:
    """Rows ``keep`` of the bank ``full`` as a new bank ``dest`` (skipped when present);
    ``label`` overrides the stored labels (-1 for a triage's NEW)."""
    from facebank.embed import FeatureBank, write_bank

    if (dest / "zarr.json").is_file():
        return
    src = FeatureBank.open(full)
    part = src.select(rows=keep)
    labels = np.asarray(part.labels) if label is None else np.full(len(part), label)
    write_bank(
        dest,
        part.load_features(),
        labels=labels,
        engines=np.asarray(part.engines, dtype=str),
        paths=np.asarray(part.paths, dtype=str),
        sha256=np.asarray(part.sha256, dtype=str),
        backbone=src.backbone,
        view=src.view,
        source=str(src.meta.get("source", "")),
        columns={**part.metadata(), "group": np.asarray(part.groups, dtype=str)},
    )


def held_out(engine, rows, banks, out, heads):
    """The experiment without ``engine`` and the triage of ``engine`` against it."""
    from facebank.analysis.experiment import run_experiment
    from facebank.analysis.triage import TriageConfig, triage
    from facebank.core.runs import start_run
    from facebank.embed import FeatureBank

    eng = np.asarray(FeatureBank.open(banks["original"]).engines, dtype=str)
    run, tri = out / f"without-{engine}", out / f"triage-{engine}"
    manifest = write_manifest(
        [r for r in rows if r["engine"] != engine], run.parent / f"{run.name}.csv"
    )
    new = write_manifest([r for r in rows if r["engine"] == engine], out / f"{engine}.csv")
    start_run(run, command="experiment", config={}, resume=True)
    start_run(tri, command="triage", config={}, resume=True)
    for view, slug in VIEWS.items():
        copy_rows(banks[view], np.flatnonzero(eng != engine), run / "banks" / f"{slug}.zarr")
        copy_rows(
            banks[view], np.flatnonzero(eng == engine),
            tri / "banks" / BACKBONE / f"{slug}.zarr", label=-1,
        )  # fmt: skip
    t0 = time.perf_counter()
    run_experiment(
        manifest, backbone=BACKBONE, out=run, views=tuple(VIEWS)[1:], heads=heads, progress=False
    )
    t1 = time.perf_counter()
    res = triage(
        new, run=run, out=tri, config=TriageConfig(engine_name=engine, few_shot_heads=None)
    )
    return res, t1 - t0, time.perf_counter() - t1


def summary(engine: str, res, exp_s: float, tri_s: float) -> dict:
    st = res.backbones[0].sources[0]
    proto = st.new.get("prototype") or {}
    like = st.resemble
    orig = {d["head"]: d for d in st.detect if d["view"] == "original"}
    return {
        "engine": engine,
        "n": st.n,
        "ood_auroc": proto.get("auroc"),
        "ood_auroc_ci": proto.get("auroc_ci"),
        "knn_auroc": st.new["knn"]["auroc"],
        "real_only_flag": st.new["real_only"]["flag"]["rate"],
        "real_only_fpr_test": st.new["real_only"]["fpr_test_reals"]["rate"],
        "tpr": {h: d["tpr"]["rate"] for h, d in orig.items()},
        "fpr_test_reals": {h: d["fpr_test_reals"]["rate"] for h, d in orig.items()},
        "k_reached": {h: c.get("k_reached") for h, c in st.few_shot.items()},
        "k_max": {h: (c.get("curve") or [{}])[-1].get("k") for h, c in st.few_shot.items()},
        "nearest": like["nearest_engine"],
        "nearest_ai": like["nearest_ai_engine"],
        "nearest_ai_share": like["shares"]["centroid"].get(like["nearest_ai_engine"]),
        "family_recognised": family(like["nearest_ai_engine"] or "") == family(engine),
        "shortcut": st.metadata.get("verdict"),
        "verdict": st.verdict,
        "experiment_s": round(exp_s, 1),
        "triage_s": round(tri_s, 1),
    }


def table(results: list[dict], heads: list[str]) -> str:
    def p(v):
        return "n/a" if v is None else f"{100 * v:.0f}%"

    head = (
        "| held-out engine | n | OOD AUROC (prototype) | real-only flagged | "
        + " | ".join(f"{h} TPR" for h in heads)
        + " | k to 90% TPR | nearest AI engine (centroid share) | family recognised |\n"
    )
    head += "|" + "---|" * (7 + len(heads)) + "\n"
    for r in results:
        ks = [f"{h}: {k}" for h, k in r["k_reached"].items() if k is not None]
        kmax = max((k for k in r["k_max"].values() if k is not None), default=0)
        few = r["n"] < 20
        note = " (too few for a rate)" if few else ""
        k_text = ", ".join(ks) or ("skipped (< 20 images)" if few else f"not reached with {kmax}")
        head += (
            f"| {r['engine']}{note} | {r['n']} | {r['ood_auroc']:.3f} | {p(r['real_only_flag'])} | "
            + " | ".join(p(r["tpr"].get(h)) for h in heads)
            + f" | {k_text} | {r['nearest_ai']} "
            f"({p(r['nearest_ai_share'])}; nearest overall: {r['nearest']}) | "
            f"{'yes' if r['family_recognised'] else 'no'} |\n"
        )
    return head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the realfaces folder")
    ap.add_argument("--out", type=Path, default=Path("runs/realfaces-triage"), help="run folder")
    ap.add_argument("--engines", default="", help="comma-separated engines (default: every one)")
    ap.add_argument("--heads", default="linear,prototype", help="comma-separated heads")
    ap.add_argument("--min-images", type=int, default=18)
    args = ap.parse_args()
    if not (args.data / "MANIFEST.csv").is_file():
        print(f"skipped: realfaces not found at {args.data} (give --data)", file=sys.stderr)
        return 0
    rows = read_rows(args.data)
    counts = Counter(r["engine"] for r in rows if r["label"] == "1")
    engines = sorted(e for e, n in counts.items() if n >= args.min_images)
    if args.engines:
        engines = [e for e in engines if e in args.engines.split(",")]
    heads = [h for h in args.heads.split(",") if h]
    banks = embed_all(rows, args.out)
    done = args.out / "results.json"
    # engines measured by an earlier call (with other --engines) stay in the table
    results = (
        [r for r in json.loads(done.read_text()) if r["engine"] not in engines]
        if (done.is_file())
        else []
    )
    for engine in engines:
        res, exp_s, tri_s = held_out(engine, rows, banks, args.out, tuple(heads))
        results.append(summary(engine, res, exp_s, tri_s))
        print(json.dumps(results[-1]), flush=True)
        done.write_text(json.dumps(results, indent=2))
    text = table(sorted(results, key=lambda r: r["engine"]), heads)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
