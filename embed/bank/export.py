"""A bank to and from clip-retrieval's embedding folders, and metadata backfill of old banks.

Export layout (the one clip-retrieval writes and autofaiss / embedding-reader read)::

    OUT/img_emb/img_emb_0.npy            (n_0, dim) features (npy), or
    OUT/img_emb/img_emb_0.parquet        one ``embedding`` list column (parquet)
    OUT/metadata/metadata_0.parquet      image_path, label, engine, path, split, sha256,
                                         and the acquisition metadata columns
    OUT/facebank_bank.json               the bank's attributes (backbone, view, ...)

Files are numbered 0, 1, ... with ``rows_per_file`` rows each (clip-retrieval writes
one every 10^6 rows); row ``i`` of ``img_emb_N`` is row ``i`` of ``metadata_N``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from facebank.core.errors import BankError, ImageDecodeError
from facebank.core.stores import Location, is_url, local_path
from facebank.embed.bank._lock import writer_lock
from facebank.embed.bank._store import (
    CORE_COLUMNS,
    FORMAT_VERSION,
    Store,
    as_column,
    check_attrs,
    create_arrays,
    read_group_attrs,
    write_group_json,
)
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.datasets import ImageItem
from facebank.embed.inputs.images import open_input
from facebank.embed.inputs.metadata import METADATA_SCHEMA, ROW_SCHEMA, read_metadata

__all__ = ["export_bank", "import_bank", "backfill_metadata", "BackfillReport"]

ExportFormat = Literal["npy", "parquet"]
_SIDECAR = "facebank_bank.json"
_NUMBERED = re.compile(r"^img_emb_(\d+)\.(npy|parquet)$")


def export_bank(
    bank: FeatureBank | str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: ExportFormat = "npy",
    rows_per_file: int = 1_000_000,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write a bank as clip-retrieval's ``img_emb/`` + ``metadata/`` partitions.

    Args:
        bank: a bank or its path/URL.
        out: the folder to write (must be absent or empty unless ``overwrite``).
        format: ``"npy"`` (features as ``.npy``, as clip-retrieval) or ``"parquet"``.
        rows_per_file: rows per numbered file.
        overwrite: replace files of an earlier export in ``out``.

    Returns:
        The files written.
    """
    if format not in ("npy", "parquet"):
        raise BankError(f"format {format!r} is not valid; use 'npy' or 'parquet'")
    if int(rows_per_file) <= 0:
        raise BankError(f"rows_per_file={rows_per_file!r} must be a positive integer")
    b = (
        bank
        if isinstance(bank, FeatureBank)
        else FeatureBank.open(bank, storage_options=storage_options)
    )
    dst = Path(out)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise BankError(f"--out {str(dst)!r} is not empty; choose a new folder or pass --overwrite")
    (dst / "img_emb").mkdir(parents=True, exist_ok=True)
    (dst / "metadata").mkdir(parents=True, exist_ok=True)
    for old in [*(dst / "img_emb").iterdir(), *(dst / "metadata").iterdir()]:
        old.unlink()
    columns = {k: b.column(k) for k in CORE_COLUMNS}
    if b.has_metadata:
        columns.update(b.metadata())
    groups, found = b.groups, b.face_found  # exported when any row has one
    if (groups != "").any():
        columns["group"] = groups
    if (found >= 0).any():
        columns["face_found"] = found
    written: list[Path] = []
    for n, start in enumerate(range(0, max(len(b), 1), int(rows_per_file))):
        stop = min(start + int(rows_per_file), len(b))
        X = b.load_features(np.arange(start, stop), dtype=b.storage_dtype)
        if format == "npy":
            f = dst / "img_emb" / f"img_emb_{n}.npy"
            np.save(f, X)
        else:
            f = dst / "img_emb" / f"img_emb_{n}.parquet"
            flat = pa.array(X.reshape(-1))
            emb = pa.FixedSizeListArray.from_arrays(flat, b.dim)
            pq.write_table(pa.table({"embedding": emb}), f)
        table = {"image_path": columns["path"][start:stop]}
        table.update({k: v[start:stop] for k, v in columns.items()})
        m = dst / "metadata" / f"metadata_{n}.parquet"
        pq.write_table(pa.table(table), m)
        written += [f, m]
    meta = b.meta
    sidecar = {k: meta.get(k) for k in ("backbone", "view", "source", "failures", "duplicates")}
    sidecar.update(facebank_format=FORMAT_VERSION, rows=len(b), dtype=str(b.storage_dtype))
    (dst / _SIDECAR).write_text(json.dumps(sidecar, indent=2))
    written.append(dst / _SIDECAR)
    return written


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _NUMBERED.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def import_bank(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str | None = None,
    label: int | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> FeatureBank:
    """Read clip-retrieval's ``img_emb/`` + ``metadata/`` partitions into a new bank.

    A folder written by :func:`export_bank` round-trips exactly (its
    ``facebank_bank.json`` restores backbone, view, source, failures). A folder
    from clip-retrieval itself has no labels or engines: ``engine`` and ``label``
    give them (default ``"unknown"`` and -1), and the backbone is recorded as
    ``imported`` with the features' width.

    Returns:
        The new bank, opened read-only.
    """
    root = Path(src)
    parts = _numbered(root / "img_emb")
    if not parts:
        raise BankError(
            f"{str(root)!r} holds no img_emb/img_emb_N.npy or .parquet files; give the folder "
            "that clip-retrieval (or `facebank bank export`) wrote"
        )
    sidecar = json.loads((root / _SIDECAR).read_text()) if (root / _SIDECAR).is_file() else {}
    first = _load_features(parts[0][1])
    backbone = sidecar.get("backbone") or {
        "name": "imported",
        "library": "unknown",
        "model": "unknown",
        "pretrained": None,
        "weights_sha256": None,
        "dim": int(first.shape[1]),
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }
    dtype = sidecar.get("dtype", "float16" if first.dtype == np.float16 else "float32")
    bank = FeatureBank.create(
        out,
        backbone=backbone,
        view=sidecar.get("view", "original"),
        source=sidecar.get("source", str(root)),
        dtype=dtype if dtype in ("float16", "float32") else "float32",
        overwrite=overwrite,
        storage_options=storage_options,
    )
    with bank:
        for n, path in parts:
            X = first if n == parts[0][0] else _load_features(path)
            mfile = root / "metadata" / f"metadata_{n}.parquet"
            if not mfile.is_file():
                raise BankError(
                    f"{str(path)!r} has no matching {str(mfile)!r}; the export is incomplete"
                )
            table = pq.read_table(mfile).to_pydict()
            rows = len(next(iter(table.values()), []))
            if rows != len(X):
                raise BankError(
                    f"{mfile.name} has {rows} rows but {path.name} has {len(X)}; the export "
                    "is inconsistent"
                )
            paths = (
                table.get("path") or table.get("image_path") or [f"{n}-{i}" for i in range(rows)]
            )
            extra = {k: np.asarray(table[k]) for k in (*METADATA_SCHEMA, *ROW_SCHEMA) if k in table}
            bank.append(
                X,
                labels=table.get("label") or [-1 if label is None else int(label)] * rows,
                engines=table.get("engine") or [engine or "unknown"] * rows,
                paths=paths,
                splits=table.get("split") or [""] * rows,
                sha256=table.get("sha256") or [""] * rows,
                columns=extra,
            )
        bank.update_attrs(
            {k: sidecar[k] for k in ("failures", "duplicates") if isinstance(sidecar.get(k), list)}
        )
    return FeatureBank.open(out, storage_options=storage_options)


def _load_features(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        X = np.load(path, allow_pickle=False)
    else:
        col = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
        width = col.type.list_size if hasattr(col.type, "list_size") else len(col[0])
        X = np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)
    if X.ndim != 2:
        raise BankError(f"{str(path)!r} holds an array of shape {X.shape}, not (n, dim)")
    return X


@dataclass
class BackfillReport:
    """Result of :func:`backfill_metadata`.

    Attributes:
        rows: rows of the bank.
        read: rows whose metadata was read from their source file.
        unreachable: ``[(path, reason)]`` of rows whose file could not be read or no
            longer has the bytes that were embedded (their metadata stays MISSING).
    """

    rows: int = 0
    read: int = 0
    unreachable: list[tuple[str, str]] = field(default_factory=list)


def backfill_metadata(
    bank: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> BackfillReport:
    """Give a bank its acquisition metadata columns by re-reading its source files.

    A format-1 bank gets every column and becomes format 2; a format-2 bank has
    the rows whose metadata could not be read (``meta_error`` set) read again. A
    row's file must still hold the bytes that were embedded (same sha256), else it
    is listed as unreachable and keeps MISSING values. Crash-safe: the columns are
    written first and committed by one ``zarr.json`` write; a killed backfill leaves
    the bank as it was.

    Args:
        bank: the bank (path or URL).
        source: the folder (or manifest) the rows' paths are relative to; default the
            bank's recorded ``source``.
        progress: called as ``progress(done, total)``.

    Returns:
        A :class:`BackfillReport`.
    """
    loc = Location(bank, storage_options=storage_options)
    loc.check_reachable()
    lock = writer_lock(loc).acquire()
    try:
        attrs = read_group_attrs(loc)
        check_attrs(loc, attrs)
        store = Store.open(loc, writable=True)
        count = store.count
        root = _backfill_root(source if source is not None else attrs.get("source", ""), loc)
        upgrade = store.format < FORMAT_VERSION or "meta_error" not in store.column_names
        if upgrade:
            cols = {k: as_column(k, None, count).astype(object) for k in METADATA_SCHEMA}
            todo = np.arange(count)
        else:
            cols = {k: store.column(k).astype(object) for k in METADATA_SCHEMA}
            todo = np.flatnonzero(cols["meta_error"] != "")
        paths, shas = store.column("path"), store.column("sha256")
        rep = BackfillReport(rows=count)
        for done, i in enumerate(todo.tolist(), 1):
            # the input layer's naming and reading: stored name -> OS name or URL -> bytes
            f = ImageItem(str(paths[i]), -1, "", root=root).file
            reason = ""
            try:
                data, sha = open_input(f, storage_options=storage_options)
                if len(shas[i]) == 64 and sha != shas[i]:
                    reason = "file changed since it was embedded (sha256 differs)"
            except ImageDecodeError as exc:  # missing, a directory, unreadable
                reason = str(exc)
            if reason:
                rep.unreachable.append((str(paths[i]), reason))
                cols["meta_error"][i] = f"source file unreachable at backfill: {reason}"
            else:
                meta = read_metadata(data)
                for k in METADATA_SCHEMA:
                    cols[k][i] = meta[k]
                rep.read += 1
            if progress is not None:
                progress(done, len(todo))
        _write_columns(store, cols, create=upgrade)
        kept = [k for k in ROW_SCHEMA if k in store.column_names]  # group, face_found
        columns = [*METADATA_SCHEMA, *kept]
        new = {**store.attrs, "facebank_format": FORMAT_VERSION, "columns": columns}
        store.attrs = new
        store._children.clear()
        write_group_json(loc, new, store.children())
        return rep
    finally:
        lock.release()


def _backfill_root(source: str | os.PathLike, loc: Location) -> str:
    """The folder (local or URL) a bank's stored paths are relative to."""
    text = local_path(source)  # file:///x (or file:/x from a Path option) is /x
    if is_url(text):
        return text.rsplit("/", 1)[0] if text.lower().endswith(".csv") else text.rstrip("/")
    root = Path(text)
    if root.is_file():
        root = root.parent  # a manifest: its paths are relative to its folder
    if not text or not root.is_dir():
        raise BankError(
            f"source {text!r} of bank {loc.url!r} is not a reachable folder; pass "
            "--source DIR (the folder the bank's paths are relative to)"
        )
    return str(root)


def _write_columns(store: Store, cols: Mapping[str, np.ndarray], *, create: bool) -> None:
    """Write the metadata columns (made first when ``create``), uncommitted until zarr.json."""
    count = store.count
    group = zarr.open_group(
        store.loc.zarr_store(read_only=False), mode="r+", use_consolidated=False
    )
    if create:
        for k in METADATA_SCHEMA:
            if store.loc.is_file(f"{k}/zarr.json"):
                del group[k]  # left by a killed backfill: made again
        create_arrays(
            group,
            dim=store.dim,
            dtype=str(store.features.dtype),
            columns=tuple(METADATA_SCHEMA),
            chunk_rows=int(store.array("label").chunks[0]),
            rows=count,
            features=False,
        )
    with zarr.config.set({"array.write_empty_chunks": True}):
        for k in METADATA_SCHEMA:
            arr = group[k]
            if count and isinstance(arr, zarr.Array):
                arr[:count] = as_column(k, cols[k], count)
