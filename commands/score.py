"""``facebank score``: a trained head's scores for a bank or images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def score_cmd(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="One feature bank (NAME.zarr), or image files to embed with the head's backbone."
        ),
    ],
    head: Annotated[
        Path, typer.Option("--head", help="Run folder of a trained head (facebank train --out).")
    ],
    out: Annotated[
        str, typer.Option("--out", help="CSV to write (path,score,decision); '-' = stdout.")
    ] = "-",
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Backbone weights file, for embedding images offline."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu or cuda (embedding images).")
    ] = "auto",
) -> None:
    """Score a bank or images: CSV of path, score (higher = AI-generated), decision at the stored threshold."""
    from facebank.embed.errors import DataError
    from facebank.heads import score_run

    banks = [p for p in inputs if p.is_dir()]
    if banks and len(inputs) > 1:
        raise DataError(
            f"give one bank or image files, not both/several banks (got {len(inputs)} inputs, "
            f"{len(banks)} of them folders)"
        )
    if banks:
        res = score_run(head, bank=str(banks[0]), out=out)
    else:
        res = score_run(
            head, images=[str(p) for p in inputs], out=out, weights=weights, device=device
        )
    for path, reason in res.failures:
        typer.echo(f"failed: {path}: {reason}", err=True)
    typer.echo(
        f"scored {res.n_scored}, flagged {res.n_flagged} as AI-generated (score > {res.threshold:.4g}), "
        f"{len(res.failures)} failed" + ("" if out == "-" else f"; wrote {out}"),
        err=True,
    )
