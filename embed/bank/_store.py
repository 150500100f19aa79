"""Store internals of a feature bank: where it lives, its arrays, and how a commit is written.

A bank lives at a :class:`Location`: a local folder or any fsspec URL (``s3://``,
``gs://``, ``file://``, ``memory://``). Credentials and endpoints come from the
store's standard mechanisms (``AWS_ENDPOINT_URL``, ``AWS_*`` variables, a
``storage_options`` mapping); they are never written into a bank nor printed -
only the URL without any ``user:password@`` part is shown.

The one commit primitive is :meth:`Location.write_json`: a single object written
whole (temp file + rename on a local disk, one PUT on an object store). The group's
``zarr.json`` (attributes with ``count`` + consolidated child metadata) and each
partition's commit marker are written that way, so a reader sees either the old or
the new version, never a mixture.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
from zarr.core.buffer import default_buffer_prototype

from facebank.core.errors import BankError
from facebank.core.stores import Location
from facebank.embed.inputs.metadata import METADATA_SCHEMA, MISSING, ROW_SCHEMA

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "DEFAULT_CHUNK_ROWS",
    "CORE_COLUMNS",
    "EXTRA_COLUMNS",
    "PARTITIONS",
    "column_dtype",
]

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
# 8192 rows x 768 dims x 2 bytes = 12 MiB chunks: large enough for >1 GB/s reads,
# small enough that rewriting the partial last chunk on every flush stays cheap.
DEFAULT_CHUNK_ROWS = 8192
CORE_COLUMNS = ("label", "engine", "path", "split", "sha256")
#: the other row columns a bank made now stores: acquisition metadata, then the row
#: columns that are not file properties (``group``, ``face_found``: ``ROW_SCHEMA``)
EXTRA_COLUMNS = (*METADATA_SCHEMA, *ROW_SCHEMA)
#: folder (prefix) holding the independently committed partitions of a bank
PARTITIONS = "_partitions"
_DTYPES = ("float16", "float32")


def column_dtype(name: str) -> str:
    """Storage dtype of a row column: ``"int8"``, ``"str"`` or the metadata schema's dtype."""
    if name == "label":
        return "int8"
    if name in CORE_COLUMNS:
        return "str"
    try:
        return {**METADATA_SCHEMA, **ROW_SCHEMA}[name]
    except KeyError:
        valid = [*CORE_COLUMNS, *EXTRA_COLUMNS]
        raise BankError(f"column {name!r} is not a bank column; valid: {valid}") from None


def column_missing(name: str) -> Any:
    """Fill value of a column for rows that do not give it."""
    return -1 if name == "label" else MISSING[column_dtype(name)]


def as_str_array(values: Any) -> np.ndarray:
    """Strings read from zarr (numpy StringDType or object) -> plain fixed-width ``<U``."""
    arr = np.asarray(values)
    if arr.dtype.kind in ("U",):
        return arr
    if arr.size == 0:
        return np.zeros(arr.shape, dtype="<U1")
    if arr.dtype.kind == "T":  # numpy 2's StringDType: a cast, 4x faster than via lists
        return arr.astype(f"<U{max(1, int(np.strings.str_len(arr).max()))}")
    return np.array(arr.tolist(), dtype=str)


def as_column(name: str, values: Any, n: int) -> np.ndarray:
    """``values`` as the stored dtype of column ``name``; ``None`` -> ``n`` fill values."""
    kind = column_dtype(name)
    if values is None:
        values = np.full(n, column_missing(name), dtype=object)
    if kind == "str":
        return np.asarray(values, dtype=str)
    arr = np.asarray(values)
    if kind == "bool":
        return arr.astype(bool)
    return arr.astype(kind)


def read_group_attrs(loc: Location) -> dict[str, Any]:
    try:
        meta = loc.read_json("zarr.json")
    except (OSError, ValueError) as exc:
        raise BankError(f"{loc.url!r} is not a readable feature bank ({exc})") from None
    if not isinstance(meta, dict):
        raise BankError(f"{loc.url!r} has a zarr.json that is not a JSON object")
    return dict(meta.get("attributes") or {})


def is_bank(loc: Location) -> bool:
    return loc.is_file("zarr.json")


