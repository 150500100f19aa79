"""Training runs and scoring: the library side of ``facebank train`` and ``facebank score``.

Which split chose what (``train_run``): the head is fitted on the **train** split, the
threshold is chosen on the **val** split's reals only (``calibrate(fpr)``), and the
reported AUC / TPR are measured on **val** (whose reals set the threshold, so the val
FPR is the target by construction); the **test** split is never touched here - it is
written to ``splits.csv`` for ``facebank evaluate``.

Balanced training (``balance="metadata"``, ``balance_rows``): the train rows get a
metadata probability cross-fitted inside the train split (``heads.propensity``: K
group-aware folds, each row scored by a model that never saw it) and overlap weights
(reals ``e``, AI rows ``1 - e``); the head is fitted on as many rows drawn with
replacement in proportion to those weights (seeded), which works for every head. Under
the weights the metadata-only classifier's AUC on the train rows is near 0.5 (checked:
``BALANCE_TOLERANCE``; the figure is in ``metrics.json`` under ``balance``): the files no
longer tell the classes apart, so the head cannot lean on them.
"""

from __future__ import annotations

import csv
import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from facebank.core.errors import CalibrationWarning, DataError, UnknownLabelWarning
from facebank.core.runs import check_out, markdown_table, start_run, write_json
from facebank.embed import FeatureBank, assign_splits, has_splits
from facebank.embed.backbones.compat import same_backbone
from facebank.embed.bank.bank import open_banks
from facebank.embed.bank.types import BankLike
from facebank.embed.runner.multi import join_banks

from .base import BaseHead
from .calibration import calibrate_head
from .fusion import FusionHead
from .registry import create_head, head_info

__all__ = ["TrainResult", "train_run", "resolve_splits", "balance_rows", "BALANCE_TOLERANCE"]

#: the metadata-only classifier's overlap-weighted AUC on the train rows must be within
#: this of 0.5 (exactly 0.5 for a calibrated probability; the trees are nearly calibrated)
BALANCE_TOLERANCE = 0.1
_BALANCE_FOLDS = 5


@dataclass
class TrainResult:
    """What ``train_run`` made. ``val_*`` figures are on the val split (module docstring)."""

    head: BaseHead
    run_dir: Path
    train_seconds: float
    val_auc: float | None
    val_tpr_at_fpr: float | None
    n_train: int
    n_val: int
    n_test: int
    fpr: float = 0.005
    threshold: float = 0.0
    split_source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def _open_banks(banks: Sequence[BankLike]) -> Any:
    opened = open_banks(banks, what="bank")
    if len(opened) == 1:
        return opened[0]
    if all(same_backbone(opened[0].backbone, b.backbone) for b in opened[1:]):
        return FeatureBank.concat(opened)
    return join_banks(opened)  # several backbones: features side by side, rows by sha256


def resolve_splits(bank: Any, *, seed: int, group_by: str | None = None) -> tuple[np.ndarray, str]:
    """``(splits (n,), source)``: the bank's split column when it has one, else a seeded split.

    Rows of a split-carrying bank whose split is empty are left out of training and
    calibration (split ``""``). The seeded split keeps every row of a group in one split:
    the bank's ``group`` column by default (a manifest's), or ``group_by`` (``"level:K"``,
    a column name, ``"none"``: ``embed.splits.resolve_groups``).
    """
    splits = np.asarray(bank.splits, dtype=str)
    if has_splits(splits):
        return splits, "bank split column"
    from facebank.core.splits import resolve_groups

    groups, grouped_by = resolve_groups(bank, group_by)
    if groups is not None:
        return assign_splits(
            bank.engines, bank.sha256, seed=seed, groups=groups
        ), f"assign_splits(seed={seed}) stratified by engine, grouped by {grouped_by}"
    return assign_splits(
        bank.engines, bank.sha256, seed=seed
    ), f"assign_splits(seed={seed}) stratified by engine"


