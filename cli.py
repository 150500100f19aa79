"""facebank command line: a thin typer shell over the library.

Each command parses options, calls one library function and prints. Library errors
(``FacebankError``) become one line on stderr and exit code 1; ``--verbose`` shows
the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional used by typer options)

import typer
from typer.core import TyperGroup

_STATE = {"verbose": False}


class _FacebankGroup(TyperGroup):
    """Turns library errors into one line on stderr and exit code 1 (tracebacks with -v)."""

    def invoke(self, ctx):  # noqa: D102
        from facebank.embed.errors import FacebankError

        try:
            return super().invoke(ctx)
        except FacebankError as exc:
            if _STATE["verbose"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_FacebankGroup,
    name="facebank",
    help="Find AI-generated faces: embed images once into Zarr feature banks, "
    "train heads in seconds, evaluate at 0.5% FPR, analyse neighbours with FAISS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Inspect and check feature banks.", no_args_is_help=True)
neighbours_app = typer.Typer(
    help="FAISS nearest-neighbour analysis of banks.", no_args_is_help=True
)
app.add_typer(bank_app, name="bank")
app.add_typer(neighbours_app, name="neighbours")


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")
    ] = False,
) -> None:
    _STATE["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ---------------------------------------------------------------- backbones (issue 2)
@app.command("backbones")
def backbones_cmd(
    pattern: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help="Only names matching this shell pattern, e.g. 'efficientnet*'."),
    ] = None,
    no_test: Annotated[
        bool, typer.Option("--no-test", help="Hide the test-only backbones (random weights).")
    ] = False,
) -> None:
    """List the backbones: feature size, input size, where weights come from, cached or not."""
    from facebank.embed.backbones import describe_backbones
    from rich.console import Console
    from rich.table import Table

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
        )
    Console(highlight=False, width=max(180, Console().width)).print(table)
    if not rows:
        typer.echo(f"no backbone matches {pattern!r}", err=True)


# ---------------------------------------------------------------- embed & bank (issue 2)
from enum import Enum as _EmbedEnum  # noqa: E402


class _BankDtype(str, _EmbedEnum):
    float16 = "float16"
    float32 = "float32"


def _rich_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@app.command("embed")
def embed_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="Image folder SOURCE/<engine>/**/image (optionally SOURCE/{train,val,test}/<engine>/...) "
            "or a CSV manifest with columns path,label,engine[,split]."
        ),
    ],
    backbone: Annotated[
        str, typer.Option("--backbone", "-b", help="Backbone name (see `facebank backbones`).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Bank folder NAME.zarr. Created if absent; if present (same backbone and view) only "
            "images not yet in it are embedded - rerun the same command to resume a killed run.",
        ),
    ],
    view: Annotated[
        str,
        typer.Option(
            "--view",
            help="Transform before the backbone: original, jpeg:q=Q, resize:N, hflip, vflip, or a+b.",
        ),
    ] = "original",
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N.")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per forward pass.")
    ] = 64,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Decoding processes (default: automatic; 0 = in the main process).",
        ),
    ] = None,  # noqa: UP045
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Checkpoint file to load instead of the backbone's own weights."
        ),
    ] = None,  # noqa: UP045
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            min=8,
            help="Backbone input side in pixels, where the backbone allows it (e.g. efficientnet-b1 512).",
        ),
    ] = None,  # noqa: UP045
    real: Annotated[
        list[str] | None,
        typer.Option(
            "--real",
            help="Engine folder holding real images (label 0); repeat for several. Default: real.",
        ),
    ] = None,  # noqa: UP045
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the backbone (worth it on a GPU for large runs)."
        ),
    ] = False,
    dtype: Annotated[
        _BankDtype, typer.Option("--dtype", help="Stored feature dtype of a new bank.")
    ] = _BankDtype.float16,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")
    ] = True,
    flush_rows: Annotated[
        int | None,
        typer.Option(
            "--flush-rows", min=1, hidden=True, help="Commit at least every N rows (default 2048)."
        ),
    ] = None,  # noqa: UP045
    chunk_rows: Annotated[
        int,
        typer.Option(
            "--chunk-rows", min=1, hidden=True, help="Rows per stored chunk of a new bank."
        ),
    ] = 8192,
) -> None:
    """Embed every image of SOURCE with one backbone into a resumable Zarr feature bank."""
    import warnings

    from facebank.embed.runner import DuplicateImageWarning, embed_source

    err = _rich_console(stderr=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DuplicateImageWarning)
        summary = embed_source(
            source,
            backbone=backbone,
            out=out,
            view=view,
            device=device,
            weights=weights,
            image_size=image_size,
            real_names=tuple(real) if real else ("real",),
            batch_size=batch_size,
            num_workers=workers,
            compile=compile_,
            progress=progress,
            dtype=dtype.value,
            flush_rows=flush_rows,
            chunk_rows=chunk_rows,
        )
    _print_embed_summary(summary)
    for w in caught:
        if issubclass(w.category, DuplicateImageWarning):
            err.print(f"[yellow]warning:[/] {w.message}", markup=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _print_embed_summary(s) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _rich_console()
    table = Table(title=f"{s.out}  ({s.backbone}, view {s.view}, {s.device})", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("embedded", f"{s.embedded:,}")
    table.add_row("skipped (already in the bank)", f"{s.skipped_present:,}")
    table.add_row("duplicates (identical file embedded once)", f"{s.duplicates:,}")
    table.add_row("failed", f"{len(s.failed):,}")
    table.add_row("ignored (not an image file)", f"{len(s.ignored):,}")
    table.add_row("rows in the bank", f"{s.rows:,}")
    table.add_row("time", f"{s.seconds:.1f} s ({s.images_per_s:,.1f} images/s)")
    console.print(table)
    shown = 20
    for path, reason in s.failed[:shown]:
        console.print(f"  failed: {escape(path)}: {escape(reason)}")
    if len(s.failed) > shown:
        console.print(
            f"  ... and {len(s.failed) - shown} more (`facebank bank info {s.out}` lists all)"
        )


@bank_app.command("info")
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
    console = _rich_console()
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


@bank_app.command("verify")
def bank_verify_cmd(
    bank: Annotated[Path, typer.Argument(help="Feature bank folder (NAME.zarr).")],
) -> None:
    """Check a bank: attributes, arrays, every chunk, values; exit 1 listing what is wrong."""
    from facebank.embed.bank import verify_bank
    from rich.markup import escape

    rep = verify_bank(bank)
    console = _rich_console()
    for note in rep.notes:
        console.print(f"note: {escape(note)}")
    if rep.ok:
        console.print(f"ok: {escape(str(rep.path))} ({rep.rows:,} rows)")
        return
    err = _rich_console(stderr=True)
    err.print(f"error: bank {escape(str(rep.path))} has {len(rep.problems)} problem(s):")
    for prob in rep.problems:
        err.print(f"  - {escape(prob)}")
    raise typer.Exit(1)


# ---------------------------------------------------------------- heads (issue 3)
def _head_params(items: list[str] | None) -> dict:
    """``["C=0.5", "hidden=[64,32]"]`` -> ``{"C": 0.5, "hidden": [64, 32]}`` (JSON values, else strings)."""
    import json

    from facebank.embed.errors import DataError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(
                f"--param {item!r} is not KEY=VALUE; e.g. --param C=0.5 --param hidden=[128,64]"
            )
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@app.command("train")
def train_cmd(
    banks: Annotated[
        list[Path], typer.Argument(help="Feature banks (NAME.zarr) of one backbone; concatenated.")
    ],
    head: Annotated[
        str, typer.Option("--head", help="Head name (see `facebank heads`).")
    ] = "linear",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Head parameter KEY=VALUE (repeatable; JSON values, e.g. hidden=[128,64]).",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Seeds the head and the split of banks without a split column."
        ),
    ] = 0,
    fpr: Annotated[
        float,
        typer.Option(
            "--fpr", help="Target false-positive rate on validation reals for the threshold."
        ),
    ] = 0.005,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Run folder to write (head.json, weights.safetensors, splits.csv, metrics.json).",
        ),
    ] = Path("runs/train"),
) -> None:
    """Train a head on the train split, set its threshold on validation reals, report val figures."""
    from facebank.heads import train_run

    res = train_run(
        [str(b) for b in banks], head=head, params=_head_params(param), out=out, seed=seed, fpr=fpr
    )
    auc = "n/a" if res.val_auc is None else f"{res.val_auc:.4f}"
    tpr = "n/a" if res.val_tpr_at_fpr is None else f"{res.val_tpr_at_fpr:.1%}"
    typer.echo(
        f"head {head}: trained on {res.n_train} rows in {res.train_seconds:.2f} s (splits: {res.split_source})"
    )
    typer.echo(
        f"val ({res.n_val} rows): AUC {auc}  TPR@{fpr:.2%}FPR {tpr}  threshold {res.threshold:.4g} (val reals)"
    )
    typer.echo(f"run folder: {res.run_dir}")


@app.command("score")
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


@app.command("heads")
def heads_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Show one head's parameters (default: all heads).")
    ] = None,
) -> None:
    """List the heads and their parameters with defaults."""
    from facebank.heads import head_info, head_params, list_heads

    for n in [name] if name else list_heads():
        info = head_info(n)
        typer.echo(f"{n:<10} {info.description} [{info.source}]")
        typer.echo("    " + "  ".join(f"{k}={v!r}" for k, v in head_params(n).items()))
        cls = info.load()
        if hasattr(cls, "resolved_config"):  # mlp: None = the preset's value
            from dataclasses import asdict

            fast = asdict(cls().resolved_config())
            paper = asdict(cls(preset="paper").resolved_config())
            typer.echo("    None means: " + "  ".join(f"{k}={v!r}" for k, v in fast.items()))
            typer.echo(
                "    preset='paper': "
                + "  ".join(f"{k}={v!r}" for k, v in paper.items() if fast[k] != v)
            )


# ---------------------------------------------------------------- analysis (issue 4)
from enum import Enum as _Enum  # noqa: E402


class _Protocol(str, _Enum):
    in_engine = "in-engine"
    loeo = "loeo"


def _default_out(command: str) -> Path:
    import datetime as _dt

    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _parse_params(items: list[str] | None) -> dict:
    import json

    out = {}
    for item in items or []:
        if "=" not in item:
            from facebank.embed.errors import FacebankError

            raise FacebankError(
                f"--param {item!r} is not KEY=VALUE; e.g. --param C=0.5 --param hidden=256"
            )
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


_OUT_HELP = "Run folder to write (config.json, metrics.json, Markdown tables, PNGs); default runs/<command>-<time>."


@app.command("evaluate")
def evaluate_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(help="Feature banks (NAME.zarr) to evaluate on, same backbone as the head."),
    ],
    head: Annotated[
        Path, typer.Option("--head", help="Run folder of a trained head (facebank train --out).")
    ],
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples for the 95% intervals (0 = none).")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """Metrics at the head's validation-chosen threshold, per-engine TPR/FPR, ROC and DET curves."""
    from facebank.analysis.evaluation import evaluate

    res = evaluate(head, banks, out=out or _default_out("evaluate"), n_boot=n_boot, seed=seed)
    m = res.metrics
    typer.echo(
        f"{res.n_rows} rows ({m.n_real} real, {m.n_fake} AI; {sum(res.n_excluded.values())} train/val rows of the run excluded), "
        f"view {', '.join(sorted(set(res.views)))}"
    )
    typer.echo(f"threshold {res.threshold:.4g} ({res.threshold_source})")
    typer.echo(
        f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}  AP {m.ap:.4f}  EER {m.eer:.2%}"
    )
    for r in res.per_engine:
        warn = f"  ! {r['warning']}" if r["warning"] else ""
        typer.echo(
            f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]  n={r['n']}{warn}"
        )
    typer.echo(f"run folder: {res.run_dir}")


