"""Shared plumbing of the evaluation commands: banks in, head runs in, scores out."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError, HeadError
from facebank.core.runs import fmt_value
from facebank.embed.backbones.compat import backbone_id, require_same_backbone
from facebank.embed.backbones.compat import require_one_backbone as _require_one_backbone
from facebank.embed.bank.bank import open_banks as open_banks  # the one opener, re-exported

BankLike = Any  # FeatureBank | str | os.PathLike

# Rows scored per decision_function call: bounds memory at ~200 MB of float32 for D=768.
SCORE_CHUNK = 65536


def bank_label(bank: Any) -> str:
    return str(getattr(bank, "path", None) or getattr(bank, "name", "bank"))


def require_one_backbone(banks: Sequence[Any]) -> dict:
    """All banks share one backbone (BackboneMismatchError naming both otherwise)."""
    return _require_one_backbone(banks, label=lambda b: f"bank {bank_label(b)}")


@dataclasses.dataclass
class RunHead:
    """A loaded head plus what its run folder says about how it was made."""

    head: Any
    run_dir: Path | None
    split_of: dict[str, str] | None  # sha256 -> train/val/test from splits.csv
    threshold: float
    threshold_source: str

    def used_for_fitting(self, sha256: np.ndarray) -> np.ndarray:
        """(n,) bool: rows whose image the run trained or calibrated on (train/val)."""
        if not self.split_of:
            return np.zeros(len(sha256), dtype=bool)
        used = {s for s, sp in self.split_of.items() if sp in ("train", "val")}
        return np.fromiter((s in used for s in sha256.tolist()), dtype=bool, count=len(sha256))

    def split_for(self, sha256: np.ndarray) -> np.ndarray:
        """(n,) split names from splits.csv ('' for images the run never saw)."""
        m = self.split_of or {}
        return np.array([m.get(s, "") for s in sha256.tolist()], dtype=object).astype(str)


def read_splits_csv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"sha256", "split"} <= set(reader.fieldnames):
            raise HeadError(
                f"{path} has columns {reader.fieldnames!r}; expected sha256,path,engine,label,split"
            )
        for row in reader:
            # an image present in several splits (should not happen) counts as train/val
            prev = out.get(row["sha256"])
            if prev in ("train", "val"):
                continue
            out[row["sha256"]] = row["split"]
    return out


def load_run_head(head_or_dir: Any) -> RunHead:
    """Load a head from a run folder (head.json + splits.csv) or wrap a fitted head object."""
    if isinstance(head_or_dir, (str, os.PathLike)):
        from facebank.heads import load_head

        run_dir = Path(head_or_dir)
        head = load_head(run_dir)
        splits_path = run_dir / "splits.csv"
        split_of = read_splits_csv(splits_path) if splits_path.exists() else None
    else:
        head, run_dir, split_of = head_or_dir, None, None
    if not hasattr(head, "threshold_"):
        raise HeadError(
            f"head {head!r} is not fitted (no threshold_); fit and calibrate it, or pass a run "
            "folder"
        )
    cal = getattr(head, "calibration_", None)
    if cal:
        source = (
            "validation reals of the training run "
            f"(split {cal.get('split', 'val')!r}, target FPR {cal.get('fpr')}, "
            f"n_reals {cal.get('n_reals')})"
        )
    else:
        source = "head default (not calibrated on validation reals)"
    return RunHead(
        head=head,
        run_dir=run_dir,
        split_of=split_of,
        threshold=float(head.threshold_),
        threshold_source=source,
    )


def check_head_backbone(head: Any, bank: Any) -> None:
    """A head trained on one backbone cannot score another's features."""
    spec = getattr(head, "backbone_", None)
    if spec:
        require_same_backbone(
            spec, bank.backbone, a_name="the head", b_name=f"bank {bank_label(bank)}"
        )
    n = getattr(head, "n_features_in_", None)
    if n is not None and int(n) != int(bank.dim):
        raise DataError(
            f"the head takes {n}-d features but bank {bank_label(bank)} is {bank.dim}-d "
            f"({backbone_id(bank.backbone)}); "
            "score a bank embedded with the head's backbone"
        )


def score_rows(head: Any, bank: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """decision_function over a bank's rows (all, or the given positions), in chunks."""
    if rows is None:
        out = [
            np.asarray(head.decision_function(X), dtype=np.float64)
            for _, _, X in bank.iter_features(chunk_rows=SCORE_CHUNK)
        ]
        return np.concatenate(out) if out else np.zeros(0)
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    for i in range(0, rows.size, SCORE_CHUNK):
        X = bank.load_features(rows[i : i + SCORE_CHUNK])
        out.append(np.asarray(head.decision_function(X), dtype=np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def md_section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.rstrip()}\n\n"


def fmt_ci(v: float | None, lo: float | None, hi: float | None, pct: bool = True) -> str:
    """``value [low, high]`` with ``embed.runs.fmt_value`` (percent with 1 decimal, or 3
    decimals); NaN/None read ``n/a``; the interval is left out when it is undefined."""
    digits = 1 if pct else 3
    text = fmt_value(v, digits=digits, pct=pct)
    if text == "n/a" or lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return text
    return (
        f"{text} [{fmt_value(lo, digits=digits, pct=pct)}, {fmt_value(hi, digits=digits, pct=pct)}]"
    )