def balance_rows(
    enc: Any, y: np.ndarray, rows: np.ndarray, *, groups: Any, k: int = _BALANCE_FOLDS, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows drawn by overlap weights (module docstring), and what the weighting did.

    Args:
        enc: ``heads.propensity.MetadataCodes`` of the bank.
        y: ``(n_rows,)`` labels.
        rows: the training rows (indices).
        groups: ``(n_rows,)`` groups kept whole in the inner folds, or None.
        k: inner folds of the metadata probability.
        seed: seeds the folds and the draw.

    Returns:
        ``(drawn, info)``: ``rows.size`` row indices drawn with replacement (sorted), and
        ``{weighted_metadata_auc, raw_metadata_auc, no_overlap, n_rows, folds, notes}``;
        ``rows`` unchanged when no fold can be formed (said in ``notes``).
    """
    from .propensity import group_folds, out_of_fold_proba, overlap_weights, weighted_auc

    folds = group_folds(y, rows, k=k, seed=seed, groups=groups)
    info: dict[str, Any] = {"n_rows": int(rows.size), "folds": len(folds), "notes": []}
    if not folds:
        info["notes"].append(
            f"no cross-fitted metadata probability (class counts "
            f"{np.bincount(y[rows], minlength=2).tolist()}): trained unweighted"
        )
        return rows, info
    e = out_of_fold_proba(enc, y, folds, seed)[rows]
    w, n_clip = overlap_weights(y[rows], e)
    info.update(
        raw_metadata_auc=weighted_auc(y[rows], e, np.ones(rows.size)),
        weighted_metadata_auc=weighted_auc(y[rows], e, w),
        no_overlap=n_clip,
    )
    if n_clip:
        info["notes"].append(
            f"{n_clip} of {rows.size} train rows have a metadata probability of (nearly) 0 or "
            "1: clipped (no overlap)"
        )
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(rows, size=rows.size, replace=True, p=w / w.sum()))
    return drawn, info


def _tpr_at_threshold(scores: np.ndarray, y: np.ndarray, t: float) -> float | None:
    pos = scores[y == 1]
    return float((pos > t).mean()) if pos.size else None


def train_run(
    banks: Sequence[BankLike],
    *,
    head: str,
    params: dict | None = None,
    out: str | Path,
    seed: int = 0,
    fpr: float = 0.005,
    group_by: str | None = None,
    balance: str = "none",
) -> TrainResult:
    """Train head ``head`` on the train split of ``banks`` and write a run folder.

    Args:
        banks: ``FeatureBank`` objects or paths (same backbone; concatenated).
        head: registry name (``list_heads()``).
        params: head parameters; ``seed`` is passed to heads that take one unless given.
        out: run folder: ``head.json``, ``weights.safetensors``, ``config.json``,
            ``metrics.json``, ``metrics.md``, ``splits.csv`` (sha256,path,engine,label,split,group).
        seed: seeds the split (when the bank has none) and the head.
        fpr: target false-positive rate on val reals for ``threshold_``.
        group_by: ``"level:K"``: a bank without a split column is split keeping each
            group (the K-th folder of the stored paths) in one split.
        balance: ``"none"`` (default) or ``"metadata"``: fit on rows drawn by overlap
            weights so that the files cannot tell the classes apart (module docstring);
            needs the bank's metadata (``facebank bank backfill`` for older banks).

    Returns:
        TrainResult. Rows labelled -1 (unknown) are kept in ``splits.csv`` but used
        neither for fitting nor for calibration/metrics.
    """
    head_info(head)  # unknown name -> the list of valid ones, before any reading
    check_out(out, command="train")  # an existing run is refused before training, not after
    params = dict(params or {})
    bank = _open_banks(banks)
    if len(bank) == 0:
        raise DataError(
            f"bank {bank.name!r} has no rows; embed images into it first (facebank embed)"
        )
    splits, split_source = resolve_splits(bank, seed=seed, group_by=group_by)
    labels = np.asarray(bank.labels).astype(np.int64)
    known = labels != -1
    tr, va, te = _split_rows(bank, labels, splits, fpr=fpr)
    va_real = va[labels[va] == 0]
    balance_info = None
    if balance == "metadata":
        tr, balance_info = _balanced_train_rows(bank, labels, tr, seed=seed, group_by=group_by)
    elif balance != "none":
        raise DataError(f"balance={balance!r} is not valid; use 'none' or 'metadata'")
    if "seed" in inspect.signature(head_info(head).load().__init__).parameters:
        params.setdefault("seed", seed)
    est = create_head(head, **params)

    train_seconds, s_va = _fit_and_calibrate(est, bank, labels, tr, va, fpr=fpr)
    y_va = labels[va]
    val_auc = float(roc_auc_score(y_va, s_va)) if len(np.unique(y_va)) == 2 else None
    val_tpr = _tpr_at_threshold(s_va, y_va, est.threshold_)
    val_fpr = float((s_va[y_va == 0] > est.threshold_).mean())
    metrics = {
        "head": head,
        "train_seconds": train_seconds,
        "val_auc": val_auc,
        "val_tpr_at_fpr": val_tpr,
        "val_fpr": val_fpr,
        "fpr_target": fpr,
        "threshold": est.threshold_,
        "n_train": int(tr.size),
        "n_val": int(va.size),
        "n_val_reals": int(va_real.size),
        "n_test": int(te.size),
        "n_unknown_label": int((~known).sum()),
        "split_source": split_source,
        "which_split": {"fit": "train", "threshold": "val reals", "metrics": "val"},
        "balance": {"mode": balance, **(balance_info or {})},
    }
    run = start_run(
        out,
        command="train",
        config={
            "head": head,
            "params": est.get_params(deep=False),
            "seed": seed,
            "fpr": fpr,
            "banks": [str(getattr(b, "path", b)) for b in banks],
            "bank_digest": bank.digest,
            "backbone": bank.backbone,
            "view": bank.view,
            "split_source": split_source,
            "threshold_split": "val (reals only)",
            "balance": balance,
        },
    )
    est.save(run, backbone=bank.backbone, bank_digest=bank.digest, metrics=metrics)
    write_json(run / "metrics.json", metrics)
    _write_splits(run / "splits.csv", bank, labels, splits)
    (run / "metrics.md").write_text(_metrics_markdown(head, fpr, metrics))
    return TrainResult(
        head=est,
        run_dir=run,
        train_seconds=train_seconds,
        val_auc=val_auc,
        val_tpr_at_fpr=val_tpr,
        n_train=int(tr.size),
        n_val=int(va.size),
        n_test=int(te.size),
        fpr=fpr,
        threshold=est.threshold_,
        split_source=split_source,
        metrics=metrics,
    )


def _split_rows(
    bank: Any, labels: np.ndarray, splits: np.ndarray, *, fpr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices ``(train, val, test)``; train and val keep labelled rows only.

    Raises:
        DataError: no labelled train row, or no real val row to set the threshold on.
    """
    known = labels != -1
    if (~known).any():
        warnings.warn(
            f"{int((~known).sum())} row(s) labelled -1 (unknown) are left out of training and "
            "calibration",
            UnknownLabelWarning,
            stacklevel=3,
        )
    tr = np.flatnonzero((splits == "train") & known)
    va = np.flatnonzero((splits == "val") & known)
    te = np.flatnonzero(splits == "test")
    if tr.size == 0:
        raise DataError(
            f"bank {bank.name!r} has no labelled rows in the train split; "
            "give a bank with train rows (or no split column, for a seeded split)"
        )
    if not (labels[va] == 0).any():
        raise DataError(
            f"bank {bank.name!r} has no real (label 0) rows in the val split, so no threshold at "
            f"FPR={fpr} can be set; add real images to the val split"
        )
    return tr, va, te


def _fit_and_calibrate(
    est: Any, bank: Any, labels: np.ndarray, tr: np.ndarray, va: np.ndarray, *, fpr: float
) -> tuple[float, np.ndarray]:
    """Fit on the train rows, threshold on the val reals, calibrate on val.

    Returns:
        ``(train_seconds, val scores)``.
    """
    X_tr = bank.load_features(tr)
    t0 = time.perf_counter()
    fit_kw: dict[str, Any] = {}
    if isinstance(est, FusionHead):  # members per backbone; the stacker fits on val rows
        if est.columns is None and hasattr(bank, "columns"):
            est.set_params(columns=tuple(bank.columns))
        fit_kw = {"X_val": bank.load_features(va), "y_val": labels[va]}
    est.fit(X_tr, labels[tr], engines=np.asarray(bank.engines)[tr], **fit_kw)
    train_seconds = time.perf_counter() - t0
    del X_tr
    X_va = bank.load_features(va)
    s_va = est.decision_function(X_va)
    est.calibrate(X_va[labels[va] == 0], fpr=fpr)
    y_va = labels[va]
    if len(np.unique(y_va)) == 2:  # a probability needs val rows of both classes
        calibrate_head(est, X_va, y_va)
    else:
        warnings.warn(
            f"the val split has no {'AI' if (y_va == 0).all() else 'real'} rows: the head stores "
            "no calibrated probability (score writes the raw score only)",
            CalibrationWarning,
            stacklevel=3,
        )
    return train_seconds, s_va


def _metrics_markdown(head: str, fpr: float, metrics: dict[str, Any]) -> str:
    keys = ["head", "n_train", "n_val", "train_seconds", "val_auc", "val_tpr_at_fpr"]
    keys += ["val_fpr", "threshold"]
    return (
        f"# train: {head}\n\nFit on train, threshold on val reals (FPR {fpr}), figures on val.\n\n"
        + markdown_table([{k: metrics[k] for k in keys}], digits=4)
    )


def _balanced_train_rows(
    bank: Any, labels: np.ndarray, tr: np.ndarray, *, seed: int, group_by: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """``balance_rows`` on the bank's metadata, with the near-0.5 check."""
    from facebank.core.splits import resolve_groups

    from .propensity import bank_metadata, encode_metadata

    meta = bank_metadata(bank)
    fit = np.zeros(labels.size, dtype=bool)
    fit[tr] = True
    enc = encode_metadata(meta, labels >= 0, fit)
    groups, _ = resolve_groups(bank, group_by)
    drawn, info = balance_rows(enc, labels, tr, groups=groups, seed=seed)
    auc = info.get("weighted_metadata_auc")
    if auc is not None and abs(auc - 0.5) > BALANCE_TOLERANCE:
        warnings.warn(
            f"after balancing, the metadata-only classifier still reaches weighted AUC "
            f"{auc:.3f} on the train rows (more than {BALANCE_TOLERANCE} from 0.5): too few "
            "rows where both classes share file properties",
            CalibrationWarning,
            stacklevel=3,
        )
    for note in info["notes"]:
        warnings.warn(note, CalibrationWarning, stacklevel=3)
    return drawn, info


def _write_splits(path: Path, bank: Any, labels: np.ndarray, splits: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        # group: what `neighbours leaks --run` and `audit --run` check for straddling
        w.writerow(["sha256", "path", "engine", "label", "split", "group"])
        groups = getattr(bank, "groups", None)
        n = len(labels)
        for row in zip(
            np.asarray(bank.sha256, dtype=str),
            np.asarray(bank.paths, dtype=str),
            np.asarray(bank.engines, dtype=str),
            labels.tolist(),
            splits.tolist(),
            np.asarray(groups, dtype=str) if groups is not None else np.full(n, ""),
            strict=True,
        ):
            w.writerow(row)
