"""``facebank evaluate``, ``robustness``, ``ood`` and ``report``: judge trained heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out


def evaluate_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(
            help="Feature banks (NAME.zarr) to evaluate on, of the head's backbone (for a head "
            "of several backbones: banks of each, joined by image sha256)."
        ),
    ],
    head: Annotated[
        Path, typer.Option("--head", help="Run folder of a trained head (facebank train --out).")
    ],
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples for the 95% intervals (0 = none).")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """Metrics at the head's validation-chosen threshold, per-engine TPR/FPR, ROC and DET curves."""
    from facebank.analysis.evaluation import evaluate

    res = evaluate(head, banks, out=default_out("evaluate", out), n_boot=n_boot, seed=seed)
    m = res.metrics
    typer.echo(
        f"{res.n_rows} rows ({m.n_real} real, {m.n_fake} AI; {sum(res.n_excluded.values())} "
        "train/val rows of the run excluded), "
        f"view {', '.join(sorted(set(res.views)))}"
    )
    typer.echo(f"threshold {res.threshold:.4g} ({res.threshold_source})")
    typer.echo(
        f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}  AP {m.ap:.4f}  EER {m.eer:.2%}"
    )
    for r in res.per_engine:
        warn = "  ! small sample (see the warning above)" if r["warning"] else ""
        typer.echo(
            f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%} [{r['ci_low']:.1%}, "
            f"{r['ci_high']:.1%}]  n={r['n']}{warn}"
        )
    typer.echo(f"run folder: {res.run_dir}")


def robustness_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(help="One bank per view of the same images (facebank embed --view ...)."),
    ],
    head: Annotated[Path, typer.Option("--head", help="Run folder of a trained head.")],
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples for AUC intervals.")
    ] = 1000,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail when the banks do not hold the same images.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """TPR/FPR at the frozen threshold and AUC per view (JPEG quality, resize, flips)."""
    from facebank.analysis.robustness import robustness

    res = robustness(
        head,
        banks,
        out=default_out("robustness", out),
        n_boot=n_boot,
        seed=seed,
        allow_mismatch=not strict,
    )
    typer.echo(
        f"{res.n_matched} images matched by sha256 in every view; threshold {res.threshold:.4g}"
    )
    for r in res.views:
        typer.echo(
            f"  {r['view']:<24} TPR {r['tpr']:6.1%}  FPR {r['fpr']:6.2%}  AUC {r['auc']:.4f}"
        )
    for n in res.notes:
        typer.echo(f"note: {n}")
    typer.echo(f"run folder: {res.run_dir}")


def ood_cmd(
    head: Annotated[
        Path,
        typer.Option(
            "--head", help="Run folder of a trained head (prototype: its ood_score; others: kNN)."
        ),
    ],
    known: Annotated[
        list[Path],
        typer.Option(
            "--known", help="Bank(s) of the engines the head was trained on (repeatable)."
        ),
    ],
    new: Annotated[
        list[Path],
        typer.Option("--new", help="Bank(s) of engines the head never saw (repeatable)."),
    ],
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
    k: Annotated[
        int,
        typer.Option("--k", help="Neighbour rank of the kNN OOD score (heads without ood_score)."),
    ] = 10,
    flag_fpr: Annotated[
        float,
        typer.Option(
            "--flag-fpr",
            help="Fraction of known-engine validation images the flag threshold flags.",
        ),
    ] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """AUROC and FPR at 95% TPR of new-engine vs known-engine images, per-image OOD flags."""
    from facebank.analysis.ood import ood, score_meaning
    from facebank.core.runs import fmt_value

    res = ood(
        head, known=known, new=new, out=default_out("ood", out), k=k, flag_fpr=flag_fpr, seed=seed
    )
    typer.echo(f"score: {res.method}, {score_meaning(res.method)}")
    typer.echo(
        f"flag threshold {res.threshold:.4g}: set to flag {flag_fpr:.0%} of {res.n_known_val} "
        f"known-engine val images; it flags {res.known_flag_rate:.1%} of known-engine test images"
    )
    for r in res.per_engine:
        typer.echo(
            f"  {r['engine']:<16} AUROC {fmt_value(r['auroc'])}  "
            f"FPR@95%TPR {fmt_value(r['fpr_at_95tpr'], digits=1, pct=True)}  "
            f"flagged {fmt_value(r['flag_rate'], digits=1, pct=True)}  n={r['n']}"
        )
    typer.echo(f"per-image CSV: {res.csv_path}")


def report_cmd(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders (nested sub-runs are included).")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file to write; default runs/report-<date>-<time>.html."),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "facebank report",
) -> None:
    """One self-contained HTML page (figures inlined) with every table and figure of the runs."""
    from facebank.analysis.report import write_report

    out = out or default_out("report").with_suffix(".html")
    path = write_report(run_dirs, out=out, title=title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
