"""Deterministic train/val/test assignment, shared by training, protocols and evaluation.

A bank either carries its own ``split`` column (from a ``SOURCE/{train,val,test}/``
layout or a manifest) or it does not. When it does not, rows are split per engine
(stratified) by a seeded hash of each image's sha256, so the same image lands in the
same split in every bank of every view - robustness banks stay consistent with the
bank a head was trained on.

Groups. Images of one identity (or one source, camera...) on both sides of a split
let a detector score by recognising the person. With ``groups`` (a manifest's ``group``
column, or ``--group-by``), the unit that is assigned is the group: every row of a group
lands in the same split, ranked by a seeded hash of the group name within the engine
that holds most of its rows. Rows without a group are their own unit (by sha256).
Fractions then count units, not rows, so split sizes in rows follow the group sizes.
:func:`resolve_groups` turns ``--group-by`` (or its absence) into one group per row: a
bank whose rows carry a ``group`` (from a manifest) is grouped by it unless told
``--group-by none``.

Pairs. A fake made from (or matched to) a real image names it in the manifest's ``pair``
column (the real's path; frames of one video share a name). :func:`merge_pairs` joins
the rows of a pair - and every group any of them belongs to - into one group, so pairs
never straddle splits, whatever ``--group-by`` says (``none`` included).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from facebank.core.errors import DataError

__all__ = [
    "SPLITS",
    "DEFAULT_FRACTIONS",
    "assign_splits",
    "has_splits",
    "parse_group_by",
    "resolve_groups",
    "merge_pairs",
]

SPLITS = ("train", "val", "test")
# 70/15/15: val must hold enough reals that a 0.5% FPR threshold is not one image.
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def has_splits(splits: np.ndarray) -> bool:
    """True when a split column holds at least a train and a test/val assignment."""
    present = {str(s) for s in np.unique(np.asarray(splits, dtype=str))}
    return "train" in present and bool(present & {"val", "test"})


def _rank_keys(names: np.ndarray, seed: int) -> np.ndarray:
    """(n,) big-endian uint64 of ``blake2b(f"{seed}:{name}")``: sorting them sorts the digests."""
    prefix, blake2b = f"{seed}:", hashlib.blake2b
    # (a list, not a generator: 1M rows hash in ~1.7 s instead of ~2.2 s)
    raw = b"".join([blake2b((prefix + s).encode(), digest_size=8).digest() for s in names.tolist()])
    return np.frombuffer(raw, dtype=">u8")


def assign_splits(
    engines: np.ndarray,
    sha256: np.ndarray,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Seeded, stratified-by-engine split of rows into train/val/test.

    Within each engine, units (unique sha256, or groups) are ordered by
    ``blake2b(seed, unit)`` and the first ``fractions[0]`` go to train, the next
    ``fractions[1]`` to val, the rest to test. Identical sha256 always get the same split
    (duplicates never straddle splits), and so do all rows of one group.

    Args:
        engines: (n_samples,) engine name per row.
        sha256: (n_samples,) content hash per row (any unique string id works).
        seed: changes the assignment; recorded in the run's config.
        fractions: train, val, test fractions; must sum to 1.
        groups: (n_samples,) group per row (identity, source...); ``""`` = no group.
            A group's rows share one split, decided in the engine holding most of them.

    Returns:
        (n_samples,) array of ``"train"``, ``"val"`` or ``"test"``.
    """
    engines = np.asarray(engines, dtype=str)
    sha256 = np.asarray(sha256, dtype=str)
    if engines.shape != sha256.shape:
        raise ValueError(f"engines {engines.shape} and sha256 {sha256.shape} differ in shape")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {fractions!r} must be >= 0 and sum to 1")
    units = sha256
    if groups is not None:
        groups = np.asarray(groups, dtype=str)
        if groups.shape != sha256.shape:
            raise ValueError(f"groups {groups.shape} and sha256 {sha256.shape} differ in shape")
        # a prefix no sha256 hex string has keeps group names and hashes apart
        units = np.where(groups != "", np.char.add("group:", groups), sha256)
    uniq, inverse = np.unique(units, return_inverse=True)
    inverse = inverse.ravel()
    keys = _rank_keys(uniq, seed) if groups is None else _rank_keys(_unit_names(uniq), seed)
    # each unit is ranked within one engine: its own, or the one holding most of its rows
    eng_names, eng_idx = np.unique(engines, return_inverse=True)
    eng_idx = eng_idx.ravel()
    counts = np.zeros((uniq.size, eng_names.size), dtype=np.int64)
    np.add.at(counts, (inverse, eng_idx), 1)
    unit_engine = counts.argmax(axis=1)
    unit_split = np.empty(uniq.size, dtype="<U5")
    for e in range(eng_names.size):
        members = np.flatnonzero(unit_engine == e)
        order = members[np.argsort(keys[members], kind="stable")]
        n = order.size
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        if n >= 3:  # every split gets at least one unit when there are enough
            n_train = min(max(n_train, 1), n - 2)
            n_val = min(max(n_val, 1), n - n_train - 1)
        unit_split[order[:n_train]] = "train"
        unit_split[order[n_train : n_train + n_val]] = "val"
        unit_split[order[n_train + n_val :]] = "test"
    return unit_split[inverse]


def _unit_names(uniq: np.ndarray) -> np.ndarray:
    """Hash input of each unit: the group name for groups, the sha256 otherwise."""
    return np.array([u[6:] if u.startswith("group:") else u for u in uniq.tolist()], dtype=object)


