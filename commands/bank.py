"""``facebank bank ...``: inspect, check, consolidate, backfill, export and import banks."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    StorageOptionsOption,
    make_console,
    parse_storage_options,
    show_progress,
)

app = typer.Typer(help="Inspect and check feature banks.", no_args_is_help=True)

BankArg = Annotated[
    str, typer.Argument(help="Feature bank: a NAME.zarr folder or an fsspec URL (s3://...).")
]


@app.command("info")
def bank_info_cmd(
    bank: BankArg,
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=0, help="Failures and duplicates listed in full.")
    ] = 20,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Rows per engine, split and label; backbone, view, failures and duplicates of a bank."""
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    from facebank.embed.backbones.compat import backbone_id
    from facebank.embed.bank.bank import FeatureBank

    b = FeatureBank.open(bank, storage_options=parse_storage_options(storage_options))
    meta = b.meta
    console = make_console()
    head = Table(title=f"bank {b.path}", show_header=False)
    head.add_column("key")
    head.add_column("value")
    head.add_row("rows", f"{len(b):,}")
    head.add_row("format", str(b.format) + ("" if b.has_metadata else " (no file metadata)"))
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
    groups = b.groups
    if (groups != "").any():  # a manifest's group column: identities, sources...
        n_groups = len(set(groups[groups != ""].tolist()))
        head.add_row("groups", f"{n_groups:,} over {int((groups != '').sum()):,} rows")
    found = b.face_found
    if (found >= 0).any():  # a face view: how many rows had no face (kept uncropped)
        head.add_row(
            "face found",
            f"{int((found == 1).sum()):,} of {int((found >= 0).sum()):,} rows "
            f"({int((found == 0).sum()):,} without a face, kept uncropped)",
        )
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
    bank: BankArg,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Check a bank: attributes, arrays, every chunk, values; exit 1 listing what is wrong."""
    from rich.markup import escape

    from facebank.embed.bank.verify import verify_bank

    rep = verify_bank(bank, storage_options=parse_storage_options(storage_options))
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


@app.command("consolidate")
def bank_consolidate_cmd(
    bank: BankArg,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Move committed partitions into the bank's arrays (resumable): plain zarr reads all."""
    from facebank.embed.bank.partitions import committed_partitions, consolidate

    opts = parse_storage_options(storage_options)
    parts = committed_partitions(bank, storage_options=opts)
    b = consolidate(bank, storage_options=opts)
    make_console().print(f"ok: {b.url} holds {len(b):,} rows ({len(parts)} partition(s) committed)")


@app.command("backfill")
def bank_backfill_cmd(
    bank: BankArg,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Folder (or manifest) the bank's paths are relative to, local, file:// or "
            "an fsspec URL; default the bank's recorded source.",
        ),
    ] = None,
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=0, help="Unreachable files listed in full.")
    ] = 20,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Add file metadata columns to a bank from its source files; lists unreachable ones."""
    from rich.markup import escape
    from rich.progress import Progress

    from facebank.embed.bank.export import backfill_metadata

    with Progress(disable=not show_progress(), transient=True) as bar:
        task = bar.add_task("backfill", total=None)
        rep = backfill_metadata(
            bank,
            source=source,
            storage_options=parse_storage_options(storage_options),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console = make_console()
    if rep.read == 0 and not rep.unreachable:
        console.print(f"ok: all {rep.rows:,} rows already hold their file metadata; nothing read")
        return
    console.print(
        f"ok: {rep.read:,} of {rep.rows:,} rows read their file metadata; "
        f"{len(rep.unreachable):,} file(s) unreachable (their columns stay missing)"
    )
    for path, reason in rep.unreachable[:max_listed]:
        console.print(f"  - {escape(path)}: {escape(reason)}")
    if len(rep.unreachable) > max_listed:
        console.print(f"... and {len(rep.unreachable) - max_listed} more (--max-listed)")


class ExportFormat(str, Enum):
    """Feature file format of an export."""

    npy = "npy"
    parquet = "parquet"


@app.command("export")
def bank_export_cmd(
    bank: BankArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write img_emb/ and metadata/ into.")
    ],
    format: Annotated[
        ExportFormat,
        typer.Option("--format", help="Feature files: npy (as clip-retrieval) or parquet."),
    ] = ExportFormat.npy,
    rows_per_file: Annotated[
        int, typer.Option("--rows-per-file", min=1, help="Rows per numbered file.")
    ] = 1_000_000,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in --out.")
    ] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Write a bank as clip-retrieval does: img_emb/img_emb_N.npy, metadata/metadata_N.parquet."""
    from facebank.embed.bank.export import export_bank

    files = export_bank(
        bank,
        out,
        format=format.value,
        rows_per_file=rows_per_file,
        overwrite=overwrite,
        storage_options=parse_storage_options(storage_options),
    )
    make_console().print(f"ok: wrote {len(files)} file(s) to {out}")


@app.command("import")
def bank_import_cmd(
    src: Annotated[Path, typer.Argument(help="Folder holding img_emb/ and metadata/.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The bank to make (folder or URL).")],
    engine: Annotated[
        str | None, typer.Option("--engine", help="Engine of every row when the files give none.")
    ] = None,
    label: Annotated[
        int | None,
        typer.Option("--label", min=-1, max=1, help="Label of every row when the files give none."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing bank at --out.")
    ] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Make a bank from clip-retrieval's img_emb/ + metadata/ folders (or a facebank export)."""
    from facebank.embed.bank.export import import_bank

    b = import_bank(
        src,
        out,
        engine=engine,
        label=label,
        overwrite=overwrite,
        storage_options=parse_storage_options(storage_options),
    )
    make_console().print(f"ok: {b.url} holds {len(b):,} rows (backbone {b.backbone.get('name')})")