@app.command("protocol")
def protocol_cmd(
    protocol: Annotated[
        _Protocol,
        typer.Argument(help="in-engine (seeded stratified split) or loeo (leave-one-engine-out)."),
    ],
    banks: Annotated[
        list[Path],
        typer.Argument(
            help="Feature banks of one backbone and one view (reals + >= 2 AI engines)."
        ),
    ],
    head: Annotated[
        str, typer.Option("--head", help="Head to train (facebank heads lists them).")
    ] = "linear",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Head parameter KEY=VALUE (repeatable, JSON values)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Split seed (banks without a split column).")
    ] = 0,
    fpr: Annotated[
        float, typer.Option("--fpr", help="Target FPR on validation reals for the threshold.")
    ] = 0.005,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples (in-engine).")
    ] = 1000,
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
) -> None:
    """Train/test protocols: in-engine split, or leave-one-engine-out (in- vs out-of-engine TPR at FPR 0.5%)."""
    from facebank.analysis.protocols import in_engine, leave_one_engine_out

    params = _parse_params(param)
    out = out or _default_out(f"protocol-{protocol.value}")
    if protocol is _Protocol.in_engine:
        res = in_engine(banks, head=head, params=params, seed=seed, fpr=fpr, out=out, n_boot=n_boot)
        m = res.metrics
        typer.echo(
            f"in-engine {head}: threshold {res.threshold:.4g} from {res.n_val_reals} val reals; test n={res.n_test}"
        )
        typer.echo(f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}")
        for r in res.per_engine:
            typer.echo(f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%}  n={r['n']}")
    else:
        res = leave_one_engine_out(
            banks, head=head, params=params, seed=seed, fpr=fpr, out=out, progress=True
        )
        typer.echo(f"{'engine':<16} {'in-engine':>10} {'out-of-engine':>14}")
        for r in res.table:
            typer.echo(f"{r['engine']:<16} {r['tpr_in']:>10.1%} {r['tpr_out']:>14.1%}")
        typer.echo(
            f"{'average':<16} {res.average['tpr_in']:>10.1%} {res.average['tpr_out']:>14.1%}"
        )
    typer.echo(f"run folder: {res.run_dir}")


