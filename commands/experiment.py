"""``facebank experiment`` and ``facebank demo``: the whole workflow on one dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facebank.core.options import (
    CONTROL_VIEWS,
    DEFAULT_HEADS,
    DEGRADED_VIEWS,
    MIN_NEW_ROWS,
    ExperimentOptions,
)

from ._common import (
    StorageOptionsOption,
    default_out,
    parse_storage_options,
    split_list,
)


def _print_experiment(result) -> None:
    from rich.console import Console

    console = Console()
    for table in result.rich_tables():
        console.print(table)
    total = result.seconds.get("total", 0.0)
    console.print(f"report: [bold]{result.report}[/]  ({total:.0f} s; run folder {result.run_dir})")


def experiment(
    source: Annotated[
        str,
        typer.Argument(
            help="Dataset: folder SOURCE/<engine>/... (or SOURCE/<split>/<engine>/...) "
            "or a CSV manifest path,label,engine[,split]; local, or an fsspec URL such as "
            "s3://bucket/faces (see --storage-options).",
            show_default=False,
        ),
    ],
    backbone: Annotated[
        list[str] | None,
        typer.Option(
            help="Backbone (see `facebank backbones`); repeat or comma-separate for several: "
            "each image is decoded once, every head trains on every backbone and on the "
            "backbones fused, and a backbone x head leaderboard heads the report.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (default runs/experiment-<date>-<time>); give an earlier "
            "experiment's folder to reuse its banks.",
        ),
    ] = None,
    views: Annotated[
        list[str] | None,
        typer.Option(
            "--views",
            help="Views to embed besides original and the control views; repeat or "
            f"comma-separate (default {', '.join(DEGRADED_VIEWS)}; 'none' for no views at "
            f"all, the controls included). The control views ({', '.join(CONTROL_VIEWS)}) "
            "are added unless --no-controls.",
        ),
    ] = None,
    controls: Annotated[
        bool,
        typer.Option(
            "--controls/--no-controls",
            help=f"Embed the control views ({', '.join(CONTROL_VIEWS)}: every image the same "
            "format, size and encoder) besides --views, and train each head on them.",
        ),
    ] = True,
    heads: Annotated[
        list[str] | None,
        typer.Option(
            "--heads",
            help=f"Heads to train; repeat or comma-separate (default {', '.join(DEFAULT_HEADS)}).",
        ),
    ] = None,
    new_engine: Annotated[
        str | None,
        typer.Option(
            help="AI engine held out as new for the OOD test (default: the AI engine with "
            f"the fewest images among those with at least {MIN_NEW_ROWS}).",
        ),
    ] = None,
    real: Annotated[
        list[str] | None,
        typer.Option("--real", help="Folder name(s) holding real images (default: real)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (embedding).")] = "auto",
    weights: Annotated[
        Path | None,
        typer.Option(help="Backbone checkpoint file (open_clip / timm), overrides the cache."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds splits, training and bootstraps.")] = 0,
    image_size: Annotated[
        int | None,
        typer.Option(help="Backbone input side where allowed (e.g. 512 for efficientnet-b1)."),
    ] = None,
    protocols: Annotated[
        list[str] | None,
        typer.Option(
            "--protocols",
            help="Optional protocols with linear: few-shot, chrono (comma-separated or repeated).",
        ),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Keep each group (an identity, a source) in one split: level:K (the K-th "
            "folder of the image paths), a bank column (group: the default when the manifest "
            "had one), or none; the audit lists groups straddling splits.",
        ),
    ] = None,
    storage_options: StorageOptionsOption = None,
    engine_dates: Annotated[
        Path | None,
        typer.Option(
            "--engine-dates",
            help="CSV engine,date (YYYY-MM-DD) of each engine's release for --protocols "
            "chrono; default: a manifest SOURCE's date column, then the dates shipped with "
            "facebank.",
        ),
    ] = None,
) -> None:
    """Embed a dataset under several views, train the default heads, evaluate at 0.5% FPR,
    leave-one-engine-out, robustness, OOD of a held-out engine, neighbours: one HTML report."""
    from facebank.analysis.experiment import run_experiment

    backbones = split_list(backbone, ("clip-vit-l-14",))
    if not backbones:
        raise typer.BadParameter("give at least one --backbone (see `facebank backbones`)")
    asked = split_list(views, DEGRADED_VIEWS)
    options = ExperimentOptions(
        views=(*(CONTROL_VIEWS if controls and asked else ()), *asked),
        heads=split_list(heads, DEFAULT_HEADS),
        new_engine=new_engine,
        device=device,
        weights=weights,
        image_size=image_size,
        seed=seed,
        real_names=tuple(real or ("real",)),
        progress=True,
        protocols=split_list(protocols, ()),
        group_by=group_by,
        storage_options=parse_storage_options(storage_options),
        engine_dates=engine_dates,
    )
    out_dir = default_out("experiment", out)
    if len(backbones) > 1:
        from rich.console import Console

        from facebank.analysis.leaderboard import run_backbone_comparison

        comparison = run_backbone_comparison(
            source, backbones=backbones, out=out_dir, options=options
        )
        console = Console()
        for table in comparison.rich_tables():
            console.print(table)
        console.print(f"report: [bold]{comparison.report}[/]  (run folder {comparison.run_dir})")
        return
    _print_experiment(run_experiment(source, backbone=backbones[0], out=out_dir, options=options))


def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (stand-in data + run).")] = Path(
        "facebank-demo"
    ),
    small: Annotated[
        bool, typer.Option("--small", help="60 instead of 200 images per class (about a minute).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (embedding).")] = "auto",
) -> None:
    """Offline demo: a stand-in dataset from photos bundled with matplotlib/scikit-image
    (simulated artifacts, not real AI faces), then `facebank experiment` with efficientnet-lite1."""
    from rich.console import Console
    from rich.markdown import Markdown

    from facebank.analysis.demo import demo_note, run_demo

    Console(stderr=True).print(Markdown(demo_note()))
    result = run_demo(out, small=small, device=device, progress=True)
    _print_experiment(result)
    typer.echo(
        "Reminder: simulated artifacts on a handful of photos, not real AI-generated faces "
        "(see NOTE.md in the run folder and the top of the report)."
    )
