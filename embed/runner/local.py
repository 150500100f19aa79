"""The embedding runner: SOURCE images -> backbone features -> a resumable feature bank.

Pipeline: :func:`embed.datasets.scan_source` lists the images in a fixed order; a
torch ``DataLoader`` whose worker processes hash (sha256 of the file bytes), decode
(:func:`embed.images.load_image`, JPEG draft mode where the view allows), apply the
view and the backbone's transform; the main process encodes batches under
``torch.inference_mode`` (bf16/fp16 autocast on GPU only) and appends rows to the bank.

Resume and append. Images are cut into fixed batches over the *whole* ordered list
(batch ``k`` = items ``k*B .. k*B+B-1``), and rows are committed to the bank only at
batch boundaries. A rerun skips every image whose path is already in the bank (or
recorded as a duplicate), so after ``kill -9`` at any moment the same command
continues exactly where the last commit ended: same rows, same order, and - because
each batch is encoded with the same content as in an uninterrupted run -
bit-identical features. New files added to SOURCE later are appended; files that
failed are retried on every run.

Duplicates. A file whose sha256 equals an embedded row's is not embedded again; it
is recorded in the bank's ``duplicates`` attribute (``duplicate_of`` = the kept
path). A duplicate that crosses engines or splits is a label/leak problem and raises
a :class:`DuplicateImageWarning`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    DuplicateImageWarning,
    EmbedInterrupted,
    FacebankError,
)
from facebank.core.stores import Location, redact
from facebank.embed.backbones.compat import backbone_id, require_same_backbone
from facebank.embed.bank._store import is_bank
from facebank.embed.bank.bank import DEFAULT_CHUNK_ROWS, FeatureBank
from facebank.embed.inputs.datasets import ImageItem, Source, scan_source
from facebank.embed.inputs.metadata import metadata_columns
from facebank.embed.inputs.views import FACE_FOUND

__all__ = [
    "EmbedSummary",
    "EncodedImages",
    "DuplicateImageWarning",
    "embed_source",
    "encode_images",
]

_log = logging.getLogger(__name__)

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
    """

    embedded: int
    skipped_present: int
    duplicates: int
    failed: list[tuple[str, str]]
    seconds: float
    images_per_s: float
    out: Path | None = None
    rows: int = 0
    ignored: list[tuple[str, str]] = field(default_factory=list)
    cross_duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    device: str = ""
    backbone: str = ""
    view: str = "original"
    first_batch_s: float = 0.0
    steady_images_per_s: float = 0.0


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


