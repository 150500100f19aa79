"""``robustness``: one head, one frozen threshold, banks of several views of the same images.

Like Figure 2 of 2311.08577: TPR at the fixed threshold (FPR 0.5% on validation reals
of the *original* images) as the images are JPEG-compressed, resized or flipped.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

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
from .metrics import binary_metrics, per_engine_table, proportion_interval
from .runfolder import RunContents, csv_text, write_run

__all__ = ["RobustnessResult", "robustness", "view_family"]


def view_family(view: str) -> tuple[str, Any]:
    """Family and x-value of a view name, for plotting.

    ``original`` -> ("original", None); ``jpeg:q=75`` -> ("jpeg", 75); ``resize:128`` ->
    ("resize", 128); ``hflip``/``vflip`` -> ("flip", "hflip"); a composition such as
    ``resize:256+jpeg:q=75`` -> ("resize+jpeg", "resize:256+jpeg:q=75").
    """
    v = view.strip()
    if v in ("", "original"):
        return "original", None
    if "+" in v:
        return "+".join(p.split(":")[0] for p in v.split("+")), v
    m = re.fullmatch(r"jpeg:q=(\d+)", v)
    if m:
        return "jpeg", int(m.group(1))
    m = re.fullmatch(r"resize:(\d+)", v)
    if m:
        return "resize", int(m.group(1))
    if v in ("hflip", "vflip"):
        return "flip", v
    return v.split(":")[0], v


@dataclasses.dataclass
class RobustnessResult:
    """``robustness`` result.

    Attributes:
        views: one dict per bank/view: ``view``, ``family``, ``x``, ``bank``, ``n_real``,
            ``n_fake``, ``tpr`` (+ ``tpr_ci_low/high``, exact binomial), ``fpr`` (+ ci),
            ``auc`` (+ ``auc_ci`` bootstrap), ``tpr_drop`` vs the original view.
        per_engine: ``{view: per_engine_table rows}``.
        threshold, threshold_source: the frozen threshold and which split chose it.
        n_matched: images present in every bank (the rows compared).
        mismatch: ``{bank: n rows whose sha256 is missing from at least one other bank}``.
        n_excluded: matched images left out because the run trained or calibrated on them.
    """

    views: list[dict[str, Any]]
    per_engine: dict[str, list[dict[str, Any]]]
    threshold: float
    threshold_source: str
    n_matched: int
    mismatch: dict[str, int]
    n_excluded: int
    run_dir: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "run_dir"}


def robustness(
    head_dir: Any,
    banks: BanksLike,
    *,
    out: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    allow_mismatch: bool = True,
) -> RobustnessResult:
    """Score the same images under several views with one head at its frozen threshold.

    Which split chose what: the threshold is the head's, set by its training run on
    **validation reals** (of the view it was trained on, normally ``original``) and never
    re-tuned per view - a view that shifts real scores shows up as a higher FPR. Images
    the run trained or calibrated on (train/val in splits.csv) are excluded from every view.

    Rows are matched across banks by sha256 of the source image (each bank = one view of
    the same source); only images present in every bank are compared, so differences
    between views are not differences between image sets. Images missing from some bank
    are counted per bank in ``mismatch`` (and a note), or are an error with
    ``allow_mismatch=False``.

    Args:
        head_dir: run folder of a trained head (or a fitted head object).
        banks: one bank per view (paths or ``FeatureBank``), same backbone as the head.
        out: run folder (config.json, metrics.json, robustness.md, robustness.png, per_view.csv).
        n_boot: bootstrap resamples for AUC intervals.
        seed: bootstrap seed.
        allow_mismatch: compare the common images when image sets differ (default) or raise.

    Returns:
        ``RobustnessResult``.
    """
    rh = load_run_head(head_dir)
    banks = open_banks(banks)
    require_one_backbone(banks)
    for b in banks:
        check_head_backbone(rh.head, b)
    views = [b.view for b in banks]
    if len(set(views)) != len(views):
        dup = sorted({v for v in views if views.count(v) > 1})
        raise DataError(
            f"several banks have the same view {dup}; give one bank per view (views given: {views})"
        )

    first_pos, common, mismatch, notes = _match_rows(banks, allow_mismatch=allow_mismatch)
    ref = sorted(common)
    if not ref:
        raise DataError(
            f"no image (sha256) is present in every bank {[bank_label(b) for b in banks]}; give "
            "banks embedded from the same source"
        )
    ref_arr = np.array(ref, dtype=str)
    used = rh.used_for_fitting(ref_arr)
    n_excluded = int(used.sum())
    ref_arr = ref_arr[~used]

    base_bank = banks[0]
    rows0 = np.array([first_pos[0][s] for s in ref_arr], dtype=np.int64)
    y = np.asarray(base_bank.labels, dtype=np.int64)[rows0]
    engines = np.asarray(base_bank.engines, dtype=str)[rows0]
    keep = y != -1
    ref_arr, y, engines = ref_arr[keep], y[keep], engines[keep]
    if (y == 0).sum() == 0 or (y == 1).sum() == 0:
        raise DataError(
            f"the matched held-out images hold {(y == 0).sum()} reals and {(y == 1).sum()} AI "
            "images "
            f"({n_excluded} train/val images excluded); robustness needs both to report TPR and FPR"
        )

    per_view, per_engine, scores = [], {}, {}
    for b, pos in zip(banks, first_pos, strict=True):
        rows = np.array([pos[s] for s in ref_arr], dtype=np.int64)
        lab_b = np.asarray(b.labels, dtype=np.int64)[rows]
        if not np.array_equal(lab_b, y):
            raise DataError(
                f"bank {bank_label(b)} labels the same images differently from "
                f"{bank_label(base_bank)}; the banks are not views of one source"
            )
        s = score_rows(rh.head, b, rows)
        scores[b.view] = s
        per_view.append(_view_row(b, y, s, threshold=rh.threshold, n_boot=n_boot, seed=seed))
        per_engine[b.view] = per_engine_table(y, s, engines, threshold=rh.threshold)
    base = next((r for r in per_view if r["family"] == "original"), per_view[0])
    for r in per_view:
        r["tpr_drop"] = base["tpr"] - r["tpr"]
    res = RobustnessResult(
        views=per_view,
        per_engine=per_engine,
        threshold=rh.threshold,
        threshold_source=rh.threshold_source,
        n_matched=int(ref_arr.size),
        mismatch=mismatch,
        n_excluded=n_excluded,
        notes=notes,
    )
    if out is not None:
        contents = _contents(res, rh, n_boot=n_boot, seed=seed, base_view=base["view"])
        res.run_dir = write_run(out, contents)
    return res


def _match_rows(
    banks: list[Any], *, allow_mismatch: bool
) -> tuple[list[dict[str, int]], set[str], dict[str, int], list[str]]:
    """Rows matched across banks by sha256: each bank's first row per sha256, the sha256s
    present in every bank, the count missing per bank and the note saying so.

    Raises:
        DataError: image sets differ and ``allow_mismatch`` is False.
    """
    first_pos = []
    for b in banks:
        sha = np.asarray(b.sha256, dtype=str)
        _, first = np.unique(sha, return_index=True)
        first_pos.append(dict(zip(sha[first].tolist(), first.tolist(), strict=True)))
    common = set(first_pos[0])
    for m in first_pos[1:]:
        common &= set(m)
    mismatch = {bank_label(b): len(m) - len(common) for b, m in zip(banks, first_pos, strict=True)}
    notes = []
    if any(mismatch.values()):
        msg = "images missing from some views (rows not in every bank, left out): " + ", ".join(
            f"{k}: {v}" for k, v in mismatch.items() if v
        )
        if not allow_mismatch:
            raise DataError(
                msg + "; embed the same source with every --view, or allow the mismatch"
            )
        notes.append(msg)
    return first_pos, common, mismatch, notes


def _view_row(
    b: Any, y: np.ndarray, s: np.ndarray, *, threshold: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """One view's TPR and FPR at the frozen threshold (exact intervals) and its AUC."""
    flagged = s > threshold
    k_t, n_t = int(flagged[y == 1].sum()), int((y == 1).sum())
    k_f, n_f = int(flagged[y == 0].sum()), int((y == 0).sum())
    bm = binary_metrics(y, s, n_boot=n_boot, seed=seed)
    fam, x = view_family(b.view)
    t_lo, t_hi = proportion_interval(k_t, n_t)
    f_lo, f_hi = proportion_interval(k_f, n_f)
    return {
        "view": b.view,
        "family": fam,
        "x": x,
        "bank": bank_label(b),
        "n_real": n_f,
        "n_fake": n_t,
        "tpr": k_t / n_t,
        "tpr_ci_low": t_lo,
        "tpr_ci_high": t_hi,
        "fpr": k_f / n_f,
        "fpr_ci_low": f_lo,
        "fpr_ci_high": f_hi,
        "auc": bm.auc,
        "auc_ci": list(bm.ci.get("auc", (float("nan"), float("nan")))),
        "tpr@fpr=0.5% (own reals)": bm.tpr_at_fpr.get("0.5%"),
    }


