"""``facebank explain``: integrated-gradient heatmaps of images, feature attributions of rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out


def explain_cmd(
    head: Annotated[
        Path, typer.Option("--head", help="Run folder of a trained head (facebank train --out).")
    ],
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files, folders of images or CSV manifests to explain through the "
            "head's backbone; local, file:// or at fsspec URLs (s3://bucket/photos)."
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="IG baseline: black (all-black image) and/or blur (the image blurred); "
            "repeatable, default both.",
        ),
    ] = None,
    n_steps: Annotated[
        int, typer.Option("--steps", help="Integrated-gradient steps (more = smaller delta).")
    ] = 32,
    bank: Annotated[
        Path | None,
        typer.Option(
            "--bank", help="Bank whose rows (--row) get a feature-space attribution (head only)."
        ),
    ] = None,
    row: Annotated[
        list[int] | None, typer.Option("--row", help="Bank row index to explain (repeatable).")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Backbone weights file, for working offline."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu (default), auto or cuda.")] = "cpu",
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
) -> None:
    """Explain a head's score: IG heatmaps over images (PNG), feature attributions of bank rows."""
    from facebank.analysis.explain import (
        BASELINES,
        explain_features,
        explain_images,
        feature_figure,
    )
    from facebank.analysis.plots import save_figure
    from facebank.core.errors import DataError
    from facebank.core.runs import start_run, write_json
    from facebank.embed import FeatureBank
    from facebank.embed.inputs.datasets import list_images
    from facebank.heads import load_head

    if not images and bank is None:
        raise DataError("nothing to explain; give image files, or --bank BANK --row N")
    if bank is not None and not row:
        raise DataError(f"--bank {str(bank)!r} needs --row N (repeatable) to say which rows")
    h = load_head(head)
    run = default_out("explain", out)
    failures = []
    res = []
    if images:
        found = list_images(images, banks=False)
        res, failures = explain_images(
            found.images,
            h,
            baselines=tuple(baseline or BASELINES),
            n_steps=n_steps,
            weights=weights,
            device=device,
            out=run,
        )
        for path, reason in failures:
            typer.echo(f"failed: {path}: {reason}", err=True)
        if not res and bank is None:
            typer.echo(
                f"error: none of the {len(found.images)} image(s) could be explained (each "
                "failure is listed above); nothing was written",
                err=True,
            )
            raise typer.Exit(1)
        for r in res:
            typer.echo(
                f"{Path(r.path).name} [{r.baseline}]: score {r.score:.4g} "
                f"(baseline {r.baseline_score:.4g}), "
                f"attributions sum {r.attribution_sum:.4g}, convergence delta {r.delta:.2g}, "
                f"{r.seconds:.1f} s -> {r.png}"
            )
    if bank is not None:
        b = FeatureBank.open(bank)
        if not images:
            start_run(run, command="explain", config={"bank": str(bank), "rows": list(row)})
        bad = [i for i in row if not 0 <= i < len(b)]
        if bad:
            raise DataError(f"rows {bad} are outside bank {b.name!r} (0..{len(b) - 1})")
        fx = explain_features(b.load_features(list(row)), h, bank=b)
        paths = [str(p) for p in b.paths]
        out_rows = []
        for j, i in enumerate(row):
            save_figure(feature_figure(fx, j), run / f"features-row{i}.png")
            out_rows.append(
                {
                    "row": i,
                    "path": paths[i],
                    "score": float(fx.scores[j]),
                    "baseline_score": fx.baseline_score,
                    "delta": float(fx.delta[j]),
                    "top": fx.top(j, 10),
                }
            )
            top = ", ".join(f"f{t['feature']} {t['attribution']:+.3g}" for t in fx.top(j, 5))
            typer.echo(f"row {i} ({paths[i]}): score {fx.scores[j]:.4g}; top features {top}")
        write_json(run / "features.json", {"baseline": fx.baseline_source, "rows": out_rows})
    typer.echo(f"run folder: {run}")