def parse_group_by(spec: str, paths: np.ndarray) -> np.ndarray:
    """Groups from ``--group-by`` given as a folder level: ``level:K``.

    ``level:K`` takes the K-th folder of each stored path (0 = the engine folder of
    ``SOURCE/<engine>/<K=1>/...``), e.g. ``real/lfw/george_bush/001.jpg`` with ``level:2``
    gives ``george_bush``. A path with fewer folders gets no group (``""``).

    Args:
        spec: ``"level:K"`` with K >= 0.
        paths: (n,) stored paths (``/``-separated, relative to the source root).

    Returns:
        (n,) group per row.

    Raises:
        ValueError: a spec that is not ``level:K``.
    """
    kind, _, value = spec.partition(":")
    if kind != "level" or not value.isdigit():
        raise DataError(
            f"--group-by {spec!r} is not valid; give a manifest column name (e.g. group) or "
            "a folder level as level:K (level:1 = the folder inside each engine folder)"
        )
    k = int(value)
    out = []
    for p in np.asarray(paths, dtype=str).tolist():
        parts = p.split("/")[:-1]  # folders only, not the file name
        out.append(parts[k] if k < len(parts) else "")
    return np.asarray(out, dtype=str)


def resolve_groups(bank: Any, group_by: str | None = None) -> tuple[np.ndarray | None, str]:
    """One group per row of ``bank`` (:func:`_named_groups`), with pairs joined
    (:func:`merge_pairs`): the rows of a pair are always in one group."""
    groups, source = _named_groups(bank, group_by)
    pairs = getattr(bank, "pairs", None)
    if pairs is None:
        return groups, source
    pairs = np.asarray(pairs, dtype=str)
    if not (pairs != "").any():
        return groups, source
    merged = merge_pairs(np.asarray(bank.paths, dtype=str), pairs, groups)
    return merged, f"{source} and the pair column" if source else "the pair column"


def merge_pairs(paths: np.ndarray, pairs: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """``(n,)`` groups in which every pair is whole (module docstring).

    Args:
        paths: ``(n,)`` stored paths (a pair names its real by path).
        pairs: ``(n,)`` pair name per row (``""`` = none).
        groups: ``(n,)`` groups (``""`` = none) or None.

    Returns:
        ``(n,)`` groups: a pair's rows, the row whose path is the pair's name, and every
        other row of their groups share one name (the smallest of the joined names).
    """
    paths = np.asarray(paths, dtype=str)
    pairs = np.asarray(pairs, dtype=str)
    g = np.full(paths.size, "", dtype=object) if groups is None else groups.astype(object)
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    named = set(pairs[pairs != ""].tolist())
    unit = np.where(g != "", "group:" + g.astype(str), "").astype(object)
    for i in np.flatnonzero(pairs != ""):
        union("pair:" + pairs[i], unit[i] or f"pair:{pairs[i]}")
        unit[i] = unit[i] or f"pair:{pairs[i]}"
    for i in np.flatnonzero(np.isin(paths, list(named))):
        union("pair:" + paths[i], unit[i] or f"pair:{paths[i]}")
        unit[i] = unit[i] or f"pair:{paths[i]}"
    out = np.array([find(u).split(":", 1)[1] if u else "" for u in unit.tolist()], dtype=str)
    return out


def _named_groups(bank: Any, group_by: str | None = None) -> tuple[np.ndarray | None, str]:
    """One group per row of ``bank`` from ``--group-by``, or ``None`` for no groups.

    Args:
        bank: a bank (``FeatureBank`` or a concat of them): its ``paths`` and columns.
        group_by: ``None`` - the bank's ``group`` column when any row has one (a manifest
            with a ``group`` column), else no groups; ``"none"`` - no groups even then;
            ``"level:K"`` - the K-th folder of each stored path (:func:`parse_group_by`);
            a column name - that string column of the bank (``group``, or another one it
            stores, e.g. ``engine``).

    Returns:
        ``((n_rows,) groups with "" = no group, or None; what they came from, in words)``.

    Raises:
        DataError: a ``group_by`` that is none of these (the valid forms listed).
    """
    if group_by is not None and group_by.strip().lower() == "none":
        return None, ""
    if group_by is None or group_by == "group":
        groups = _bank_groups(bank)
        if groups is None or not (groups != "").any():
            if group_by is None:
                return None, ""
            raise DataError(
                "--group-by group: no row of the bank has a group; give a manifest with a "
                "group column (path,label,engine,split,group) and embed again, or use a "
                "folder level such as --group-by level:1"
            )
        return groups, "the bank's group column"
    if group_by.startswith("level:") or ":" in group_by:
        return parse_group_by(group_by, np.asarray(bank.paths, dtype=str)), group_by
    try:
        kind = bank.column_kind(group_by)  # the bank knows its columns; core imports no layer
    except ValueError:
        kind = ""
    if kind != "str":
        raise DataError(
            f"--group-by {group_by!r} is not valid; give a folder level as level:K, 'group' "
            "(a manifest's group column), another string column of the bank (engine, "
            "file_format...), or 'none'"
        )
    return np.asarray(bank.column(group_by), dtype=str), f"the bank's {group_by} column"


def _bank_groups(bank: Any) -> np.ndarray | None:
    groups = getattr(bank, "groups", None)
    return None if groups is None else np.asarray(groups, dtype=str)