# ---------------------------------------------------------------- worker side
class _Files:
    """``index -> file to read`` over the listed items, without a second list of paths."""

    def __init__(self, items: Sequence[ImageItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> str:
        return self.items[index].file


def load_one(
    file: str,
    *,
    view: Any,
    transform: Callable,
    draft_size: int | None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str | None, Any, str | None, dict[str, Any] | None]:
    """Read, hash, decode, apply the view and the transform to one file.

    The per-image work of every engine (DataLoader workers here, Ray tasks in
    :mod:`embed.ray_engine`). Never raises for a bad file. ``file`` may be an fsspec
    URL (a SOURCE on a store): its bytes are read once, with ``storage_options``.

    Returns:
        ``(sha256 | None, tensor | None, reason | None, metadata | None)``: a tensor and
        its metadata row, or the reason it could not be had.
    """
    from facebank.core.errors import ImageDecodeError
    from facebank.embed.inputs.images import load_image_and_metadata, open_input

    try:
        data, sha = open_input(file, storage_options=storage_options)
    except ImageDecodeError as exc:  # missing, a directory, unreadable
        return None, None, str(exc), None
    try:
        img, meta = load_image_and_metadata(data, draft_size=draft_size)
        img = view(img)
        if FACE_FOUND in img.info:  # a face view: was a face found? (column face_found)
            meta["face_found"] = int(bool(img.info[FACE_FOUND]))
        x = transform(img)
    except ImageDecodeError as exc:
        return sha, None, str(exc), None
    except Exception as exc:  # a bad file is a reason, never a crash
        return sha, None, f"{type(exc).__name__}: {str(exc)[:160]}", None
    return sha, x, None, meta


class _ImageDataset:
    """Map-style dataset: index -> (index, sha256, tensor, reason, metadata) via :func:`load_one`.

    Runs in DataLoader workers; every failure becomes a reason, never an exception.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        view: Any,
        transform: Callable,
        draft_size: int | None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.files = files
        self.view = view
        self.transform = transform
        self.draft_size = draft_size
        self.storage_options = storage_options

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, str | None, Any, str | None, Any]:
        sha, x, reason, meta = load_one(
            self.files[index],
            view=self.view,
            transform=self.transform,
            draft_size=self.draft_size,
            storage_options=self.storage_options,
        )
        return index, sha, x, reason, meta


def _collate(batch: list[tuple[int, str | None, Any, str | None, Any]]) -> dict[str, Any]:
    import torch

    ok = [b for b in batch if b[2] is not None]
    return {
        "index": [b[0] for b in ok],
        "sha": [b[1] for b in ok],
        "x": torch.stack([b[2] for b in ok]) if ok else None,
        "meta": [b[4] for b in ok],
        "failed": [(b[0], b[1], b[3]) for b in batch if b[2] is None],
    }


def _worker_init(_: int, *, close_fds: tuple[int, ...] = ()) -> None:
    import torch

    # each worker decodes one image at a time; torch threads would only oversubscribe
    torch.set_num_threads(1)
    # A forked worker inherits the bank's lock descriptor; an flock lives until every
    # copy is closed, so a worker orphaned by a killed writer would keep the bank
    # locked and block the resume. Drop the copy at once.
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Ctrl-C and SIGTERM are the main process's to handle (it closes the bank);
    # workers are stopped by the DataLoader when the main process unwinds.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _auto_workers(device_type: str) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    if device_type == "cuda":
        return max(1, min(cores - 1, 16))  # decoding is the GPU's bottleneck: use every core
    # on CPU the model needs cores too; half of them decode
    return max(1, min(cores // 2, 8))


def _loader(
    dataset: _ImageDataset,
    batches: list[list[int]],
    *,
    num_workers: int,
    pin: bool,
    close_fds: tuple[int, ...] = (),
    collate: Callable[[list[Any]], dict[str, Any]] = _collate,
) -> Iterator[dict[str, Any]]:
    from torch.utils.data import DataLoader

    if not batches:
        return iter(())
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {
            "prefetch_factor": 4,
            "worker_init_fn": functools.partial(_worker_init, close_fds=close_fds),
        }
    return iter(
        DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin,
            **kw,
        )
    )


# ---------------------------------------------------------------- main side
class _Encoder:
    """Backbone call policy: optional torch.compile with one static batch shape.

    ``Backbone.encode`` itself runs under ``torch.inference_mode`` with bf16 autocast
    on CUDA (and full float32 on CPU).
    """

    def __init__(self, backbone: Any, *, compile: bool, batch_size: int) -> None:
        import torch

        self.backbone = backbone
        self.device = torch.device(backbone.device)
        self.batch_size = batch_size
        self.compiled = bool(compile)
        if compile:
            backbone.compile()

    def __call__(self, x: Any) -> np.ndarray:
        import torch

        n = x.shape[0]
        if self.compiled and n < self.batch_size:
            # one static shape for the compiled graph: pad, then drop the padding rows
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        with torch.inference_mode():
            out = self.backbone.encode(x)
        return out[:n].float().cpu().numpy()


def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed and task.elapsed:
                speed = task.completed / task.elapsed
            return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="progress.data.speed")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays for results
        transient=False,
    )


def _make_backbone(
    backbone: str | Mapping[str, Any],
    *,
    device: str,
    weights: Any,
    image_size: Any,
    layer: str = "final",
) -> Any:
    import facebank.embed.backbones.registry as _bb  # imported late (torch, model zoos)

    if isinstance(backbone, Mapping):  # a stored spec (its layer tap included)
        return _bb.backbone_from_spec(backbone, device=device, weights=weights)
    return _bb.create_backbone(
        backbone, device=device, weights=weights, image_size=image_size, layer=layer
    )


def _input_side(spec: dict[str, Any]) -> int:
    size = spec.get("input_size")
    if isinstance(size, (list, tuple)) and size:
        return int(size[-1])
    return 224


def _flush_rows(flush_rows: int | None, batch_size: int) -> int:
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
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    shard_rows: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> FeatureBank:
    """The bank ``out`` (a folder or an fsspec URL) opened for writing: created, or
    reopened after checking that it holds the same backbone and view (every engine
    writes through this). ``chunk_rows``, ``shard_rows``: a new bank's layout.

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
            chunk_rows=chunk_rows,
            shard_rows=shard_rows,
            overwrite=False,
            storage_options=storage_options,
        )
    return bank


def embed_source(
    source: str | os.PathLike,
    *,
    backbone: str,
    out: str | os.PathLike,
    view: str = "original",
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    layer: str = "final",
    real_names: Sequence[str] = ("real",),
    batch_size: int = 64,
    num_workers: int | None = None,
    compile: bool = False,
    progress: bool = True,
    dtype: str = "float16",
    flush_rows: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    storage_options: Mapping[str, Any] | None = None,
) -> EmbedSummary:
    """Embed every image of SOURCE into the bank ``out`` (created, resumed or appended).

    Args:
        source: folder ``SOURCE/[split/]<engine>/**/image`` or CSV manifest.
        backbone: registry name (``facebank backbones``).
        out: the bank directory ``NAME.zarr``; if it exists it must have the same
            backbone and view, and only images not yet in it are embedded.
        view: view string, e.g. ``"jpeg:q=50"``.
        device: ``"auto"`` (cuda if present, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        weights: checkpoint file overriding the backbone's own weights.
        image_size: backbone input side where the backbone allows it.
        layer: layer tap, ``final``, ``penultimate`` or ``blocks`` (part of the bank's
            identity; ``facebank backbones`` lists each backbone's taps).
        real_names: engine folders that hold real images (label 0).
        batch_size: images per forward pass.
        num_workers: decoding processes; None = automatic, 0 = in the main process.
        compile: ``torch.compile`` the backbone (worth it on GPU for large runs).
        progress: show a rich progress bar.
        dtype: stored feature dtype of a new bank, ``"float16"`` or ``"float32"``.
        flush_rows: commit at least every this many rows (default 2048, or
            ``$FACEBANK_EMBED_FLUSH_ROWS``); commits also happen every 10 s.
        chunk_rows: rows per stored chunk of a new bank.
        storage_options: fsspec options when ``source`` or ``out`` is a URL (endpoint,
            credentials; never recorded).

    Returns:
        An :class:`EmbedSummary`.

    Raises:
        SourceError: bad SOURCE. WeightsUnavailableError: weights cannot be had (the
        bank is not touched). BackboneMismatchError: ``out`` holds another backbone or
        view. BankLockedError: another process is writing ``out``.
    """
    from facebank.embed.inputs.views import parse_view

    t0 = time.perf_counter()
    if batch_size < 1:
        raise FacebankError(f"batch_size={batch_size!r} is not valid; give a positive integer")
    src = scan_source(source, real_names=real_names, storage_options=storage_options)
    vw = parse_view(view)
    # the backbone first: missing weights must fail before the bank is created or touched
    bb = _make_backbone(
        backbone, device=device, weights=weights, image_size=image_size, layer=layer
    )
    bank = open_bank_for(
        out, spec=dict(bb.spec), backbone=backbone, view=vw.name, src=src, source=source,
        dtype=dtype, chunk_rows=chunk_rows, storage_options=storage_options,
    )  # fmt: skip
    if vw.provenance():  # e.g. the face detector and its version
        bank.update_attrs({"view_provenance": vw.provenance()})
    try:
        with interruptible(bank):
            return _run(
                src,
                bank,
                bb,
                vw,
                batch_size=batch_size,
                num_workers=num_workers,
                compile=compile,
                progress=progress,
                flush_rows=_flush_rows(flush_rows, batch_size),
                t0=t0,
                storage_options=storage_options,
            )
    finally:
        bank.close()


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


def _run(
    src: Source,
    bank: FeatureBank,
    bb: Any,
    vw: Any,
    *,
    batch_size: int,
    num_workers: int | None,
    compile: bool,
    progress: bool,
    flush_rows: int,
    t0: float,
    storage_options: Mapping[str, Any] | None = None,
) -> EmbedSummary:
    """load (what the bank holds, what is left) -> compute (decode, encode) -> write (commit)."""
    state = BankState.load(bank)
    batches, skipped = plan_batches(src.items, state.present, batch_size)
    total = sum(len(b) for b in batches)
    encoder = _Encoder(bb, compile=compile, batch_size=batch_size)
    workers = _auto_workers(encoder.device.type) if num_workers is None else int(num_workers)
    dataset = _ImageDataset(
        _Files(src.items),
        view=vw,
        transform=bb.transform,
        draft_size=vw.draft_size(_input_side(bb.spec)),
        storage_options=storage_options,  # a SOURCE on a store
    )
    writer = RowWriter(bank, state, ignored=src.ignored, flush_rows=flush_rows)
    lock = getattr(bank, "_lock", None)
    loader = _loader(
        dataset,
        batches,
        num_workers=min(workers, len(batches)),
        pin=encoder.device.type == "cuda",
        # (a local flock has a descriptor to keep out of the workers; a lease has none)
        close_fds=(lock.fileno(),)
        if getattr(lock, "held", False) and hasattr(lock, "fileno")
        else (),
    )
    # (escaped: rich would take "[original]" for a markup tag)
    description = f"embed {bb.spec.get('name', '?')} \\[{vw.name}]"
    t_loop = time.perf_counter()
    clock = LoopClock()
    with _progress(progress, total, description) as bar:
        task = bar.add_task(description, total=total) if bar is not None else None
        for batch in loader:
            for index, _sha, reason in batch["failed"]:
                writer.fail(src.items[index], reason)
            if batch["x"] is not None:
                X = encoder(batch["x"])
                writer.take([src.items[i] for i in batch["index"]], batch["sha"], X, batch["meta"])
            clock.tick(len(batch["index"]) + len(batch["failed"]))
            if bar is not None:
                bar.advance(task, len(batch["index"]) + len(batch["failed"]))
            if writer.due():
                writer.flush()
        writer.flush()  # also records failures/duplicates/ignored when nothing new was embedded
    writer.warn_cross_duplicates(stacklevel=4)
    t_end = time.perf_counter()
    return writer.summary(
        skipped_present=skipped,
        seconds=t_end - t0,
        loop_seconds=t_end - t_loop,
        ignored=src.ignored,
        device=str(encoder.device),
        backbone=backbone_id(bb.spec),
        view=vw.name,
        clock=clock,
    )


# ---------------------------------------------------------------- load / write steps
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
        self.pending_meta: list[dict[str, Any]] = []
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


def encode_images(
    paths: Sequence[str | os.PathLike],
    *,
    backbone: str | dict,
    view: str = "original",
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
) -> EncodedImages:
    """Embed loose image files (for ``facebank score IMAGES`` and neighbour queries).

    Args:
        paths: image files; unreadable ones become ``failures``, never an exception.
        backbone: registry name, or a bank's/head's backbone spec (recreated exactly
            with ``backbone_from_spec``, so the features match that bank).
        view: view string applied before the backbone.
        device, weights: as for :func:`embed_source`.
        batch_size: images per forward pass.
        num_workers: decoding processes (0 = in this process; fine for a few images).

    Returns:
        :class:`EncodedImages` with ``features`` ``(n_ok, D)`` float32.
    """
    from facebank.embed.inputs.views import parse_view

    vw = parse_view(view)
    bb = _make_backbone(backbone, device=device, weights=weights, image_size=None)
    files = [str(p) for p in paths]
    dataset = _ImageDataset(
        files, view=vw, transform=bb.transform, draft_size=vw.draft_size(_input_side(bb.spec))
    )
    batches = [
        list(range(a, min(a + batch_size, len(files)))) for a in range(0, len(files), batch_size)
    ]
    encoder = _Encoder(bb, compile=False, batch_size=batch_size)
    feats: list[np.ndarray] = []
    ok: list[str] = []
    shas: list[str] = []
    failures: list[tuple[str, str]] = []
    workers = min(int(num_workers), len(batches))
    for batch in _loader(dataset, batches, num_workers=workers, pin=False):
        failures.extend((files[i], reason) for i, _sha, reason in batch["failed"])
        if batch["x"] is not None:
            feats.append(encoder(batch["x"]))
            ok.extend(files[i] for i in batch["index"])
            shas.extend(batch["sha"])
    X = (
        np.concatenate(feats).astype(np.float32)
        if feats
        else np.zeros((0, int(bb.dim)), np.float32)
    )
    return EncodedImages(features=X, paths=ok, failures=failures, sha256=shas)
