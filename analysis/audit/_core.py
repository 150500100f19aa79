"""``audit``: the metadata baseline, the heads on the same rows, the verdict."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facebank.core.errors import DataError, HeadError
from facebank.core.splits import resolve_groups
from facebank.embed.bank.types import BanksLike
from facebank.embed.inputs.metadata import METADATA_SCHEMA
from facebank.heads.propensity import (
    PROPERTIES,
    bank_metadata,
    encode_metadata,
    fit_metadata_model,
    group_folds,
    out_of_fold_proba,
)
from facebank.heads.training import resolve_splits

from .._evalcommon import (
    check_head_backbone,
    load_run_head,
    open_banks,
    read_splits_csv,
    require_one_backbone,
    score_rows,
)
from ..balanced import balanced_auc
from ..metrics import binary_metrics, threshold_at_fpr
from ._crossfit import cross_fit, one_openmp_thread
from ._properties import distributions, properties_alone, straddling_groups
from ._result import AuditResult
from ._rule import (
    AUTO_CV_BELOW,
    BAND,
    CV_FOLDS,
    CV_FOLDS_LARGE_FROM,
    MIN_ROWS_PER_CLASS,
    N_BOOT,
    PARTLY_LO,
    audit_verdict,
    both,
    fmt,
    fmt_ci,
)


def _run_head_dirs(run: Path) -> list[tuple[str, Path]]:
    """``[(name, head run folder)]``: the run itself, or each ``train/<head>`` of an experiment
    (the heads its ``config.json`` lists, not the helper heads of its OOD step)."""
    if (run / "head.json").is_file():
        doc = json.loads((run / "head.json").read_text())
        return [(str(doc.get("name", run.name)), run)]
    train = run / "train"
    found = (
        sorted(d for d in train.iterdir() if (d / "head.json").is_file()) if train.is_dir() else []
    )
    try:
        listed = json.loads((run / "config.json").read_text()).get("heads")
    except (OSError, ValueError, AttributeError):
        listed = None
    if isinstance(listed, list):
        found = [d for d in found if d.name in listed]
    if not found:
        raise HeadError(
            f"--run {str(run)!r} holds no head: give a `facebank train` run folder (head.json, "
            "splits.csv) or a `facebank experiment` folder (train/<head>/head.json)"
        )
    return [(d.name, d) for d in found]


def _balanced_block(y, s, e, rows, seed) -> dict[str, Any]:
    """Balanced AUCs of ``s`` on ``rows`` with a finite propensity (analysis.balanced)."""
    rows = rows & np.isfinite(e)
    if not both(y[rows]):
        return {"stratified_auc": None, "overlap_auc": None, "balanced_note": "no rows"}
    ba = balanced_auc(y[rows], s[rows], e[rows], seed=seed)
    return {
        "stratified_auc": ba.stratified_auc,
        "stratified_auc_ci": ba.stratified_ci,
        "overlap_auc": ba.overlap_auc,
        "overlap_auc_ci": ba.overlap_ci,
        "balanced_note": ba.note(),
    }


def _head_metrics(scores, threshold, y, test, propensity, band, seed) -> dict[str, Any]:
    out: dict[str, Any] = {"auc": None, "auc_ci": None, "tpr": None, "fpr": None}
    out["threshold"] = float(threshold)
    if both(y[test]):
        bm = binary_metrics(y[test], scores[test], threshold=threshold, n_boot=N_BOOT, seed=seed)
        out.update(
            auc=bm.auc, auc_ci=list(bm.ci.get("auc", (None, None))), tpr=bm.recall, fpr=bm.fpr
        )
    rows = test & (propensity >= band[0]) & (propensity <= band[1])
    nr, nf = int((y[rows] == 0).sum()), int((y[rows] == 1).sum())
    out.update(uncertain_n_real=nr, uncertain_n_fake=nf, uncertain_auc=None, uncertain_auc_ci=None)
    if min(nr, nf) >= MIN_ROWS_PER_CLASS:
        bm = binary_metrics(y[rows], scores[rows], n_boot=N_BOOT, seed=seed)
        out.update(uncertain_auc=bm.auc, uncertain_auc_ci=list(bm.ci.get("auc", (None, None))))
        out["uncertain_note"] = ""
    else:
        out["uncertain_note"] = (
            f"{nr} real and {nf} AI test rows are uncertain: fewer than {MIN_ROWS_PER_CLASS} "
            "of a class, no AUC"
        )
    out.update(_balanced_block(y, scores, propensity, test, seed))
    return out


def _splits(bank, head_dirs, labelled, sha, *, seed, group_by, notes):
    """``(splits (n,), source)``: the first head run's splits.csv, else training's rule."""
    if head_dirs:
        split_of = read_splits_csv(head_dirs[0][1] / "splits.csv")
        splits = np.array([split_of.get(s, "") for s in sha.tolist()], dtype="<U5")
        unseen = int((labelled & (splits == "")).sum())
        if unseen:
            notes.append(f"{unseen} labelled rows are not in the run's splits.csv: left out")
        return splits, f"{head_dirs[0][1] / 'splits.csv'}"
    splits, source = resolve_splits(bank, seed=seed, group_by=group_by)
    return np.asarray(splits, dtype=str), source


def _baseline(enc, y, train, val, test, *, fpr, seed, notes) -> dict[str, Any]:
    """The metadata-only model fitted on train, threshold on val reals, scored on test."""
    model: dict[str, Any] = {"features": enc.names, "fit_rows": 0, "fpr_target": fpr}
    if not enc.names or not both(y[train]) or not (y[val] == 0).any():
        why = (
            "no metadata property varies"
            if not enc.names
            else "train rows lack a class or validation has no reals"
        )
        notes.append(f"metadata-only baseline not fitted: {why}")
        model.update(auc=0.5 if not enc.names else None, auc_ci=None, tpr=None, fpr=None)
        return model
    fit_rows = np.flatnonzero(train)
    val_real = np.flatnonzero(val & (y == 0))
    test_rows = np.flatnonzero(test)
    p_vec = fit_metadata_model(enc, y, fit_rows, seed, np.concatenate([val_real, test_rows]))
    thr = threshold_at_fpr(p_vec[enc.row_vector[val_real]], fpr)
    s_test = p_vec[enc.row_vector[test_rows]]
    bm = binary_metrics(y[test_rows], s_test, threshold=thr, n_boot=N_BOOT, seed=seed)
    model.update(
        auc=float(bm.auc),
        auc_ci=list(bm.ci.get("auc", (None, None))),
        tpr=bm.recall,
        fpr=bm.fpr,
        threshold=thr,
        n_real=bm.n_real,
        n_fake=bm.n_fake,
        fit_rows=int(fit_rows.size),
        distinct_vectors=int(enc.U.shape[0]),
    )
    return model


def _split_propensity(enc, y, labelled, groups, seed, notes) -> np.ndarray:
    """Out-of-fold metadata probability of every labelled row (group-aware folds)."""
    rows = np.flatnonzero(labelled)
    k = CV_FOLDS if rows.size < CV_FOLDS_LARGE_FROM else 3
    folds = group_folds(y, rows, k=k, seed=seed, groups=groups)
    if not folds:
        counts = np.bincount(y[rows], minlength=2).tolist()
        notes.append(f"cross-validated metadata probabilities: class counts {counts}")
        return np.full(y.size, np.nan)
    return out_of_fold_proba(enc, y, folds, seed)


def _uncertain(y, test, propensity, band, notes) -> dict[str, Any]:
    ut = test & (propensity >= band[0]) & (propensity <= band[1])
    nr, nf = int((y[ut] == 0).sum()), int((y[ut] == 1).sum())
    enough = min(nr, nf) >= MIN_ROWS_PER_CLASS
    unc = {
        "band": list(band),
        "n": int(ut.sum()),
        "n_real": nr,
        "n_fake": nf,
        "n_test": int(test.sum()),
        "enough": enough,
        "note": ""
        if enough
        else f"only {nr} real and {nf} AI test rows are inside the band: too few for an AUC "
        f"(needs {MIN_ROWS_PER_CLASS} of each)",
    }
    if not enough:
        notes.append(unc["note"])
    return unc


def _face_notes(bank, y, labelled, notes) -> np.ndarray | None:
    face_found = getattr(bank, "face_found", None)
    if face_found is None:
        return None
    face_found = np.asarray(face_found, dtype=np.int8)
    if not (face_found >= 0).any():
        return None  # not a face view
    if (face_found[labelled] == 0).any():
        missed = face_found[labelled] == 0
        by_class = ", ".join(
            f"{int((missed & (y[labelled] == c)).sum())} {name}"
            for c, name in ((0, "real"), (1, "AI"))
        )
        notes.append(
            f"{int(missed.sum())} of {int((face_found[labelled] >= 0).sum())} rows: no face "
            f"found by the face view ({by_class}), kept uncropped; a class difference in "
            "this share is itself a shortcut (see 'face found' per class and engine)"
        )
    return face_found


def _read_metadata(bank, metadata, n) -> dict[str, np.ndarray]:
    if metadata is None:
        metadata = bank_metadata(bank)
    meta = {k: np.asarray(metadata[k]) for k in METADATA_SCHEMA if k in metadata}
    missing = [k for k in PROPERTIES if k not in meta or meta[k].shape != (n,)]
    if missing:
        raise DataError(
            f"metadata lacks columns (or rows) {missing}; give one (n_rows,) array per key"
        )
    return meta


def audit(
    banks: BanksLike,
    *,
    run: str | Path | None = None,
    head_runs: Mapping[str, str | Path] | None = None,
    scores: Mapping[str, tuple[np.ndarray, float]] | None = None,
    metadata: Mapping[str, np.ndarray] | None = None,
    groups: np.ndarray | None = None,
    group_by: str | None = None,
    band: tuple[float, float] = BAND,
    fpr: float = 0.005,
    seed: int = 0,
    cv: int | Literal["auto"] | None = None,
    cv_heads: Sequence[str] | Mapping[str, Any] = (),
    balance: bool = True,
) -> AuditResult:
    """Audit banks for metadata shortcuts, on the rows a run used (module docstring).

    Which split chose what: the metadata baseline is fitted on ``train`` rows and its
    threshold on ``val`` reals at ``fpr``; AUCs and TPRs are measured on ``test`` rows.
    Splits come from the run's ``splits.csv`` when ``run`` is given, else from the
    banks' split column, else from ``embed.assign_splits(seed)`` - the same rule training
    uses, so an audit without ``run`` sees the rows ``facebank train --seed`` would.
    With ``cv``, every labelled row is also scored out of fold (``_crossfit``; AUCs only).

    Args:
        banks: feature banks (or paths) carrying acquisition metadata (format 2).
        run: a ``facebank train`` run folder or a ``facebank experiment`` folder; its
            heads are scored on the test rows next to the baseline.
        head_runs: more heads as ``{name: train run folder}`` (the first folder's
            ``splits.csv`` sets the splits when ``run`` is not given).
        scores: extra heads as ``{name: ((n_rows,) scores, threshold)}`` (higher = AI).
        metadata: ``{column: (n_rows,) array}`` instead of the banks' own columns.
        groups: ``(n_rows,)`` group per row; groups straddling splits are listed, and
            cross-fitting folds keep them whole.
        group_by: used when ``groups`` is not given (``core.splits.resolve_groups``: the
            bank's ``group`` column by default, ``"level:K"``, a column, ``"none"``); the
            seeded split (without ``run``) is grouped the same way, as training's is.
        band: the cross-validated metadata probability band of "files cannot tell".
        fpr: false-positive rate at which thresholds are set on validation reals.
        seed: seeds the folds, subsamples, bootstraps and (without ``run``) the split.
        cv: ``K`` folds for the cross-fitted audit; ``"auto"``: 5 folds when the test split
            has fewer than ``AUTO_CV_BELOW`` rows in the band; None: no cross-fitting.
        cv_heads: heads refitted per fold besides the runs' heads (cloned with their
            parameters): registry names or ``{name: unfitted head}``.
        balance: with ``cv``, also train every head balanced (``train --balance metadata``).

    Returns:
        An :class:`AuditResult`.

    Raises:
        BankError: a bank without metadata columns (names the backfill command).
        DataError: no labelled test rows of both classes, or a bad ``band`` or ``cv``.
        HeadError: ``run`` without a head.
    """
    bank, (lo_b, hi_b) = _checked(banks, band, cv)
    meta = _read_metadata(bank, metadata, len(bank))
    y = np.asarray(bank.labels).astype(np.int64)
    engines = np.asarray(bank.engines, dtype=str)
    labelled = y >= 0
    notes: list[str] = []
    head_dirs: list[tuple[str, Path]] = _run_head_dirs(Path(run)) if run is not None else []
    head_dirs += [(str(k), Path(v)) for k, v in (head_runs or {}).items()]
    splits, splits_source = _splits(
        bank, head_dirs, labelled, np.asarray(bank.sha256, dtype=str),
        seed=seed, group_by=group_by, notes=notes,
    )  # fmt: skip
    train, val, test = (labelled & (splits == s) for s in ("train", "val", "test"))
    _require_test_classes(y, test, splits_source)
    groups = groups if groups is not None else resolve_groups(bank, group_by)[0]
    enc = encode_metadata(meta, labelled, train)
    _unread_note(meta, enc, labelled, notes)
    with one_openmp_thread():
        model = _baseline(enc, y, train, val, test, fpr=fpr, seed=seed, notes=notes)
        propensity = _split_propensity(enc, y, labelled, groups, seed, notes)
        unc = _uncertain(y, test, propensity, (lo_b, hi_b), notes)
        if cv == "auto":
            cv = CV_FOLDS if unc["n"] < AUTO_CV_BELOW else None
    crossfit = None
    if cv is not None:  # (the metadata fits inside keep one OpenMP thread; the heads all)
        crossfit, propensity = cross_fit(
            enc, y, k=int(cv), groups=groups,
            heads=_refit_heads(head_dirs, cv_heads, bank, seed),
            load_features=bank.load_features, engines=engines,
            band=(lo_b, hi_b), balance=balance, seed=seed,
        )  # fmt: skip
        unc = _uncertain(y, test, propensity, (lo_b, hi_b), [])
    if model.get("auc") is not None:
        p_model = _baseline_scores(enc, y, train, seed)
        model.update(_balanced_block(y, p_model, propensity, test, seed))
    heads = _score_heads(head_dirs, scores, bank, y, test, propensity, (lo_b, hi_b), seed)
    properties = properties_alone(enc, y, train, test, seed)
    verdict, carriers = audit_verdict(model.get("auc"), model.get("auc_ci"), properties)
    for p in properties:
        p["carrier"] = p["name"] in carriers
    straddling = _straddling(groups, splits, notes)
    face_found = _face_notes(bank, y, labelled, notes)
    return AuditResult(
        verdict=verdict,
        reason=_reason(verdict, model, carriers, properties, heads, unc, crossfit),
        carriers=carriers,
        metadata_model=model,
        heads=heads,
        uncertain=unc,
        properties=properties,
        distributions=distributions(meta, y, engines, face_found),
        straddling_groups=straddling,
        splits={s: int((labelled & (splits == s)).sum()) for s in ("train", "val", "test")},
        splits_source=splits_source,
        fpr=fpr,
        propensity=propensity,
        test_mask=test,
        paths=np.asarray(bank.paths, dtype=str),
        labels=y,
        engines=engines,
        notes=notes,
        crossfit=crossfit,
    )


def _checked(banks, band, cv) -> tuple[Any, tuple[float, float]]:
    """The banks as one (one backbone), and the band, after checking ``band`` and ``cv``."""
    lo_b, hi_b = (float(b) for b in band)
    if not 0.0 <= lo_b < hi_b <= 1.0:
        raise DataError(f"band {band!r} is not valid; give (low, high) with 0 <= low < high <= 1")
    if cv is not None and cv != "auto" and (not isinstance(cv, int) or cv < 2):
        raise DataError(f"cv={cv!r} is not valid; give a number of folds >= 2, 'auto' or None")
    opened = open_banks(banks, what="banks to audit")
    require_one_backbone(opened)
    bank = opened[0] if len(opened) == 1 else type(opened[0]).concat(opened)
    return bank, (lo_b, hi_b)


def _require_test_classes(y, test, splits_source) -> None:
    if not both(y[test]):
        raise DataError(
            f"the audit needs test rows of both classes; test has {int((y[test] == 0).sum())} "
            f"real and {int((y[test] == 1).sum())} AI rows (splits from {splits_source})"
        )


def _straddling(groups, splits, notes) -> list[dict[str, Any]]:
    straddling = straddling_groups(groups, splits) if groups is not None else []
    if straddling:
        notes.append(
            f"{len(straddling)} groups have rows in more than one split: the same identity or "
            "source on both sides inflates every score"
        )
    return straddling


def _unread_note(meta, enc, labelled, notes) -> None:
    """Count the rows with unreadable properties (kept, each missing value its own)."""
    err = np.asarray(meta.get("meta_error", np.full(labelled.size, "")), dtype=str)
    if (err[labelled] != "").any():
        unread = {k: v for k, v in enc.n_missing.items() if v and METADATA_SCHEMA[k] != "str"}
        notes.append(
            f"{int((err[labelled] != '').sum())} rows have properties that could not be read "
            f"(kept; a missing value is its own value, never another's: {unread or 'strings'})"
        )


def _baseline_scores(enc, y, train, seed) -> np.ndarray:
    """The baseline's probability for every row (the train-fitted model)."""
    return fit_metadata_model(enc, y, np.flatnonzero(train), seed)[enc.row_vector]


