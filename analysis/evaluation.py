"""``evaluate``: a trained head on one or more banks, at its frozen validation threshold."""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from facebank.core.errors import DataError
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike
from facebank.embed.runner.multi import banks_for_spec

from ._evalcommon import (
    bank_label,
    check_head_backbone,
    fmt_ci,
    load_run_head,
    md_section,
    open_banks,
    require_one_backbone,
    score_rows,
)
from .calibration_metrics import CalibrationMetrics, calibration_metrics
from .metrics import BinaryMetrics, binary_metrics, per_engine_table
from .paired import PairedScore, paired_score
from .runfolder import RunContents, csv_text, write_run

__all__ = ["Evaluation", "evaluate", "per_engine_markdown"]


@dataclasses.dataclass
class Evaluation:
    """Result of ``evaluate``.

    Attributes:
        metrics: overall ``BinaryMetrics`` at ``threshold`` (plus threshold-free metrics).
        per_engine: ``per_engine_table`` rows (TPR per AI engine, FPR of reals).
        threshold: the head's frozen threshold (flag ``score > threshold``).
        threshold_source: which data chose it (the run's validation reals).
        n_rows: rows scored.
        n_excluded: rows left out because the run trained or calibrated on them
            (``{"train": n, "val": n}``, matched by sha256 via the run's splits.csv).
        n_unknown: rows with label -1 left out.
        n_duplicates: rows left out because the same sha256 appeared earlier.
        banks: the banks' paths; ``views``: their views.
        run_dir: the run folder written (``None`` without ``out``).
        notes: caveats in words (small engines, low-FPR targets below one image...).
        calibration: NLL, Cllr, Brier, ECE (plain and class-balanced), EER and Pd at the
            false-alarm rate of the head's probability (``analysis.calibration_metrics``):
            its validation-fitted map when it has one, else the sigmoid of its score.
        paired: the share of pairs in which the fake scores above its own real, with its
            interval (``analysis.paired``); None when no row has a ``pair``.
    """

    metrics: BinaryMetrics
    per_engine: list[dict[str, Any]]
    threshold: float
    threshold_source: str
    n_rows: int
    n_excluded: dict[str, int]
    n_unknown: int
    n_duplicates: int
    banks: list[str]
    views: list[str]
    run_dir: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    calibration: CalibrationMetrics | None = None
    paired: PairedScore | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "n_rows": self.n_rows,
            "n_excluded": self.n_excluded,
            "n_unknown": self.n_unknown,
            "n_duplicates": self.n_duplicates,
            "banks": self.banks,
            "views": self.views,
            "metrics": self.metrics.to_dict(),
            "per_engine": self.per_engine,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "paired": self.paired.to_dict() if self.paired else None,
            "notes": self.notes,
        }


def per_engine_markdown(rows: Sequence[dict[str, Any]], *, view: str | None = None) -> str:
    """Per-engine rows as a Markdown table (rate with its 95% interval, counts, warnings)."""
    table = []
    for r in rows:
        row = {"engine": r["engine"]}
        if view is not None:
            row["view"] = view
        row.update(
            {
                "class": "AI" if r["label"] == 1 else "real",
                "n": r["n"],
                "flagged": r["n_flagged"],
                "rate": f"{r['metric'].upper()} {fmt_ci(r['rate'], r['ci_low'], r['ci_high'])}",
                "warning": r.get("warning") or "",
            }
        )
        table.append(row)
    return markdown_table(table)