@app.command("robustness")
def robustness_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(help="One bank per view of the same images (facebank embed --view ...)."),
    ],
    head: Annotated[Path, typer.Option("--head", help="Run folder of a trained head.")],
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples for AUC intervals.")
    ] = 1000,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail when the banks do not hold the same images.")
    ] = False,
) -> None:
    """TPR/FPR at the frozen threshold and AUC per view (JPEG quality, resize, flips)."""
    from facebank.analysis.robustness import robustness

    res = robustness(
        head, banks, out=out or _default_out("robustness"), n_boot=n_boot, allow_mismatch=not strict
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


@app.command("ood")
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
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
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
) -> None:
    """AUROC and FPR at 95% TPR of new-engine vs known-engine images, per-image OOD flags."""
    from facebank.analysis.ood import ood

    res = ood(head, known=known, new=new, out=out or _default_out("ood"), k=k, flag_fpr=flag_fpr)
    typer.echo(
        f"score {res.method}; threshold {res.threshold:.4g} set on {res.n_known_val} known val images; flags {res.known_flag_rate:.1%} of known test"
    )
    for r in res.per_engine:
        typer.echo(
            f"  {r['engine']:<16} AUROC {r['auroc']:.3f}  FPR@95%TPR {r['fpr_at_95tpr']:.1%}  flagged {r['flag_rate']:.1%}  n={r['n']}"
        )
    typer.echo(f"per-image CSV: {res.csv_path}")


