"""The metadata propensity model: how likely a row is AI-generated from its *file* alone.

One model serves the audit (``analysis.audit``: the metadata-only baseline, the
cross-fitted probability of every row) and balanced training (``train --balance
metadata``): a ``HistGradientBoostingClassifier`` on the bank's acquisition metadata
(``embed.metadata.METADATA_SCHEMA``), never a pixel.

Encoding. Numbers are binned at ``BINS`` train-row quantiles (exact values when they
have no more); strings and flags are category codes. **Missing is missing**: a property
that could not be read (``embed.metadata.missing_mask``: an unreadable file, or the
property named in ``meta_error``) gets code 0 of its own, never the code of a real
value, so a few unreadable files cannot move a verdict. Rows with the same code vector
get the same prediction from any model of these codes, so models are fitted on the
distinct vectors weighted by their class counts and predict each vector once.

Folds (``group_folds``) are stratified and group-aware: every row of a group (an
identity, a source folder) is in one fold; rows without a group are their own groups.

Overlap weights (Li, Morgan and Zaslavsky 2018): a real row weighs ``e``, an AI row
``1 - e``, where ``e`` is the row's cross-fitted metadata probability clipped to
``[CLIP, 1 - CLIP]``. Under these weights a calibrated metadata probability has the same
distribution in both classes, so the metadata-only classifier's weighted AUC is 0.5:
the weights remove what the files say about the label and keep the rows where both
classes occur.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from facebank.core.errors import BankError
from facebank.embed.inputs.metadata import METADATA_SCHEMA, missing_mask

__all__ = [
    "BINS",
    "bank_metadata",
    "bank_propensity",
    "CLIP",
    "PROPERTIES",
    "MetadataCodes",
    "encode_metadata",
    "fit_metadata_model",
    "group_folds",
    "out_of_fold_proba",
    "overlap_weights",
    "weighted_auc",
]

# 32 bins resolve the size and quality steps that matter while keeping a 1M-row bank to
# tens of thousands of distinct vectors.
BINS = 32
# Probabilities of exactly 0 or 1 would give a row weight 0 on one side: clipped, and the
# rows beyond the clip counted as "without overlap".
CLIP = 0.01
PROPERTIES = tuple(k for k in METADATA_SCHEMA if k != "meta_error")


@dataclasses.dataclass
class MetadataCodes:
    """Every property as small integer codes (0 = missing), and the rows' distinct vectors.

    Attributes:
        codes: property -> ``(n_rows,)`` int codes.
        distinct: property -> distinct values among labelled rows (missing counts as one).
        names: the model's columns (properties with more than one value).
        cats: per model column, whether it is a category (no order).
        U: ``(n_vectors, len(names))`` distinct code vectors.
        row_vector: ``(n_rows,)`` index into ``U`` of each row.
        n_missing: property -> rows whose value could not be read.
    """

    codes: dict[str, np.ndarray]
    distinct: dict[str, int]
    names: list[str]
    cats: list[bool]
    U: np.ndarray
    row_vector: np.ndarray
    n_missing: dict[str, int]


def _bin_codes(v: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    x = v.astype(np.float64)
    x = np.where(x < 0, np.nan, x)
    finite = x[fit_rows & np.isfinite(x)]
    uniq = np.unique(finite)
    if uniq.size > BINS:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]))
    else:
        edges = (uniq[:-1] + uniq[1:]) / 2 if uniq.size > 1 else np.zeros(0)
    codes = np.searchsorted(edges, np.nan_to_num(x, nan=-np.inf)) + 1
    return np.where(np.isfinite(x), codes, 0).astype(np.int64)


def _n_codes(codes: np.ndarray) -> int:
    """Distinct values among small non-negative integer codes (a count, not a sort)."""
    return int(np.count_nonzero(np.bincount(codes))) if codes.size else 0


def encode_metadata(
    meta: Mapping[str, np.ndarray], labelled: np.ndarray, fit_rows: np.ndarray
) -> MetadataCodes:
    """Encode the metadata columns (module docstring).

    Args:
        meta: one ``(n_rows,)`` array per ``METADATA_SCHEMA`` key (``meta_error`` optional).
        labelled: ``(n_rows,)`` bool, rows with a label (their values count as distinct).
        fit_rows: ``(n_rows,)`` bool, rows whose quantiles bin the numbers.
    """
    missing = missing_mask(meta)
    codes, distinct, n_missing = {}, {}, {}
    names, cats = [], []
    for prop in PROPERTIES:
        v = np.asarray(meta[prop])
        kind = METADATA_SCHEMA[prop]
        if kind in ("str", "bool"):
            _, c = np.unique(v, return_inverse=True)
            c = c.ravel().astype(np.int64) + 1
        else:
            c = _bin_codes(v, fit_rows)
        c = np.where(missing[prop], 0, c)
        codes[prop] = c
        n_missing[prop] = int(missing[prop].sum())
        distinct[prop] = _n_codes(c[labelled])
        if kind not in ("str", "bool"):  # the count of values, not of bins
            lab = np.where(missing[prop][labelled], -1.0, v[labelled].astype(np.float64))
            distinct[prop] = int(np.unique(np.where(np.isfinite(lab) & (lab >= 0), lab, -1)).size)
        if distinct[prop] > 1 and _n_codes(c[labelled]) > 1:
            names.append(prop)
            # the trees take at most 255 categories; more (never seen in practice) as codes
            cats.append(kind in ("str", "bool") and int(c.max()) < 250)
    if names:
        M = np.column_stack([codes[k] for k in names])
        radix = M.max(axis=0) + 1
        if float(np.prod(radix.astype(np.float64))) < 2.0**62:  # one int64 key per row
            key = np.zeros(M.shape[0], dtype=np.int64)
            for j in range(M.shape[1]):
                key = key * radix[j] + M[:, j]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(M, axis=0, return_index=True, return_inverse=True)
        U, row_vector = M[first], inverse.ravel()
    else:
        U, row_vector = np.zeros((1, 0), np.int64), np.zeros(labelled.size, np.int64)
    return MetadataCodes(codes, distinct, names, cats, U, row_vector, n_missing)


def _model(cats: list[bool], n_fit: int, seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        # a dozen columns need few trees (AUC within 0.002 of 200 trees on realfaces).
        # Calibration, which overlap weights rely on, depends on the size: on 30k synthetic
        # rows these 50 trees leave the probability shrunk towards the base rate (its own
        # overlap-weighted AUC 0.58), while 100 trees at rate 0.2 over-fit realfaces' 762
        # rows (0.39); early stopping stopped too early on 30k rows (0.56). Kept at 50: the
        # weighted AUC of the metadata model is reported with every result.
        max_iter=50,
        early_stopping=False,  # deterministic: no random validation carve-out
        # a few dozen vectors (tests, tiny engines) must still be able to split
        min_samples_leaf=int(max(1, min(20, n_fit // 20))),
        categorical_features=np.asarray(cats, dtype=bool) if any(cats) else None,
        random_state=seed,
    )


def fit_metadata_model(
    enc: MetadataCodes,
    y: np.ndarray,
    rows: np.ndarray,
    seed: int,
    predict: np.ndarray | None = None,
) -> np.ndarray:
    """Fit on ``rows`` (as weighted distinct vectors).

    Returns:
        ``(n_vectors,)`` AI probability of each distinct vector (NaN for vectors not among
        the ``predict`` rows' vectors, when given); index it with ``enc.row_vector``.
    """
    nu = enc.U.shape[0]
    w = np.bincount(enc.row_vector[rows] * 2 + y[rows], minlength=2 * nu).reshape(nu, 2)
    vec, cls = np.nonzero(w)
    if not enc.names or np.unique(cls).size < 2:  # nothing to learn: the base rate
        return np.full(nu, float(w[:, 1].sum() / max(w.sum(), 1)))
    model = _model(enc.cats, vec.size, seed)
    model.fit(enc.U[vec], cls, sample_weight=w[vec, cls].astype(np.float64))
    if predict is None:
        return model.predict_proba(enc.U)[:, 1]
    need = np.unique(enc.row_vector[predict])
    out = np.full(nu, np.nan)
    out[need] = model.predict_proba(enc.U[need])[:, 1]
    return out


def group_folds(
    y: np.ndarray, rows: np.ndarray, *, k: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(fit_rows, held_rows)]``: ``k`` stratified folds of ``rows``, groups kept whole.

    Args:
        y: ``(n_rows,)`` labels 0/1 (at ``rows``).
        rows: indices of the rows to fold.
        k: folds wanted; fewer when a class (or, with groups, the groups) has fewer.
        groups: ``(n_rows,)`` group per row, ``""`` = none (the row is its own group).

    Returns:
        Up to ``k`` pairs of index arrays (empty list when fewer than 2 folds are possible).
    """
    counts = np.bincount(y[rows], minlength=2)
    g = None
    if groups is not None:
        g = np.asarray(groups, dtype=str)[rows]
        if (g != "").any():
            g = np.where(g == "", np.char.add("\x00row", rows.astype(str)), g)
            k = min(k, np.unique(g).size)
        else:
            g = None
    k = int(min(k, counts.min()))
    if k < 2:
        return []
    if g is not None:
        split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            rows, y[rows], g
        )
    else:
        split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, y[rows])
    return [(rows[a], rows[b]) for a, b in split if b.size]


