"""``facebank backbones``: the backbone registry as a table."""

from __future__ import annotations

from typing import Annotated

import typer


def backbones_cmd(
    pattern: Annotated[
        str | None,
        typer.Argument(help="Only names matching this shell pattern, e.g. 'efficientnet*'."),
    ] = None,
    no_test: Annotated[
        bool, typer.Option("--no-test", help="Hide the test-only backbones (random weights).")
    ] = False,
) -> None:
    """List the backbones: feature size, input size, weights source, cached or not, layer taps.

    Sizes and taps come from the libraries' configs (no weights are loaded), cached after
    the first listing.
    """
    from rich.console import Console
    from rich.table import Table

    from facebank.embed.backbones.registry import describe_backbones

    rows = [r for r in describe_backbones(pattern) if not (no_test and r["test_only"])]
    table = Table(title="facebank backbones", title_justify="left")
    for column, justify in (
        ("name", "left"),
        ("library / model", "left"),
        ("dim", "right"),
        ("input", "right"),
        ("weights", "left"),
        ("cached", "center"),
        ("test only", "center"),
        ("--layer taps", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for r in rows:
        size = r["input_size"]
        table.add_row(
            r["name"],
            f"{r['library']} {r['model']}" + (f"/{r['pretrained']}" if r["pretrained"] else ""),
            str(r["dim"]) if r["dim"] is not None else "?",
            f"{size[-2]}x{size[-1]}" if size else "?",
            r["weights_source"],
            "yes" if r["cached"] else "no",
            "yes" if r["test_only"] else "",
            ", ".join(r.get("layers") or ()) or "?",
        )
    Console(highlight=False, width=max(180, Console().width)).print(table)
    if not rows:
        typer.echo(f"no backbone matches {pattern!r}", err=True)
