# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""Are test images near-copies of training images? Duplicates across splits and banks.

``find_leaks`` reports near-duplicate pairs (cosine >= a threshold among each row's ``k``
nearest neighbours) and exact duplicates (same sha256) whose two rows differ in split or
in bank, and - when the rows carry a ``group`` (identity, source...) - the groups whose
rows straddle splits; :meth:`LeakResult.write` writes the run folder.

The splits are the bank's own ``split`` column, or those a training run used
(``splits=RUN_DIR`` reads the run's ``splits.csv``, matched by sha256). Without either no
split pair can be checked, and the result says so instead of reporting "0 pairs" as if the
data were clean (``split_checked`` is False).

Scale: the self-search is consumed chunk by chunk and only pairs above the threshold are
kept; besides the index, memory per row is a split code, a bank code and an 8-byte hash
prefix, so it runs at 10^7 rows with an IVF-PQ index. The threshold is the caller's.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

from ._scan import NeighbourScan
from ._source import Encoder
from .index import DEFAULT_CHUNK_ROWS

__all__ = ["LeakResult", "find_leaks", "read_run_splits"]

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PAIR_COLUMNS = (
    "kind",
    "similarity",
    "row_a",
    "bank_a",
    "split_a",
    "engine_a",
    "path_a",
    "row_b",
    "bank_b",
    "split_b",
    "engine_b",
    "path_b",
)
_NO_SPLIT = "(none)"


@dataclass
class LeakResult:
    """Near-duplicate and exact-duplicate pairs across splits and banks (``find_leaks``).

    A pair is reported when its two rows differ in split or in bank. ``pairs`` holds one
    dict per pair (row_a/row_b, similarity, kind ``"exact"`` (same sha256) or
    ``"near"`` (cosine >= threshold), and bank/split/engine/path of both sides);
    ``counts`` one dict per split pair (split_a, split_b, near, exact, total).
    ``train_test`` counts the pairs joining a ``train`` row and a ``test`` row: the
    leaks that invalidate a test score (``has_train_test_leak``).

    ``split_checked`` is False when no row carried a split (no split column, no run's
    splits.csv): then only pairs across banks could be found and ``split_note`` says so.
    ``split_source`` names where the splits came from (``"bank"`` or a splits.csv path).
    ``groups`` lists the groups whose rows lie in more than one split (group, splits,
    rows), ``None`` when the rows carry no group.
    """

    threshold: float
    k: int
    pairs: list[dict[str, Any]]
    counts: list[dict[str, Any]]
    n_rows: int
    banks: list[str]
    split_checked: bool = True
    split_source: str = "bank"
    split_rows: int = 0
    groups: list[dict[str, Any]] | None = None
    factory: str = "Flat"
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train_test(self) -> int:
        return sum(1 for p in self.pairs if {p["split_a"], p["split_b"]} == {"train", "test"})

    @property
    def has_train_test_leak(self) -> bool:
        return self.train_test > 0

    @property
    def split_note(self) -> str:
        """One sentence on what could be checked."""
        if self.split_checked:
            return (
                f"splits from {self.split_source}: {self.split_rows} of {self.n_rows} rows "
                "carry a split"
            )
        return (
            "no split pairs could be checked: no row carries a split (the bank has no split "
            "column and no run's splits.csv was given; pass --run RUN_DIR of the training "
            "run); only duplicates across banks were looked for"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "k": self.k,
            "n_rows": self.n_rows,
            "banks": self.banks,
            "split_checked": self.split_checked,
            "split_source": self.split_source,
            "split_rows": self.split_rows,
            "split_note": self.split_note,
            "n_pairs": len(self.pairs),
            "n_exact": sum(p["kind"] == "exact" for p in self.pairs),
            "n_near": sum(p["kind"] == "near" for p in self.pairs),
            "train_test": self.train_test if self.split_checked else None,
            "has_train_test_leak": self.has_train_test_leak if self.split_checked else None,
            "counts": self.counts,
            "straddling_groups": None if self.groups is None else len(self.groups),
            "groups": self.groups,
        }

    def markdown(self) -> str:
        lines = [
            f"### Duplicates across splits/banks (cosine >= {self.threshold}, k={self.k})\n",
            f"{self.split_note}.\n",
            markdown_table(self.counts, ["split_a", "split_b", "near", "exact", "total"])
            if self.counts
            else "No duplicate pairs found across "
            + ("splits or banks." if self.split_checked else "banks."),
        ]
        if self.groups is not None:
            lines.append(f"\n### Groups in more than one split ({len(self.groups)})\n")
            lines.append(
                markdown_table(self.groups, ["group", "splits", "rows"])
                if self.groups
                else "Every group lies inside one split."
            )
        return "\n".join(lines)

    def write(self, out: str | Path, **config: Any) -> Path:
        """Write config.json, metrics.json, leaks.md and pairs.csv (and groups.csv)."""
        from ..runfolder import RunContents, csv_text, write_run

        pairs = [{**p, "similarity": f"{p['similarity']:.6f}"} for p in self.pairs]
        files = {"pairs.csv": csv_text(_PAIR_COLUMNS, pairs, extrasaction="raise")}
        if self.groups is not None:
            files["groups.csv"] = csv_text(["group", "splits", "rows"], self.groups)
        self.run_dir = write_run(
            out,
            RunContents(
                command="neighbours leaks",
                config={
                    "banks": self.banks,
                    "threshold": self.threshold,
                    "k": self.k,
                    "factory": self.factory,
                    "metric": "cosine",
                    "splits": self.split_source,
                    **config,
                },
                metrics=self.to_dict(),
                pages={"leaks.md": self.markdown() + "\n"},
                files=files,
            ),
        )
        return self.run_dir


def read_run_splits(run_dir: str | Path) -> dict[str, dict[str, str]]:
    """A training run's ``splits.csv`` as ``{sha256: {"split": ..., "group": ...}}``.

    Raises ``DataError`` when the folder has no splits.csv or it lacks the columns.
    """
    path = Path(run_dir) / "splits.csv"
    if not path.is_file():
        raise DataError(
            f"{str(run_dir)!r} has no splits.csv; give the folder of a training run "
            "(facebank train ... --out RUN_DIR writes one)"
        )
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"sha256", "split"} <= cols:
            raise DataError(
                f"{str(path)!r} has columns {sorted(cols)}; a run's splits.csv needs "
                "sha256 and split"
            )
        return {
            row["sha256"].lower(): {"split": row["split"], "group": row.get("group") or ""}
            for row in reader
        }