def evaluate(
    head_dir_or_head: Any,
    banks: BanksLike,
    *,
    out: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Score banks with a trained head and measure it at its frozen threshold.

    Which split chose what: the threshold is the head's ``threshold_``, chosen by the
    training run on **validation reals** (``calibration_``); nothing is tuned here.
    Rows whose sha256 the run used for training or calibration (``train``/``val`` in
    the run folder's ``splits.csv``) are excluded and counted; so are unlabelled rows
    (-1) and repeated images. TPRs at FPR 0.1/0.5/1% in ``metrics.tpr_at_fpr`` are the
    test data's own ROC operating points (reported for comparison, not a decision rule).

    Args:
        head_dir_or_head: a run folder from ``train_run`` / ``facebank train`` or a fitted head
            (then no rows are excluded - the caller vouches they are held out).
        banks: one or more banks (paths or ``FeatureBank``) of the head's backbone; for a
            head trained on several backbones (feature-level or ``fusion``), banks of
            each of them over the same images (joined by sha256; rows missing from some
            bank are left out with an ``UnmatchedRowsWarning``); for a head trained on
            some blocks of a ``--layer blocks`` bank, such banks (the blocks are selected).
        out: run folder to write (config.json, metrics.json, metrics.md, per_engine.csv,
            scores.csv, roc.png, det.png, per_engine.png); ``None`` writes nothing.
        n_boot: bootstrap resamples for the overall intervals.
        seed: bootstrap seed.

    Returns:
        ``Evaluation``.

    Raises:
        BackboneMismatchError: banks of different backbones, or a head of another backbone.
        DataError: no reals or no AI images left to evaluate.
    """
    rh = load_run_head(head_dir_or_head)
    # a fusion / joined-features head: banks of its backbones, joined by image sha256;
    # a head of some blocks: --layer blocks banks seen through that range
    banks = banks_for_spec(
        getattr(rh.head, "backbone_", None),
        open_banks(banks),
        what=f"the head {str(rh.run_dir) if rh.run_dir else rh.head.name!r}",
    )
    require_one_backbone(banks)
    for b in banks:
        check_head_backbone(rh.head, b)

    cols, n_excluded, n_unknown, n_dup = _collect_rows(rh, banks)
    y, s, engines = cols["label"], cols["score"], cols["engine"]

    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    excluded = sum(n_excluded.values())
    if n_real == 0 or n_fake == 0:
        missing = (
            "real images (label 0): FPR is undefined"
            if n_real == 0
            else "AI images (label 1): TPR is undefined"
        )
        raise DataError(
            f"after leaving out {excluded} train/val rows of the run, {n_unknown} unlabelled and "
            f"{n_dup} repeated rows, "
            f"the banks {[bank_label(b) for b in banks]} have {n_real} reals and {n_fake} AI "
            f"images - no {missing}; "
            "add a bank holding held-out (test) images of the missing class"
        )

    metrics = binary_metrics(y, s, threshold=rh.threshold, n_boot=n_boot, seed=seed)
    notes = list(metrics.notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_engine = per_engine_table(
            y, s, engines, threshold=rh.threshold, n_boot=n_boot, seed=seed
        )
    for w in caught:
        notes.append(str(w.message))
        warnings.warn(str(w.message), w.category, stacklevel=2)
    if rh.split_of is None:
        notes.append(
            "no splits.csv (a head object or a run without one): no rows were excluded as train/val"
        )

    paired = _paired(cols, n_boot=n_boot, seed=seed, notes=notes)
    result = Evaluation(
        calibration=head_calibration(rh.head, y, s),
        paired=paired,
        metrics=metrics,
        per_engine=per_engine,
        threshold=rh.threshold,
        threshold_source=rh.threshold_source,
        n_rows=int(y.size),
        n_excluded=n_excluded,
        n_unknown=n_unknown,
        n_duplicates=n_dup,
        banks=[bank_label(b) for b in banks],
        views=[b.view for b in banks],
        notes=notes,
    )
    if out is not None:
        result.run_dir = write_run(out, _contents(result, rh, cols, n_boot=n_boot, seed=seed))
    return result


def _collect_rows(rh: Any, banks: Sequence[Any]) -> tuple[dict[str, np.ndarray], dict, int, int]:
    """The rows to evaluate, scored: ``(columns, excluded per split, unknown, duplicates)``.

    Rows the run fitted or calibrated on, unlabelled rows and repeated sha256 are left out
    and counted; ``columns`` holds bank, path, sha256, engine, label, score and pair.
    """
    parts = {k: [] for k in ("bank", "path", "sha256", "engine", "label", "score", "pair")}
    n_excluded = {"train": 0, "val": 0}
    n_unknown = n_dup = 0
    seen: set[str] = set()
    for b in banks:
        sha = np.asarray(b.sha256, dtype=str)
        labels = np.asarray(b.labels, dtype=np.int64)
        used = rh.used_for_fitting(sha)
        if used.any():
            for sp, n in zip(*np.unique(rh.split_for(sha[used]), return_counts=True), strict=True):
                n_excluded[str(sp)] = n_excluded.get(str(sp), 0) + int(n)
        unknown = (labels == -1) & ~used
        n_unknown += int(unknown.sum())
        keep = ~used & ~unknown
        dup = np.zeros_like(keep)
        for i in np.flatnonzero(keep):
            if sha[i] in seen:
                dup[i] = True
            seen.add(sha[i])
        n_dup += int(dup.sum())
        rows = np.flatnonzero(keep & ~dup)
        parts["bank"].append(np.full(rows.size, bank_label(b), dtype=object))
        parts["path"].append(np.asarray(b.paths, dtype=str)[rows])
        parts["sha256"].append(sha[rows])
        parts["engine"].append(np.asarray(b.engines, dtype=str)[rows])
        parts["label"].append(labels[rows])
        parts["score"].append(score_rows(rh.head, b, rows))
        pairs = getattr(b, "pairs", None)  # banks from before the column have none
        parts["pair"].append(
            np.full(rows.size, "") if pairs is None else np.asarray(pairs, dtype=str)[rows]
        )
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    return cols, n_excluded, n_unknown, n_dup


def _paired(cols: dict[str, np.ndarray], *, n_boot: int, seed: int, notes: list[str]) -> Any:
    """The paired score of the evaluated rows (None without pairs); absent reals noted."""
    paired = paired_score(
        cols["label"], cols["score"], cols["path"], cols["pair"], n_boot=n_boot, seed=seed
    )
    if paired is not None and paired.missing:
        shown = ", ".join(paired.missing[:10]) + (" ..." if len(paired.missing) > 10 else "")
        notes.append(
            f"{paired.n_dropped} fakes name a real that is not among the evaluated rows "
            f"({shown}): their pairs are dropped"
        )
    return paired


def head_calibration(head: Any, y: np.ndarray, scores: np.ndarray) -> CalibrationMetrics:
    """Calibration measures of a head's probability on rows ``y``/``scores`` (its raw scores).

    The probability is the head's validation-fitted map (``heads.calibration``; Cllr's prior
    is the validation split's AI share) when it has one, else the sigmoid of the score
    (prior 0.5), as ``predict_proba`` gives it.
    """
    from facebank.heads.calibration import ScoreCalibration

    doc = getattr(head, "score_calibration_", None)
    if doc:
        cal = ScoreCalibration.from_dict(doc)
        return calibration_metrics(
            y,
            cal.probability(scores),
            prior=float(min(max(cal.val_prevalence, 1e-6), 1 - 1e-6)),
            source=f"{cal.method} map fitted on {cal.n_rows} validation rows",
        )
    p = 1.0 / (1.0 + np.exp(-np.clip(scores, -500, 500)))
    return calibration_metrics(y, p, source="sigmoid of the score (no fitted map)")


def _paired_and_calibration_md(result: Evaluation) -> str:
    text = ""
    if result.paired is not None:
        text += md_section("Paired score", f"On paired rows, {result.paired.sentence()}.")
    if result.calibration is not None:
        c = result.calibration
        text += md_section(
            "Calibration of the probability",
            f"Probability: {c.probability}; {c.n_real} reals, {c.n_fake} AI images.\n\n"
            + markdown_table(c.table_rows(), digits=4),
        )
    return text


def _contents(
    result: Evaluation, rh: Any, cols: dict[str, np.ndarray], *, n_boot: int, seed: int
) -> RunContents:
    from .plots import det_figure, engine_bars_figure, roc_figure

    config = {
        "head": str(rh.run_dir) if rh.run_dir else repr(rh.head),
        "head_name": getattr(rh.head, "name", type(rh.head).__name__),
        "banks": result.banks,
        "views": result.views,
        "threshold": result.threshold,
        "threshold_source": result.threshold_source,
        "excluded": "rows whose sha256 is in the run's splits.csv as train or val",
        "n_boot": n_boot,
        "seed": seed,
    }
    m = result.metrics
    view = ", ".join(sorted(set(result.views)))
    summary = markdown_table(
        [
            {
                "view": view,
                "n real": m.n_real,
                "n AI": m.n_fake,
                "excluded (train/val)": sum(result.n_excluded.values()),
                "threshold": f"{result.threshold:.4g}",
                "TPR at threshold": fmt_ci(m.recall, *m.ci.get("recall", (None, None))),
                "FPR at threshold": fmt_ci(m.fpr, *m.ci.get("fpr", (None, None))),
                "AUC": fmt_ci(m.auc, *m.ci.get("auc", (None, None)), pct=False),
            }
        ]
    )
    metric_rows = [
        {
            "metric": r["metric"],
            "value": r["value"],
            "95% interval": "-"
            if r["ci_low"] is None or math.isnan(r["ci_low"])
            else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
            "note": r["note"],
        }
        for r in m.table_rows()
    ]
    text = "# Evaluation\n\n"
    text += (
        f"Threshold {result.threshold:.6g} chosen on {result.threshold_source}; "
        "flagged = score > threshold.\n\n"
    )
    text += md_section("Summary", summary)
    text += md_section(
        "Per engine at the threshold", per_engine_markdown(result.per_engine, view=view)
    )
    text += md_section(
        "All metrics (stratified bootstrap 95% intervals)", markdown_table(metric_rows, digits=4)
    )
    text += _paired_and_calibration_md(result)
    if result.notes:
        text += md_section("Notes", "\n".join(f"- {n}" for n in result.notes))
    fields = [
        "engine",
        "label",
        "n",
        "n_flagged",
        "metric",
        "rate",
        "ci_low",
        "ci_high",
        "mean_score",
        "warning",
    ]

    def scores_csv(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(["bank", "path", "sha256", "engine", "label", "score", "flagged"])
        flagged = cols["score"] > result.threshold
        for i in range(cols["score"].size):
            w.writerow(
                [
                    cols["bank"][i],
                    cols["path"][i],
                    cols["sha256"][i],
                    cols["engine"][i],
                    int(cols["label"][i]),
                    repr(float(cols["score"][i])),
                    int(flagged[i]),
                ]
            )

    y, s, e, t = cols["label"], cols["score"], cols["engine"], result.threshold
    return RunContents(
        command="evaluate",
        config=config,
        metrics=result.to_dict(),
        pages={"metrics.md": text},
        files={
            "per_engine.csv": csv_text(fields, result.per_engine, extrasaction="raise"),
            "scores.csv": scores_csv,
        },
        figures={
            "roc.png": lambda: roc_figure(y, s, engines=e, threshold=t, title=f"ROC ({view})"),
            "det.png": lambda: det_figure(y, s, engines=e, threshold=t, title=f"DET ({view})"),
            "per_engine.png": lambda: engine_bars_figure(
                result.per_engine, title=f"per engine at threshold {t:.3g} ({view})"
            ),
        },
    )
