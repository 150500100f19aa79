"""``facebank audit``: could the files, not the faces, give a detector its answer?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out, make_console


def audit_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(help="Feature banks (NAME.zarr) with acquisition metadata (format 2)."),
    ],
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="A `facebank train` run or a `facebank experiment` folder: audit the same "
            "train/val/test rows (its splits.csv) and put its heads beside the baseline.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
    band: Annotated[
        tuple[float, float],
        typer.Option(
            "--band",
            help="Cross-validated metadata probability band of the rows where the files "
            "cannot tell.",
        ),
    ] = (0.05, 0.95),
    fpr: Annotated[
        float, typer.Option("--fpr", help="FPR at which thresholds are set on validation reals.")
    ] = 0.005,
    seed: Annotated[int, typer.Option("--seed", help="Seeds folds, bootstraps and the split.")] = 0,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Groups (identity, source): level:K (the K-th folder of each stored path), "
            "a bank column (group, the default when the manifest had one), or none; groups "
            "with rows in more than one split are listed.",
        ),
    ] = None,
    cv: Annotated[
        int | None,
        typer.Option(
            "--cv",
            help="Cross-fit with K group-aware folds: every labelled row gets an out-of-fold "
            "metadata probability and out-of-fold head scores (heads refitted per fold, plain "
            "and balanced); the AUC where the files cannot tell then uses every row in the band.",
        ),
    ] = None,
    cv_head: Annotated[
        list[str] | None,
        typer.Option(
            "--cv-head",
            help="A head (registry name) to refit per fold besides the run's heads (repeatable).",
        ),
    ] = None,
) -> None:
    """Could the files, not the faces, give the answer? Metadata baseline, heads, verdict."""
    from facebank.analysis.audit import audit

    res = audit(
        banks,
        run=run,
        band=band,
        fpr=fpr,
        seed=seed,
        group_by=group_by,
        cv=cv,
        cv_heads=tuple(cv_head or ()),
    )
    run_dir = res.write(
        default_out("audit", out),
        config={
            "banks": [str(b) for b in banks],
            "run": str(run) if run else None,
            "band": list(band),
            "fpr": fpr,
            "seed": seed,
            "group_by": group_by,
            "cv": cv,
            "cv_heads": list(cv_head or ()),
            "splits": res.splits_source,
            "threshold_split": "val (reals only)",
            "test_split": "test",
        },
    )
    console = make_console()
    console.print(f"[bold]verdict: {res.verdict}[/]")
    console.print(res.reason)
    from rich.table import Table

    t = Table(title=f"test rows; thresholds on validation reals at FPR {fpr:.1%}")
    rows = res.head_rows()
    for col in rows[0]:
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v or "-") for v in r.values()))
    console.print(t)
    if res.crossfit and res.crossfit.get("k"):
        u = res.crossfit["uncertain"]
        cf = Table(
            title=f"cross-fitted, {res.crossfit['k']} folds: {u['n']} rows where the files "
            f"cannot tell ({u['n_real']} real, {u['n_fake']} AI)"
        )
        cf_rows = res.crossfit_rows()
        for col in cf_rows[0]:
            cf.add_column(col, justify="left" if col in ("model", "training") else "right")
        for r in cf_rows:
            cf.add_row(*(str(v) for v in r.values()))
        console.print(cf)
    for n in res.notes:
        console.print(f"note: {n}")
    console.print(f"run folder: {run_dir}")
