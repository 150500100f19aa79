"""``facebank triage``: a new generator's folder against an experiment run, on one page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out, make_console, split_list


def triage_cmd(
    new: Annotated[
        str,
        typer.Argument(
            help="Images of one unknown source (several with --group-by): a folder, a CSV "
            "manifest or a URL; or a feature bank of the run's backbone.",
            show_default=False,
        ),
    ],
    run: Annotated[
        Path,
        typer.Option(
            "--run",
            help="A `facebank experiment` run folder: its banks, heads, splits, views and "
            "backbones are reused.",
            show_default=False,
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
    append: Annotated[
        list[Path] | None,
        typer.Option(
            "--append",
            help="Also add NEW to this bank (e.g. RUN/banks/original.zarr) as AI engine "
            "--engine-name, so the next experiment includes it; resumable, repeatable.",
        ),
    ] = None,
    engine_name: Annotated[
        str,
        typer.Option("--engine-name", help="NEW's name in the tables, the curves and --append."),
    ] = "new",
    shots: Annotated[
        list[str] | None,
        typer.Option(
            "--shots",
            help="k values of the few-shot curve, comma-separated (default 0,5,10,20,50,100; "
            "capped by what NEW allows).",
        ),
    ] = None,
    draws: Annotated[int, typer.Option(help="Seeded draws of k images per k.")] = 3,
    target_tpr: Annotated[
        float, typer.Option("--target-tpr", help="Few-shot target TPR at 0.5% FPR.")
    ] = 0.90,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Triage NEW as several sources: level:K (the K-th folder of its paths), "
            "group or engine (a manifest's column), or none.",
        ),
    ] = None,
    few_shot_heads: Annotated[
        list[str] | None,
        typer.Option(
            "--few-shot-heads",
            help="Heads retrained for the few-shot curve, comma-separated, or 'all' "
            "(default linear: seconds; mlp and prototype cost minutes on a CPU).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (embedding).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seeds densities, bootstraps and draws.")] = 0,
) -> None:
    """Is a new generator new, what does it resemble, does today's detector catch it, how
    many of its images would teach it, and is that about files? One page: triage.html."""
    from facebank.analysis.triage import TriageConfig, triage
    from facebank.core.errors import DataError

    if append and engine_name == "new":
        raise DataError(
            "--append needs --engine-name NAME: the engine NEW becomes in the bank "
            "(e.g. --engine-name flux2)"
        )
    try:
        ks = tuple(int(k) for k in split_list(shots, ("0", "5", "10", "20", "50", "100")))
    except ValueError:
        raise typer.BadParameter(f"--shots {shots!r} must be whole numbers, e.g. 0,5,10") from None
    if not 0.0 < target_tpr <= 1.0:
        raise typer.BadParameter(f"--target-tpr {target_tpr!r} must be in (0, 1], e.g. 0.9")
    fs = split_list(few_shot_heads, ("linear",))
    cfg = TriageConfig(
        few_shot_heads=None if fs == ("all",) else fs,
        shots=ks,
        draws=draws,
        target_tpr=target_tpr,
        group_by=group_by,
        engine_name=engine_name.strip().lower(),
        seed=seed,
    )
    run_dir = default_out("triage", out)
    res = triage(
        new,
        run=run,
        out=run_dir,
        config=cfg,
        append_to=tuple(append or ()),
        device=device,
        progress=True,
    )
    console = make_console()
    console.print("[bold]verdict[/]")
    for line in res.verdict:
        console.print(f"- {line}")
    if res.overlap:
        console.print(f"{len(res.overlap)} image(s) of NEW are already in the run: excluded")
    if res.failed:
        console.print(f"{len(res.failed)} image(s) of NEW could not be read: skipped")
    for a in res.appended:
        console.print(
            f"appended {a['added']} row(s) to {a['bank']} as {a['engine']} "
            f"({a['already_present']} already there)"
        )
    console.print(f"page: [bold]{run_dir / 'triage.html'}[/]  ({res.seconds['total']:.0f} s)")