@app.command("report")
def report_cmd(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders (nested sub-runs are included).")
    ],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "facebank report",
) -> None:
    """One self-contained HTML page (figures inlined) with every table and figure of the runs."""
    from facebank.analysis.report import write_report

    path = write_report(run_dirs, out=out, title=title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


# ---------------------------------------------------------------- neighbours (issue 5)
from enum import Enum  # noqa: E402


class _NbMetric(str, Enum):
    cosine = "cosine"
    l2 = "l2"


class _MapMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


_NbBanks = Annotated[
    list[Path], typer.Argument(help="Feature bank(s) (NAME.zarr) of one backbone; rows are pooled.")
]
_NbK = Annotated[
    int, typer.Option("-k", "--k", help="Neighbours per image (the image itself excluded).")
]
_NbFactory = Annotated[
    str,
    typer.Option(help="FAISS index factory string: 'Flat' (exact), 'IVF1024,Flat', 'HNSW32'..."),
]
_NbDevice = Annotated[
    str, typer.Option(help="FAISS device: auto (GPU when faiss-gpu sees one), cpu, cuda, cuda:N.")
]
_NbNprobe = Annotated[int | None, typer.Option(help="IVF runtime knob: lists visited per query.")]
_NbEf = Annotated[
    int | None, typer.Option("--ef-search", help="HNSW runtime knob: search beam width.")
]


def _nb_progress() -> bool:
    return sys.stderr.isatty()


@neighbours_app.command("clusters")
def neighbours_clusters(
    banks: _NbBanks,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path(
        "runs/neighbours-clusters"
    ),
    k: _NbK = 10,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for the purity intervals.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds bootstrap, subsamples and k-means.")] = 0,
    clusters: Annotated[
        int | None, typer.Option(help="k-means clusters (default: the number of engines).")
    ] = None,
    silhouette_max: Annotated[
        int, typer.Option(help="Silhouette on a seeded subsample of this many rows above it.")
    ] = 5000,
    factory: _NbFactory = "Flat",
    metric: Annotated[_NbMetric, typer.Option(help="Neighbour metric.")] = _NbMetric.cosine,
    device: _NbDevice = "auto",
    nprobe: _NbNprobe = None,
    ef_search: _NbEf = None,
) -> None:
    """Do engines cluster? kNN purity per engine, neighbour-engine confusion, silhouette, k-means NMI/ARI."""
    from facebank.analysis.neighbours import engine_clusters

    result = engine_clusters(
        [str(b) for b in banks],
        k=k,
        n_boot=n_boot,
        seed=seed,
        n_clusters=clusters,
        silhouette_max=silhouette_max,
        factory=factory,
        metric=metric.value,
        device=device,
        nprobe=nprobe,
        ef_search=ef_search,
        out=out,
        progress=_nb_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(f"wrote {result.run_dir}")


@neighbours_app.command("query")
def neighbours_query(
    bank: Annotated[
        list[Path], typer.Option("--bank", help="Bank(s) to search (repeat for several).")
    ],
    images: Annotated[
        list[Path] | None,
        typer.Argument(help="Query image files (embedded with the bank's backbone)."),
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="Query banked rows instead of images, e.g. '3,17'.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query.")] = 8,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-query"),
    factory: _NbFactory = "Flat",
    metric: Annotated[_NbMetric, typer.Option(help="Neighbour metric.")] = _NbMetric.cosine,
    device: _NbDevice = "auto",
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file, when the query images need one.")
    ] = None,
) -> None:
    """Forensics: each query's nearest banked images (table, neighbours.csv, grid.png)."""
    from facebank.analysis.neighbours import NeighbourIndex, write_query
    from facebank.embed.errors import DataError
    from rich.console import Console
    from rich.table import Table

    if bool(images) == bool(rows):
        raise DataError("give query IMAGE files or --rows 3,17 (exactly one of the two)")
    index = NeighbourIndex(
        [str(b) for b in bank],
        factory=factory,
        metric=metric.value,
        device=device,
        progress=_nb_progress(),
    )
    if rows:
        try:
            wanted = [int(r) for r in rows.replace(" ", "").split(",") if r]
        except ValueError:
            raise DataError(
                f"--rows {rows!r} is not a list of row numbers; use e.g. --rows 3,17"
            ) from None
        records = index.query_rows(wanted, k)
    else:
        records = index.query(
            [str(p) for p in images], k, device=device, weights=str(weights) if weights else None
        )
    run = write_query(
        records,
        out=out,
        config={
            "banks": [str(b) for b in bank],
            "k": k,
            "factory": factory,
            "metric": metric.value,
            "rows": rows,
            "images": [str(p) for p in images or []],
        },
    )
    console = Console()
    for recs in records:
        table = Table(title=f"query: {recs[0].query}" if recs else "query", title_justify="left")
        for col in (
            "rank",
            "similarity" if metric == _NbMetric.cosine else "sq. distance",
            "engine",
            "label",
            "split",
            "bank",
            "path",
        ):
            table.add_column(col, overflow="fold")
        for r in recs:
            score = r.similarity if r.similarity is not None else r.distance
            table.add_row(
                str(r.rank), f"{score:.4f}", r.engine, str(r.label), r.split or "-", r.bank, r.path
            )
        console.print(table)
    typer.echo(f"wrote {run}")


