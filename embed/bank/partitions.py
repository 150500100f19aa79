"""Partitioned writes: rows committed in independent partitions, by any worker, in any order.

A distributed run (many workers, local disk or an object store) writes a bank in
partitions instead of appending to one table::

    bank = FeatureBank.create(url, backbone=spec, ...)   # the driver; holds the writer lock
    for i in range(n_partitions):                         # any worker, any order, retried
        if i not in committed_partitions(url):
            write_partition(url, i, features=X_i, columns={"label": ..., ...})
    consolidate(bank)                                     # the driver, at the end

Commit protocol (works where rename is not atomic, e.g. S3): a partition's rows go
into a fresh folder ``_partitions/NNNNNN-<attempt>/`` (a small zarr group, one
object per array); then one object, the marker ``_partitions/NNNNNN.json`` naming
that attempt and its row count, commits it. A reader follows markers only, so a
partition whose marker is missing - a worker killed mid-write - is never read and is
redone by the resumed run; two attempts racing on one index both write complete
folders and the last marker wins. No lock file is needed for partitions.

:class:`~facebank.embed.FeatureBank` reads committed partitions as further rows
right away; plain ``zarr.open_group`` / ``xarray.open_zarr`` see them after
:func:`consolidate`, which moves them into the bank's own arrays (resumable: see
``FeatureBank._absorb_partitions``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import zarr

from facebank.core.errors import BankError
from facebank.core.stores import Location
from facebank.embed.bank._store import (
    CORE_COLUMNS,
    DEFAULT_CHUNK_ROWS,
    EXTRA_COLUMNS,
    FORMAT_VERSION,
    Store,
    absorbed,
    as_column,
    attempt_key,
    check_attrs,
    create_arrays,
    ensure_partitions_group,
    is_bank,
    marker_key,
    partition_markers,
    read_group_attrs,
    write_group_json,
)
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.bank.writing import row_columns, write_rows
from facebank.embed.inputs.metadata import METADATA_SCHEMA

__all__ = [
    "write_partition",
    "committed_partitions",
    "consolidate",
    "auto_shard_rows",
]

BankLike = FeatureBank | str | os.PathLike


def auto_shard_rows(rows: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int | None:
    """The sharding rule of partitioned banks (``docs/bank-format.md``, "Chunks, shards").

    Pieces of more than ``chunk_rows`` rows (a partition, or one consolidation step
    of a bank written in such partitions) are stored as one shard per array with
    ``chunk_rows``-row chunks inside: one object per array and piece, and a reader
    fetches one chunk of it through the shard index. Smaller pieces stay unsharded
    (a shard index would be overhead, and a plain chunk is one object already).

    Returns:
        ``rows`` rounded up to a multiple of ``chunk_rows``, or ``None`` (unsharded).
    """
    if rows <= chunk_rows:
        return None
    return -(-int(rows) // int(chunk_rows)) * int(chunk_rows)


class PartitionLayout(NamedTuple):
    """``create_arrays`` chunking of one partition."""

    chunk_rows: int
    shard_rows: int | None


def partition_layout(n: int) -> PartitionLayout:
    """The chunking of a partition of ``n`` rows: one object per array."""
    shard = auto_shard_rows(n)
    if shard is None:
        return PartitionLayout(max(n, 1), None)
    return PartitionLayout(DEFAULT_CHUNK_ROWS, shard)


def _location(bank: BankLike, storage_options: Mapping[str, Any] | None) -> Location:
    if isinstance(bank, FeatureBank):
        loc = bank._segments[0][0].loc
        return loc
    return Location(bank, storage_options=storage_options)


def _bank_attrs(loc: Location) -> dict[str, Any]:
    if not is_bank(loc):
        raise BankError(
            f"{loc.url!r} is not a feature bank; create it first with FeatureBank.create(...)"
        )
    attrs = read_group_attrs(loc)
    check_attrs(loc, attrs)
    if int(attrs["facebank_format"]) < FORMAT_VERSION:
        raise BankError(
            f"bank {loc.url!r} is in format {attrs['facebank_format']}, which has no partitions; "
            "write partitions into a new bank"
        )
    return attrs


def write_partition(
    bank: BankLike,
    index: int,
    *,
    features: np.ndarray,
    columns: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write and commit partition ``index`` of ``bank`` (idempotent).

    A partition already committed (or consolidated) is left as it is, so a retried
    task or a resumed run may call this again safely.

    Args:
        bank: the bank (path, fsspec URL or an open :class:`FeatureBank`); it must exist.
        index: the partition number (>= 0); rows are read in index order.
        features: ``(n, dim)`` float array.
        columns: ``{"label", "engine", "path", "sha256"}`` (required), ``"split"``
            (default ``""``) and any key of ``METADATA_SCHEMA`` (missing ones stored
            as their MISSING value), each ``(n,)``.
        attrs: ``{"failures": [...], "duplicates": [...]}`` of this partition's inputs,
            merged into the bank's attributes by :func:`consolidate`.
        storage_options: fsspec options of a URL.

    Raises:
        BankError: no such bank, a negative index, or arrays that do not fit it.
    """
    if not isinstance(index, (int, np.integer)) or int(index) < 0:
        raise BankError(f"partition index {index!r} is not valid; give an integer >= 0")
    index = int(index)
    loc = _location(bank, storage_options)
    top = _bank_attrs(loc)
    if index in absorbed(top) or loc.is_file(marker_key(index)):
        return
    extra = {k: v for k, v in columns.items() if k not in CORE_COLUMNS}
    needed = [k for k in ("label", "engine", "path", "sha256") if k not in columns]
    if needed:
        raise BankError(
            f"partition {index}: columns {needed} are missing; give label, engine, path and "
            f"sha256 (split and {list(METADATA_SCHEMA)} are optional)"
        )
    n = int(np.asarray(features).shape[0]) if np.ndim(features) == 2 else -1
    core = {k: columns[k] for k in ("label", "engine", "path", "sha256")}
    core["split"] = columns.get("split", as_column("split", None, max(n, 0)))
    feature_meta = loc.read_json("features/zarr.json")
    dim = int(feature_meta["shape"][1])
    cols = row_columns(features, dim=dim, name=loc.url, core=core, columns=extra)
    X = np.asarray(features)
    n = X.shape[0]
    extra_attrs = {k: list(v) for k, v in (attrs or {}).items()}
    bad = sorted(set(extra_attrs) - {"failures", "duplicates"})
    if bad:
        raise BankError(f"partition attrs {bad} are not valid; use 'failures' and 'duplicates'")

    attempt = uuid.uuid4().hex[:12]
    ploc = loc.child(attempt_key(index, attempt))
    ensure_partitions_group(loc)
    group = zarr.create_group(
        store=ploc.zarr_store(read_only=False), attributes={"columns": list(EXTRA_COLUMNS)}
    )
    layout = partition_layout(n)
    arrays = create_arrays(
        group,
        dim=dim,
        dtype=str(feature_meta["data_type"]),
        columns=(*CORE_COLUMNS, *EXTRA_COLUMNS),
        # one object per array (sharded above 8192 rows): a partition is a few objects
        chunk_rows=layout.chunk_rows,
        shard_rows=layout.shard_rows,
        compression="lz4" if "blosc" in json.dumps(feature_meta.get("codecs")) else "none",
        rows=n,  # its final shape at once: no resize requests
        concurrent=not loc.is_local,
    )
    store = Store(ploc, group, writable=True, arrays=arrays)
    write_rows(store, 0, X, cols)
    pattrs = {
        "facebank_partition": index,
        "count": n,
        "backbone": top["backbone"],
        "view": top.get("view", "original"),
        "columns": list(EXTRA_COLUMNS),
        "failures": extra_attrs.get("failures", []),
        "duplicates": extra_attrs.get("duplicates", []),
    }
    write_group_json(ploc, pattrs, store.children())
    # the commit: one object, written last
    loc.write_json(
        marker_key(index),
        {
            "index": index,
            "attempt": attempt,
            "rows": n,
            "committed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def committed_partitions(
    bank: BankLike, *, storage_options: Mapping[str, Any] | None = None
) -> set[int]:
    """Indices of the partitions committed so far (consolidated or not).

    A resumed run skips these and writes the rest.
    """
    loc = _location(bank, storage_options)
    top = _bank_attrs(loc)
    return absorbed(top) | set(partition_markers(loc))


def consolidate(bank: BankLike, *, storage_options: Mapping[str, Any] | None = None) -> FeatureBank:
    """Move every committed partition into the bank's own arrays (resumable, idempotent).

    Afterwards plain ``zarr.open_group`` and ``xarray.open_zarr`` read every row;
    killed midway, a rerun finishes the job with no row lost or counted twice.

    Args:
        bank: a path or URL (the writer lock is taken for the duration), or a
            :class:`FeatureBank` this process holds open for writing (the driver of a
            run that created it), whose lock is used.
        storage_options: fsspec options of a URL.

    Returns:
        The bank, opened read-only.

    Raises:
        BankLockedError: another process holds the bank's writer lock.
    """
    if isinstance(bank, FeatureBank) and bank._segments[0][0].writable:
        bank._absorb_partitions()
        loc = bank._segments[0][0].loc
        return FeatureBank.open(
            loc.local if loc.local is not None else loc._text,
            storage_options=loc.storage_options,
        )
    loc = _location(bank, storage_options)
    target = loc.local if loc.local is not None else loc._text
    FeatureBank.open(target, mode="a", storage_options=loc.storage_options).close()
    return FeatureBank.open(target, storage_options=loc.storage_options)
