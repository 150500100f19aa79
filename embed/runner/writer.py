"""The writer shared by every embedding engine: what a bank holds -> dedupe -> commit.

:func:`open_bank_for` creates or reopens the bank (same backbone and view);
:class:`BankState` is what it already holds; :func:`plan_batches` cuts the ordered
items into the fixed batches that make a resumed run bit-identical; :class:`RowWriter`
dedupes by sha256, records failures and commits at batch boundaries;
:func:`interruptible` turns SIGINT/SIGTERM into a clean close. Used by :mod:`.local`,
:mod:`.multi` and :mod:`facebank.ray_engine.embedding`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    DuplicateImageWarning,
    EmbedInterrupted,
    ResumeWarning,
)
from facebank.core.stores import Location, redact
from facebank.embed.backbones.compat import require_same_backbone
from facebank.embed.bank._store import is_bank
from facebank.embed.bank.bank import DEFAULT_CHUNK_ROWS, FeatureBank
from facebank.embed.inputs.datasets import ImageItem, Source
from facebank.embed.inputs.metadata import metadata_columns

__all__ = [
    "DEFAULT_FLUSH_ROWS",
    "DEFAULT_FLUSH_SECONDS",
    "FLUSH_ROWS_ENV",
    "BankState",
    "EmbedSummary",
    "EncodedImages",
    "LoopClock",
    "RowWriter",
    "interruptible",
    "open_bank_for",
    "plan_batches",
    "record_runtime",
    "resolve_flush_rows",
]

# Commit at least every this many rows or seconds: a killed run loses at most that
# much work, while each commit (6 small JSON files + the open chunks) stays cheap.
DEFAULT_FLUSH_ROWS = 2048
DEFAULT_FLUSH_SECONDS = 10.0
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Environment override of the flush size (used by the resume tests to commit often).
FLUSH_ROWS_ENV = "FACEBANK_EMBED_FLUSH_ROWS"


@dataclass
class EmbedSummary:
    """What one ``embed_source`` run did.

    Attributes:
        embedded: rows added to the bank by this run.
        skipped_present: images skipped because their path is already in the bank.
        duplicates: images not embedded because an identical file (sha256) was.
        failed: ``(path, reason)`` of images that could not be embedded in this run.
        seconds: wall time of the run (scan, model load, embedding, close).
        images_per_s: images processed (embedded + duplicates + failed) per second of
            the embedding loop (first batch to last commit; model loading excluded).
        out: the bank directory.
        rows: rows in the bank after the run.
        ignored: ``(path, reason)`` of files that were not taken as images.
        cross_duplicates: ``(path, duplicate_of, what differs)`` duplicates across
            engines or splits (also warned about).
        device: the torch device used.
        backbone: the backbone's display identity.
        view: the canonical view.
        first_batch_s: seconds from the loop's start to the first batch in hand (decode
            workers or Ray actors starting, the model loading on each actor, the first
            decode): the start-up cost, paid once per run.
        steady_images_per_s: images per second after the first batch up to the last
            one (start-up and the final commit or consolidation excluded); 0 with one
            batch.
        runtime: how the run shared the cores (:class:`~embed.inputs.decode.ThreadPlan`),
            also stored in the bank's ``embed_runtime`` attribute.
        decoded_on_cpu: with ``decode="gpu"``, JPEGs decoded on the CPU instead (CMYK,
            progressive, other than 8-bit, EXIF-rotated, or refused by the device decoder).
    """

    embedded: int
    skipped_present: int
    duplicates: int
    failed: list[tuple[str, str]]
    seconds: float
    images_per_s: float
    out: Path | str | None = None
    rows: int = 0
    ignored: list[tuple[str, str]] = field(default_factory=list)
    cross_duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    device: str = ""
    backbone: str = ""
    view: str = "original"
    first_batch_s: float = 0.0
    steady_images_per_s: float = 0.0
    runtime: dict[str, Any] = field(default_factory=dict)
    decoded_on_cpu: int = 0


class LoopClock:
    """Start-up vs steady state of an embedding loop (:class:`EmbedSummary`'s two figures)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last = self.t0
        self.after_first = 0

    def tick(self, n: int) -> None:
        """A batch of ``n`` images was taken (encoded, failed or deduplicated)."""
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.after_first += n
        self.last = now

    @property
    def first_batch_s(self) -> float:
        return (self.first or self.t0) - self.t0

    @property
    def steady_images_per_s(self) -> float:
        span = self.last - (self.first or self.last)
        return self.after_first / span if span > 0 else 0.0


@dataclass
class EncodedImages:
    """Features of loose images (``encode_images``).

    Attributes:
        features: ``(n_ok, D)`` float32, in the order of ``paths``.
        paths: the inputs that were embedded, as given.
        failures: ``(path, reason)`` of inputs that could not be.
        sha256: hex digest of each embedded file, aligned with ``paths``.
    """

    features: np.ndarray
    paths: list[str]
    failures: list[tuple[str, str]]
    sha256: list[str] = field(default_factory=list)


def record_runtime(bank: FeatureBank, plan: Any, *, device_type: str, pending: int) -> None:
    """Store ``plan`` (a :class:`~embed.inputs.decode.ThreadPlan`) as the bank's
    ``embed_runtime`` when this run embeds something (``pending`` images); warn first when
    a bank with rows is resumed on a CPU with another torch thread count than its latest
    run's.

    A CPU convolution or matrix product sums in an order that depends on how many threads
    share it, so the new rows would differ in the last bits from those an uninterrupted run
    writes (resume is bit-identical only with the same ``--threads``).
    """
    if not pending:  # nothing to embed: the rows keep the runtime that made them
        return
    before = bank.meta.get("embed_runtime") or {}
    threads = before.get("torch_threads")
    if device_type == "cpu" and len(bank) and threads not in (None, plan.torch_threads):
        warnings.warn(
            f"{bank.path}: its rows so far were embedded with {threads} torch thread(s) and "
            f"these will be with {plan.torch_threads}; on a CPU their features then differ "
            f"in the last bits from an uninterrupted run's; give --threads {threads} to "
            "resume bit-identically",
            ResumeWarning,
            stacklevel=3,
        )
    bank.update_attrs({"embed_runtime": plan.as_dict()})  # provenance of the latest run


def resolve_flush_rows(flush_rows: int | None, batch_size: int) -> int:
    if flush_rows is None:
        env = os.environ.get(FLUSH_ROWS_ENV)
        flush_rows = int(env) if env else DEFAULT_FLUSH_ROWS
    return max(1, int(flush_rows))


def open_bank_for(
    out: str | os.PathLike,
    *,
    spec: dict[str, Any],
    backbone: str,
    view: str,
    src: Source,
    source: str | os.PathLike,
    dtype: str = "float16",
    chunk_rows: int | None = None,
    shard_rows: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> FeatureBank:
    """The bank ``out`` (a folder or an fsspec URL) opened for writing: created, or
    reopened after checking that it holds the same backbone and view (every engine
    writes through this). ``chunk_rows`` (None: ``DEFAULT_CHUNK_ROWS``), ``shard_rows``:
    a new bank's layout.

    Raises:
        BankError: ``out`` is a file. BackboneMismatchError: another backbone or view.
        BankLockedError: another process is writing ``out``.
    """
    text = os.fspath(out)
    if _URL.match(text):  # an fsspec URL (s3://, gs://, memory://, file://)
        exists = is_bank(Location(text, storage_options=storage_options))
        out_path: Any = text
    else:
        out_path = Path(text)
        if out_path.exists() and not out_path.is_dir():
            raise BankError(f"--out {text!r} exists and is not a bank folder")
        exists = (out_path / "zarr.json").is_file()
    if exists:
        bank = FeatureBank.open(out_path, mode="a", storage_options=storage_options)
        try:
            require_same_backbone(
                bank.backbone,
                spec,
                a_name=f"bank {text!r}",
                b_name=f"--backbone {backbone}",
            )
            if bank.view != view:
                raise BackboneMismatchError(
                    f"bank {text!r} holds view {bank.view!r} but --view is {view!r}; "
                    "a bank holds one view - use another --out for this view"
                )
            stored = {c for s in bank._stores() for c in s.column_names}
            if "group" not in stored and any(item.group for item in src.items):
                # appending would drop the new rows' groups without a word
                raise BankError(
                    f"bank {text!r} was written without a group column but the manifest "
                    "gives groups; embed into a new --out (the groups are then stored for "
                    "every row), or drop the manifest's group column to resume this bank"
                )
        except BaseException:
            bank.close()
            raise
    else:
        if isinstance(src.root, str):  # a SOURCE on a store: its URL, credentials stripped
            src_text = redact(os.fspath(source).rstrip("/"))
        else:
            src_text = (
                str(src.root / Path(source).name) if src.kind == "manifest" else str(src.root)
            )
        bank = FeatureBank.create(
            out_path,
            backbone=spec,
            view=view,
            source=src_text,
            dtype=dtype,
            chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS,
            shard_rows=shard_rows,
            overwrite=False,
            storage_options=storage_options,
        )
    return bank


@contextlib.contextmanager
def interruptible(bank: FeatureBank) -> Iterator[None]:
    """SIGINT or SIGTERM inside the block: close ``bank`` (its committed rows stay) and
    raise :class:`~embed.errors.EmbedInterrupted` saying how many rows are safe."""
    try:
        with _signals_interrupt():
            yield
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", signal.SIGINT))
        rows = len(bank)  # committed rows only: a half-written flush is not counted
        bank.close()
        raise EmbedInterrupted(
            f"interrupted by {signal.Signals(signum).name}: {rows} rows are safely in bank "
            f"{str(bank.path)!r}; the same command resumes where they end",
            signum=signum,
            rows=rows,
            bank=str(bank.path),
        ) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so the bank closes cleanly."""

    signum = int(signal.SIGTERM)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`_Terminated` (SIGINT already raises
    KeyboardInterrupt). Only the main thread can set handlers; elsewhere a no-op."""

    def _raise(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class BankState:
    """What a bank already holds, as the runner needs it to resume and to dedupe.

    Attributes:
        present: stored paths that are done (embedded rows and recorded duplicates).
        kept: sha256 -> ``(path, engine, split)`` of the embedded row with that content.
        failures: path -> reason of images that failed in an earlier run (retried).
        duplicates: the bank's ``duplicates`` records.
    """

    present: set[str]
    kept: dict[str, tuple[str, str, str]]
    failures: dict[str, str]
    duplicates: list[dict[str, str]]

    @classmethod
    def load(cls, bank: FeatureBank) -> BankState:
        duplicates = list(bank.duplicates)
        present = set(bank.paths.tolist())
        present.update(d["path"] for d in duplicates)
        kept = {
            s: (p, e, sp)
            for s, p, e, sp in zip(bank.sha256, bank.paths, bank.engines, bank.splits, strict=True)
        }
        failures = {f["path"]: f["reason"] for f in bank.failures}
        return cls(present=present, kept=kept, failures=failures, duplicates=duplicates)


def plan_batches(
    items: Sequence[ImageItem], present: set[str], batch_size: int
) -> tuple[list[list[int]], int]:
    """Cut the ordered items into fixed batches and drop the ones already done.

    Batch ``k`` is always items ``k*B .. k*B+B-1`` of the *whole* list, so a resumed
    run encodes exactly the batches an uninterrupted one would (bit-identical features).

    Returns:
        ``(batches of item indices still to embed, number of items skipped as present)``.
    """
    batches: list[list[int]] = []
    skipped = 0
    for a in range(0, len(items), batch_size):
        stop = min(a + batch_size, len(items))
        todo = [i for i in range(a, stop) if items[i].path not in present]
        skipped += stop - a - len(todo)
        if todo:
            batches.append(todo)
    return batches, skipped


class RowWriter:
    """The write step: dedupes encoded rows by sha256, records failures, commits to the bank.

    Rows are held until :meth:`flush` appends them (with the metadata columns and the
    ``failures``/``duplicates``/``ignored`` attributes) in one commit.
    """

    def __init__(
        self,
        bank: FeatureBank,
        state: BankState,
        *,
        ignored: Sequence[tuple[str, str]] = (),
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ) -> None:
        self.bank = bank
        self.state = state
        self.ignored = [{"path": p, "reason": r} for p, r in ignored]
        # a face view's rows kept uncropped because no face was found: the face_found
        # column; a bank from before it keeps its face_not_found attribute up to date
        self.no_face: list[str] | None = (
            None
            if "face_found" in (bank.meta.get("columns") or ())
            else list(bank.meta.get("face_not_found") or [])
        )
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.storage = bank.storage_dtype
        self.pending_items: list[ImageItem] = []
        self.pending_sha: list[str] = []
        self.pending_meta: list[Mapping[str, Any]] = []
        self.pending_X: list[np.ndarray] = []
        self.embedded = 0
        self.duplicate_count = 0
        self.run_failed: list[tuple[str, str]] = []
        self.cross: list[tuple[str, str, str]] = []
        self.last_flush = time.monotonic()

    @property
    def processed(self) -> int:
        """Images this run embedded, found duplicate, or failed on."""
        return self.embedded + len(self.pending_items) + self.duplicate_count + len(self.run_failed)

    def fail(self, item: ImageItem, reason: str) -> None:
        self.state.failures[item.path] = reason
        self.run_failed.append((item.path, reason))

    def take(
        self,
        items: Sequence[ImageItem],
        sha: Sequence[str],
        X: np.ndarray,
        meta: Sequence[dict[str, Any]],
    ) -> None:
        """Queue encoded rows ``X`` (``(len(items), dim)``); duplicates and non-finite rows
        are recorded instead."""
        finite = np.isfinite(X.astype(self.storage)).all(axis=1)
        rows: list[int] = []
        for j, (item, digest) in enumerate(zip(items, sha, strict=True)):
            if not finite[j]:
                self.fail(
                    item,
                    f"backbone gave non-finite features in {self.storage} (try --dtype float32)",
                )
                continue
            self.state.failures.pop(item.path, None)
            if digest in self.state.kept:
                self._duplicate(item, digest)
                continue
            self.state.kept[digest] = (item.path, item.engine, item.split)
            rows.append(j)
            self.pending_items.append(item)
            self.pending_sha.append(digest)
            self.pending_meta.append(meta[j] if meta[j] is not None else {})
            if self.no_face is not None and meta[j] is not None and meta[j].get("face_found") == 0:
                self.no_face.append(item.path)
        if rows:
            self.pending_X.append(X[rows])

    def _duplicate(self, item: ImageItem, digest: str) -> None:
        first_path, first_engine, first_split = self.state.kept[digest]
        self.state.duplicates.append(
            {
                "path": item.path,
                "engine": item.engine,
                "split": item.split,
                "sha256": digest,
                "duplicate_of": first_path,
            }
        )
        self.duplicate_count += 1
        differs = [
            f"{what} {a!r} vs {b!r}"
            for what, a, b in (
                ("engine", first_engine, item.engine),
                ("split", first_split, item.split),
            )
            if a != b
        ]
        if differs:
            self.cross.append((item.path, first_path, " and ".join(differs)))

    def due(self) -> bool:
        return (
            len(self.pending_items) >= self.flush_rows
            or time.monotonic() - self.last_flush >= self.flush_seconds
        )

    def attrs(self) -> dict[str, Any]:
        return {
            "failures": [{"path": p, "reason": r} for p, r in self.state.failures.items()],
            "duplicates": self.state.duplicates,
            "ignored": self.ignored,
            **({"face_not_found": self.no_face} if self.no_face else {}),  # (old banks only)
        }

    def flush(self) -> None:
        """Commit the queued rows and the failure/duplicate records in one bank append."""
        n = len(self.pending_items)
        X = np.concatenate(self.pending_X) if n else np.zeros((0, self.bank.dim), np.float32)
        items = self.pending_items
        self.bank.append(
            X,
            labels=np.asarray([it.label for it in items], dtype=np.int8),
            engines=[it.engine for it in items],
            paths=[it.path for it in items],
            splits=[it.split for it in items],
            sha256=self.pending_sha,
            attrs=self.attrs(),
            columns={
                **metadata_columns(self.pending_meta),
                "group": np.asarray([it.group for it in items], dtype=str),
                "pair": np.asarray([it.pair for it in items], dtype=str),
            },
        )
        self.embedded += n
        self.pending_items, self.pending_sha, self.pending_meta, self.pending_X = [], [], [], []
        self.last_flush = time.monotonic()

    def summary(
        self,
        *,
        skipped_present: int,
        seconds: float,
        loop_seconds: float,
        ignored: Sequence[tuple[str, str]],
        device: str,
        backbone: str,
        view: str,
        clock: LoopClock | None = None,
    ) -> EmbedSummary:
        """The run's :class:`EmbedSummary` from what this writer counted (every engine)."""
        return EmbedSummary(
            embedded=self.embedded,
            skipped_present=skipped_present,
            duplicates=self.duplicate_count,
            failed=self.run_failed,
            seconds=seconds,
            images_per_s=self.processed / loop_seconds if loop_seconds > 0 else 0.0,
            out=self.bank.path,
            rows=len(self.bank),
            ignored=list(ignored),
            cross_duplicates=self.cross,
            device=device,
            backbone=backbone,
            view=view,
            first_batch_s=clock.first_batch_s if clock is not None else 0.0,
            steady_images_per_s=clock.steady_images_per_s if clock is not None else 0.0,
        )

    def warn_cross_duplicates(self, *, stacklevel: int = 2) -> None:
        if not self.cross:
            return
        shown = "; ".join(f"{p} = {q} ({w})" for p, q, w in self.cross[:3])
        more = f" and {len(self.cross) - 3} more" if len(self.cross) > 3 else ""
        warnings.warn(
            f"{len(self.cross)} identical image(s) appear under different engines or splits: "
            f"{shown}{more}; each was embedded once (first path kept) - check the labels "
            "and splits of these files (`facebank bank info` lists them)",
            DuplicateImageWarning,
            stacklevel=stacklevel,
        )
