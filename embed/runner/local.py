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

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from facebank.core.errors import DuplicateImageWarning
from facebank.embed.backbones.compat import backbone_id
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.datasets import Source, scan_source
from facebank.embed.inputs.decode import (
    DeviceDecoder,
    collate_mixed,
    plan_threads,
    resolve_decode,
    torch_threads,
)
from facebank.embed.runner.loader import (
    Encoder,
    ImageDataset,
    ItemFiles,
    Transforms,
    collate,
    collate_each,
    columns_width,
    decoded_batches,
    input_side,
    make_backbone,
    progress_bar,
)
from facebank.embed.runner.options import EmbedOptions
from facebank.embed.runner.writer import (
    BankState,
    EmbedSummary,
    EncodedImages,
    LoopClock,
    RowWriter,
    interruptible,
    open_bank_for,
    plan_batches,
    record_runtime,
    resolve_flush_rows,
)

_log = logging.getLogger(__name__)

__all__ = [
    "DuplicateImageWarning",
    "EmbedOptions",
    "EmbedSummary",
    "EncodedImages",
    "embed_source",
    "encode_images",
]


def embed_source(
    source: str | os.PathLike,
    *,
    backbone: str,
    out: str | os.PathLike,
    options: EmbedOptions | None = None,
    **fields: Any,
) -> EmbedSummary:
    """Embed every image of SOURCE into the bank ``out`` (created, resumed or appended).

    Args:
        source: folder ``SOURCE/[split/]<engine>/**/image`` or CSV manifest.
        backbone: registry name (``facebank backbones``).
        out: the bank directory ``NAME.zarr``; if it exists it must have the same
            backbone and view, and only images not yet in it are embedded.
        options: an :class:`~facebank.embed.runner.options.EmbedOptions` (view, device,
            weights, image size, layer tap, batch size, workers, compile, dtype, flush
            and chunk rows, storage options); the same object every engine takes.
        **fields: :class:`EmbedOptions` fields replacing those of ``options``
            (``embed_source(src, backbone=b, out=o, view="jpeg:q=50")``). This engine
            honours every field.

    Returns:
        An :class:`EmbedSummary`.

    Raises:
        SourceError: bad SOURCE. WeightsUnavailableError: weights cannot be had (the
        bank is not touched). BackboneMismatchError: ``out`` holds another backbone or
        view. BankLockedError: another process is writing ``out``.
    """
    from facebank.embed.inputs.views import parse_view

    t0 = time.perf_counter()
    opts = EmbedOptions.build(options, **fields)
    src = scan_source(source, real_names=opts.real_names, storage_options=opts.storage_options)
    vw = parse_view(opts.view)
    # the backbone first: missing weights must fail before the bank is created or touched
    bb = make_backbone(
        backbone, device=opts.device, weights=opts.weights, image_size=opts.image_size,
        layer=opts.layer,
    )  # fmt: skip
    bank = open_bank_for(
        out, spec=dict(bb.spec), backbone=backbone, view=vw.name, src=src, source=source,
        dtype=opts.dtype, chunk_rows=opts.chunk_rows, storage_options=opts.storage_options,
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
                batch_size=opts.batch_size,
                num_workers=opts.num_workers,
                compile=opts.compile,
                progress=opts.progress,
                flush_rows=resolve_flush_rows(opts.flush_rows, opts.batch_size),
                t0=t0,
                storage_options=opts.storage_options,
                decode=opts.decode,
                threads=opts.threads,
            )
    finally:
        bank.close()


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
    decode: str = "auto",
    threads: int | None = None,
) -> EmbedSummary:
    """load (what the bank holds, what is left) -> compute (decode, encode) -> write (commit)."""
    state = BankState.load(bank)
    batches, skipped = plan_batches(src.items, state.present, batch_size)
    total = sum(len(b) for b in batches)
    encoder = Encoder(bb, compile=compile, batch_size=batch_size)
    mode = resolve_decode(decode, device_type=encoder.device.type, view=vw, pixels=encoder.pixels)
    plan = plan_threads(
        device_type=encoder.device.type, decode=mode, workers=num_workers, threads=threads,
        heap=encoder.heap,
    )  # fmt: skip
    _log.info("embed: %s", plan.describe())
    record_runtime(bank, plan, device_type=encoder.device.type, pending=total)
    dataset = ImageDataset(
        ItemFiles(src.items),
        view=vw,
        transform=encoder.pixels or bb.transform,  # uint8 pixels where the transform allows
        draft_size=vw.draft_size(input_side(bb.spec)),
        storage_options=storage_options,  # a SOURCE on a store
        keep_jpeg=mode == "gpu",
    )
    on_device = (
        DeviceDecoder(encoder.pixels, device=encoder.device, view=vw)
        if mode == "gpu" and encoder.pixels is not None
        else None
    )
    writer = RowWriter(bank, state, ignored=src.ignored, flush_rows=flush_rows)
    loader = decoded_batches(
        dataset, batches, plan, device_type=encoder.device.type,
        collate=collate_mixed if on_device is not None else collate,
        locks=[getattr(bank, "_lock", None)],
    )  # fmt: skip
    # (escaped: rich would take "[original]" for a markup tag)
    description = f"embed {bb.spec.get('name', '?')} \\[{vw.name}]"
    t_loop = time.perf_counter()
    clock = LoopClock()
    with torch_threads(plan.torch_threads), progress_bar(progress, total, description) as bar:
        task = bar.add_task(description, total=total) if bar is not None else None
        for batch in loader:
            if on_device is not None:  # JPEGs decoded, resized and cropped on the device
                batch = on_device(batch)
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
    summary = writer.summary(
        skipped_present=skipped,
        seconds=t_end - t0,
        loop_seconds=t_end - t_loop,
        ignored=src.ignored,
        device=str(encoder.device),
        backbone=backbone_id(bb.spec),
        view=vw.name,
        clock=clock,
    )
    summary.runtime = plan.as_dict()
    summary.decoded_on_cpu = on_device.decoded_on_cpu if on_device is not None else 0
    return summary


