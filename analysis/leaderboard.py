"""Several backbones in one experiment, and the backbone x head leaderboard.

:func:`run_backbone_comparison` embeds SOURCE once per view with every backbone (each
image decoded once: :func:`facebank.embed.runner.multi.embed_source_multi`), runs the full
single-backbone experiment for each backbone on those banks (heads, leave-one-engine-out,
robustness, OOD, neighbours, audit), trains fused heads on the backbones together -
feature level (each head on the joined features) and score level (a ``fusion`` head
stacking one member per backbone) - and puts a leaderboard at the top of the report.

Which split chose what: every head is fitted on ``train`` rows, its threshold set on
``val`` reals at FPR 0.5 % (the stacker of a fusion head is fitted on ``val`` rows too);
every leaderboard figure comes from ``test`` rows. Per row: AUC with its bootstrap 95 %
interval; TPR at the frozen threshold with its interval, beside the FPR realised on the
same test reals; the out-of-engine TPR of leave-one-engine-out for that very row
(:func:`out_of_engine`: the row's head - or, for a fused row, every member head and the
stacker - refitted once per AI engine without it), beside its FPR on test reals; the AUC
of the same head on the ``normalise`` view when that view was embedded.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError
from facebank.core.options import ExperimentOptions
from facebank.core.runs import fmt_value, markdown_table, start_run, write_json
from facebank.embed.backbones.registry import backbone_info
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.runner.multi import embed_source_multi, join_banks
from facebank.heads import create_head, head_params, load_head, train_run
from facebank.heads.fusion import FusionHead
from facebank.heads.propensity import bank_propensity
from facebank.heads.training import resolve_splits

from .balanced import balanced_auc
from .experiment import (
    FPR,
    ExperimentResult,
    canonical_views,
    check_heads,
    run_experiment,
    view_slug,
)
from .metrics import binary_metrics
from .report import write_report

__all__ = [
    "LeaderboardRow",
    "Comparison",
    "OutOfEngine",
    "leaderboard_row",
    "out_of_engine",
    "run_backbone_comparison",
]

FUSED_FEATURES = "joined features"
FUSED_STACK = "fusion (stack)"


@dataclass
class LeaderboardRow:
    """One backbone (or fusion) x head cell of the leaderboard, on test rows.

    Attributes:
        backbone: A backbone name, or ``"A+B (joined features)"`` / ``"A+B (fusion (stack))"``.
        head: The head's registry name.
        auc, auc_ci: Test AUC and its bootstrap 95 % interval.
        tpr, tpr_ci: TPR at the threshold chosen on validation reals (target FPR 0.5 %).
        fpr: The FPR realised by that threshold on the test reals.
        out_of_engine_tpr, out_of_engine_tpr_ci, out_of_engine_fpr: Leave-one-engine-out
            of this row (:func:`out_of_engine`): the TPR averaged over held-out engines
            with its bootstrap 95 % interval, and the FPR on test reals averaged alike.
        out_of_engine_note: Why there is no out-of-engine TPR (e.g. one AI engine).
        auc_normalised: Test AUC of the same head on the ``normalise`` view.
        stratified_auc, overlap_auc (+ ``_ci``): the balanced AUCs of the test rows
            (``analysis.balanced``: where the files cannot tell), from the bank's
            cross-fitted metadata probability; None without metadata.
        n_test: Test rows.
        run_dir: The training run.
    """

    backbone: str
    head: str
    auc: float | None
    auc_ci: tuple[float, float] | None
    tpr: float | None
    tpr_ci: tuple[float, float] | None
    fpr: float | None
    n_test: int
    run_dir: str
    out_of_engine_tpr: float | None = None
    out_of_engine_fpr: float | None = None
    out_of_engine_tpr_ci: tuple[float, float] | None = None
    out_of_engine_note: str | None = None
    auc_normalised: float | None = None
    fused: bool = False
    stratified_auc: float | None = None
    stratified_auc_ci: tuple[float, float] | None = None
    overlap_auc: float | None = None
    overlap_auc_ci: tuple[float, float] | None = None

    def cells(self) -> dict[str, str]:
        def ci(v: Any, lo_hi: Any, pct: bool) -> str:
            if v is None:
                return "n/a"
            f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: fmt_value(x, digits=3))
            if not lo_hi or lo_hi[0] is None:
                return f(v)
            return f"{f(v)} [{f(lo_hi[0])}, {f(lo_hi[1])}]"

        ooe = f"n/a ({self.out_of_engine_note or 'not run'})"
        if self.out_of_engine_tpr is not None:
            ooe = ci(self.out_of_engine_tpr, self.out_of_engine_tpr_ci, pct=True)
            if self.out_of_engine_fpr is not None:
                ooe += f" at FPR {100 * self.out_of_engine_fpr:.2f}%"
        return {
            "backbone": self.backbone,
            "head": self.head,
            "AUC [95% CI]": ci(self.auc, self.auc_ci, pct=False),
            "stratified AUC": ci(self.stratified_auc, self.stratified_auc_ci, pct=False),
            "overlap-weighted AUC": ci(self.overlap_auc, self.overlap_auc_ci, pct=False),
            f"TPR at val-chosen {FPR:.1%} FPR [95% CI]": ci(self.tpr, self.tpr_ci, pct=True),
            "FPR realised (test)": "n/a" if self.fpr is None else f"{100 * self.fpr:.2f}%",
            "out-of-engine TPR (LOEO)": ooe,
            "AUC normalised view": "n/a (no normalise view)"
            if self.auc_normalised is None
            else fmt_value(self.auc_normalised, digits=3),
            "test rows": str(self.n_test),
        }


def leaderboard_row(
    run_dir: str | Path, bank: Any, *, backbone: str, head: str, seed: int = 0, fused: bool = False
) -> LeaderboardRow:
    """Score the test rows of ``bank`` (a bank or a joined bank) with the head in ``run_dir``.

    Test rows are the bank's ``test`` split as ``train_run`` resolved it (same seed), so
    no row the head was fitted or thresholded on is scored.
    """
    est = load_head(run_dir)
    splits, _ = resolve_splits(bank, seed=seed)
    labels = np.asarray(bank.labels).astype(np.int64)
    rows = np.flatnonzero((splits == "test") & (labels >= 0))
    y = labels[rows]
    if rows.size == 0 or len(np.unique(y)) < 2:
        raise DataError(
            f"bank {str(bank.path)!r} has {rows.size} labelled test rows of "
            f"{len(np.unique(y))} class(es); the leaderboard needs reals and AI images in test"
        )
    s = est.decision_function(bank.load_features(rows))
    m = binary_metrics(y, s, threshold=float(est.threshold_), seed=seed)
    balanced: dict[str, Any] = {}
    e = bank_propensity(bank, seed=seed)
    if e is not None and np.isfinite(e[rows]).all():
        ba = balanced_auc(y, s, e[rows], seed=seed)
        balanced = {
            "stratified_auc": ba.stratified_auc,
            "stratified_auc_ci": ba.stratified_ci,
            "overlap_auc": ba.overlap_auc,
            "overlap_auc_ci": ba.overlap_ci,
        }
    return LeaderboardRow(
        **balanced,
        backbone=backbone,
        head=head,
        auc=m.auc,
        auc_ci=m.ci.get("auc"),
        tpr=m.recall,
        tpr_ci=m.ci.get("recall"),
        fpr=m.fpr,
        n_test=int(rows.size),
        run_dir=str(run_dir),
        fused=fused,
    )


@dataclass
class OutOfEngine:
    """Leave-one-engine-out of one leaderboard row (:func:`out_of_engine`).

    Attributes:
        tpr: Out-of-engine TPR averaged over the held-out AI engines (each weighs the same).
        tpr_ci: Its bootstrap 95 % interval (rows resampled within each engine).
        fpr: FPR on the test reals, averaged over the refits; ``fpr_ci`` its interval.
        per_engine: ``{engine: {"tpr", "n", "fpr", "threshold"}}`` for each held-out engine.
        seconds: Wall time of the refits.
    """

    tpr: float
    tpr_ci: tuple[float, float]
    fpr: float
    fpr_ci: tuple[float, float]
    per_engine: dict[str, dict[str, float]]
    seconds: float


def _fit_row_head(
    head: str, params: dict[str, Any] | None, *, fused: bool, columns: Any, seed: int
) -> Any:
    """An unfitted head as ``train_run`` builds it for this leaderboard row."""
    if fused:
        return FusionHead(rule="stack", head=head, head_params=params, columns=columns, seed=seed)
    kw = dict(params or {})
    if "seed" in head_params(head):
        kw.setdefault("seed", seed)
    return create_head(head, **kw)


def out_of_engine(
    bank: Any,
    *,
    head: str,
    params: dict[str, Any] | None = None,
    fused: bool = False,
    seed: int = 0,
    fpr: float = FPR,
    n_boot: int = 1000,
) -> OutOfEngine:
    """Leave-one-engine-out for one leaderboard row: how the row's head does on an unseen engine.

    For each AI engine E: the head is fitted on the ``train`` rows of every other engine
    and the train reals; for a fused row (``fused=True``: a ``fusion`` head, rule
    ``stack``, one ``head`` member per backbone block of a joined bank) every member is
    fitted on those rows and the stacker on the ``val`` rows without E. The threshold is
    set on ``val`` reals at ``fpr``. The out-of-engine TPR is measured on **all** rows of
    E (none was seen in fitting or thresholding), the FPR on the ``test`` reals. The
    splits are the ones ``train_run`` resolved for this bank (same ``seed``), so the test
    reals are the leaderboard's. No hyperparameter is searched.

    Args:
        bank: A bank, or a joined bank (feature-level and fused rows).
        head: The row's head (for a fused row: the member head).
        params: Its parameters (as the leaderboard trained it: none).
        fused: Refit a ``fusion`` stack of ``head`` members over ``bank.columns``.
        seed: Split seed (banks without a split column) and head seed.
        fpr: Target FPR on validation reals.
        n_boot: Bootstrap resamples for the intervals.

    Returns:
        :class:`OutOfEngine`.

    Raises:
        DataError: Fewer than two AI engines, or no validation or test reals.
    """
    t0 = time.perf_counter()
    splits, _ = resolve_splits(bank, seed=seed)
    y = np.asarray(bank.labels).astype(np.int64)
    engines = np.asarray(bank.engines, dtype=str)
    ai = sorted(set(engines[y == 1].tolist()))
    test_real = (splits == "test") & (y == 0)
    val_real = (splits == "val") & (y == 0)
    if len(ai) < 2 or not test_real.any() or not val_real.any():
        raise DataError(
            f"leave-one-engine-out needs at least two AI engines and validation and test reals; "
            f"bank {str(bank.path)!r} has {len(ai)} AI engine(s), {int(val_real.sum())} "
            f"validation and {int(test_real.sum())} test reals"
        )
    X = bank.load_features()
    columns = getattr(bank, "columns", None)
    known = y >= 0
    per_engine: dict[str, dict[str, float]] = {}
    hits: list[np.ndarray] = []
    real_hits: list[np.ndarray] = []
    for e in ai:
        others = engines != e
        fit = (splits == "train") & known & others
        est = _fit_row_head(head, params, fused=fused, columns=columns, seed=seed)
        kw: dict[str, Any] = {}
        if fused:
            val = (splits == "val") & known & others
            kw = {"X_val": X[val], "y_val": y[val]}
        est.fit(X[fit], y[fit], engines=engines[fit], **kw)
        est.calibrate(X[val_real], fpr=fpr)
        thr = float(est.threshold_)
        h = est.decision_function(X[(engines == e) & (y == 1)]) > thr
        r = est.decision_function(X[test_real]) > thr
        hits.append(h)
        real_hits.append(r)
        per_engine[e] = {
            "tpr": float(h.mean()),
            "n": int(h.size),
            "fpr": float(r.mean()),
            "threshold": thr,
        }
    tpr = float(np.mean([h.mean() for h in hits]))
    fpr_mean = float(np.mean([r.mean() for r in real_hits]))
    rng = np.random.default_rng(seed)
    n_real = int(test_real.sum())
    boot_t, boot_f = np.empty(n_boot), np.empty(n_boot)
    R = np.stack(real_hits)  # (n_engines, n_test_reals): the same reals for every refit
    for b in range(n_boot):
        boot_t[b] = np.mean([h[rng.integers(0, h.size, h.size)].mean() for h in hits])
        boot_f[b] = R[:, rng.integers(0, n_real, n_real)].mean()
    return OutOfEngine(
        tpr=tpr,
        tpr_ci=_interval(boot_t, tpr),
        fpr=fpr_mean,
        fpr_ci=_interval(boot_f, fpr_mean),
        per_engine=per_engine,
        seconds=time.perf_counter() - t0,
    )


def _interval(boot: np.ndarray, value: float) -> tuple[float, float]:
    """Percentile 95 % interval of bootstrap values (the value itself without resamples)."""
    if not boot.size:
        return (value, value)
    return (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))


def _add_out_of_engine(row: LeaderboardRow, bank: Any, *, fused: bool, seed: int) -> float:
    """Fill ``row``'s out-of-engine cells; returns the seconds spent."""
    try:
        res = out_of_engine(bank, head=row.head, fused=fused, seed=seed)
    except DataError as exc:
        row.out_of_engine_note = str(exc).split(";")[0]
        return 0.0
    row.out_of_engine_tpr, row.out_of_engine_tpr_ci = res.tpr, res.tpr_ci
    row.out_of_engine_fpr = res.fpr
    return res.seconds


