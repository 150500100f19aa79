"""``ood``: can a head tell images of a *new* engine from the engines it was trained on?

Score: a ``prototype`` (or ``knn``) head's own ``ood_score`` (higher = further from every
known training distribution); for any other head, the cosine distance to the k-th
nearest **training** row of the run (kNN OOD score, Sun et al. 2022), via
``analysis.neighbours.NeighbourIndex``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from facebank.core.errors import DataError, EngineOverlapWarning, HeadError
from facebank.core.options import MIN_NEW_ROWS
from facebank.core.runs import markdown_table
from facebank.core.splits import has_splits
from facebank.embed.bank.types import BanksLike

from ._evalcommon import (
    bank_label,
    check_head_backbone,
    load_run_head,
    md_section,
    open_banks,
    require_one_backbone,
)
from .metrics import binary_metrics, proportion_interval, threshold_at_fpr
from .runfolder import RunContents, write_run

__all__ = ["OodResult", "ood", "fpr_at_tpr", "score_meaning", "default_new_engine", "MIN_NEW_ROWS"]


def default_new_engine(
    engines: Mapping[str, int], ai: Sequence[str], *, min_rows: int = MIN_NEW_ROWS
) -> tuple[str | None, str]:
    """The AI engine to hold out as "new" when none is named: ``(engine | None, why)``.

    The smallest AI engine with at least ``min_rows`` images (all of them are the OOD
    test rows; ties: first by name), so that the rest keeps as much training data as
    possible while the rate measured on the new engine is still a rate. ``None`` when
    no engine has that many, or when holding it out would leave no known AI engine;
    ``why`` then says so, in words fit for a "skipped" line.

    Args:
        engines: images per engine (reals included; only ``ai`` are considered).
        ai: the AI-generated engines.
        min_rows: fewest images a held-out engine must have.
    """
    big = sorted((n, e) for e in ai if (n := int(engines.get(e, 0))) >= min_rows)
    if not big:
        sizes = ", ".join(f"{e} ({int(engines.get(e, 0))})" for e in sorted(ai))
        return None, (
            f"no AI engine has the {min_rows} images a new-engine rate needs ({sizes}); "
            "name one with --new-engine to run it anyway"
        )
    if len(ai) < 2:
        return None, "a new-engine test needs a second AI engine to stay known"
    n, engine = big[0]
    return engine, f"{engine}: the smallest AI engine with at least {min_rows} images ({n})"


def fpr_at_tpr(y: Any, scores: Any, tpr: float = 0.95) -> float:
    """FPR at the first ROC point whose TPR reaches ``tpr`` (positives = label 1).

    The threshold is the ``ceil(tpr * n_pos)``-th largest positive score, flagged
    inclusively (``score >= t``), so at least ``tpr`` of positives are flagged; the value
    is the fraction of negatives scoring ``>= t``. Equals ``sklearn.metrics.roc_curve``'s
    FPR at the first point with TPR >= ``tpr``.
    """
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise DataError(
            f"fpr_at_tpr needs both classes, got {pos.size} positives and {neg.size} negatives"
        )
    k = max(1, math.ceil(tpr * pos.size - 1e-9))
    t = np.sort(pos)[::-1][k - 1]
    return float((neg >= t).mean())


@dataclasses.dataclass
class OodResult:
    """``ood`` result.

    Attributes:
        method: ``"ood_score"`` (the head's own) or ``"knn:k=K"`` (cosine distance to the k-th
            nearest training row).
        per_engine: one dict per new engine: ``engine``, ``n``, ``auroc`` (new vs known test,
            + ``auroc_ci``), ``fpr_at_95tpr``, ``flag_rate`` (+ ci) at ``threshold``.
        known_flag_rate: fraction of known-engine **test** images flagged (target ``flag_fpr``).
        threshold: flag ``score > threshold``; set on known-engine **validation** images so
            that ``flag_fpr`` of them are flagged.
        n_known_val, n_known_test, n_new: row counts.
        csv_path: per-image CSV (in the run folder).
    """

    method: str
    per_engine: list[dict[str, Any]]
    known_flag_rate: float
    threshold: float
    flag_fpr: float
    n_known_val: int
    n_known_test: int
    n_new: int
    known_engines: list[str]
    run_dir: Path | None = None
    csv_path: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("run_dir", "csv_path")
        }


def _knn_scorer(X_train: np.ndarray, k: int):
    """Cosine distance to the k-th nearest training row (higher = more unusual)."""
    k = int(min(k, len(X_train)))
    try:
        from .neighbours import NeighbourIndex

        index = NeighbourIndex(X_train, metric="cosine", device="cpu")

        def score(X: np.ndarray) -> np.ndarray:
            D, _ = index.search(np.asarray(X, dtype=np.float32), k)
            return 1.0 - D[:, k - 1].astype(np.float64)

    except ImportError:  # neighbours not installed: same computation with FAISS directly
        import faiss

        base = np.ascontiguousarray(X_train, dtype=np.float32)
        base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base)

        def score(X: np.ndarray) -> np.ndarray:
            q = np.ascontiguousarray(X, dtype=np.float32).copy()
            q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            D, _ = flat.search(q, k)
            return 1.0 - D[:, k - 1].astype(np.float64)

    return score


def score_meaning(method: str) -> str:
    """What an OOD score is, in words: its direction and its units."""
    if method == "ood_score":
        return (
            "the head's -log p(x) in nats under its Gaussian prototypes (higher = less likely "
            "under every known engine and the reals; only differences between images matter, "
            "not the absolute value)"
        )
    return (
        "1 - cosine similarity to the k-th nearest training image (0 = same direction, "
        "up to 2 = opposite; higher = further from everything the head was trained on)"
    )


def ood(
    head_dir: Any,
    *,
    known: BanksLike,
    new: BanksLike,
    out: str | Path | None = None,
    k: int = 10,
    flag_fpr: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> OodResult:
    """Out-of-distribution detection of new-engine images vs known-engine images.

    Which split chose what: the flag threshold is set on known-engine **validation**
    images (the run's ``val`` split from its ``splits.csv``, or the banks' split column)
    so that ``flag_fpr`` of them are flagged; AUROC, FPR at 95% TPR and flag rates are
    measured on known-engine **test** images and on every new-engine image. The kNN
    reference set is the run's **train** split. Nothing is tuned on the test images.

    Args:
        head_dir: run folder of a trained head (``splits.csv`` says which known images are
            train/val/test); a head object works when the known banks carry a split column.
        known: banks of the engines (and reals) the head was trained on.
        new: banks of engines the head never saw (rows labelled -1 are fine).
        out: run folder (config.json, metrics.json, ood.md, ood_scores.csv, ood_hist.png).
        k: neighbour rank of the kNN score (heads without ``ood_score``).
        flag_fpr: fraction of known validation images flagged by the threshold.
        n_boot: bootstrap resamples for the AUROC intervals.
        seed: bootstrap seed.

    Returns:
        ``OodResult``.
    """
    rh = load_run_head(head_dir)
    known_banks = open_banks(known, what="--known banks")
    new_banks = open_banks(new, what="--new banks")
    require_one_backbone(known_banks + new_banks)
    for b in known_banks + new_banks:
        check_head_backbone(rh.head, b)

    sha = np.concatenate([np.asarray(b.sha256, dtype=str) for b in known_banks])
    split, split_source = _known_splits(rh, known_banks, sha)
    known_eng = np.concatenate([np.asarray(b.engines, dtype=str) for b in known_banks])
    new_eng = np.concatenate([np.asarray(b.engines, dtype=str) for b in new_banks])
    notes = []
    overlap = sorted(set(new_eng.tolist()) & set(known_eng[split == "train"].tolist()))
    if overlap:
        msg = f"'new' engines {overlap} also appear in the head's training rows: they are not new"
        warnings.warn(msg, EngineOverlapWarning, stacklevel=2)
        notes.append(msg)
    sha_new = set(np.concatenate([np.asarray(b.sha256, dtype=str) for b in new_banks]).tolist())
    if sha_new & set(sha.tolist()):
        raise DataError(
            f"{len(sha_new & set(sha.tolist()))} images are in both the --known and the --new "
            "banks; pass disjoint banks"
        )

    X_known = np.concatenate([b.load_features() for b in known_banks])
    X_new = np.concatenate([b.load_features() for b in new_banks])
    method, score_fn = _scorer(rh.head, X_known, split, k=k)
    s_known = np.asarray(score_fn(X_known), dtype=np.float64)
    s_new = np.asarray(score_fn(X_new), dtype=np.float64)

    val, test = split == "val", split == "test"
    if val.sum() == 0:
        raise DataError(
            "no known-engine validation images: the flag threshold cannot be set; pass the banks "
            "the head was trained on as --known"
        )
    if test.sum() == 0:
        raise DataError(
            "no known-engine test images (every known image was used for train/val): AUROC needs "
            "held-out known images"
        )
    threshold = threshold_at_fpr(s_known[val], flag_fpr)
    known_flag = float((s_known[test] > threshold).mean())

    per_engine = [
        _engine_row(e, s_known[test], s_new[new_eng == e], threshold, n_boot=n_boot, seed=seed)
        for e in sorted(set(new_eng.tolist()))
    ]
    notes += [
        f"new engine {r['engine']!r} has only {r['n']} images: wide intervals"
        for r in per_engine
        if r["n"] < 10
    ]
    res = OodResult(
        method=method,
        per_engine=per_engine,
        known_flag_rate=known_flag,
        threshold=threshold,
        flag_fpr=flag_fpr,
        n_known_val=int(val.sum()),
        n_known_test=int(test.sum()),
        n_new=int(s_new.size),
        known_engines=sorted(set(known_eng.tolist())),
        notes=notes,
    )
    if out is not None:
        where = _Scored(known_banks, new_banks, s_known, s_new, split, new_eng, test)
        contents = _contents(
            res, rh, where, k=k, n_boot=n_boot, seed=seed, split_source=split_source
        )
        res.run_dir = write_run(out, contents)
        res.csv_path = res.run_dir / "ood_scores.csv"
    return res


def _known_splits(rh: Any, known_banks: list[Any], sha: np.ndarray) -> tuple[np.ndarray, str]:
    """Each known row's split (the run's splits.csv, else the banks' column) and its source."""
    if rh.split_of is not None:
        split = rh.split_for(sha)
        split = np.where(split == "", "test", split)  # known-engine images the run never saw
        return split, "the run's splits.csv"
    split = np.concatenate([np.asarray(b.splits, dtype=str) for b in known_banks])
    if not has_splits(split):
        raise HeadError(
            "ood needs to know which known images are train/val/test: pass a run folder with "
            "splits.csv, or banks with a split column"
        )
    return split, "the known banks' split column"


