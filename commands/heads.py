"""``facebank train`` and ``facebank heads``: train a head on banks, list the heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import default_out, parse_params


def train_cmd(
    banks: Annotated[
        list[Path],
        typer.Argument(
            help="Feature banks (NAME.zarr): one backbone's are concatenated; banks of several "
            "backbones over the same images are joined side by side (rows matched by sha256)."
        ),
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
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder to write (head.json, weights.safetensors, splits.csv, metrics.json); "
            "default runs/train-<date>-<time>.",
        ),
    ] = None,
    blocks: Annotated[
        str | None,
        typer.Option(
            "--blocks",
            help="Banks embedded with --layer blocks: train on some blocks only, e.g. -1 (the "
            "last), 20:24 (a range) or all.",
        ),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Keep each group (an identity, a source) in one split, for banks without a "
            "split column: level:K (the K-th folder of the stored paths), a bank column "
            "(group: the default when the manifest had one), or none.",
        ),
    ] = None,
    balance: Annotated[
        str,
        typer.Option(
            "--balance",
            help="none (default), or metadata: fit on train rows drawn by overlap weights from "
            "a cross-fitted metadata probability, so the files cannot tell the classes apart "
            "(docs/confounds.md).",
        ),
    ] = "none",
) -> None:
    """Train a head on the train split; threshold on validation reals; report val figures."""
    from facebank.embed.bank.bank import open_banks
    from facebank.embed.runner.multi import select_blocks
    from facebank.heads import train_run

    opened = [select_blocks(b, blocks) for b in open_banks([str(b) for b in banks])]
    res = train_run(
        opened,
        head=head,
        params=parse_params(param),
        out=default_out("train", out),
        seed=seed,
        fpr=fpr,
        group_by=group_by,
        balance=balance,
    )
    auc = "n/a" if res.val_auc is None else f"{res.val_auc:.4f}"
    tpr = "n/a" if res.val_tpr_at_fpr is None else f"{res.val_tpr_at_fpr:.1%}"
    typer.echo(
        f"head {head}: trained on {res.n_train} rows in {res.train_seconds:.2f} s (splits: "
        f"{res.split_source})"
    )
    val_fpr = res.metrics.get("val_fpr")
    realised = "n/a" if val_fpr is None else f"{val_fpr:.2%}"
    typer.echo(
        f"val ({res.n_val} rows): AUC {auc}  TPR {tpr} at FPR {realised} (target {fpr:.2%})  "
        f"threshold {res.threshold:.4g} (set on val reals)"
    )
    bal = res.metrics.get("balance") or {}
    if bal.get("weighted_metadata_auc") is not None:
        typer.echo(
            f"balanced by metadata: the files' AUC on train rows {bal['raw_metadata_auc']:.3f} "
            f"-> {bal['weighted_metadata_auc']:.3f} weighted ({bal['no_overlap']} rows clipped)"
        )
    typer.echo(f"run folder: {res.run_dir}")


def heads_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Show one head's parameters (default: all heads).")
    ] = None,
) -> None:
    """List the heads and their parameters with defaults."""
    from facebank.heads import head_info, head_params, list_heads

    for n in [name] if name else list_heads():
        info = head_info(n)
        where = [info.source] if info.source else []
        where += [f"plugin {info.plugin}"] if info.plugin else []
        typer.echo(f"{n:<10} {info.description} [{'; '.join(where)}]")
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