@dataclass
class Comparison:
    """What :func:`run_backbone_comparison` did: the leaderboard and each backbone's run.

    Attributes:
        run_dir: The comparison folder; ``report`` its ``report.html``.
        backbones: The backbones, in the order given.
        rows: The leaderboard, single-backbone rows then fused rows.
        experiments: Each backbone's :class:`ExperimentResult` (its own sub-folder).
        embedding: ``{view: {backbone: {embedded, failed, seconds}}}``.
        seconds: Wall time per step and ``total``.
        notes: Caveats (unmatched rows, skipped fusions).
    """

    run_dir: Path
    report: Path | None
    backbones: list[str]
    rows: list[LeaderboardRow]
    experiments: dict[str, ExperimentResult]
    embedding: dict[str, dict[str, dict[str, Any]]]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The leaderboard as Markdown (top of ``summary.md``)."""
        return "\n".join(
            [
                "### Leaderboard: backbone x head (test rows)\n",
                f"Heads fitted on train, thresholds on validation reals at FPR {FPR:.1%} "
                "(the fusion stacker on validation rows); every figure on test rows. "
                "Fused rows use all backbones together. Out-of-engine TPR: each row's head "
                "(a fused row's member heads and stacker) refitted once per AI engine "
                "without it, that engine's rows scored, averaged over engines with a "
                "bootstrap 95% interval, beside the FPR on test reals.\n",
                markdown_table([r.cells() for r in self.rows]),
                "".join(f"- {n}\n" for n in self.notes),
            ]
        )

    def rich_tables(self) -> list[Any]:
        from rich.table import Table

        t = Table(
            title=f"leaderboard: backbone x head on test rows (threshold set on validation "
            f"reals at FPR {FPR:.1%}; TPR beside the FPR realised)"
        )
        cells = [r.cells() for r in self.rows]
        for col in cells[0] if cells else ():
            t.add_column(col, justify="left" if col in ("backbone", "head") else "right")
        for c in cells:
            t.add_row(*c.values())
        return [t]

    def to_dict(self) -> dict[str, Any]:
        by: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            by.setdefault(r.backbone, {})[r.head] = {
                k: v for k, v in r.__dict__.items() if k not in ("backbone", "head")
            }
        return {
            "backbones": self.backbones,
            "results": by,
            "fpr": FPR,
            "embedding": self.embedding,
            "experiments": {b: str(e.run_dir) for b, e in self.experiments.items()},
            "seconds": self.seconds,
            "notes": self.notes,
            "which_split": {
                "fit": "train",
                "threshold": "val reals",
                "stacker": "val",
                "metrics": "test",
            },
        }


def _embed_views(
    source: str | Path,
    names: list[str],
    view_names: list[str],
    run_dir: Path,
    opts: ExperimentOptions,
    seconds: dict[str, float],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every view embedded once per image for all backbones, into
    ``run_dir/<backbone>/banks``; returns ``{view: {backbone: counts}}``."""
    embedding: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        # each backbone's folder is its experiment run, resumed below once its banks are
        # complete (the run-folder rule resumes a run of the same command only)
        sub = run_dir / name
        (sub / "banks").mkdir(parents=True, exist_ok=True)
        if not (sub / "config.json").is_file():
            write_json(sub / "config.json", {"command": "experiment", "backbone": name})
    for view in view_names:
        t = time.perf_counter()
        outs = [run_dir / name / "banks" / f"{view_slug(view)}.zarr" for name in names]
        res = embed_source_multi(
            source, backbones=names, outs=outs, view=view, device=opts.device,
            real_names=opts.real_names, progress=opts.progress,
            storage_options=opts.storage_options,
        )  # fmt: skip
        embedding[view] = {
            n: {"embedded": s.embedded, "failed": len(s.failed), "seconds": round(s.seconds, 2)}
            for n, s in zip(names, res, strict=True)
        }
        seconds[f"embed {view}"] = round(time.perf_counter() - t, 2)
    return embedding