def out_of_fold_proba(
    enc: MetadataCodes,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
) -> np.ndarray:
    """``(n_rows,)`` metadata probability of each held row from the model of its fold
    (NaN for rows in no held part)."""
    p = np.full(y.size, np.nan)
    for fit, held in folds:
        p[held] = fit_metadata_model(enc, y, fit, seed, held)[enc.row_vector[held]]
    return p


def overlap_weights(
    y: np.ndarray, propensity: np.ndarray, *, clip: float = CLIP
) -> tuple[np.ndarray, int]:
    """``(weights, n_clipped)``: ``e`` for reals, ``1 - e`` for AI rows (module docstring).

    Args:
        y: ``(n,)`` labels 0/1.
        propensity: ``(n,)`` cross-fitted metadata probability (finite).
        clip: probabilities are clipped to ``[clip, 1 - clip]``.

    Returns:
        ``(n,)`` float64 weights and the number of rows whose probability was beyond the
        clip (rows without overlap: the files alone give their class).
    """
    e = np.asarray(propensity, dtype=np.float64)
    n_clipped = int(((e < clip) | (e > 1 - clip)).sum())
    e = np.clip(e, clip, 1 - clip)
    return np.where(np.asarray(y) == 1, 1.0 - e, e), n_clipped


def weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """AUC with row weights: ``sum w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_1 W_0)``
    over AI rows ``i`` and real rows ``j`` (NaN when a class has no weight).

    With unit weights this is the ordinary AUC (``sklearn.metrics.roc_auc_score``).
    """
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    s0, w0 = s[y == 0], w[y == 0]
    s1, w1 = s[y == 1], w[y == 1]
    W0, W1 = w0.sum(), w1.sum()
    if W0 <= 0 or W1 <= 0:
        return float("nan")
    order = np.argsort(s0, kind="stable")
    s0, cw = s0[order], np.concatenate([[0.0], np.cumsum(w0[order])])
    below = cw[np.searchsorted(s0, s1, side="left")]
    tie = cw[np.searchsorted(s0, s1, side="right")] - below
    return float((w1 * (below + 0.5 * tie)).sum() / (W0 * W1))