@neighbours_app.command("leaks")
def neighbours_leaks(
    banks: _NbBanks,
    threshold: Annotated[
        float,
        typer.Option(help="Cosine similarity at or above which two images are near-duplicates."),
    ] = 0.95,
    k: _NbK = 10,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-leaks"),
    factory: _NbFactory = "Flat",
    device: _NbDevice = "auto",
) -> None:
    """Near-duplicates (cosine) and exact duplicates (sha256) across splits and banks.

    Exit code 2 when a train/test pair is found, so it can gate an experiment.
    """
    from facebank.analysis.neighbours import find_leaks

    result = find_leaks(
        [str(b) for b in banks],
        threshold=threshold,
        k=k,
        factory=factory,
        device=device,
        out=out,
        progress=_nb_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(f"{len(result.pairs)} pairs; wrote {result.run_dir / 'pairs.csv'}")
    if result.has_train_test_leak:
        typer.echo(
            f"leak: {result.train_test} train/test pair(s) at cosine >= {threshold} or same sha256",
            err=True,
        )
        raise typer.Exit(2)


@neighbours_app.command("map")
def neighbours_map(
    banks: _NbBanks,
    method: Annotated[
        list[_MapMethod] | None,
        typer.Option(help="Projection(s); repeat for several (default: both)."),
    ] = None,
    max_points: Annotated[
        int, typer.Option(help="Above this many rows, draw a seeded random subsample.")
    ] = 5000,
    seed: Annotated[int, typer.Option(help="Seeds the subsample, PCA and t-SNE.")] = 0,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-map"),
) -> None:
    """2-D PCA / t-SNE scatter of the banks, coloured by engine (map_<method>.png)."""
    from facebank.analysis.neighbours import write_maps

    methods = [m.value for m in method] if method else ["pca", "tsne"]
    run, maps = write_maps(
        [str(b) for b in banks], out=out, methods=methods, max_points=max_points, seed=seed
    )
    for m in maps:
        shown = (
            f"{len(m.rows)} of {m.n_total} rows (seed {m.seed})"
            if m.subsampled
            else f"{m.n_total} rows"
        )
        typer.echo(f"{m.method}: {shown} -> {run / f'map_{m.method}.png'}")


# ---------------------------------------------------------------- experiment & demo (issue 6)
def _print_experiment(result) -> None:
    from rich.console import Console

    console = Console()
    for table in result.rich_tables():
        console.print(table)
    total = result.seconds.get("total", 0.0)
    console.print(f"report: [bold]{result.report}[/]  ({total:.0f} s; run folder {result.run_dir})")


@app.command("experiment")
def experiment(
    source: Annotated[
        Path,
        typer.Argument(
            help="Dataset: folder SOURCE/<engine>/... (or SOURCE/<split>/<engine>/...) "
            "or a CSV manifest path,label,engine[,split]."
        ),
    ],
    backbone: Annotated[
        str, typer.Option(help="Backbone (see `facebank backbones`).")
    ] = "clip-vit-l-14",
    out: Annotated[
        Path, typer.Option(help="Run folder; re-running on it reuses its banks.")
    ] = Path("runs/experiment"),
    views: Annotated[
        list[str] | None,
        typer.Option(
            "--views",
            help="Views to embed besides original; repeat or comma-separate "
            "(default jpeg:q=50, resize:128, vflip; 'none' for no views).",
        ),
    ] = None,
    heads: Annotated[
        list[str] | None,
        typer.Option(
            "--heads",
            help="Heads to train; repeat or comma-separate (default linear, mlp, prototype).",
        ),
    ] = None,
    new_engine: Annotated[
        str | None,
        typer.Option(help="AI engine held out as new for the OOD test (default: the smallest)."),
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
) -> None:
    """Embed a dataset under several views, train the default heads, evaluate at 0.5% FPR,
    leave-one-engine-out, robustness, OOD of a held-out engine, neighbours: one HTML report."""
    from facebank.analysis.experiment import DEFAULT_HEADS, DEFAULT_VIEWS, run_experiment

    def _split(values, default):
        if values is None:
            return default
        items = [v.strip() for item in values for v in item.split(",") if v.strip()]
        return () if items == ["none"] else tuple(items)

    result = run_experiment(
        source,
        backbone=backbone,
        out=out,
        views=_split(views, DEFAULT_VIEWS),
        heads=_split(heads, DEFAULT_HEADS),
        new_engine=new_engine,
        device=device,
        weights=weights,
        seed=seed,
        image_size=image_size,
        real_names=tuple(real or ("real",)),
        progress=True,
    )
    _print_experiment(result)


@app.command("demo")
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
    from facebank.analysis.experiment import demo_note, run_demo
    from rich.console import Console
    from rich.markdown import Markdown

    Console(stderr=True).print(Markdown(demo_note()))
    result = run_demo(out, small=small, device=device, progress=True)
    _print_experiment(result)
    typer.echo(
        "Reminder: simulated artifacts on a handful of photos, not real AI-generated faces "
        "(see NOTE.md in the run folder and the top of the report)."
    )


def main() -> None:
    """Console-script entry point (``facebank``)."""
    app()


if __name__ == "__main__":
    main()
