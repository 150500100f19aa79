"""``facebank protocol``: train/test protocols (in-engine, leave-one-engine-out)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out, parse_params


class _Protocol(str, Enum):
    in_engine = "in-engine"
    loeo = "loeo"


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
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
) -> None:
    """Train/test protocols: in-engine split, or leave-one-engine-out (in- vs out-of-engine TPR at FPR 0.5%)."""
    from facebank.analysis.protocols import in_engine, leave_one_engine_out

    params = parse_params(param)
    out = default_out(f"protocol-{protocol.value}", out)
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
