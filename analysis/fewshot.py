"""Few-shot curves: how many images of a new generator does a head need?

For each AI engine E and each shot count k: train the head on the **train** split of
every other engine (and the train reals) plus k images drawn from E's **train** split
(``draws`` seeded draws per k; k = 0 is one fit, there is nothing to draw), set the
threshold on **validation reals** at ``fpr``, and measure TPR on E's **test** rows and
FPR on the **test** reals. The curve is TPR at the fixed FPR against k, per engine and
averaged over engines, with the range over draws as its interval (ClipBased and FGTS
report detection against the number of training images the same way).

Which split chose what: nothing is searched; the head's params are used as given; the
threshold comes from validation reals only; every reported rate is on test rows, which
no fit and no threshold ever saw. An engine whose train split holds fewer images than
the largest k stops at the largest k it can fill, and the result says so.

The k images are unweighted by default (one training row each among all the others);
``shot_weight="balanced"`` gives them together the weight of an average other engine's
train rows. The loop is ``_protocol_core.train_and_test``; with a head that warm-starts
(``linear``) each engine's k = 0 fit starts from one fit on every engine and its k > 0
fits from its k = 0 fit (the same minimisers to the head's tolerance, far fewer passes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facebank.core.errors import DataError
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

from ._evalcommon import md_section
from ._protocol_core import ProtocolData, load_protocol_data, protocol_config, train_and_test
from .metrics import fpr_label, proportion_interval
from .runfolder import RunContents, write_run

__all__ = ["FewShotResult", "few_shot", "DEFAULT_SHOTS", "ShotWeight"]

DEFAULT_SHOTS = (0, 5, 10, 20, 50, 100)

ShotWeight = Literal["none", "balanced"]


@dataclasses.dataclass
class FewShotResult:
    """``few_shot`` result.

    Attributes:
        points: one dict per fit: ``engine``, ``k``, ``draw``, ``tpr`` (on E's test rows),
            ``n_detected``, ``n_test``, ``fpr_test_reals``, ``threshold``, ``shot_weight``
            (the weight of each of the k images in the loss; 1 unweighted).
        curve: one dict per (engine, k): ``tpr_mean``, ``tpr_min``, ``tpr_max`` (range
            over draws), ``tpr_std``, ``n_draws``, ``fpr_test_reals`` (mean), ``n_test``,
            ``tpr_ci`` (Clopper-Pearson 95% of the pooled draws).
        average: one dict per k: ``tpr_mean`` over the engines that reached k, ``engines``.
        stopped: engine -> sentence, for engines whose train split ran out before the
            largest k.
        engines, shots, draws, shot_weight, head, params, seed, fpr, split_source: what
            was run.
    """

    points: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    average: list[dict[str, Any]]
    stopped: dict[str, str]
    engines: list[str]
    shots: list[int]
    draws: int
    shot_weight: str
    head: str
    params: dict[str, Any]
    seed: int
    fpr: float
    split_source: str
    seconds: float
    run_dir: Path | None = None

    def curve_of(self, engine: str) -> tuple[np.ndarray, np.ndarray]:
        """``(k, tpr_mean)`` arrays of one engine's curve."""
        rows = [r for r in self.curve if r["engine"] == engine]
        return np.array([r["k"] for r in rows]), np.array([r["tpr_mean"] for r in rows])


def _check_shots(shots: Sequence[int], draws: int) -> list[int]:
    try:
        ks = sorted({int(k) for k in shots})
    except (TypeError, ValueError):
        raise DataError(
            f"shots {list(shots)!r} must be whole numbers, e.g. 0,5,10,20,50,100"
        ) from None
    if not ks or ks[0] < 0:
        raise DataError(f"shots {list(shots)!r} must be >= 0 and not empty, e.g. 0,5,10,20,50,100")
    if int(draws) < 1:
        raise DataError(f"draws={draws!r} must be >= 1 (seeded draws of k images per point)")
    return ks


def _head_params(head: str) -> dict[str, Any]:
    from facebank.heads import create_head

    return create_head(head).get_params()


def _check_shot_weight(shot_weight: str, head: str) -> ShotWeight:
    if shot_weight not in ("none", "balanced"):
        raise DataError(f"shot_weight={shot_weight!r} is not known; valid: 'none', 'balanced'")
    if shot_weight == "balanced" and "engine_weight" not in _head_params(head):
        raise DataError(
            f"shot_weight='balanced' needs a head with an engine_weight parameter; {head!r} has "
            "none - use head 'linear', or shot_weight='none'"
        )
    return shot_weight  # type: ignore[return-value]


def few_shot(
    banks: BanksLike,
    *,
    head: str = "linear",
    params: Mapping[str, Any] | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 3,
    shot_weight: ShotWeight = "none",
    seed: int = 0,
    fpr: float = 0.005,
    engines: Sequence[str] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> FewShotResult:
    """Few-shot curves of TPR at a fixed FPR against the number of the new engine's images.

    Args:
        banks: banks (paths or ``FeatureBank``) of one backbone and one view holding
            reals and at least two AI engines.
        head: head name; params: its keyword parameters (used as given).
        shots: the k values (images of the held-out engine added to training).
        draws: seeded draws of k images per point (k = 0 is fitted once).
        shot_weight: ``"none"``: each of the k images weighs as much as any training
            row; ``"balanced"``: the k images together weigh as much as the train rows of
            an average other AI engine (each ``mean n_train(other engines) / k``; heads
            with an ``engine_weight`` parameter, i.e. ``linear``).
        seed: split seed (banks without a split column) and the draws' seed.
        fpr: target FPR on validation reals.
        engines: hold out only these AI engines (default: every AI engine).
        out: run folder (config.json, metrics.json, few_shot.md, few_shot.png).
        progress: show a progress bar.

    Returns:
        ``FewShotResult``.
    """
    t0 = time.perf_counter()
    ks = _check_shots(shots, draws)
    weighting = _check_shot_weight(shot_weight, head)
    d = load_protocol_data(banks, seed)
    held = d.held_engines(engines, protocol="few-shot curves")
    d.require_test_reals("the test FPR")
    tr = d.train
    n_train_of = {e: int((tr & (d.engines == e)).sum()) for e in d.ai_engines}

    from rich.progress import Progress

    points: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    fits = {e: [k for k in ks if k <= n_train_of[e]] for e in held}
    total = sum(1 + draws * sum(k > 0 for k in f) for f in fits.values())
    # every fit starts from a related solution (heads with warm_start): each engine's k = 0
    # fit from the all-engines fit, each k > 0 fit from its engine's k = 0 fit - the same
    # minimisers to the head's tolerance, a few iterations instead of a cold start each
    start = None
    if fits and "warm_start" in _head_params(head):
        start = train_and_test(d, *d.rows(tr), head=head, params=params, fpr=fpr).estimator
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("few-shot", total=total)
        for ei, e in enumerate(held):
            others = [n_train_of[f] for f in d.ai_engines if f != e]
            msg = _engine_points(
                d,
                e,
                seed=[seed, ei],
                ks=fits[e],
                draws=draws,
                head=head,
                params=params,
                fpr=fpr,
                # E's k images together weigh as much as an average other engine's rows
                share=float(np.mean(others)) if weighting == "balanced" else None,
                start=start,
                points=points,
                advance=lambda: bar.advance(task),
            )
            if fits[e][-1:] != ks[-1:]:
                stopped[e] = f"{msg}: its curve stops at k={max(fits[e], default=0)} " + (
                    f"(asked up to k={ks[-1]})"
                )
    curve = _curve(points)
    res = FewShotResult(
        points=points,
        curve=curve,
        average=_average(curve, ks, held),
        stopped=stopped,
        engines=held,
        shots=ks,
        draws=int(draws),
        shot_weight=weighting,
        head=head,
        params=dict(params or {}),
        seed=seed,
        fpr=fpr,
        split_source=d.split_source,
        seconds=time.perf_counter() - t0,
    )
    if out is not None:
        res.run_dir = write_run(out, _contents(res, d))
    return res


def _engine_points(
    d: ProtocolData,
    e: str,
    *,
    seed: list[int],
    ks: list[int],
    draws: int,
    head: str,
    params: Mapping[str, Any] | None,
    fpr: float,
    share: float | None,
    start: Any,
    points: list[dict[str, Any]],
    advance: Any,
) -> str:
    """Fit and test the held-out engine ``e`` at each k, appending one point per draw.

    Returns:
        ``"E has N train images"``, the start of the message when its curve stops early.
    """
    tr, te = d.train, d.test
    pool = np.flatnonzero(tr & (d.engines == e))
    X_test_e = d.X[te & (d.engines == e)]
    if len(X_test_e) == 0:
        raise DataError(
            f"engine {e!r} has no rows in the test split, so its TPR cannot be measured; "
            "give it test rows or leave it out with engines=[...]"
        )
    base = np.flatnonzero(tr & (d.engines != e))
    # training rows = base rows then the k drawn rows, in one buffer per engine: a draw
    # overwrites k rows and each fit takes a prefix (a view), instead of gathering all
    # ~n rows again for each of the engine's fits
    nb = base.size
    bx = np.empty((nb + pool.size, d.X.shape[1]), dtype=d.X.dtype)
    bx[:nb] = d.X[base]
    by, be = np.r_[d.y[base], d.y[pool]], np.r_[d.engines[base], d.engines[pool]]
    k0 = start
    for k in ks:
        fit_params = dict(params or {})
        if share is not None and k:
            fit_params["engine_weight"] = {e: share / k}
        for draw in range(1 if k == 0 else draws):
            rng = np.random.default_rng([*seed, k, draw])
            if k:
                bx[nb : nb + k] = d.X[rng.choice(pool, size=k, replace=False)]
            n = nb + k  # the pool's rows share E's label and engine name
            fitted = train_and_test(
                d,
                bx[:n],
                by[:n],
                be[:n],
                head=head,
                params=fit_params,
                fpr=fpr,
                warm_from=k0 if k else start,
            )
            if k == 0:
                k0 = fitted.estimator
            hit = fitted.rate(X_test_e)
            points.append(
                {
                    "engine": e,
                    "k": k,
                    "draw": draw,
                    "tpr": hit.rate,
                    "n_detected": hit.hits,
                    "n_test": hit.n,
                    "fpr_test_reals": fitted.fpr_test_reals,
                    "n_test_reals": fitted.n_test_reals,
                    "threshold": fitted.threshold,
                    "shot_weight": fit_params.get("engine_weight", {}).get(e, 1.0),
                }
            )
            advance()
    return f"{e} has {pool.size} train images"


def _weight_words(shot_weight: str) -> str:
    if shot_weight == "balanced":
        return "the k images together weigh as much as an average other engine's train rows"
    return "the k images unweighted, each one training row among all the others"


def _curve(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["engine"], p["k"]), []).append(p)
    out = []
    for (e, k), ps in groups.items():
        t = np.array([p["tpr"] for p in ps])
        hits, n = sum(p["n_detected"] for p in ps), sum(p["n_test"] for p in ps)
        out.append(
            {
                "engine": e,
                "k": k,
                "n_draws": len(ps),
                "tpr_mean": float(t.mean()),
                "tpr_min": float(t.min()),
                "tpr_max": float(t.max()),
                "tpr_std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                "tpr_ci": list(proportion_interval(hits, n)),
                "n_test": ps[0]["n_test"],
                "fpr_test_reals": float(np.mean([p["fpr_test_reals"] for p in ps])),
            }
        )
    return out


def _average(curve: list[dict[str, Any]], ks: list[int], held: list[str]) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        rows = [r for r in curve if r["k"] == k]
        if not rows:
            continue
        out.append(
            {
                "k": k,
                "tpr_mean": float(np.mean([r["tpr_mean"] for r in rows])),
                "tpr_min": float(np.mean([r["tpr_min"] for r in rows])),
                "tpr_max": float(np.mean([r["tpr_max"] for r in rows])),
                "fpr_test_reals": float(np.mean([r["fpr_test_reals"] for r in rows])),
                "n_engines": len(rows),
                "missing": sorted(set(held) - {r["engine"] for r in rows}),
            }
        )
    return out


def _contents(res: FewShotResult, d: ProtocolData) -> RunContents:
    config = protocol_config(
        res,
        d,
        shots=res.shots,
        draws=res.draws,
        shot_weight=res.shot_weight,
        engines=res.engines,
        fit_split="train (other engines) + k draws from the held-out engine's train split",
    )
    metrics = {
        "protocol": "few-shot",
        "fpr": res.fpr,
        "curve": res.curve,
        "average": res.average,
        "points": res.points,
        "stopped": res.stopped,
        "seconds": res.seconds,
    }
    fl = fpr_label(res.fpr)
    text = f"# Few-shot curves ({res.head}, view {', '.join(d.views)})\n\n"
    text += (
        f"For each AI engine: trained on every other engine's train split plus k of its own train "
        f"images ({res.draws} seeded draws per k; {_weight_words(res.shot_weight)}), "
        f"threshold on validation reals at FPR {fl}, "
        f"TPR on its test rows and FPR on the test reals. Interval: range over draws. "
        f"Splits: {res.split_source}.\n\n"
    )
    if res.stopped:
        text += "".join(f"- {v}\n" for v in res.stopped.values()) + "\n"
    avg_rows = [
        {
            "k": r["k"],
            f"mean TPR @ FPR {fl}": r["tpr_mean"],
            "range over draws": f"[{r['tpr_min']:.3f}, {r['tpr_max']:.3f}]",
            "test FPR (reals)": r["fpr_test_reals"],
            "engines": r["n_engines"],
        }
        for r in res.average
    ]
    text += md_section("Average over engines", markdown_table(avg_rows, digits=3))
    rows = [
        {
            "engine": r["engine"],
            "k": r["k"],
            f"TPR @ FPR {fl}": r["tpr_mean"],
            "range over draws": f"[{r['tpr_min']:.3f}, {r['tpr_max']:.3f}]",
            "test FPR (reals)": r["fpr_test_reals"],
            "n test": r["n_test"],
            "draws": r["n_draws"],
        }
        for r in res.curve
    ]
    text += md_section("Per engine", markdown_table(rows, digits=3))
    return RunContents(
        command="protocol few-shot",
        config=config,
        metrics=metrics,
        pages={"few_shot.md": text},
        figures={"few_shot.png": lambda: _figure(res)},
    )


def _figure(res: FewShotResult):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    # shots often start at 0: a symlog axis keeps 0 and spreads 5..100
    for e in res.engines:
        rows = [r for r in res.curve if r["engine"] == e]
        k = np.array([r["k"] for r in rows])
        m = np.array([r["tpr_mean"] for r in rows])
        ax.plot(k, m, marker="o", ms=3, lw=1, label=e)
        ax.fill_between(
            k, [r["tpr_min"] for r in rows], [r["tpr_max"] for r in rows], alpha=0.15, lw=0
        )
    avg = res.average
    ax.plot(
        [r["k"] for r in avg], [r["tpr_mean"] for r in avg], color="black", lw=2.2, label="average"
    )
    ax.set_xscale("symlog", linthresh=max(1, min([k for k in res.shots if k > 0], default=1)))
    ax.set_xticks(res.shots, [str(k) for k in res.shots])
    ax.minorticks_off()
    ax.set_xlabel("k: images of the held-out engine in training")
    ax.set_ylabel(f"TPR at FPR {fpr_label(res.fpr)}")
    ax.set_ylim(0, 1.02)
    weight = ", k images weighted as an engine" if res.shot_weight == "balanced" else ""
    ax.set_title(f"few-shot curves ({res.head}{weight}); band = range over {res.draws} draws")
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
