"""Training/testing protocols: in-engine split and leave-one-engine-out (2311.08577).

Both protocols split rows the same way: the bank's own ``split`` column when it has
one (``embed.has_splits``), otherwise ``embed.assign_splits`` (per-engine stratified,
seeded by ``seed``, by sha256 so every view of an image lands in the same split).
Thresholds are always set on **validation reals** at the target FPR and then frozen;
TPRs and FPRs are measured on rows never used for fitting or calibration.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import SmallSampleWarning
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

from ._evalcommon import fmt_ci, md_section
from ._protocol_core import (
    ProtocolData,
    load_protocol_data,
    protocol_config,
    rate_of,
    train_and_test,
)
from .metrics import BinaryMetrics, binary_metrics, fpr_label, per_engine_table
from .runfolder import RunContents, write_run

__all__ = ["InEngineResult", "LoeoResult", "in_engine", "leave_one_engine_out", "PROTOCOLS"]

PROTOCOLS = ("in-engine", "loeo")


@dataclasses.dataclass
class InEngineResult:
    """``in_engine`` result: one head trained on every engine's train split.

    Attributes:
        metrics: overall ``BinaryMetrics`` on the test split at the frozen threshold.
        per_engine: per-engine TPR (AI) / FPR (reals) on the test split.
        threshold: chosen on validation reals at ``fpr``.
        n_train, n_val_reals, n_test: row counts.
        head, params, seed, fpr, split_source: what was run.
        run_dir: the run folder (``None`` without ``out``).
    """

    metrics: BinaryMetrics
    per_engine: list[dict[str, Any]]
    threshold: float
    n_train: int
    n_val_reals: int
    n_test: int
    head: str
    params: dict[str, Any]
    seed: int
    fpr: float
    split_source: str
    seconds: float
    run_dir: Path | None = None


def in_engine(
    banks: BanksLike,
    *,
    head: str = "linear",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    fpr: float = 0.005,
    out: str | Path | None = None,
    n_boot: int = 1000,
) -> InEngineResult:
    """Train on the train split of every engine, threshold on val reals, test on the test split.

    Which split chose what: head parameters are the given ``params`` (nothing searched);
    the threshold is set on **validation reals** at ``fpr``; every reported number is
    on the **test** split.

    Args:
        banks: banks (paths or ``FeatureBank``) of one backbone and one view.
        head: head name (``heads.list_heads()``).
        params: keyword parameters of the head.
        seed: split seed (when the banks carry no split column) and head seed default.
        fpr: target FPR on validation reals.
        out: run folder to write.
        n_boot: bootstrap resamples.

    Returns:
        ``InEngineResult``.
    """
    t0 = time.perf_counter()
    d = load_protocol_data(banks, seed)
    tr, te = d.train, d.test
    fitted = train_and_test(d, *d.rows(tr), head=head, params=params, fpr=fpr)
    s = fitted.scores(d.X[te])
    metrics = binary_metrics(d.y[te], s, threshold=fitted.threshold, n_boot=n_boot, seed=seed)
    rows = per_engine_table(d.y[te], s, d.engines[te], threshold=fitted.threshold)
    res = InEngineResult(
        metrics=metrics,
        per_engine=rows,
        threshold=fitted.threshold,
        n_train=int(tr.sum()),
        n_val_reals=int(d.val_real.sum()),
        n_test=int(te.sum()),
        head=head,
        params=dict(params or {}),
        seed=seed,
        fpr=fpr,
        split_source=d.split_source,
        seconds=time.perf_counter() - t0,
    )
    if out is not None:
        res.run_dir = write_run(out, _in_engine_contents(res, d, metrics, rows, s, te))
    return res


def _in_engine_contents(
    res: InEngineResult,
    d: ProtocolData,
    metrics: BinaryMetrics,
    rows: list[dict[str, Any]],
    s: np.ndarray,
    te: np.ndarray,
) -> RunContents:
    from .evaluation import per_engine_markdown
    from .plots import engine_bars_figure, roc_figure

    head, fpr = res.head, res.fpr
    summary = {
        "metrics": metrics.to_dict(),
        "per_engine": rows,
        "threshold": res.threshold,
        "n_train": res.n_train,
        "n_val_reals": res.n_val_reals,
        "n_test": res.n_test,
        "seconds": res.seconds,
    }
    text = f"# In-engine protocol ({head}, view {', '.join(d.views)})\n\n"
    text += (
        f"Trained on the train split of every engine; threshold {res.threshold:.4g} set on "
        f"{res.n_val_reals} validation reals at FPR {fpr_label(fpr)}; tested on "
        f"{res.n_test} test rows. Splits: {d.split_source}.\n\n"
    )
    text += md_section("Test split per engine", per_engine_markdown(rows, view=", ".join(d.views)))
    text += md_section("Test metrics", markdown_table(metrics.table_rows(), digits=4))
    return RunContents(
        command="protocol in-engine",
        config=protocol_config(res, d),
        metrics=summary,
        pages={"metrics.md": text},
        figures={
            "roc.png": lambda: roc_figure(
                d.y[te],
                s,
                engines=d.engines[te],
                threshold=res.threshold,
                title="ROC (in-engine test split)",
            ),
            "per_engine.png": lambda: engine_bars_figure(rows, title="in-engine test split"),
        },
    )


@dataclasses.dataclass
class LoeoResult:
    """``leave_one_engine_out`` result.

    Attributes:
        table: one row per AI engine: ``engine``, ``n_in``, ``tpr_in`` (+ ``tpr_in_ci``) from
            the in-engine head on that engine's test rows, ``n_out``, ``tpr_out`` (+ ci) from
            the head trained without the engine on all of its rows, ``drop`` (in - out),
            ``fpr_test_reals`` of that head on the test reals, ``auc_out``, ``threshold``.
        average: macro averages over engines (``tpr_in``, ``tpr_out``, ``drop``).
        matrix: (n_models, n_engines) TPR; row 0 = in-engine head, row i = head trained
            without ``engines[i-1]``; column j = test rows of ``engines[j]`` (all rows of the
            held-out engine on the diagonal).
        row_labels, engines: labels of the matrix.
        fpr: target FPR of every threshold (set on validation reals).
    """

    table: list[dict[str, Any]]
    average: dict[str, float]
    matrix: np.ndarray
    row_labels: list[str]
    engines: list[str]
    head: str
    params: dict[str, Any]
    seed: int
    fpr: float
    split_source: str
    seconds: float
    run_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "average": self.average,
            "matrix": self.matrix,
            "row_labels": self.row_labels,
            "engines": self.engines,
            "head": self.head,
            "params": self.params,
            "seed": self.seed,
            "fpr": self.fpr,
            "split_source": self.split_source,
            "seconds": self.seconds,
        }


def leave_one_engine_out(
    banks: BanksLike,
    *,
    head: str = "linear",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    fpr: float = 0.005,
    out: str | Path | None = None,
    engines: Sequence[str] | None = None,
    progress: bool = False,
) -> LoeoResult:
    """Leave-one-engine-out: in-engine vs out-of-engine TPR at a fixed FPR (2311.08577 table).

    For each AI engine E: train the head on the train split of every other engine plus
    the train reals, set the threshold on **validation reals** at ``fpr``, then measure
    TPR on **all** rows of E (never seen in training) and FPR on the **test** reals.
    The in-engine TPR of E comes from one head trained on every engine's train split
    (threshold from the same validation reals), measured on E's **test** rows. No
    hyperparameter is searched: ``params`` are used as given.

    Args:
        banks: banks of one backbone and one view holding reals and >= 2 AI engines.
        head: head name; params: its keyword parameters.
        seed: split seed (banks without a split column).
        fpr: target FPR on validation reals (0.005 as in the paper).
        out: run folder (config.json, metrics.json, loeo.md, loeo_matrix.png, loeo_bars.png).
        engines: hold out only these AI engines (default: every AI engine).
        progress: show a rich progress bar.

    Returns:
        ``LoeoResult``.
    """
    t0 = time.perf_counter()
    d = load_protocol_data(banks, seed)
    held = d.held_engines(engines, protocol="leave-one-engine-out")
    ai = d.ai_engines
    d.require_test_reals("out-of-engine FPR")
    tr, te = d.train, d.test
    small = [e for e in ai if (te & (d.engines == e)).sum() < 10]
    if small:
        warnings.warn(
            f"engines {small} have fewer than 10 test rows: their in-engine TPR moves in steps >= "
            "10%",
            SmallSampleWarning,
            stacklevel=2,
        )
    X_test = {e: d.X[te & (d.engines == e)] for e in ai}

    matrix = np.full((len(held) + 1, len(ai)), np.nan)
    fit_in = train_and_test(d, *d.rows(tr), head=head, params=params, fpr=fpr)
    rate_in = {e: fit_in.rate(X_test[e]) for e in ai}
    matrix[0] = [rate_in[e].rate for e in ai]

    from rich.progress import Progress

    table = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("leave-one-engine-out", total=len(held))
        for i, e in enumerate(held, start=1):
            fit_rows = tr & (d.engines != e)
            fitted = train_and_test(
                d,
                *d.rows(fit_rows),
                head=head,
                params=params,
                fpr=fpr,
                warm_from=fit_in.estimator,
            )
            s_out = fitted.scores(d.X[d.engines == e])
            r_out = rate_of(s_out, fitted.threshold)
            matrix[i] = [r_out.rate if f == e else fitted.rate(X_test[f]).rate for f in ai]
            s_real = fitted.test_real_scores
            y_auc = np.r_[np.zeros(s_real.size, dtype=int), np.ones(s_out.size, dtype=int)]
            auc = binary_metrics(y_auc, np.r_[s_real, s_out], n_boot=0).auc
            r_in = rate_in[e]
            table.append(
                {
                    "engine": e,
                    "n_in": r_in.n,
                    "tpr_in": r_in.rate,
                    "tpr_in_ci": list(r_in.ci),
                    "n_out": r_out.n,
                    "tpr_out": r_out.rate,
                    "tpr_out_ci": list(r_out.ci),
                    "drop": r_in.rate - r_out.rate,
                    "fpr_test_reals": fitted.fpr_test_reals,
                    "auc_out": auc,
                    "threshold": fitted.threshold,
                }
            )
            bar.advance(task)
    average = {
        "tpr_in": float(np.nanmean([r["tpr_in"] for r in table])),
        "tpr_out": float(np.mean([r["tpr_out"] for r in table])),
        "drop": float(np.nanmean([r["drop"] for r in table])),
        "fpr_test_reals": float(np.mean([r["fpr_test_reals"] for r in table])),
    }
    res = LoeoResult(
        table=table,
        average=average,
        matrix=matrix,
        row_labels=["all engines (in-engine)"] + [f"without {e}" for e in held],
        engines=ai,
        head=head,
        params=dict(params or {}),
        seed=seed,
        fpr=fpr,
        split_source=d.split_source,
        seconds=time.perf_counter() - t0,
    )
    if out is not None:
        res.run_dir = write_run(out, _loeo_contents(res, d))
    return res


def _loeo_contents(res: LoeoResult, d: ProtocolData) -> RunContents:
    from .plots import loeo_heatmap

    rows = [
        {
            "engine": r["engine"],
            "view": ", ".join(d.views),
            "in-engine TPR": fmt_ci(r["tpr_in"], *r["tpr_in_ci"]),
            "n in": r["n_in"],
            "out-of-engine TPR": fmt_ci(r["tpr_out"], *r["tpr_out_ci"]),
            "n out": r["n_out"],
            "drop (pts)": f"{100 * r['drop']:.1f}",
            "FPR test reals": f"{r['fpr_test_reals']:.2%}",
            "AUC out": f"{r['auc_out']:.3f}",
        }
        for r in res.table
    ]
    rows.append(
        {
            "engine": "**average**",
            "view": ", ".join(d.views),
            "in-engine TPR": f"{res.average['tpr_in']:.1%}",
            "n in": "",
            "out-of-engine TPR": f"{res.average['tpr_out']:.1%}",
            "n out": "",
            "drop (pts)": f"{100 * res.average['drop']:.1f}",
            "FPR test reals": f"{res.average['fpr_test_reals']:.2%}",
            "AUC out": "",
        }
    )
    text = f"# Leave-one-engine-out ({res.head}, view {', '.join(d.views)})\n\n"
    text += (
        f"TPR at a threshold set on validation reals for FPR {fpr_label(res.fpr)} (as in "
        "2311.08577). In-engine: head trained on "
        "every engine, tested on the engine's test rows. Out-of-engine: head trained without the "
        "engine, tested on all its rows; "
        f"FPR on the test reals. Splits: {d.split_source}. Intervals: exact binomial 95%.\n\n"
    )
    text += md_section("In-engine vs out-of-engine TPR", markdown_table(rows))
    mat_rows = [
        {"model": lab, **{e: res.matrix[i, j] for j, e in enumerate(res.engines)}}
        for i, lab in enumerate(res.row_labels)
    ]
    text += md_section(
        "TPR matrix (row: trained without; column: tested on)", markdown_table(mat_rows, digits=3)
    )
    title = f"TPR at FPR {fpr_label(res.fpr)} ({res.head}, view {', '.join(d.views)})"
    return RunContents(
        command="protocol loeo",
        config=protocol_config(res, d),
        metrics=res.to_dict(),
        pages={"loeo.md": text},
        figures={
            "loeo_matrix.png": lambda: loeo_heatmap(
                res.matrix, row_labels=res.row_labels, col_labels=res.engines, title=title
            ),
            "loeo_bars.png": lambda: _loeo_bars(res),
        },
    )


def _loeo_bars(res: LoeoResult):
    import matplotlib.pyplot as plt

    engines = [r["engine"] for r in res.table] + ["average"]
    tin = [r["tpr_in"] for r in res.table] + [res.average["tpr_in"]]
    tout = [r["tpr_out"] for r in res.table] + [res.average["tpr_out"]]
    x = np.arange(len(engines))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(engines) + 2), 4))
    ax.bar(x - 0.2, tin, 0.4, color="#2a9d8f", label="in-engine")
    ax.bar(x + 0.2, tout, 0.4, color="#e76f51", label="out-of-engine (held out)")
    for xi, a, b in zip(x, tin, tout, strict=True):
        ax.text(xi - 0.2, a + 0.01, f"{a:.0%}", ha="center", fontsize=7)
        ax.text(xi + 0.2, b + 0.01, f"{b:.0%}", ha="center", fontsize=7)
    ax.set_xticks(x, engines, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"TPR at FPR {fpr_label(res.fpr)}")
    ax.set_title("in-engine vs out-of-engine TPR")
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
