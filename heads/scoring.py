"""Scoring with a saved head: banks, image files, folders and manifests; views and verdicts.

``score_run`` is the library side of ``facebank score``. Inputs may be mixed:

- a **feature bank** (a folder holding ``zarr.json``): its stored features are scored;
  the bank's backbone must be the head's.
- an **image file**: embedded with the head's backbone (as ``facebank embed`` would).
- a **folder** that is not a bank: every image under it (recursively, sorted, hidden
  entries skipped; files without an image extension are counted as ignored).
- a **CSV manifest** (``path,label,engine[,split]``, as ``facebank embed`` reads): its
  images. The labels are not used for scoring.

An input file the backbone cannot take is a *failure* (path + reason), the same policy
as ``embed``: the other inputs are still scored. Nothing scored at all is for the
caller (the CLI exits non-zero).

Columns of the CSV (one row per scored image, in input order):
``path, score, decision, probability, verdict`` then, when asked, ``probability_at_prevalence``
and per view ``score[VIEW]`` / ``decision[VIEW]``.

- ``score``: the head's ``decision_function`` (higher = AI-generated), written in full;
  with views, the score under the first view.
- ``decision``: 1 where ``score > threshold`` (the head's threshold, chosen on validation
  reals at its training FPR).
- ``probability``: ``P(AI-generated | score)`` from the head's calibration (fitted on
  validation rows, see ``heads.calibration``); empty for heads saved without one.
- ``verdict``: ``ai`` / ``real`` when every view's decision agrees, ``unsure`` when
  the views disagree at the threshold (a re-save or a resize flips the decision, so
  neither answer should be given with confidence).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import (
    CalibrationWarning,
    DataError,
    HeadError,
    TestOnlyBackboneWarning,
)
from facebank.core.runs import write_json
from facebank.core.types import Device
from facebank.embed import FeatureBank
from facebank.embed.bank.types import BankLike
from facebank.embed.inputs.datasets import ImageInputs, encode_path, list_images
from facebank.embed.inputs.views import parse_view
from facebank.embed.runner.multi import banks_for_spec, encode_images_for

from .base import BaseHead
from .calibration import (
    CALIBRATION_FPRS,
    ScoreCalibration,
    precision_at_prevalence,
    probability_at_prevalence,
)
from .persistence import check_backbone, load_head

__all__ = [
    "ScoreResult",
    "score_run",
    "collect_inputs",
    "verdicts",
    "ScoreInputs",
    "warn_if_test_only",
    "CalibrationMeasure",
    "measure_calibration",
]

VERDICTS = ("ai", "real", "unsure")
#: Images embedded per call when a progress bar is shown (one backbone build per block).
_BLOCK = 256


#: What :func:`collect_inputs` found (the input layer's :class:`ImageInputs`).
ScoreInputs = ImageInputs

#: How a run's calibrated probabilities are measured on labelled rows:
#: ``measure(labels (n,) 0/1 with both classes, probabilities (n,), prior)`` -> the
#: measures as a JSON-able dict (``prior``: the AI share the probabilities are calibrated
#: at). The command layer gives ``analysis.calibration_metrics``, which heads may not import.
CalibrationMeasure = Callable[[np.ndarray, np.ndarray, float], dict[str, Any]]


@dataclass
class ScoreResult:
    """What ``score_run`` scored and wrote (one CSV row per scored image).

    Attributes:
        out: the CSV written (``"-"`` = stdout).
        paths: scored images, in CSV order, named as the input layer writes names
            (``embed.inputs.datasets.encode_path``: one printable line, the exact bytes
            recoverable with ``decode_path``; a bank row keeps its stored path).
        scores: (n,) raw scores (first view).
        decisions: (n,) 1 = flagged as AI-generated at ``threshold``.
        probabilities: (n,) calibrated P(AI), ``None`` when the head has no calibration.
        verdicts: (n,) ``ai`` / ``real`` / ``unsure``.
        views: the views scored (``["original"]`` without ``views``).
        view_scores: (n, n_views) raw score per view.
        threshold: the head's threshold (chosen on validation reals).
        operating_points: the head's thresholds at 0.1/0.5/1% FPR (validation reals),
            each with its validation TPR and, with ``prevalence``, the precision.
        prevalence: the base rate asked for, or ``None``.
        failures: ``(path, reason)`` of inputs that could not be scored (names encoded
            as in ``paths``).
        ignored: ``(path, reason)`` of non-image files under input folders.
        warnings: calibration caveats, one line each.
        labels: (n,) the rows' labels where known (a bank's label column), -1 for images
            (used for no score; the command layer measures calibration on them).
        probability_prior: the AI share ``probabilities`` are calibrated at (the head's
            validation split), or ``None``.
        calibration: calibration measures on the labelled rows (``score_run``'s
            ``measure``, see :func:`measure_calibration`), or ``None``.
    """

    out: str
    paths: list[str]
    scores: np.ndarray
    decisions: np.ndarray
    probabilities: np.ndarray | None
    verdicts: np.ndarray
    views: list[str]
    view_scores: np.ndarray
    threshold: float
    operating_points: list[dict[str, Any]]
    prevalence: float | None
    failures: list[tuple[str, str]]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    probability_prior: float | None = None
    calibration: dict[str, Any] | None = None

    @property
    def n_scored(self) -> int:
        return len(self.paths)

    @property
    def n_flagged(self) -> int:
        return int(self.decisions.sum())

    def verdict_counts(self) -> dict[str, int]:
        return {v: int((self.verdicts == v).sum()) for v in VERDICTS}

    def summary(self) -> dict[str, Any]:
        """What is not per image (written beside the CSV as ``NAME.summary.json``)."""
        return {
            "csv": self.out,
            "n_scored": self.n_scored,
            "n_failed": len(self.failures),
            "verdicts": self.verdict_counts(),
            "views": self.views,
            "threshold": self.threshold,
            "threshold_source": "the head's, chosen on validation reals",
            "operating_points": self.operating_points,
            "prevalence": self.prevalence,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "n_ignored": len(self.ignored),
            "warnings": self.warnings,
            "calibration": self.calibration,
        }


def collect_inputs(
    inputs: Sequence[str | os.PathLike], *, storage_options: Mapping[str, Any] | None = None
) -> ImageInputs:
    """Sort inputs into banks and image files (folders walked, manifests read, URLs
    listed on their store): the input layer's :func:`~embed.inputs.datasets.list_images`.

    Raises:
        SourceError: an input that does not exist, or no input at all.
    """
    return list_images(inputs, storage_options=storage_options)


def warn_if_test_only(head: BaseHead, *, stacklevel: int = 2) -> bool:
    """Warn (:class:`TestOnlyBackboneWarning`) when ``head`` rests on a test-only backbone.

    ``embed`` warns when it builds a ``tiny-*`` backbone (seeded random weights); a head
    trained on such a bank inherits the flag in its stored spec, and ``score`` and
    ``explain`` say so the same way. Returns True when it warned.
    """
    spec = getattr(head, "backbone_", None) or {}
    if not spec.get("test_only"):
        return False
    warnings.warn(
        f"the head rests on backbone {spec.get('name', '?')!r}, which has seeded random "
        "weights: for tests and smoke runs only, its scores mean nothing",
        TestOnlyBackboneWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def measure_calibration(
    measure: CalibrationMeasure | None,
    labels: np.ndarray | None,
    probabilities: np.ndarray | None,
    *,
    prior: float | None,
) -> dict[str, Any] | None:
    """``measure`` on the scored rows whose label is known (a bank's label column).

    The one rule of both scoring paths (``score_run`` and the Ray engine's partitioned
    output): the head has a calibrated probability and the labelled rows hold both
    classes; otherwise there is nothing to measure and this returns ``None``.

    Args:
        measure: the command layer's measure (:data:`CalibrationMeasure`); ``None``: none.
        labels: (n,) labels, -1 where unknown (scored images).
        probabilities: (n,) the head's calibrated probabilities, or ``None``.
        prior: the AI share the probabilities are calibrated at (the head's validation split).
    """
    if measure is None or labels is None or probabilities is None or prior is None:
        return None
    y = np.asarray(labels, dtype=np.int64)
    known = y >= 0
    if not ((y[known] == 0).any() and (y[known] == 1).any()):
        return None
    return measure(y[known], np.asarray(probabilities, dtype=np.float64)[known], float(prior))


def verdicts(view_decisions: np.ndarray) -> np.ndarray:
    """Per-image verdict from the decisions under each view.

    Args:
        view_decisions: (n_images, n_views) 0/1 decisions at the head's threshold.

    Returns:
        (n_images,) ``"ai"`` where every view says 1, ``"real"`` where every view says
        0, ``"unsure"`` where the views disagree.
    """
    d = np.asarray(view_decisions, dtype=bool)
    if d.ndim != 2:
        raise DataError(f"view decisions have shape {d.shape}; expected (n_images, n_views)")
    out = np.full(d.shape[0], "unsure", dtype=object)
    out[d.all(axis=1)] = "ai"
    out[~d.any(axis=1)] = "real"
    return out.astype(str)


def _parse_views(views: Sequence[str] | None) -> list[str]:
    names = [parse_view(v).name for v in (views or [])]
    if "original" not in names:
        names.insert(0, "original")
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _progress_bar(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def _embed_views(
    files: list[str],
    views: list[str],
    *,
    spec: dict,
    head: BaseHead,
    weights: Any,
    device: str,
    batch_size: int,
    progress: bool,
    encode: Callable[..., Any],
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Score every file under every view; a file failing under any view is a failure."""
    per_view: list[dict[str, float]] = []
    failed: dict[str, str] = {}
    block = _BLOCK if progress and len(files) > _BLOCK else max(len(files), 1)
    with _progress_bar(progress, len(files) * len(views)) as bar:
        for v in views:
            task = bar.add_task(f"scoring ({v})", total=len(files))
            got: dict[str, float] = {}
            for a in range(0, len(files), block):
                part = files[a : a + block]
                enc = encode(
                    part,
                    backbone=spec,
                    view=v,
                    device=device,
                    weights=weights,
                    batch_size=batch_size,
                )
                for f, reason in enc.failures:
                    failed.setdefault(str(f), reason if v == "original" else f"view {v}: {reason}")
                if len(enc.paths):
                    s = head.decision_function(enc.features)
                    got.update(zip(map(str, enc.paths), s.tolist(), strict=True))
                bar.advance(task, len(part))
            per_view.append(got)
    ok = [f for f in dict.fromkeys(files) if f not in failed and all(f in g for g in per_view)]
    S = np.array([[g[f] for g in per_view] for f in ok], dtype=np.float64).reshape(
        len(ok), len(views)
    )
    failures = [(f, failed.get(f, "not embedded")) for f in dict.fromkeys(files) if f not in ok]
    return ok, S, failures


def score_run(
    head_dir: str | Path | BaseHead,
    *,
    inputs: Sequence[str | os.PathLike] | None = None,
    bank: BankLike | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    out: str | Path = "-",
    views: Sequence[str] | None = None,
    prevalence: float | None = None,
    weights: str | Path | None = None,
    device: Device = "auto",
    batch_size: int = 32,
    progress: bool = False,
    encode: Callable[..., Any] | None = None,
    measure: CalibrationMeasure | None = None,
) -> ScoreResult:
    """Score banks, images, folders or manifests with a saved head; write the CSV.

    Which split chose what: the threshold, the thresholds at 0.1/0.5/1% FPR and the
    probability calibration were all fixed on the head's **validation** rows when it
    was trained; nothing here is fitted on the scored rows.

    Args:
        head_dir: a run folder / head directory (or a fitted head).
        inputs: banks, image files, folders, CSV manifests (see the module docstring).
        bank, images: the older spelling: one bank, or image files.
        out: CSV path, or ``"-"`` for stdout.
        views: extra views (``"jpeg:q=75"``, ``"resize:256"``...) each image is also
            scored under; ``original`` is always first. Banks cannot be re-viewed.
        prevalence: base rate of AI images (e.g. 0.01) for ``probability_at_prevalence``
            and the precision of each operating point.
        weights, device, batch_size: for embedding images (as ``facebank embed``).
        progress: show a progress bar on stderr while embedding.
        encode: the embedding function (default ``embed.multi.encode_images_for``: every
            backbone a fusion head needs, each image decoded once); another
            engine with the same signature may be given.
        measure: measures the calibrated probability on the rows whose label is known
            (:func:`measure_calibration`), kept in ``calibration`` and the summary JSON;
            ``None``: not measured.

    Returns:
        ``ScoreResult``; failures are listed there, not in the CSV.
    """
    given: list[Any] = list(inputs or [])  # paths and open banks
    if bank is not None:
        given.append(bank)
    given.extend(images or [])
    if not given:
        raise DataError(
            "give either a bank or image files to score (banks, images, folders or manifests)"
        )
    head = head_dir if isinstance(head_dir, BaseHead) else load_head(head_dir)
    warn_if_test_only(head, stacklevel=2)
    view_names = _parse_views(views)
    if prevalence is not None and not 0.0 < float(prevalence) < 1.0:
        raise DataError(
            f"--prevalence must be in (0, 1), got {prevalence!r}; e.g. 0.01 if 1% of images are AI"
        )
    bank_objs = [b for b in given if isinstance(b, FeatureBank)]
    rest = [b for b in given if not isinstance(b, FeatureBank)]
    found = collect_inputs(rest) if rest else ScoreInputs()
    bank_objs += [FeatureBank.open(p) for p in found.banks]
    if bank_objs and len(view_names) > 1:
        raise DataError(
            f"--views re-embeds images, but {len(bank_objs)} input(s) are feature banks holding "
            "one view each; score image files or folders with --views, or drop --views"
        )

    # a fusion / joined-features head takes banks of its backbones joined by sha256; a
    # head of some blocks takes a --layer blocks bank through that range
    bank_objs = banks_for_spec(
        getattr(head, "backbone_", None),
        bank_objs,
        what=f"head {getattr(head, 'path_', None) or head.name}",
    )
    paths, blocks, bank_labels = _score_banks(head, bank_objs)
    ok, S_images, failures = _score_images(
        head,
        found.images,
        view_names,
        weights=weights,
        device=device,
        batch_size=batch_size,
        progress=progress,
        encode=encode or encode_images_for,
    )
    paths, blocks = paths + ok, [*blocks, S_images]
    S = np.concatenate(blocks) if blocks else np.zeros((0, len(view_names)))
    t = float(head.threshold_)
    view_dec = (S > t).astype(np.int64)
    verdict = verdicts(view_dec)
    scores, decisions = S[:, 0], view_dec[:, 0]

    notes: list[str] = []
    cal = _calibration(head, notes)
    proba, p_prev = _probabilities(cal, scores, prevalence)
    points = _operating_points(cal, prevalence)
    _write_csv(out, paths, S, view_dec, view_names, proba, verdict, p_prev)
    res = ScoreResult(
        out=str(out),
        paths=paths,
        scores=scores,
        decisions=decisions,
        probabilities=proba,
        verdicts=verdict,
        views=view_names,
        view_scores=S,
        threshold=t,
        operating_points=points,
        prevalence=None if prevalence is None else float(prevalence),
        failures=failures,
        ignored=found.ignored,
        warnings=notes,
        labels=np.concatenate([*bank_labels, np.full(len(ok), -1, dtype=np.int64)]),
        probability_prior=None if cal is None else float(cal.val_prevalence),
    )
    res.calibration = measure_calibration(measure, res.labels, proba, prior=res.probability_prior)
    if str(out) != "-":
        write_json(summary_path(out), res.summary())
    return res


def _score_banks(
    head: BaseHead, banks: list[Any]
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Stored paths, ``(n, 1)`` score blocks and labels of the banks' rows, bank after bank."""
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for b in banks:
        check_backbone(head, b.backbone, what=f"bank {str(getattr(b, 'path', b))!r}")
        paths.extend(str(p) for p in np.asarray(b.paths, dtype=str))
        labels.append(np.asarray(b.labels, dtype=np.int64))
        for _, _, X in b.iter_features() if len(b) else []:
            blocks.append(head.decision_function(X).reshape(-1, 1))
    return paths, blocks, labels


def _score_images(
    head: BaseHead, files: list[str], views: list[str], **embed_kw: Any
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Embed and score image files under every view; names as the input layer writes
    them (``encode_path``: a bank row's stored path already is)."""
    if not files:
        return [], np.zeros((0, len(views))), []
    spec = getattr(head, "backbone_", None)
    if not spec:
        raise HeadError(
            "this head was saved without a backbone spec, so images cannot be embedded for it; "
            "score a feature bank instead, or re-train with `facebank train` on a bank"
        )
    ok, S, failures = _embed_views(files, views, spec=spec, head=head, **embed_kw)
    return [encode_path(f) for f in ok], S, [(encode_path(f), r) for f, r in failures]


def summary_path(out: str | Path) -> Path:
    """``scores.csv`` -> ``scores.summary.json``: the non-per-image figures of a score run."""
    p = Path(out)
    return p.with_name(p.stem + ".summary.json")


def _calibration(head: BaseHead, notes: list[str]) -> ScoreCalibration | None:
    doc = getattr(head, "score_calibration_", None)
    if not doc:
        notes.append(
            "the head stores no calibration (trained before calibration was kept, or its val "
            "split lacked a class): the CSV's probability column is empty - re-train to get one"
        )
        warnings.warn(notes[-1], CalibrationWarning, stacklevel=3)
        return None
    cal = ScoreCalibration.from_dict(doc)
    if cal.few_rows:
        notes.append(
            f"the head's calibration was fitted on only {cal.n_rows} validation rows: its "
            "probabilities are unreliable - re-train with more validation rows"
        )
        warnings.warn(notes[-1], CalibrationWarning, stacklevel=3)
    return cal


def _probabilities(
    cal: ScoreCalibration | None, scores: np.ndarray, prevalence: float | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(n,) calibrated probabilities and, with ``prevalence``, the same at that base rate."""
    if cal is None:
        return None, None
    proba = cal.probability(scores)
    if prevalence is None:
        return proba, None
    return proba, probability_at_prevalence(
        proba, val_prevalence=cal.val_prevalence, prevalence=float(prevalence)
    )


def _operating_points(cal: ScoreCalibration | None, prevalence: float | None) -> list[dict]:
    if cal is None:
        return []
    out = []
    for fpr in CALIBRATION_FPRS:
        pt: dict[str, Any] = dict(cal.threshold(fpr))
        pt["n_real"] = cal.n_real  # the val reals the threshold was chosen on
        if prevalence is not None:
            # the target FPR, not the realised val FPR: with a few hundred val reals the
            # realised rate is often 0, which would promise a precision of 1
            pt["prevalence"] = float(prevalence)
            pt["precision_at_prevalence"] = precision_at_prevalence(
                pt["tpr_val"], fpr, prevalence=float(prevalence)
            )
            pt["precision_fpr"] = "target"  # what the precision rests on (see above)
        out.append(pt)
    return out


def _write_csv(
    out: str | Path,
    paths: list[str],
    S: np.ndarray,
    view_dec: np.ndarray,
    views: list[str],
    proba: np.ndarray | None,
    verdict: np.ndarray,
    p_prev: np.ndarray | None,
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path", "score", "decision", "probability", "verdict"]
    if p_prev is not None:
        header.append("probability_at_prevalence")
    extra = views if len(views) > 1 else []
    for v in extra:
        header += [f"score[{v}]", f"decision[{v}]"]
    w.writerow(header)
    for i, p in enumerate(paths):
        row = [p, repr(float(S[i, 0])), int(view_dec[i, 0])]
        row.append("" if proba is None else f"{proba[i]:.6g}")
        row.append(verdict[i])
        if p_prev is not None:
            row.append(f"{p_prev[i]:.6g}")
        for j in range(len(extra)):
            row += [repr(float(S[i, j])), int(view_dec[i, j])]
        w.writerow(row)
    if str(out) == "-":
        sys.stdout.write(buf.getvalue())
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        try:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves neither file behind