def _refit_heads(head_dirs, cv_heads, bank, seed) -> dict[str, Any]:
    """``{name: unfitted head}``: the runs' heads (their parameters) and ``cv_heads``."""
    from facebank.heads import create_head, head_info

    out: dict[str, Any] = {}
    for name, d in head_dirs:
        rh = load_run_head(d)
        check_head_backbone(rh.head, bank)
        out[name] = rh.head
    if isinstance(cv_heads, Mapping):
        out.update(cv_heads)
    else:
        for name in cv_heads:
            takes_seed = "seed" in head_info(name).load()().get_params()
            out[name] = create_head(name, **({"seed": seed} if takes_seed else {}))
    return out


def _score_heads(head_dirs, scores, bank, y, test, propensity, band, seed):
    heads: dict[str, dict[str, Any]] = {}
    n = y.size
    for name, d in head_dirs:
        rh = load_run_head(d)
        check_head_backbone(rh.head, bank)
        s = np.full(n, np.nan)
        rows = np.flatnonzero(test)
        s[rows] = score_rows(rh.head, bank, rows)
        heads[name] = _head_metrics(s, rh.threshold, y, test, propensity, band, seed)
    for name, (s, thr) in (scores or {}).items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n,):
            raise DataError(f"scores of {name!r} have shape {s.shape}; give one per bank row ({n})")
        heads[name] = _head_metrics(s, float(thr), y, test, propensity, band, seed)
    return heads