def encode_images(
    paths: Sequence[str | os.PathLike],
    *,
    backbone: str | dict,
    view: str = "original",
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    num_workers: int | None = 0,
) -> EncodedImages:
    """Embed loose image files (for ``facebank score IMAGES`` and neighbour queries).

    Args:
        paths: image files; unreadable ones become ``failures``, never an exception.
        backbone: registry name, or a bank's/head's backbone spec (recreated exactly
            with ``backbone_from_spec``, so the features match that bank).
        view: view string applied before the backbone.
        device, weights: as for :func:`embed_source`.
        batch_size: images per forward pass.
        num_workers: decoding processes (0 = threads of this process between forward
            passes, ``None`` = chosen from the machine as ``embed`` does).

    Returns:
        :class:`EncodedImages` with ``features`` ``(n_ok, D)`` float32.
    """
    bb = make_backbone(backbone, device=device, weights=weights, image_size=None)
    return encode_files(
        [(bb, slice(None))], paths, view=view, batch_size=batch_size, num_workers=num_workers
    )


def encode_files(
    built: Sequence[tuple[Any, slice]],
    paths: Sequence[str | os.PathLike],
    *,
    view: str,
    batch_size: int,
    num_workers: int | None,
) -> EncodedImages:
    """Loose files -> the features of one or several backbones side by side.

    The one loop of every engine that embeds images for a head rather than for a bank
    (``score``, ``explain``, ``neighbours query``, triage): each file is read, hashed
    and decoded once, each backbone's own transform applied to the one decoded image,
    the pixels sent as uint8, the decoders and torch threads planned from the machine
    (:func:`~facebank.embed.inputs.decode.plan_threads`) as ``embed`` plans them.

    Args:
        built: ``(backbone, columns of its output to keep)`` in column order
            (:func:`~facebank.embed.runner.multi.member_backbones`).
    """
    from facebank.embed.inputs.views import parse_view

    vw = parse_view(view)
    files = [str(p) for p in paths]
    encoders = [Encoder(bb, compile=False, batch_size=batch_size) for bb, _ in built]
    plan = plan_threads(
        device_type=encoders[0].device.type, workers=num_workers, heap=encoders[0].heap
    )
    dataset = ImageDataset(
        files,
        view=vw,
        transform=Transforms([e.pixels or e.backbone.transform for e in encoders]),
        draft_size=vw.draft_size(max(input_side(bb.spec) for bb, _ in built)),
    )
    batches = [
        list(range(a, min(a + batch_size, len(files)))) for a in range(0, len(files), batch_size)
    ]
    feats: list[np.ndarray] = []
    ok: list[str] = []
    shas: list[str] = []
    failures: list[tuple[str, str]] = []
    loader = decoded_batches(
        dataset, batches, plan, device_type=encoders[0].device.type, collate=collate_each
    )
    with torch_threads(plan.torch_threads):
        for batch in loader:
            failures.extend((files[i], str(reason)) for i, _sha, reason in batch["failed"])
            if batch["x"] is None:
                continue
            members = zip(encoders, batch["x"], built, strict=True)
            parts = [enc(x)[:, cols] for enc, x, (_, cols) in members]
            feats.append(np.concatenate(parts, axis=1))
            ok.extend(files[i] for i in batch["index"])
            shas.extend(batch["sha"])
    X = (
        np.concatenate(feats).astype(np.float32)
        if feats
        else np.zeros((0, columns_width(built)), np.float32)
    )
    return EncodedImages(features=X, paths=ok, failures=failures, sha256=shas)