def find_leaks(
    banks: BanksLike,
    *,
    threshold: float = 0.95,
    k: int = 10,
    splits: str | Path | None = None,
    factory: str = "Flat",
    device: str = "auto",
    nprobe: int | None = None,
    ef_search: int | None = None,
    k_factor: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: str | Path | None = None,
    progress: bool = False,
) -> LeakResult:
    """Near-duplicate (cosine >= ``threshold``) and exact (same sha256) pairs across splits/banks.

    Each row's ``k`` nearest neighbours are checked, so an image with more than ``k``
    near-copies reports its ``k`` closest; exact duplicates are found by sha256 whatever
    their number. Pairs inside one split of one bank are not leaks and are not reported.
    The threshold is the caller's; nothing is tuned here.

    Args:
        banks: a bank, bank path or list of them (same backbone), or a cosine index.
        threshold: cosine similarity at or above which two images are near-duplicates.
        k: neighbours examined per image.
        splits: a training run folder whose ``splits.csv`` gives each row's split (and
            group, when it has that column), matched by sha256; rows it does not list
            have no split. ``None``: the banks' own split column.
        factory, device, nprobe, ef_search, k_factor, chunk_rows: see
            :class:`NeighbourIndex`.
        out: run folder for config.json, metrics.json, leaks.md and pairs.csv.

    Returns:
        A :class:`LeakResult`.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise DataError(
            f"threshold={threshold} is not a cosine similarity; use a value in [-1, 1], e.g. 0.95"
        )
    table = read_run_splits(splits) if splits is not None else None  # bad folder: fail first
    scan = NeighbourScan(
        banks,
        columns=["bank_id"] if splits is not None else ["bank_id", "split"],
        factory=factory,
        metric="cosine",
        device=device,
        nprobe=nprobe,
        ef_search=ef_search,
        k_factor=k_factor,
        chunk_rows=chunk_rows,
        progress=progress,
    )
    index, source = scan.index, scan.source
    if index.metric != "cosine":
        raise DataError("find_leaks needs a cosine index (metric='cosine')")
    n = len(source)
    # one streamed pass over sha256: 8-byte prefixes (0 = no content hash) and, with a
    # run folder, each row's split and group from its splits.csv
    hashes, split_code, split_vocab, group_code, group_vocab, split_source = _hash_pass(
        scan, table, splits
    )
    bank_code = scan.codes["bank_id"]
    has_split = np.array([s != "" for s in split_vocab])[split_code]
    split_checked = bool(has_split.any())
    # a leak joins two rows of different "sides" (bank, split)
    side = (bank_code.astype(np.int32) * (len(split_vocab) + 1) + split_code).astype(np.int32)

    found = _near_pairs(scan, side, k=min(int(k), n - 1) if n > 1 else 0, threshold=threshold)
    exact = _exact_pairs(source, hashes, side)
    if exact:
        ea = np.array([p[0] for p in exact])
        eb = np.array([p[1] for p in exact])
        Xa, Xb = index._prepare(index.load_rows(ea)), index._prepare(index.load_rows(eb))
        for x, y, v in zip(ea, eb, (Xa * Xb).sum(axis=1), strict=False):
            found[(int(x), int(y))] = ("exact", float(v))

    pairs = _describe(source, sorted(found.items()), split_code, split_vocab)
    counts = _count_by_splits(pairs)
    groups = None
    if group_code is not None:
        groups = _straddling_groups(group_code, group_vocab, split_code, split_vocab)
    result = LeakResult(
        threshold=float(threshold),
        k=min(int(k), n - 1) if n > 1 else 0,
        pairs=pairs,
        counts=counts,
        n_rows=n,
        banks=source.bank_paths,
        split_checked=split_checked,
        split_source=split_source,
        split_rows=int(has_split.sum()),
        groups=groups,
        factory=index.factory,
    )
    if out is not None:
        result.write(out)
    return result


def _near_pairs(
    scan: NeighbourScan, side: np.ndarray, *, k: int, threshold: float
) -> dict[tuple[int, int], tuple[str, float]]:
    """Pairs of rows on different sides (bank, split) whose cosine is ``>= threshold``
    among each row's ``k`` neighbours: ``{(a, b): ("near", cosine)}`` with ``a < b``."""
    # candidate pairs as compact arrays (20 bytes each), deduplicated once at the end
    found_a, found_b, found_s = [], [], []
    if k >= 1:
        for start, _stop, D, I in scan.neighbours(k):
            qi, kj = np.nonzero((D >= threshold) & (I >= 0))
            a, b, sims = qi + start, I[qi, kj], D[qi, kj]
            cross = side[a] != side[b]
            found_a.append(np.minimum(a, b)[cross])
            found_b.append(np.maximum(a, b)[cross])
            found_s.append(sims[cross].astype(np.float32))
    near = _unique_pairs(found_a, found_b, found_s)
    return {(int(x), int(y)): ("near", float(v)) for x, y, v in zip(*near, strict=True)}