def _fused_rows(
    originals: list[Any],
    names: list[str],
    head_names: list[str],
    run_dir: Path,
    opts: ExperimentOptions,
    seconds: dict[str, float],
) -> list[LeaderboardRow]:
    """Each head on the joined features and as a stacked fusion of the backbones; splits
    keep ``opts.group_by``'s groups whole, as the single-backbone heads do."""
    rows: list[LeaderboardRow] = []
    seed = opts.seed
    joined = join_banks(originals)
    label = "+".join(names)
    for head in head_names:
        for kind, train_head, params in (
            (FUSED_FEATURES, head, {}),
            (FUSED_STACK, "fusion", {"rule": "stack", "head": head}),
        ):
            slug = "features" if kind == FUSED_FEATURES else "stack"
            tr = train_run(
                originals, head=train_head, params=params,
                out=run_dir / "fusion" / slug / head, seed=seed, fpr=FPR,
                group_by=opts.group_by,
            )  # fmt: skip
            row = leaderboard_row(
                tr.run_dir, joined, backbone=f"{label} ({kind})", head=head, seed=seed,
                fused=True,
            )  # fmt: skip
            loeo_s = _add_out_of_engine(row, joined, fused=kind == FUSED_STACK, seed=seed)
            seconds[f"out-of-engine {slug} {head}"] = round(loeo_s, 2)
            rows.append(row)
    return rows