def write_group_json(
    loc: Location, attrs: Mapping[str, Any], children: Mapping[str, Mapping[str, Any]]
) -> None:
    """Rewrite a group's ``zarr.json`` (attributes + consolidated child metadata) as one object.

    ``count`` and the array shapes that plain zarr/xarray readers take from the
    consolidated metadata therefore always change together. The consolidated shapes
    say ``count`` rows: arrays may be allocated further (they grow a chunk at a
    time), but readers never see uncommitted rows.
    """
    count = int(attrs.get("count", 0))
    meta: dict[str, dict[str, Any]] = {}
    for key, child in children.items():
        doc_ = copy.deepcopy(dict(child))
        doc_["shape"] = [count, *doc_["shape"][1:]]
        meta[key] = doc_
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": json.loads(json.dumps(dict(attrs))),
        # zarr-python's inline consolidated metadata: lets xarray open without a warning
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": meta},
    }
    loc.write_json("zarr.json", doc)


def create_arrays(
    group: zarr.Group,
    *,
    dim: int,
    dtype: str,
    columns: tuple[str, ...],
    chunk_rows: int,
    shard_rows: int | None = None,
    rows: int = 0,
    features: bool = True,
    compression: str = "lz4",
    concurrent: bool = False,
) -> dict[str, zarr.Array]:
    """The bank's arrays in ``group``: ``features`` (unless False) and one per row column.

    ``compression="lz4"`` (blosc-lz4 + byte shuffle) on features: real features barely
    compress, but the fill values that pad a bank's last chunk shrink to nothing (a
    400-row bank used to take a whole 8192-row chunk, 20x its features). It costs
    reads: 1.24 vs 1.92 GB per CPU-second for float16 (``docs/bank-format.md``);
    ``"none"`` stores features raw for banks read far more often than they are small.
    ``concurrent``: create the arrays in parallel (an object store's round trips).

    Returns:
        The new arrays' handles by name.
    """
    if compression not in ("lz4", "none"):
        raise BankError(f"compression {compression!r} is not valid; use 'lz4' or 'none'")
    if dtype not in _DTYPES:
        raise BankError(f"dtype {dtype!r} is not valid; use one of {list(_DTYPES)}")

    def chunking(*tail: int) -> dict[str, Any]:
        if shard_rows:
            return {"chunks": (chunk_rows, *tail), "shards": (shard_rows, *tail)}
        return {"chunks": (chunk_rows, *tail)}

    specs: dict[str, dict[str, Any]] = {}
    if features:
        specs["features"] = dict(
            shape=(rows, int(dim)),
            dtype=dtype,
            compressors=(
                zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
                if compression == "lz4"
                else None
            ),
            fill_value=0.0,
            dimension_names=("row", "dim"),
            **chunking(int(dim)),
        )
    for col in columns:
        kind = column_dtype(col)
        fill: dict[str, Any] = {}
        if kind != "str":
            fill["fill_value"] = column_missing(col)
        specs[col] = dict(
            shape=(rows,),
            dtype=str if kind == "str" else kind,
            dimension_names=("row",),
            **fill,
            **chunking(),
        )

    def make(name: str) -> zarr.Array:
        # the handle writes every chunk, even an all-fill one (see Store.array)
        with zarr.config.set({"array.write_empty_chunks": True}):
            return group.create_array(name, **specs[name])

    if not concurrent:
        return {name: make(name) for name in specs}
    with ThreadPoolExecutor(max_workers=8) as pool:  # object stores: requests overlap
        return dict(zip(specs, pool.map(make, specs), strict=True))


def array_doc(arr: zarr.Array) -> dict[str, Any]:
    """An array's ``zarr.json`` document, as zarr writes it, from its handle."""
    raw = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"]
    return json.loads(raw.to_bytes())