def _scorer(head: Any, X_known: np.ndarray, split: np.ndarray, *, k: int) -> tuple[str, Any]:
    """``(method, score function)``: the head's own ``ood_score``, else the kNN distance
    to the known train rows."""
    if hasattr(head, "ood_score"):
        return "ood_score", head.ood_score
    train = split == "train"
    if train.sum() == 0:
        raise DataError(
            "no known image is in the run's train split: the kNN reference set is empty; pass "
            "the banks the head was trained on as --known"
        )
    return f"knn:k={min(k, int(train.sum()))}", _knn_scorer(X_known[train], k)


def _engine_row(
    e: str, s_test: np.ndarray, se: np.ndarray, threshold: float, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """One new engine against the known test rows: AUROC, FPR at 95% TPR, flag rate."""
    y = np.r_[np.zeros(s_test.size, dtype=int), np.ones(se.size, dtype=int)]
    sc = np.r_[s_test, se]
    bm = binary_metrics(y, sc, n_boot=n_boot, seed=seed)
    kf = int((se > threshold).sum())
    lo, hi = proportion_interval(kf, se.size)
    return {
        "engine": e,
        "n": int(se.size),
        "auroc": bm.auc,
        "auroc_ci": list(bm.ci.get("auc", (float("nan"), float("nan")))),
        "fpr_at_95tpr": fpr_at_tpr(y, sc, 0.95),
        "flag_rate": kf / se.size,
        "flag_rate_ci": [lo, hi],
        "mean_score": float(se.mean()),
    }


@dataclasses.dataclass(frozen=True)
class _Scored:
    """The rows an OOD run scored, for its run folder."""

    known_banks: list[Any]
    new_banks: list[Any]
    s_known: np.ndarray
    s_new: np.ndarray
    split: np.ndarray
    new_eng: np.ndarray
    test: np.ndarray


def _contents(
    res: OodResult, rh: Any, w: _Scored, *, k: int, n_boot: int, seed: int, split_source: str
) -> RunContents:
    """config.json, metrics.json, ood.md, ood_scores.csv and ood_hist.png."""
    from .plots import ood_histograms

    known_banks, new_banks, threshold = w.known_banks, w.new_banks, res.threshold
    config = {
        "head": str(rh.run_dir) if rh.run_dir else repr(rh.head),
        "known": [bank_label(b) for b in known_banks],
        "new": [bank_label(b) for b in new_banks],
        "views": sorted({b.view for b in known_banks + new_banks}),
        "method": res.method,
        "k": k,
        "flag_fpr": res.flag_fpr,
        "threshold_split": f"val of the known banks ({split_source})",
        "test_split": "test of the known banks + all new-engine images",
        "n_boot": n_boot,
        "seed": seed,
    }

    def scores_csv(fh: TextIO) -> None:
        out = csv.writer(fh)
        out.writerow(["bank", "path", "sha256", "engine", "label", "set", "ood_score", "flagged"])
        groups = (
            (known_banks, w.s_known, lambda i: f"known-{w.split[i]}"),
            (new_banks, w.s_new, lambda i: "new"),
        )
        for banks_, scores, set_name in groups:
            i = 0
            for b in banks_:
                for p, h, e, lab in zip(b.paths, b.sha256, b.engines, b.labels, strict=True):
                    flagged = int(scores[i] > threshold)
                    score = repr(float(scores[i]))
                    out.writerow([bank_label(b), p, h, e, int(lab), set_name(i), score, flagged])
                    i += 1

    table = [
        {
            "new engine": r["engine"],
            "view": ", ".join(sorted({b.view for b in new_banks})),
            "n": r["n"],
            "AUROC": f"{r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]",
            "FPR at 95% TPR": f"{r['fpr_at_95tpr']:.1%}",
            "flagged": (
                f"{r['flag_rate']:.1%} [{r['flag_rate_ci'][0]:.1%}, {r['flag_rate_ci'][1]:.1%}]"
            ),
        }
        for r in res.per_engine
    ]
    text = "# Out-of-distribution: new engines vs known engines\n\n"
    text += (
        f"Score: {res.method}, {score_meaning(res.method)}. Flag threshold {threshold:.4g} set "
        f"on {res.n_known_val} known-engine validation images ({split_source}) to flag "
        f"{res.flag_fpr:.0%} of them; on {res.n_known_test} known-engine test images it flags "
        f"{res.known_flag_rate:.1%}.\n\n"
    )
    text += md_section("Per new engine (vs known-engine test images)", markdown_table(table))
    if res.notes:
        text += md_section("Notes", "\n".join(f"- {n}" for n in res.notes))
    engines = sorted(set(w.new_eng.tolist()))
    return RunContents(
        command="ood",
        config=config,
        metrics=res.to_dict(),
        pages={"ood.md": text},
        files={"ood_scores.csv": scores_csv},
        figures={
            "ood_hist.png": lambda: ood_histograms(
                w.s_known[w.test],
                {e: w.s_new[w.new_eng == e] for e in engines},
                threshold=threshold,
                title=f"OOD scores ({res.method})",
            )
        },
    )