def _check_comparison(backbones: Sequence[str], opts: ExperimentOptions) -> list[str]:
    """The backbone names, after refusing (one line, before any work) what several
    backbones cannot honour, too few or repeated names, and unknown ones."""
    opts.refuse(
        {
            "weights": "each backbone loads its own weights; run `experiment` with one "
            "--backbone to use a checkpoint",
            "image_size": "each backbone keeps its own input size; run `experiment` with "
            "one --backbone to change it",
        },
        engine="several-backbones",
    )
    names = list(dict.fromkeys(backbones))
    if len(names) < 2 or len(names) != len(backbones):
        raise DataError(
            f"a backbone comparison needs at least two different backbones, got {list(backbones)}"
        )
    for name in names:
        backbone_info(name)  # UnknownNameError with the valid names, before any work
    return names


def run_backbone_comparison(
    source: str | Path,
    *,
    backbones: Sequence[str],
    out: str | Path,
    options: ExperimentOptions | None = None,
    **fields: Any,
) -> Comparison:
    """Run the experiment with several backbones and write the leaderboard and one report.

    Layout: ``out/<backbone>/`` is each backbone's experiment (banks in
    ``out/<backbone>/banks``), ``out/fusion/`` the fused heads, ``out/leaderboard/`` the
    table, ``out/metrics.json`` the results keyed by backbone and head.

    Args:
        source: As in :func:`~facebank.analysis.experiment.run_experiment`.
        backbones: At least two registered backbone names.
        out: The run folder.
        options, **fields: The :class:`~facebank.analysis.options.ExperimentOptions` of
            ``run_experiment``, the same for every backbone: views, heads, new engine,
            device, seed, real names, progress, protocols, group_by (also for the fused
            heads), storage options and engine dates are honoured; ``weights`` and
            ``image_size`` belong to one backbone and are refused in one line.

    Raises:
        DataError: Fewer than two backbones, or a name repeated.
        UnknownNameError: An unknown backbone, view or head (before any work).
        FacebankError: ``weights`` or ``image_size`` given (before any work).
    """
    opts = ExperimentOptions.build(options, **fields)
    names = _check_comparison(backbones, opts)
    view_names = canonical_views(opts.views)
    head_names = check_heads(opts.heads)
    seed = opts.seed
    run_dir = start_run(
        out,
        command="experiment",
        config={
            "source": str(source),
            "backbones": names,
            **opts.config(),
            "views": view_names,
            "heads": head_names,
            "fpr": FPR,
            "threshold_split": "val (reals only)",
            "test_split": "test",
        },
        resume=True,
    )
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    embedding = _embed_views(source, names, view_names, run_dir, opts, seconds)

    experiments: dict[str, ExperimentResult] = {}
    for name in names:  # banks are complete: each run only loads its model and resumes
        t = time.perf_counter()
        experiments[name] = run_experiment(
            source, backbone=name, out=run_dir / name, options=opts, heads=head_names
        )
        seconds[f"experiment {name}"] = round(time.perf_counter() - t, 2)

    notes: list[str] = []
    rows: list[LeaderboardRow] = []
    originals = [FeatureBank.open(run_dir / n / "banks" / "original.zarr") for n in names]
    for name, bank in zip(names, originals, strict=True):
        exp = experiments[name]
        for head in head_names:
            row = leaderboard_row(
                exp.run_dir / "train" / head, bank, backbone=name, head=head, seed=seed
            )
            loeo_s = _add_out_of_engine(row, bank, fused=False, seed=seed)
            seconds[f"out-of-engine {name} {head}"] = round(loeo_s, 2)
            if exp.normalised:
                row.auc_normalised = (exp.normalised["heads"].get(head) or {}).get("auc")
            rows.append(row)

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows.extend(_fused_rows(originals, names, head_names, run_dir, opts, seconds))
    notes.extend(dict.fromkeys(str(w.message) for w in caught))
    seconds["fusion"] = round(time.perf_counter() - t, 2)

    result = Comparison(
        run_dir=run_dir,
        report=None,
        backbones=names,
        rows=rows,
        experiments=experiments,
        embedding=embedding,
        seconds=seconds,
        notes=notes[:20],
    )
    board = start_run(
        run_dir / "leaderboard", command="leaderboard", config={"backbones": names}, resume=True
    )
    write_json(board / "metrics.json", result.to_dict())
    (board / "metrics.md").write_text(result.markdown())
    (run_dir / "summary.md").write_text(
        result.markdown()
        + "\n".join(f"\n#### {n}\n\n{e.markdown()}" for n, e in experiments.items())
    )
    result.report = write_report(
        [run_dir],
        out=run_dir / "report.html",
        title=f"facebank experiment: {', '.join(names)} on {Path(source).name}",
        overwrite=True,
    )
    result.seconds["total"] = round(time.perf_counter() - start, 2)
    write_json(run_dir / "metrics.json", result.to_dict())
    return result
