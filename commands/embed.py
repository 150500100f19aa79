"""``facebank embed``: images -> a resumable feature bank."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from facebank.core.errors import EmbedInterrupted
from facebank.embed.runner.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DTYPE,
    DEFAULT_PARTITION_ROWS,
)

from ._common import StorageOptionsOption, make_console, parse_storage_options


class _Engine(str, Enum):
    local = "local"
    ray = "ray"


class _Decode(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class _BankDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


def embed_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="Image folder SOURCE/<engine>/**/image (optionally "
            "SOURCE/{train,val,test}/<engine>/...) or a CSV manifest with columns "
            "path,label,engine[,split]; local, or an fsspec URL such as s3://bucket/faces "
            "(see --storage-options)."
        ),
    ],
    backbone: Annotated[
        str, typer.Option("--backbone", "-b", help="Backbone name (see `facebank backbones`).")
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Bank folder NAME.zarr. Created if absent; if present (same backbone and view) "
            "only images not yet in it are embedded - rerun the same command to resume a "
            "killed run.",
        ),
    ],
    view: Annotated[
        str,
        typer.Option(
            "--view",
            help="Transform before the backbone: original, jpeg:q=Q, resize:N, hflip, vflip, "
            "or a+b.",
        ),
    ] = "original",
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N.")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per forward pass.")
    ] = DEFAULT_BATCH_SIZE,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Local: decoding processes (default chosen from the cores with --threads so "
            "they never oversubscribe them; 0 = decode in this process). "
            "Ray: encoder actors (default one per GPU, else 1).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Local: torch threads of the model (default chosen from the cores; -v prints "
            "the choice, the bank records it).",
        ),
    ] = None,
    decode: Annotated[
        _Decode,
        typer.Option(
            "--decode",
            help="Local: where JPEGs are decoded: cpu, gpu (batched on the model's device, "
            "other formats on the CPU), or auto (gpu on a CUDA device with view original).",
        ),
    ] = _Decode.auto,
    engine: Annotated[
        _Engine,
        typer.Option(
            "--engine",
            help="local (this machine, the default) or ray (a Ray cluster; partitioned writes, "
            "needs pip install 'facebank[ray]').",
        ),
    ] = _Engine.local,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster: auto (a running one) or ray://HOST:10001; default: start a "
            "local one.",
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-worker",
            min=0,
            help="Ray: GPUs per encoder actor (default 1 where the cluster has GPUs, else 0).",
        ),
    ] = None,
    partition_rows: Annotated[
        int,
        typer.Option(
            "--partition-rows",
            min=1,
            help="Ray: images per partition, the unit of commit and resume.",
        ),
    ] = DEFAULT_PARTITION_ROWS,
    storage_options: StorageOptionsOption = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Checkpoint file to load instead of the backbone's own weights."
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            min=8,
            help="Backbone input side in pixels, where the backbone allows it "
            "(e.g. efficientnet-b1 512).",
        ),
    ] = None,
    layer: Annotated[
        str,
        typer.Option(
            "--layer",
            help="Layer tap: final, penultimate (before the projection) or blocks (class token "
            "of every block); `facebank backbones` lists each backbone's taps.",
        ),
    ] = "final",
    real: Annotated[
        list[str] | None,
        typer.Option(
            "--real",
            help="Engine folder holding real images (label 0); repeat for several. Default: real.",
        ),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the backbone (worth it on a GPU for large runs)."
        ),
    ] = False,
    dtype: Annotated[
        _BankDtype, typer.Option("--dtype", help="Stored feature dtype of a new bank.")
    ] = _BankDtype(DEFAULT_DTYPE),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")
    ] = True,
    flush_rows: Annotated[
        int | None,
        typer.Option(
            "--flush-rows", min=1, hidden=True, help="Commit at least every N rows (default 2048)."
        ),
    ] = None,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            "--chunk-rows",
            min=1,
            hidden=True,
            help="Rows per stored chunk of a new bank (default: the bank's own).",
        ),
    ] = None,
) -> None:
    """Embed every image of SOURCE with one backbone into a resumable Zarr feature bank."""
    import warnings

    from facebank.embed.runner.local import DuplicateImageWarning, embed_source
    from facebank.embed.runner.options import EmbedOptions

    err = make_console(stderr=True)
    with warnings.catch_warnings(record=True) as caught, _interrupt_exits(err):
        warnings.simplefilter("always", DuplicateImageWarning)
        options = EmbedOptions(
            view=view,
            device=device,
            weights=weights,
            image_size=image_size,
            layer=layer,  # type: ignore[arg-type]  # (checked by the backbone registry)
            real_names=tuple(real) if real else ("real",),
            batch_size=batch_size,
            num_workers=workers if engine is _Engine.local else None,
            threads=threads,
            decode=decode.value,
            compile=compile_,
            progress=progress,
            dtype=dtype.value,
            flush_rows=flush_rows,
            chunk_rows=chunk_rows,
            storage_options=parse_storage_options(storage_options),
        )
        if engine is _Engine.ray:
            from facebank.ray_engine.embedding import RayOptions, embed_source_ray

            summary = embed_source_ray(
                source,
                backbone=backbone,
                out=out,
                options=options,
                ray_options=RayOptions(
                    address=address,
                    workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    partition_rows=partition_rows,
                ),
            )
        else:
            _refuse_ray_only(address, gpus_per_worker, partition_rows)
            summary = embed_source(source, backbone=backbone, out=out, options=options)
    _print_embed_summary(summary)
    for w in caught:
        if issubclass(w.category, DuplicateImageWarning):
            err.print(f"[yellow]warning:[/] {w.message}", markup=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _refuse_ray_only(
    address: str | None, gpus_per_worker: float | None, partition_rows: int
) -> None:
    """``--address``, ``--gpus-per-worker``, ``--partition-rows`` belong to ``--engine ray``."""
    from facebank.core.errors import FacebankError

    for flag, value, default in (
        ("--address", address, None),
        ("--gpus-per-worker", gpus_per_worker, None),
        ("--partition-rows", partition_rows, DEFAULT_PARTITION_ROWS),
    ):
        if value != default:
            raise FacebankError(
                f"{flag} {value!r} is not supported by the local engine; it applies to --engine ray"
            )


@contextlib.contextmanager
def _interrupt_exits(err: Console) -> Iterator[None]:
    """Ctrl-C / SIGTERM: one line (rows safe, the command that resumes), exit 130 / 143."""
    try:
        yield
    except EmbedInterrupted as exc:
        again = shlex.join(["facebank", *sys.argv[1:]])
        err.print(f"{exc}: {again}", markup=False)
        raise typer.Exit(exc.exit_code) from None


def _print_embed_summary(s) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = make_console()
    table = Table(title=f"{s.out}  ({s.backbone}, view {s.view}, {s.device})", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("embedded", f"{s.embedded:,}")
    table.add_row("skipped (already in the bank)", f"{s.skipped_present:,}")
    table.add_row("duplicates (identical file embedded once)", f"{s.duplicates:,}")
    table.add_row("failed", f"{len(s.failed):,}")
    if s.runtime.get("decode") == "gpu":
        table.add_row("JPEGs decoded on the CPU (not the GPU's kind)", f"{s.decoded_on_cpu:,}")
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