def _count_by_splits(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Near and exact pairs counted per pair of splits (sorted)."""
    tally: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for p in pairs:
        sa, sb = sorted([p["split_a"] or _NO_SPLIT, p["split_b"] or _NO_SPLIT])
        tally[(sa, sb)][p["kind"]] += 1
    return [
        {
            "split_a": sa,
            "split_b": sb,
            "near": c["near"],
            "exact": c["exact"],
            "total": c["near"] + c["exact"],
        }
        for (sa, sb), c in sorted(tally.items())
    ]


def _unique_pairs(
    a: list[np.ndarray], b: list[np.ndarray], s: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs found from both sides once each, with the higher similarity, sorted by rows."""
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    A, B, S = np.concatenate(a), np.concatenate(b), np.concatenate(s)
    order = np.lexsort((-S, B, A))  # by row a, row b, then highest similarity first
    A, B, S = A[order], B[order], S[order]
    first = np.ones(len(A), dtype=bool)
    first[1:] = (A[1:] != A[:-1]) | (B[1:] != B[:-1])
    return A[first], B[first], S[first]


def _sha_prefix(values: np.ndarray) -> np.ndarray:
    """Each sha256 as its first 8 bytes (uint64), 0 where a value is not a content hash
    (synthetic banks carry row ids there)."""
    out = np.zeros(len(values), dtype=np.uint64)
    for i, h in enumerate(values):
        h = str(h)
        if len(h) == 64 and _SHA256.fullmatch(h):
            out[i] = int(h[:16], 16) or 1
    return out


def _exact_pairs(source: Any, hashes: np.ndarray, side: np.ndarray) -> list[tuple[int, int]]:
    # 16 bytes a row at the peak (the order and the sorted prefixes); 0 = no hash sorts first
    order = np.argsort(hashes, kind="stable")
    h = hashes[order]
    dup = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        same = (h[1:] == h[:-1]) & (h[1:] != 0)
        del h
        dup[1:] |= same
        dup[:-1] |= same
    cand = order[dup]
    if not len(cand):
        return []
    cand = np.sort(cand)
    full = source.take(cand, ["sha256"])["sha256"]  # a shared prefix confirmed on all 32 bytes
    by_sha: dict[str, list[int]] = defaultdict(list)
    for r, h in zip(cand, full, strict=True):
        by_sha[str(h).lower()].append(int(r))
    pairs = []
    for members in by_sha.values():
        for ai in range(len(members)):
            for bi in range(ai + 1, len(members)):
                x, y = members[ai], members[bi]
                if side[x] != side[y]:
                    pairs.append((x, y))
    return pairs


def _hash_pass(
    scan: NeighbourScan, table: dict[str, dict[str, str]] | None, run: str | Path | None
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, list[str], str]:
    """``(hashes, split_code, split_vocab, group_code, group_vocab, split_source)`` from one
    streamed pass over the sha256 column; ``""`` in a vocabulary means no split / no group;
    ``group_code`` is ``None`` without groups."""
    source = scan.source
    n = len(source)
    has_groups = table is not None and any(v["group"] for v in table.values())
    # the banks' own group column (a manifest's) when the run's splits.csv has none
    bank_groups = (
        not has_groups
        and source.array is None
        and all(getattr(b, "groups", None) is not None for b in source.banks)
    )
    names = ["sha256", "group"] if bank_groups else ["sha256"]
    hashes = np.zeros(n, dtype=np.uint64)
    splits_of, groups_of = Encoder(n), Encoder(n)
    for start, stop, cols in scan.columns(names):
        values = cols["sha256"]
        hashes[start:stop] = _sha_prefix(values)
        if table is not None:
            got = [table.get(str(h).lower()) for h in values]
            splits_of.add(start, stop, np.array([g["split"] if g else "" for g in got]))
            if has_groups:
                groups_of.add(start, stop, np.array([g["group"] if g else "" for g in got]))
        if bank_groups:
            groups_of.add(start, stop, cols["group"])
    group_code, group_vocab = groups_of.finish() if has_groups or bank_groups else (None, [])
    if group_code is not None and not any(group_vocab):  # no row has a group
        group_code, group_vocab = None, []
    if table is None:
        return (
            hashes,
            scan.codes["split"],
            scan.vocab["split"],
            group_code,
            group_vocab,
            "bank",
        )
    split_code, split_vocab = splits_of.finish()
    return hashes, split_code, split_vocab, group_code, group_vocab, str(Path(run) / "splits.csv")


def _straddling_groups(
    group_code: np.ndarray, group_vocab: list[str], split_code: np.ndarray, split_vocab: list[str]
) -> list[dict[str, Any]]:
    """Groups (other than "no group") whose rows with a split lie in more than one split."""
    keep = (
        np.array([s != "" for s in split_vocab])[split_code]
        & np.array([g != "" for g in group_vocab])[group_code]
    )
    pairs, counts = np.unique(
        np.stack([group_code[keep], split_code[keep]]), axis=1, return_counts=True
    )
    by_group: dict[int, dict[str, int]] = defaultdict(dict)
    for (g, s), c in zip(pairs.T, counts, strict=True):
        by_group[int(g)][split_vocab[int(s)]] = int(c)
    return [
        {
            "group": group_vocab[g],
            "splits": " ".join(f"{s}:{c}" for s, c in sorted(per.items())),
            "rows": sum(per.values()),
        }
        for g, per in sorted(by_group.items(), key=lambda kv: group_vocab[kv[0]])
        if len(per) > 1
    ]


def _describe(
    source: Any,
    items: list[tuple[tuple[int, int], tuple[str, float]]],
    split_code: np.ndarray,
    split_vocab: list[str],
) -> list[dict[str, Any]]:
    """Pair dicts with both rows' bank, split, engine and path (read for those rows only)."""
    rows = np.array(sorted({r for (x, y), _ in items for r in (x, y)}), dtype=np.int64)
    got = source.take(rows, ["engine", "path"]) if len(rows) else {}
    meta = {
        int(r): {
            "bank": str(got["bank"][i]),
            "engine": str(got["engine"][i]),
            "path": str(got["path"][i]),
        }
        for i, r in enumerate(rows)
    }
    pairs = []
    for (x, y), (kind, s) in items:
        pairs.append(
            {
                "kind": kind,
                "similarity": s,
                "row_a": x,
                "bank_a": meta[x]["bank"],
                "split_a": split_vocab[split_code[x]],
                "engine_a": meta[x]["engine"],
                "path_a": meta[x]["path"],
                "row_b": y,
                "bank_b": meta[y]["bank"],
                "split_b": split_vocab[split_code[y]],
                "engine_b": meta[y]["engine"],
                "path_b": meta[y]["path"],
            }
        )
    return pairs
