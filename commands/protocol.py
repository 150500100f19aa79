"""``facebank protocol``: train/test protocols (in-engine, loeo, few-shot, chrono)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import OUT_HELP, default_out, parse_params, show_progress, split_list


class _Protocol(str, Enum):
    in_engine = "in-engine"
    loeo = "loeo"
    few_shot = "few-shot"
    chrono = "chrono"


class _ShotWeight(str, Enum):
    none = "none"
    balanced = "balanced"


class _Window(str, Enum):
    release = "release"
    year = "year"


def protocol_cmd(
    protocol: Annotated[
        _Protocol,
        typer.Argument(
            help="in-engine (seeded stratified split), loeo (leave-one-engine-out), few-shot "
            "(TPR against k images of each held-out engine) or chrono (train on older engines, "
            "test on newer)."
        ),
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
    shots: Annotated[
        list[str] | None,
        typer.Option(
            "--shots", help="few-shot: images of the held-out engine added (comma-separated)."
        ),
    ] = None,
    draws: Annotated[
        int, typer.Option("--draws", help="few-shot: seeded draws of k images per point.")
    ] = 3,
    shot_weight: Annotated[
        _ShotWeight,
        typer.Option(
            "--shot-weight",
            help="few-shot: none (each of the k images weighs one training row) or balanced "
            "(together they weigh as much as an average other engine's train rows; linear).",
        ),
    ] = _ShotWeight.none,
    engine_dates: Annotated[
        Path | None,
        typer.Option(
            "--engine-dates",
            help="chrono: CSV with columns engine,date (ISO; a manifest with a date column "
            "works); wins over the shipped data/engine_dates.csv.",
        ),
    ] = None,
    window: Annotated[
        _Window, typer.Option("--window", help="chrono: one window per release date, or per year.")
    ] = _Window.release,
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
) -> None:
    """Train/test protocols: in-engine, leave-one-engine-out, few-shot, chronological windows."""
    from facebank.analysis.protocols import in_engine, leave_one_engine_out

    params = parse_params(param)
    out = default_out(f"protocol-{protocol.value}", out)
    if protocol is _Protocol.in_engine:
        res = in_engine(banks, head=head, params=params, seed=seed, fpr=fpr, out=out, n_boot=n_boot)
        m = res.metrics
        typer.echo(
            f"in-engine {head}: threshold {res.threshold:.4g} from {res.n_val_reals} val reals; "
            f"test n={res.n_test}"
        )
        typer.echo(f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}")
        for r in res.per_engine:
            typer.echo(f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%}  n={r['n']}")
    elif protocol is _Protocol.few_shot:
        res = _few_shot(banks, head, params, seed, fpr, shots, draws, shot_weight.value, out)
    elif protocol is _Protocol.chrono:
        res = _chrono(banks, head, params, seed, fpr, engine_dates, window, out)
    else:
        res = leave_one_engine_out(
            banks, head=head, params=params, seed=seed, fpr=fpr, out=out, progress=True
        )
        typer.echo(f"TPR at FPR {fpr:.1%} (val reals); test FPR = the same threshold on test reals")
        typer.echo(f"{'engine':<16} {'in-engine':>10} {'out-of-engine':>14} {'test FPR':>9}")
        for r in [*res.table, {"engine": "average", **res.average}]:
            typer.echo(
                f"{r['engine']:<16} {r['tpr_in']:>10.1%} {r['tpr_out']:>14.1%} "
                f"{r['fpr_test_reals']:>9.2%}"
            )
    typer.echo(f"run folder: {res.run_dir}")


def _few_shot(banks, head, params, seed, fpr, shots, draws, shot_weight, out):
    from facebank.analysis.fewshot import DEFAULT_SHOTS, few_shot

    ks = split_list(shots, [str(k) for k in DEFAULT_SHOTS])
    res = few_shot(
        banks,
        head=head,
        params=params,
        shots=ks,
        draws=draws,
        shot_weight=shot_weight,
        seed=seed,
        fpr=fpr,
        out=out,
        progress=show_progress(),
    )
    typer.echo(
        f"few-shot {head}: TPR at FPR {fpr:.1%} (val reals), mean over {draws} draws, "
        f"shot weight {shot_weight}"
    )
    typer.echo(f"{'k':>5} {'mean TPR':>9} {'range over draws':>18} {'test FPR':>9} {'engines':>8}")
    for r in res.average:
        typer.echo(
            f"{r['k']:>5} {r['tpr_mean']:>9.1%}   [{r['tpr_min']:>5.1%}, {r['tpr_max']:>5.1%}] "
            f"{r['fpr_test_reals']:>9.2%} {r['n_engines']:>8}"
        )
    for line in res.stopped.values():
        typer.echo(f"note: {line}")
    return res


def _chrono(banks, head, params, seed, fpr, engine_dates, window, out):
    from facebank.analysis.chrono import chronological

    res = chronological(
        banks,
        engine_dates=engine_dates,
        window=window.value,
        head=head,
        params=params,
        seed=seed,
        fpr=fpr,
        out=out,
        progress=show_progress(),
    )
    typer.echo(f"chrono {head}: TPR at FPR {fpr:.1%} (val reals), windows by {window.value}")
    typer.echo(f"{'trained up to':<14} {'next window':>12} {'all later':>10} {'test FPR':>9}")
    for r in res.table:
        typer.echo(
            f"{r['cutoff']:<14} {r['tpr_next']:>12.1%} {r['tpr_future']:>10.1%} "
            f"{r['fpr_test_reals']:>9.2%}"
        )
    return res