class Store:
    """One bank group (the bank itself, or one partition): its arrays, count and columns."""

    def __init__(
        self,
        loc: Location,
        group: zarr.Group,
        *,
        writable: bool,
        arrays: Mapping[str, zarr.Array] | None = None,
    ) -> None:
        self.loc = loc
        self.group = group
        self.writable = writable
        self.attrs: dict[str, Any] = copy.deepcopy(dict(group.attrs))
        self.count = int(self.attrs.get("count", 0))
        self._columns: dict[str, np.ndarray] = {}
        # handles just made by create_arrays: no metadata round trip to open them again
        self._arrays: dict[str, zarr.Array] = dict(arrays or {})
        self._children: dict[str, dict[str, Any]] = {
            k: array_doc(a) for k, a in self._arrays.items()
        }

    @classmethod
    def open(cls, loc: Location, *, writable: bool = False) -> Store:
        group = zarr.open_group(
            loc.zarr_store(read_only=not writable),
            mode="r+" if writable else "r",
            use_consolidated=False,
        )
        return cls(loc, group, writable=writable)

    @property
    def path(self) -> Path | str:
        """The local folder, or the URL of a bank on another store."""
        return self.loc.local if self.loc.local is not None else self.loc.url

    @property
    def format(self) -> int:
        return int(self.attrs.get("facebank_format", 1))

    @property
    def column_names(self) -> tuple[str, ...]:
        """Row columns this store holds (format 1: the core ones only)."""
        extra = tuple(k for k in EXTRA_COLUMNS if k in self.attrs.get("columns", ()))
        return (*CORE_COLUMNS, *extra)

    @property
    def array_names(self) -> tuple[str, ...]:
        return ("features", *self.column_names)

    def array(self, key: str) -> zarr.Array:
        # one handle per array: zarr re-reads zarr.json on every group[key]. Every chunk
        # below count is written, even an all-fill one (the handle keeps the setting),
        # so that `verify` can tell a lost chunk from one zarr chose not to write.
        if key not in self._arrays:
            with zarr.config.set({"array.write_empty_chunks": True}):
                node = self.group[key]
            if not isinstance(node, zarr.Array):
                raise BankError(f"{self.loc.url!r}: {key!r} is a group, not an array")
            self._arrays[key] = node
        return self._arrays[key]

    def children(self) -> dict[str, dict[str, Any]]:
        """Each array's own ``zarr.json`` (cached: only the shape changes, set on commit)."""
        todo = [k for k in self.array_names if k not in self._children]
        if todo:
            docs = self.loc.read_many([f"{k}/zarr.json" for k in todo])
            for key, raw in zip(todo, docs, strict=True):
                self._children[key] = json.loads(raw.decode("utf-8"))
        return self._children

    def each_array(self, fn: Callable[[str], None]) -> None:
        """``fn(name)`` for every array; concurrently on an object store, where each call
        waits on the network, in turn on a local disk."""
        if self.loc.local is not None:
            for key in self.array_names:
                fn(key)
            return
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fn, self.array_names))

    @property
    def features(self) -> zarr.Array:
        return self.array("features")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def chunk_rows(self) -> int:
        return int(self.features.chunks[0])

    @property
    def write_rows(self) -> int:
        """Rows of one stored object (a shard when sharded, else a chunk)."""
        shards = getattr(self.features, "shards", None)
        return int(shards[0]) if shards else self.chunk_rows

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            if name in ROW_SCHEMA and name not in self.column_names:
                # a bank from before the column: every row has no group / no face view
                self._columns[name] = as_column(name, None, self.count)
                return self._columns[name]
            if name not in self.column_names:
                raise BankError(f"bank {self.loc.url!r} has no column {name!r}")
            raw = self.array(name)[: self.count] if self.count else np.zeros(0)
            kind = column_dtype(name)
            if kind == "str":
                col = as_str_array(raw)
            else:
                col = np.asarray(raw).astype(kind if kind != "bool" else bool)
            self._columns[name] = col
        return self._columns[name]


def check_attrs(loc: Location, attrs: Mapping[str, Any]) -> None:
    fmt = attrs.get("facebank_format")
    if fmt is None:
        if "backbone" in attrs and not attrs.get("count"):
            raise BankError(
                f"{loc.url!r} is an incomplete feature bank (its creation was interrupted "
                "before any row was written); rerun `facebank embed` with the same --out"
            )
        raise BankError(
            f"{loc.url!r} is a zarr group but not a facebank feature bank "
            "(no 'facebank_format' attribute); give a bank written by `facebank embed`"
        )
    if fmt not in READABLE_FORMATS:
        raise BankError(
            f"bank {loc.url!r} has format {fmt!r}; this facebank reads formats "
            f"{list(READABLE_FORMATS)} - upgrade facebank or re-embed the images"
        )
    for key in ("backbone", "count"):
        if key not in attrs:
            raise BankError(f"bank {loc.url!r} lacks the {key!r} attribute; re-embed it")


def check_arrays(store: Store) -> None:
    if store.loc.local is not None:
        missing = [k for k in store.array_names if not store.loc.is_file(f"{k}/zarr.json")]
    else:  # one listing instead of a request per array
        names = set(store.loc.list())
        missing = [k for k in store.array_names if k not in names]
    if missing:
        raise BankError(
            f"bank {store.loc.url!r} lacks arrays {missing}; check it with "
            "`facebank bank verify` and re-embed"
        )
    short = {
        k: store.array(k).shape[0]
        for k in store.array_names
        if store.array(k).shape[0] < store.count
    }
    if short:
        raise BankError(
            f"bank {store.loc.url!r} commits {store.count} rows but arrays {short} are "
            "shorter; the bank is damaged - run `facebank bank verify` and re-embed"
        )


def remove_partials(loc: Location) -> None:
    """Delete temp files a killed writer left behind (``*.partial`` then renamed)."""
    if loc.local is not None:
        for p in loc.local.rglob("*.partial"):
            p.unlink(missing_ok=True)


