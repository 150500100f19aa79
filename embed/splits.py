"""Deterministic train/val/test assignment, shared by training, protocols and evaluation.

A bank either carries its own ``split`` column (from a ``SOURCE/{train,val,test}/``
layout or a manifest) or it does not. When it does not, rows are split per engine
(stratified) by a seeded hash of each image's sha256, so the same image lands in the
same split in every bank of every view - robustness banks stay consistent with the
bank a head was trained on.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SPLITS", "DEFAULT_FRACTIONS", "assign_splits", "has_splits"]

SPLITS = ("train", "val", "test")
# 70/15/15: val must hold enough reals that a 0.5% FPR threshold is not one image.
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def has_splits(splits: np.ndarray) -> bool:
    """True when a split column holds at least a train and a test/val assignment."""
    present = {str(s) for s in np.unique(np.asarray(splits, dtype=str))}
    return "train" in present and bool(present & {"val", "test"})


def _rank_key(sha: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{sha}".encode(), digest_size=8).digest()


def assign_splits(
    engines: np.ndarray,
    sha256: np.ndarray,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> np.ndarray:
    """Seeded, stratified-by-engine split of rows into train/val/test.

    Within each engine, rows are ordered by ``blake2b(seed, sha256)`` and the first
    ``fractions[0]`` go to train, the next ``fractions[1]`` to val, the rest to test.
    Identical sha256 always get the same split (duplicates never straddle splits).

    Args:
        engines: (n_samples,) engine name per row.
        sha256: (n_samples,) content hash per row (any unique string id works).
        seed: changes the assignment; recorded in the run's config.
        fractions: train, val, test fractions; must sum to 1.

    Returns:
        (n_samples,) array of ``"train"``, ``"val"`` or ``"test"``.
    """
    engines = np.asarray(engines, dtype=str)
    sha256 = np.asarray(sha256, dtype=str)
    if engines.shape != sha256.shape:
        raise ValueError(f"engines {engines.shape} and sha256 {sha256.shape} differ in shape")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {fractions!r} must be >= 0 and sum to 1")
    out = np.empty(engines.shape, dtype="<U5")
    for engine in np.unique(engines):
        rows = np.flatnonzero(engines == engine)
        # unique hashes first so duplicates share a split
        uniq = sorted(set(sha256[rows].tolist()), key=lambda s: _rank_key(s, seed))
        n = len(uniq)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        if n >= 3:  # every split gets at least one image when there are enough
            n_train = min(max(n_train, 1), n - 2)
            n_val = min(max(n_val, 1), n - n_train - 1)
        where = {}
        for i, s in enumerate(uniq):
            where[s] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        out[rows] = [where[s] for s in sha256[rows]]
    return out
