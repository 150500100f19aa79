"""``facebank bank ...``: inspect and check feature banks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import make_console

app = typer.Typer(help="Inspect and check feature banks.", no_args_is_help=True)


@app.command("info")
def bank_info_cmd(
    bank: Annotated[Path, typer.Argument(help="Feature bank folder (NAME.zarr).")],
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=0, help="Failures and duplicates listed in full.")
    ] = 20,
) -> None:
    """Rows per engine, split and label; backbone, view, failures and duplicates of a bank."""
    from collections import Counter

    from facebank.embed.bank import FeatureBank
    from facebank.embed.compat import backbone_id
    from rich.markup import escape
    from rich.table import Table

    b = FeatureBank.open(bank)
    meta = b.meta
    console = make_console()
    head = Table(title=f"bank {b.path}", show_header=False)
    head.add_column("key")
    head.add_column("value")
    head.add_row("rows", f"{len(b):,}")
    head.add_row("backbone", escape(backbone_id(b.backbone)))
    head.add_row("view", escape(b.view))
    head.add_row("features", f"{b.dim}-d, stored {b.storage_dtype}")
    head.add_row("source", escape(str(meta.get("source", ""))))
    head.add_row("created", str(meta.get("created", "")))
    versions = meta.get("versions") or {}
    head.add_row("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    head.add_row("failures", f"{len(b.failures):,}")
    head.add_row("duplicates", f"{len(b.duplicates):,}")
    head.add_row("ignored files", f"{len(meta.get('ignored', [])):,}")
    console.print(head)

    engines, splits, labels = b.engines, b.splits, b.labels
    split_names = [s for s in ("train", "val", "test", "") if (splits == s).any()]
    split_names += sorted(set(splits.tolist()) - set(split_names))
    rows = Table(title="rows per engine")
    rows.add_column("engine")
    rows.add_column("label")
    for s in split_names:
        rows.add_column(s or "(no split)", justify="right")
    rows.add_column("total", justify="right")
    label_name = {1: "1 (AI)", 0: "0 (real)", -1: "-1 (unknown)"}
    pairs = Counter(zip(engines.tolist(), labels.tolist(), splits.tolist(), strict=True))
    for engine in sorted(set(engines.tolist())):
        for label in sorted({lab for (e, lab, _s) in pairs if e == engine}, reverse=True):
            counts = [pairs.get((engine, label, s), 0) for s in split_names]
            rows.add_row(
                escape(engine),
                label_name.get(label, str(label)),
                *[f"{c:,}" for c in counts],
                f"{sum(counts):,}",
            )
    totals = [int((splits == s).sum()) for s in split_names]
    rows.add_row("[bold]all[/]", "", *[f"{c:,}" for c in totals], f"{len(b):,}")
    console.print(rows)

    if b.failures:
        t = Table(title=f"failures ({len(b.failures)})")
        t.add_column("path")
        t.add_column("reason")
        for f in b.failures[:max_listed]:
            t.add_row(escape(f["path"]), escape(f["reason"]))
        console.print(t)
        if len(b.failures) > max_listed:
            console.print(f"... and {len(b.failures) - max_listed} more (--max-listed)")
    if b.duplicates:
        t = Table(title=f"duplicates ({len(b.duplicates)}; identical files embedded once)")
        t.add_column("path")
        t.add_column("duplicate of")
        t.add_column("note")
        row_of = dict(
            zip(b.paths.tolist(), zip(engines.tolist(), splits.tolist(), strict=True), strict=True)
        )
        for d in b.duplicates[:max_listed]:
            first = row_of.get(d["duplicate_of"], (d.get("engine"), d.get("split")))
            note = []
            if first[0] != d.get("engine"):
                note.append(f"engine {first[0]} vs {d.get('engine')}")
            if first[1] != d.get("split"):
                note.append(f"split {first[1] or '-'} vs {d.get('split') or '-'}")
            t.add_row(
                escape(d["path"]),
                escape(d["duplicate_of"]),
                "[yellow]" + escape("; ".join(note)) + "[/]" if note else "",
            )
        console.print(t)
        if len(b.duplicates) > max_listed:
            console.print(f"... and {len(b.duplicates) - max_listed} more (--max-listed)")


@app.command("verify")
def bank_verify_cmd(
    bank: Annotated[Path, typer.Argument(help="Feature bank folder (NAME.zarr).")],
) -> None:
    """Check a bank: attributes, arrays, every chunk, values; exit 1 listing what is wrong."""
    from facebank.embed.verify import verify_bank
    from rich.markup import escape

    rep = verify_bank(bank)
    console = make_console()
    for note in rep.notes:
        console.print(f"note: {escape(note)}")
    if rep.ok:
        console.print(f"ok: {escape(str(rep.path))} ({rep.rows:,} rows)")
        return
    err = make_console(stderr=True)
    err.print(f"error: bank {escape(str(rep.path))} has {len(rep.problems)} problem(s):")
    for prob in rep.problems:
        err.print(f"  - {escape(prob)}")
    raise typer.Exit(1)