def _per_engine_by_view(per_engine: dict[str, list[dict[str, Any]]]) -> str:
    """One table: a row per engine, a column per view (rate [interval]), the caveat once."""
    views = list(per_engine)
    table: dict[str, dict[str, Any]] = {}
    for view, rows in per_engine.items():
        for r in rows:
            row = table.setdefault(
                r["engine"],
                {"engine": r["engine"], "class": "AI" if r["label"] == 1 else "real", "n": r["n"]},
            )
            row[view] = f"{r['metric'].upper()} {fmt_ci(r['rate'], r['ci_low'], r['ci_high'])}"
            if r.get("warning"):
                row["warning"] = r["warning"]
    return markdown_table(
        [{**r, "warning": r.get("warning", "")} for r in table.values()],
        ["engine", "class", "n", *views, "warning"],
    )


def _contents(
    res: RobustnessResult, rh: Any, *, n_boot: int, seed: int, base_view: str
) -> RunContents:
    from .plots import robustness_figure

    config = {
        "head": str(rh.run_dir) if rh.run_dir else repr(rh.head),
        "banks": [r["bank"] for r in res.views],
        "views": [r["view"] for r in res.views],
        "threshold": res.threshold,
        "threshold_source": res.threshold_source,
        "matching": "sha256, images present in every bank",
        "n_boot": n_boot,
        "seed": seed,
    }
    table = [
        {
            "view": r["view"],
            "family": r["family"],
            "n real": r["n_real"],
            "n AI": r["n_fake"],
            "TPR at threshold": fmt_ci(r["tpr"], r["tpr_ci_low"], r["tpr_ci_high"]),
            "FPR at threshold": fmt_ci(r["fpr"], r["fpr_ci_low"], r["fpr_ci_high"]),
            "AUC": fmt_ci(r["auc"], *r["auc_ci"], pct=False),
            f"TPR drop vs {base_view} (pts)": f"{100 * r['tpr_drop']:.1f}",
        }
        for r in res.views
    ]
    text = "# Robustness across views\n\n"
    text += (
        f"One head, threshold {res.threshold:.4g} frozen ({res.threshold_source}); {res.n_matched} "
        "images matched by sha256 "
        f"in every view ({res.n_excluded} train/val images of the run excluded).\n\n"
    )
    text += md_section("Per view", markdown_table(table))
    if res.per_engine:
        text += md_section(
            "Per engine at the threshold (TPR of AI engines, FPR of reals; 95% intervals)",
            _per_engine_by_view(res.per_engine),
        )
    if res.notes:
        text += md_section("Notes", "\n".join(f"- {n}" for n in res.notes))
    fields = [
        "view",
        "family",
        "x",
        "bank",
        "n_real",
        "n_fake",
        "tpr",
        "tpr_ci_low",
        "tpr_ci_high",
        "fpr",
        "fpr_ci_low",
        "fpr_ci_high",
        "auc",
        "tpr_drop",
    ]
    title = f"TPR / FPR at the frozen threshold {res.threshold:.3g}"
    return RunContents(
        command="robustness",
        config=config,
        metrics=res.to_dict(),
        pages={"robustness.md": text},
        files={"per_view.csv": csv_text(fields, res.views)},
        figures={"robustness.png": lambda: robustness_figure(res.views, title=title)},
    )
