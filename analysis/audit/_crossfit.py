"""The cross-fitted audit: every labelled row scored by models that never saw it.

``K`` stratified, group-aware folds (``heads.propensity.group_folds``: a group - an
identity, a source folder - is never on both sides of a fold). For each fold the
metadata-only model and every head are fitted on the other ``K - 1`` folds and score the
held fold, so each row gets an out-of-fold metadata probability and an out-of-fold score
per head. "Where the files cannot tell" then uses every row in the band, not only the
test split's; and each head is also trained **balanced** (``heads.training.balance_rows``:
rows drawn by their overlap weights from a metadata probability cross-fitted inside the
training folds) so that plain and balanced training are compared on the same rows.

Which split chose what: nothing is tuned; each fold's models see only the other folds,
the band and the strata are fixed in advance. No threshold is set, so only
threshold-free figures (AUC, balanced AUCs) are reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sklearn.base import clone

from facebank.heads.propensity import (
    MetadataCodes,
    group_folds,
    out_of_fold_proba,
)
from facebank.heads.training import balance_rows

from ..balanced import balanced_auc
from ..metrics import binary_metrics
from ._rule import MIN_ROWS_PER_CLASS, N_BOOT, both


def _auc_block(y, s, e, band, seed) -> dict[str, Any]:
    """AUC (+ interval), AUC in the band (+ interval, counts), balanced AUCs, of ``s``."""
    out: dict[str, Any] = {"auc": None, "auc_ci": None}
    if both(y):
        bm = binary_metrics(y, s, n_boot=N_BOOT, seed=seed)
        out.update(auc=float(bm.auc), auc_ci=list(bm.ci.get("auc", (None, None))))
    inside = (e >= band[0]) & (e <= band[1])
    nr, nf = int((y[inside] == 0).sum()), int((y[inside] == 1).sum())
    out.update(uncertain_n_real=nr, uncertain_n_fake=nf, uncertain_auc=None, uncertain_auc_ci=None)
    if min(nr, nf) >= MIN_ROWS_PER_CLASS:
        bm = binary_metrics(y[inside], s[inside], n_boot=N_BOOT, seed=seed)
        out.update(uncertain_auc=float(bm.auc), uncertain_auc_ci=list(bm.ci["auc"]))
        out["uncertain_note"] = ""
    else:
        out["uncertain_note"] = (
            f"{nr} real and {nf} AI rows are uncertain: fewer than {MIN_ROWS_PER_CLASS} of a "
            "class, no AUC"
        )
    if both(y):
        ba = balanced_auc(y, s, e, seed=seed)
        out.update(
            stratified_auc=ba.stratified_auc,
            stratified_auc_ci=ba.stratified_ci,
            overlap_auc=ba.overlap_auc,
            overlap_auc_ci=ba.overlap_ci,
            balanced_note=ba.note(),
        )
    return out


def one_openmp_thread() -> Any:
    """The metadata model's boosted trees in one OpenMP thread (two threads spin-waiting
    on a loaded 2-core machine were 20x slower); the heads' fits keep every thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def cross_fit(
    enc: MetadataCodes,
    y: np.ndarray,
    *,
    k: int,
    groups: np.ndarray | None,
    heads: Mapping[str, Any],
    load_features: Callable[[np.ndarray], np.ndarray],
    engines: np.ndarray,
    band: tuple[float, float],
    balance: bool,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """The cross-fitted audit (module docstring).

    Args:
        enc: the bank's encoded metadata.
        y: ``(n_rows,)`` labels (-1 rows are left out).
        k: folds.
        groups: ``(n_rows,)`` group per row (``""`` = none), or None.
        heads: ``{name: unfitted head}`` (cloned per fold).
        load_features: rows -> ``(len(rows), D)`` features.
        engines: ``(n_rows,)`` engine names (passed to ``fit``).
        band: the "files cannot tell" band of the metadata probability.
        balance: also train each head balanced (twice the fits).
        seed: seeds the folds, the heads' resampling and the bootstraps.

    Returns:
        ``(block, propensity)``: the ``crossfit`` block of the audit (``k``, ``fold_rows``,
        ``metadata``, ``uncertain``, ``heads`` with ``plain`` and ``balanced``, ``notes``)
        and the ``(n_rows,)`` out-of-fold metadata probability (NaN: unlabelled).
    """
    rows = np.flatnonzero(y >= 0)
    notes: list[str] = []
    folds = group_folds(y, rows, k=k, seed=seed, groups=groups)
    if len(folds) < k:
        counts = np.bincount(y[rows], minlength=2).tolist()
        notes.append(
            f"{k} folds asked, {len(folds)} possible (class counts {counts}"
            + (", groups kept whole" if groups is not None else "")
            + ")"
        )
    if not folds:
        return {"k": 0, "notes": notes, "heads": {}}, np.full(y.size, np.nan)
    for i, (_, held) in enumerate(folds):
        if min((y[held] == 0).sum(), (y[held] == 1).sum()) < 2:
            notes.append(f"fold {i}: fewer than 2 rows of a class among its {held.size} rows")
    with one_openmp_thread():
        e = out_of_fold_proba(enc, y, folds, seed)
    ye, ee = y[rows], e[rows]
    block: dict[str, Any] = {
        "k": len(folds),
        "fold_rows": [int(h.size) for _, h in folds],
        "grouped": groups is not None and bool((np.asarray(groups) != "").any()),
        "metadata": _auc_block(ye, ee, ee, band, seed),
        "heads": {},
        "notes": notes,
    }
    inside = (ee >= band[0]) & (ee <= band[1])
    block["uncertain"] = {
        "band": list(band),
        "n": int(inside.sum()),
        "n_real": int((ye[inside] == 0).sum()),
        "n_fake": int((ye[inside] == 1).sum()),
        "n_rows": int(rows.size),
    }
    X = load_features(rows) if heads else np.zeros((0, 0))
    pos = np.full(y.size, -1)
    pos[rows] = np.arange(rows.size)
    for name, est in heads.items():
        block["heads"][name] = {}
        for variant in ("plain", "balanced") if balance else ("plain",):
            s = np.full(y.size, np.nan)
            for fit, held in folds:
                use = fit
                if variant == "balanced":
                    with one_openmp_thread():
                        use, info = balance_rows(enc, y, fit, groups=groups, k=k, seed=seed)
                    for note in info.get("notes", []):
                        notes.append(f"{name} balanced: {note}")
                model = clone(est)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # per-fold fit chatter: the audit notes
                    model.fit(X[pos[use]], y[use], engines=engines[use])
                s[held] = model.decision_function(X[pos[held]])
            block["heads"][name][variant] = _auc_block(ye, s[rows], ee, band, seed)
    return block, e