def bank_metadata(bank: Any) -> dict[str, np.ndarray]:
    """The bank's metadata columns, or a ``BankError`` naming ``facebank bank backfill``."""
    name = getattr(bank, "name", "bank")
    if not getattr(bank, "has_metadata", False):
        raise BankError(
            f"bank {name!r} holds no acquisition metadata (format 1); run `facebank bank "
            "backfill BANK --source DIR` to read it from the source files, then try again"
        )
    meta = bank.metadata()
    if not (np.asarray(meta["file_format"]).astype(str) != "").any():
        raise BankError(
            f"bank {name!r} has metadata columns but no row has a value (a bank written from "
            "arrays, or never backfilled); run `facebank bank backfill BANK --source DIR` to "
            "read them from the source files"
        )
    return meta


def bank_propensity(bank: Any, *, seed: int = 0, k: int = 5) -> np.ndarray | None:
    """``(n_rows,)`` cross-fitted metadata probability of every labelled row of ``bank``
    (``k`` group-aware folds; NaN for unlabelled rows), or None when the bank has no
    metadata or too few rows of a class to fold."""
    from facebank.core.splits import resolve_groups

    try:
        meta = bank_metadata(bank)
    except BankError:
        return None
    y = np.asarray(bank.labels).astype(np.int64)
    labelled = y >= 0
    enc = encode_metadata(meta, labelled, labelled)
    groups, _ = resolve_groups(bank)
    folds = group_folds(y, np.flatnonzero(labelled), k=k, seed=seed, groups=groups)
    return out_of_fold_proba(enc, y, folds, seed) if folds else None