def _reason(verdict, model, carriers, properties, heads, unc, crossfit=None) -> str:
    auc = model.get("auc")
    if auc is None:
        return "The metadata-only baseline could not be fitted (see notes)."
    alone = {p["name"]: p.get("auc_alone") for p in properties}
    text = (
        f"A classifier that sees only file properties (no pixels) reaches test AUC "
        f"{fmt_ci(auc, model.get('auc_ci'))}"
    )
    if verdict == "no metadata shortcut found":
        text += (
            f", not clearly above chance (rule: its 95% lower bound must exceed {PARTLY_LO} "
            "to count); no recorded property carries the label."
        )
    else:
        named = ", ".join(f"{c} (alone {fmt(alone.get(c))})" for c in carriers)
        text += f"; the label is carried by {named}."
    drops = [
        f"{h}: {fmt(m.get('auc'))} overall, {fmt(m.get('uncertain_auc'))} where files cannot tell"
        for h, m in heads.items()
        if m.get("uncertain_auc") is not None
    ]
    if drops:
        text += " Heads " + "; ".join(drops) + f" ({unc['n']} test rows)."
    elif heads and not crossfit:
        text += f" Heads cannot be checked where files cannot tell: {unc['note'] or 'no rows'}."
    if crossfit and crossfit.get("heads"):
        u = crossfit["uncertain"]
        cells = [
            f"{h} {fmt_ci(v['plain'].get('uncertain_auc'), v['plain'].get('uncertain_auc_ci'))}"
            for h, v in crossfit["heads"].items()
        ]
        text += (
            f" Cross-fitted over {crossfit['k']} folds, {u['n']} rows ({u['n_real']} real, "
            f"{u['n_fake']} AI) are where the files cannot tell; there the heads reach AUC "
            + "; ".join(cells)
            + "."
        )
    return text
