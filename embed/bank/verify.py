"""Verification of a feature bank: every attribute, array, stored object and value checked.

``verify_bank`` never raises on a damaged bank: it reports. It reads every object
below ``count`` (zarr silently returns fill values for a missing chunk, so a lost
chunk is looked for by name), each committed partition, and the values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from facebank.core.errors import BankError
from facebank.core.stores import Location
from facebank.embed.bank._store import (
    CORE_COLUMNS,
    PARTITIONS,
    READABLE_FORMATS,
    Store,
    absorbed,
    as_str_array,
    attempt_key,
    partition_markers,
    pending_partitions,
)
from facebank.embed.inputs.metadata import METADATA_SCHEMA, ROW_SCHEMA

__all__ = ["BankReport", "verify_bank", "missing_objects"]

_DTYPES = ("float16", "float32")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class BankReport:
    """Result of :func:`verify_bank`.

    Attributes:
        path: the bank checked (a local folder, or its URL).
        rows: committed rows (``count`` plus committed, unconsolidated partitions), or 0
            when unreadable.
        problems: what is wrong (empty = the bank is sound).
        notes: harmless findings (e.g. uncommitted rows an interrupted writer left).
    """

    path: Path | str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bank(
    path: str | os.PathLike,
    *,
    max_listed: int = 10,
    storage_options: Mapping[str, Any] | None = None,
) -> BankReport:
    """Check a bank end to end: attributes, arrays, every object below ``count``, values.

    Detects: unreadable/missing metadata (a corrupt ``zarr.json``, the group's or an
    array's), wrong format version, missing attributes, missing arrays, ``count``
    beyond an array's length, missing chunk/shard objects (zarr would silently return
    fill values), objects that fail to decode, non-finite feature rows, labels
    outside {1, 0, -1}, empty engines/paths, repeated paths, bad split names,
    malformed ``failures``/``duplicates``, consolidated metadata that disagrees with
    the arrays, and committed partitions whose data is missing or short.

    Args:
        path: the ``NAME.zarr`` folder or an fsspec URL.
        max_listed: examples listed per kind of problem.
        storage_options: fsspec options of a URL.

    Returns:
        A :class:`BankReport`; ``report.ok`` is True when nothing is wrong.
    """
    try:
        loc = Location(path, storage_options=storage_options)
        loc.check_reachable()
    except BankError as exc:
        return BankReport(path=str(path), problems=[str(exc)])
    rep = BankReport(path=loc.local if loc.local is not None else loc.url)
    rows = _verify_group(loc, rep, max_listed=max_listed, top=True)
    if rows is None:
        return rep
    rep.rows = rows
    attrs = loc.read_json("zarr.json").get("attributes") or {}
    done = absorbed(attrs)
    for index, doc in sorted(partition_markers(loc).items()):
        if index in done:
            rep.notes.append(
                f"partition {index} is consolidated but its files remain (a consolidation "
                "killed before its cleanup; the next one deletes them)"
            )
            continue
        sub = BankReport(path=rep.path)
        part_loc = loc.child(attempt_key(index, doc["attempt"]))
        n = _verify_group(part_loc, sub, max_listed=max_listed, top=False)
        for prob in sub.problems:
            rep.problems.append(f"partition {index}: {prob}")
        if n is not None and n != int(doc.get("rows", -1)):
            rep.problems.append(
                f"partition {index}: its marker commits {doc.get('rows')} rows but the data "
                f"holds {n}"
            )
        if n is not None:
            rep.rows += n
    if not rep.problems:
        _check_paths_across_partitions(loc, attrs, rep, max_listed=max_listed)
    if any(not name.endswith(".json") for name in loc.list(PARTITIONS)):
        committed = set(partition_markers(loc)) | done
        loose = [
            name
            for name in loc.list(PARTITIONS)
            if not name.endswith(".json")
            and not (name.split("-", 1)[0].isdigit() and int(name.split("-", 1)[0]) in committed)
        ]
        if loose:
            rep.notes.append(
                f"{len(loose)} partition write(s) without a commit marker (never read; "
                f"redone by a resumed run): {loose[:max_listed]}"
            )
    return rep


def _check_paths_across_partitions(
    loc: Location, attrs: Mapping[str, Any], rep: BankReport, *, max_listed: int
) -> None:
    """A path stored by the bank and a committed partition, or by two partitions."""
    parts = pending_partitions(loc, attrs)
    if not parts:
        return
    top = Store.open(loc)
    paths = [top.column("path"), *(part.column("path") for _, part in parts)]
    uniq, counts = np.unique(np.concatenate(paths), return_counts=True)
    if (counts > 1).any():
        rep.problems.append(
            f"{int((counts > 1).sum())} path(s) stored in more than one partition: "
            f"{uniq[counts > 1][:max_listed].tolist()}"
        )


def _verify_group(loc: Location, rep: BankReport, *, max_listed: int, top: bool) -> int | None:
    """Check one bank group (the bank or a partition); its committed rows, None if unusable."""
    if not loc.is_file("zarr.json"):
        rep.problems.append(f"{loc.url!r} has no zarr.json: not a feature bank (or it is missing)")
        return None
    try:
        doc = loc.read_json("zarr.json")
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        rep.problems.append(f"group metadata zarr.json of {loc.url!r} is unreadable ({exc})")
        return None
    attrs = doc.get("attributes") or {}
    fmt = attrs.get("facebank_format")
    if top and fmt not in READABLE_FORMATS:
        rep.problems.append(
            f"attribute facebank_format is {fmt!r}, expected one of {list(READABLE_FORMATS)}"
        )
    required = ("backbone", "view", "count", "versions", "created", "source") if top else ("count",)
    for key in required:
        if key not in attrs:
            rep.problems.append(f"attribute {key!r} is missing")
    count = attrs.get("count", 0)
    if not isinstance(count, int) or count < 0:
        rep.problems.append(f"attribute count={count!r} is not a non-negative integer")
        return None
    backbone = attrs.get("backbone")
    bb: dict[str, Any] = backbone if isinstance(backbone, dict) else {}
    try:
        group = zarr.open_group(loc.zarr_store(read_only=True), mode="r", use_consolidated=False)
    except Exception as exc:  # any failure to open is the finding
        rep.problems.append(f"zarr cannot open the group ({type(exc).__name__}: {exc})")
        return None
    metadata_cols = [k for k in METADATA_SCHEMA if k in (attrs.get("columns") or ())]
    if top and fmt == 2 and len(metadata_cols) < len(METADATA_SCHEMA):
        missing_cols = sorted(set(METADATA_SCHEMA) - set(metadata_cols))
        rep.problems.append(f"format-2 bank without metadata columns {missing_cols}")
    if fmt == 1 and top:
        rep.notes.append(
            "format-1 bank: no acquisition metadata (`facebank bank backfill` adds it)"
        )
    # the row columns a bank records it has (``group``, ``face_found``): checked like the rest
    row_cols = [k for k in ROW_SCHEMA if k in (attrs.get("columns") or ())]
    arrays: dict[str, zarr.Array] = {}
    for key in ("features", *CORE_COLUMNS, *metadata_cols, *row_cols):
        try:
            node = group[key]
            if not isinstance(node, zarr.Array):
                raise TypeError(f"{key!r} is a group")
            arrays[key] = node
        except Exception as exc:
            rep.problems.append(
                f"array {key!r} is missing or its zarr.json is unreadable ({type(exc).__name__})"
            )
    consolidated = ((doc.get("consolidated_metadata") or {}).get("metadata")) or {}
    beyond: dict[int, list[str]] = {}
    for key, arr in arrays.items():
        want_ndim = 2 if key == "features" else 1
        if arr.ndim != want_ndim:
            rep.problems.append(f"array {key!r} has {arr.ndim} dimensions, expected {want_ndim}")
            continue
        if arr.shape[0] < count:
            rep.problems.append(f"count={count} but array {key!r} has only {arr.shape[0]} rows")
        elif arr.shape[0] > count:
            beyond.setdefault(arr.shape[0] - count, []).append(key)
        names = getattr(arr.metadata, "dimension_names", None)
        if not names or names[0] != "row":
            rep.problems.append(
                f"array {key!r} has dimension_names {names!r}, expected ('row', ...)"
            )
        c = consolidated.get(key)
        if c is not None and (c.get("shape") or [None])[0] != count:
            rep.notes.append(
                f"consolidated metadata gives {key!r} {(c.get('shape') or ['?'])[0]} rows but "
                f"count is {count} (plain zarr/xarray readers will see that many)"
            )
    for extra, keys in beyond.items():
        rep.notes.append(
            f"{len(keys)} array(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}) "
            f"hold {extra} uncommitted rows beyond count (an interrupted embed, or rows "
            "allocated ahead; rerunning it resumes and overwrites them)"
        )
    if "features" in arrays:
        f = arrays["features"]
        if bb.get("dim") is not None and f.ndim == 2 and f.shape[1] != bb.get("dim"):
            rep.problems.append(
                f"features have {f.shape[1]} columns but the backbone's dim is {bb.get('dim')}"
            )
        if str(f.dtype) not in _DTYPES:
            rep.problems.append(f"features dtype {f.dtype} is not one of {list(_DTYPES)}")
    if rep.problems:
        return None
    missing = missing_objects(loc, arrays, count)
    if missing:
        rep.problems.append(
            f"{len(missing)} chunk file(s) missing below count: {missing[:max_listed]}"
        )
        return None
    _check_values(rep, arrays, count, attrs, max_listed=max_listed)
    return count if not rep.problems else None


def missing_objects(loc: Location, arrays: Mapping[str, zarr.Array], count: int) -> list[str]:
    """Stored objects (chunks, or shards when sharded) below ``count`` that do not exist."""
    missing: list[str] = []
    for key, arr in arrays.items():
        present = loc.find(f"{key}/c")  # one listing per array, not one request per chunk
        shards = getattr(arr, "shards", None)
        block = tuple(shards) if shards else tuple(arr.chunks)
        cols = -(-arr.shape[1] // block[1]) if arr.ndim == 2 else 0
        for i in range(-(-count // block[0])):
            for idx in [(i, j) for j in range(cols)] if arr.ndim == 2 else [(i,)]:
                name = f"{key}/c/{'/'.join(map(str, idx))}"
                if name not in present:
                    missing.append(name)
    return missing


def _check_values(
    rep: BankReport,
    arrays: Mapping[str, zarr.Array],
    count: int,
    attrs: Mapping[str, Any],
    *,
    max_listed: int,
) -> None:
    values: dict[str, np.ndarray] = {}
    for key in CORE_COLUMNS:
        try:
            raw = arrays[key][:count] if count else np.zeros(0)
            values[key] = np.asarray(raw, np.int8) if key == "label" else as_str_array(raw)
        except Exception as exc:
            rep.problems.append(f"array {key!r} has a corrupt chunk ({type(exc).__name__}: {exc})")
    for key in set(arrays) - {"features", *CORE_COLUMNS}:
        try:
            col = arrays[key][:count] if count else np.zeros(0)
        except Exception as exc:
            rep.problems.append(f"array {key!r} has a corrupt chunk ({type(exc).__name__}: {exc})")
            continue
        if key == "face_found":  # (the other columns are only read: any value is valid)
            values[key] = np.asarray(col, np.int8)
    bad_rows: list[int] = []
    try:
        feats = arrays["features"]
        step = int(feats.chunks[0])
        for a in range(0, count, step):
            X = np.asarray(feats[a : min(a + step, count)])
            bad_rows.extend((a + np.flatnonzero(~np.isfinite(X).all(axis=1))).tolist())
    except Exception as exc:
        rep.problems.append(f"array 'features' has a corrupt chunk ({type(exc).__name__}: {exc})")
    if bad_rows:
        rep.problems.append(
            f"{len(bad_rows)} feature row(s) hold NaN/inf: rows {bad_rows[:max_listed]}"
        )
    for key, what in (("label", "label(s)"), ("face_found", "face_found value(s)")):
        if key in values:
            bad = np.flatnonzero(~np.isin(values[key], (-1, 0, 1)))
            if bad.size:
                rep.problems.append(
                    f"{bad.size} {what} outside {{1, 0, -1}}: rows {bad[:max_listed].tolist()}"
                )
    for key in ("engine", "path"):
        if key in values:
            empty = np.flatnonzero(values[key] == "")
            if empty.size:
                rep.problems.append(
                    f"{empty.size} empty {key} value(s): rows {empty[:max_listed].tolist()}"
                )
    if "path" in values:
        uniq, counts = np.unique(values["path"], return_counts=True)
        if (counts > 1).any():
            rep.problems.append(
                f"{int((counts > 1).sum())} path(s) stored more than once: "
                f"{uniq[counts > 1][:max_listed].tolist()}"
            )
    if "split" in values:
        bad_split = sorted(set(values["split"].tolist()) - {"", "train", "val", "test"})
        if bad_split:
            rep.problems.append(f"split values {bad_split} are not train/val/test/''")
    if "sha256" in values and count:
        looks_hex = np.array([bool(_HEX64.match(s)) for s in values["sha256"]])
        if looks_hex.any() and not looks_hex.all():
            rows = np.flatnonzero(~looks_hex)[:max_listed].tolist()
            rep.problems.append(f"sha256 values that are not 64 hex digits: rows {rows}")
    for key, fields in (("failures", ("path", "reason")), ("duplicates", ("path", "duplicate_of"))):
        val = attrs.get(key, [])
        if not isinstance(val, list) or not all(
            isinstance(d, dict) and all(k in d for k in fields) for d in val
        ):
            rep.problems.append(
                f"attribute {key!r} is not a list of {{{', '.join(fields)}}} records"
            )