# float16 -> float32 conversion: numpy's cast runs at ~0.3-0.5 GB/s, torch's vectorised
# multi-threaded copy_ 2-3x faster; below this many elements numpy is quicker to call.
_TORCH_CAST_MIN = 1 << 20


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with a fast path for float16 -> float32 blocks."""
    if (
        src.dtype == np.float16
        and dst.dtype == np.float32
        and src.size >= _TORCH_CAST_MIN
        and dst.flags.c_contiguous
    ):
        import torch  # a facebank dependency; imported only for large reads

        torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))
    else:
        dst[...] = src


def cast(X: np.ndarray, dtype: Any) -> np.ndarray:
    if X.dtype == np.dtype(dtype):
        return X
    out = np.empty(X.shape, dtype=dtype)
    cast_into(out, X)
    return out


def gather(arr: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order) of a row-chunked zarr array, reading each chunk once."""
    if rows.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    chunk = int(arr.chunks[0])
    if hi - lo <= 2 * rows.size + chunk:  # dense enough: one contiguous read
        return np.asarray(arr[lo:hi])[rows - lo]
    out = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    ids = srt // chunk
    bounds = np.flatnonzero(np.diff(ids)) + 1
    for part, pos in zip(np.split(srt, bounds), np.split(order, bounds), strict=True):
        a, b = int(part[0]), int(part[-1]) + 1
        out[pos] = np.asarray(arr[a:b])[part - a]
    return out


# ---------------------------------------------------------------------- partitions
_MARKER = re.compile(r"^(\d{6,})\.json$")


def ensure_partitions_group(loc: Location) -> None:
    """Make ``_partitions`` an (empty-attribute) zarr group, so zarr lists it without warning."""
    if not loc.is_file(f"{PARTITIONS}/zarr.json"):
        loc.write_json(
            f"{PARTITIONS}/zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": {}}
        )


def marker_key(index: int) -> str:
    """The commit marker of partition ``index``: one small JSON object."""
    return f"{PARTITIONS}/{index:06d}.json"


def attempt_key(index: int, attempt: str) -> str:
    """The folder one write attempt of partition ``index`` puts its zarr group in."""
    return f"{PARTITIONS}/{index:06d}-{attempt}"


def partition_markers(loc: Location) -> dict[int, dict[str, Any]]:
    """Committed partitions that have a marker: ``{index: marker}`` (one listing + reads)."""
    out: dict[int, dict[str, Any]] = {}
    for name in loc.list(PARTITIONS):
        m = _MARKER.match(name)
        if not m:
            continue
        try:
            doc = loc.read_json(f"{PARTITIONS}/{name}")
        except (OSError, ValueError):
            continue  # an unreadable marker commits nothing: the partition is redone
        if isinstance(doc, dict) and isinstance(doc.get("attempt"), str):
            out[int(m.group(1))] = doc
    return out


def absorbed(attrs: Mapping[str, Any]) -> set[int]:
    """Indices of partitions already moved into the bank's own arrays."""
    return {int(k) for k in (attrs.get("partitions") or {})}


def pending_partitions(loc: Location, attrs: Mapping[str, Any]) -> list[tuple[int, Store]]:
    """Committed, not yet absorbed partitions, opened read-only, in index order."""
    done = absorbed(attrs)
    out = []
    for index, doc in sorted(partition_markers(loc).items()):
        if index in done:
            continue
        part = Store.open(loc.child(attempt_key(index, doc["attempt"])))
        if part.count != int(doc.get("rows", -1)):
            raise BankError(
                f"partition {index} of bank {loc.url!r} commits {doc.get('rows')} rows but "
                f"holds {part.count}; run `facebank bank verify` and rerun the embedding"
            )
        out.append((index, part))
    return out


def remove_partition(loc: Location, index: int) -> None:
    """Delete partition ``index``: its marker first (uncommits it), then every attempt."""
    loc.remove(marker_key(index))
    prefix = f"{index:06d}-"
    for name in loc.list(PARTITIONS):
        if name.startswith(prefix):
            loc.remove(f"{PARTITIONS}/{name}")


def remove_orphans(loc: Location, attrs: Mapping[str, Any]) -> None:
    """Delete leftovers of absorbed partitions (a consolidation killed before its cleanup)."""
    done = absorbed(attrs)
    for name in loc.list(PARTITIONS):
        head = name.split("-", 1)[0].split(".", 1)[0]
        if head.isdigit() and int(head) in done:
            loc.remove(f"{PARTITIONS}/{name}")
