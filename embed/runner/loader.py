"""The loader shared by every embedding engine: files -> decoded, viewed, transformed tensors.

:func:`load_one` is the per-image work (hash, decode, view, transform; a bad file is a
reason, never an exception) of the DataLoader workers here and of the Ray tasks in
:mod:`facebank.ray_engine.embedding`. :class:`ImageDataset` and :func:`make_loader` run
it in worker processes over fixed batches; :class:`Encoder` is the main-process call of
the backbone. Used by :mod:`.local` (one backbone), :mod:`.multi` (several backbones
sharing one decode) and the Ray engine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from facebank.core.memory import keep_freed_memory
from facebank.embed.backbones.spec import Layer
from facebank.embed.inputs.datasets import ImageItem
from facebank.embed.inputs.decode import (
    ThreadPlan,
    collate_rows,
    iter_in_threads,
    load_one,
    model_input,
    pixel_transform,
)

__all__ = [
    "Encoder",
    "ImageDataset",
    "ItemFiles",
    "Transforms",
    "collate",
    "collate_each",
    "columns_width",
    "decoded_batches",
    "input_side",
    "load_one",
    "make_backbone",
    "make_loader",
    "progress_bar",
    "worker_init",
]


class ItemFiles:
    """``index -> file to read`` over the listed items, without a second list of paths."""

    def __init__(self, items: Sequence[ImageItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> str:
        return self.items[index].file


class ImageDataset:
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
        keep_jpeg: bool = False,
    ) -> None:
        self.files = files
        self.view = view
        self.transform = transform
        self.draft_size = draft_size
        self.storage_options = storage_options
        self.keep_jpeg = keep_jpeg  # --decode gpu: JPEG bytes for the device decoder

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, str | None, Any, str | None, Any]:
        sha, x, reason, meta = load_one(
            self.files[index],
            view=self.view,
            transform=self.transform,
            draft_size=self.draft_size,
            storage_options=self.storage_options,
            keep_jpeg=self.keep_jpeg,
        )
        return index, sha, x, reason, meta


def collate(batch: list[tuple[int, str | None, Any, str | None, Any]]) -> dict[str, Any]:
    """The collate of one backbone: ``x`` is the stacked batch."""
    import torch

    return collate_rows(batch, torch.stack)


class Transforms:
    """Apply each backbone's own transform to one decoded image: a tuple of tensors."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> tuple[Any, ...]:
        return tuple(t(img) for t in self.transforms)


def collate_each(batch: list[tuple[int, str | None, Any, str | None, Any]]) -> dict[str, Any]:
    """The collate of :class:`Transforms`: ``x`` is one stacked batch per backbone."""
    import torch

    return collate_rows(batch, lambda xs: [torch.stack(member) for member in zip(*xs, strict=True)])


def worker_init(_: int, *, close_fds: tuple[int, ...] = ()) -> None:
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


def make_loader(
    dataset: ImageDataset,
    batches: list[list[int]],
    *,
    num_workers: int,
    pin: bool,
    close_fds: tuple[int, ...] = (),
    collate: Callable[[list[Any]], dict[str, Any]] = collate,
) -> Iterator[dict[str, Any]]:
    from torch.utils.data import DataLoader

    if not batches:
        return iter(())
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {
            "prefetch_factor": 4,
            "worker_init_fn": functools.partial(worker_init, close_fds=close_fds),
        }
    # (ImageDataset is a map-style dataset by protocol; torch's stubs want the class)
    source: Any = dataset
    return iter(
        DataLoader(
            source,
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin,
            **kw,
        )
    )


def columns_width(built: Sequence[tuple[Any, slice]]) -> int:
    """Width of the features of ``(backbone, columns of its output kept)`` side by side."""
    return sum(len(range(int(bb.dim))[cols]) for bb, cols in built)


def decoded_batches(
    dataset: ImageDataset,
    batches: list[list[int]],
    plan: ThreadPlan,
    *,
    device_type: str,
    collate: Callable[[list[Any]], dict[str, Any]] = collate,
    locks: Sequence[Any] = (),
) -> Iterator[dict[str, Any]]:
    """Collated batches as ``plan`` says: from decoder processes, or from threads of this
    process between forward passes (``plan.workers == 0``).

    ``locks``: the banks' locks, whose local descriptors the worker processes must not keep.
    """
    if plan.workers == 0:
        return iter_in_threads(
            dataset.__getitem__, batches, collate=collate, threads=plan.decode_threads
        )
    return make_loader(
        dataset,
        batches,
        num_workers=min(plan.workers, len(batches)),
        pin=device_type == "cuda",
        # (a local flock has a descriptor to keep out of the workers; a lease has none)
        close_fds=tuple(
            lk.fileno() for lk in locks if getattr(lk, "held", False) and hasattr(lk, "fileno")
        ),
        collate=collate,
    )


class Encoder:
    """The model's side of every engine: uint8 pixels -> features, one call per batch.

    Normalises uint8 pixels on the model's device (:class:`PixelTransform`), runs
    ``Backbone.encode`` (``torch.inference_mode``; bf16 autocast on CUDA, float32 on the
    CPU), optionally under ``torch.compile`` with one static batch shape. Creating one
    keeps freed memory in this process's heap (:func:`core.memory.keep_freed_memory`:
    without it a CPU forward pass spends as long page-faulting its buffers as computing);
    ``heap`` says what the heap does, for the run's provenance.
    """

    def __init__(self, backbone: Any, *, compile: bool, batch_size: int) -> None:
        import torch

        self.backbone = backbone
        self.device = torch.device(backbone.device)
        self.batch_size = batch_size
        self.compiled = bool(compile)
        self.heap = keep_freed_memory()
        # uint8 pixels from the decoders are normalised here, on the model's device
        self.pixels = pixel_transform(backbone.transform)
        if compile:
            backbone.compile()

    def __call__(self, x: Any) -> np.ndarray:
        import torch

        x = model_input(x, self.backbone, self.pixels)
        n = x.shape[0]
        if self.compiled and n < self.batch_size:
            # one static shape for the compiled graph: pad, then drop the padding rows
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        with torch.inference_mode():
            out = self.backbone.encode(x)
        return out[:n].float().cpu().numpy()


def progress_bar(enabled: bool, total: int, description: str):
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


def make_backbone(
    backbone: str | Mapping[str, Any],
    *,
    device: str,
    weights: Any,
    image_size: Any,
    layer: Layer = "final",
) -> Any:
    import facebank.embed.backbones.registry as _bb  # imported late (torch, model zoos)

    if isinstance(backbone, Mapping):  # a stored spec (its layer tap included)
        return _bb.backbone_from_spec(backbone, device=device, weights=weights)
    return _bb.create_backbone(
        backbone, device=device, weights=weights, image_size=image_size, layer=layer
    )


def input_side(spec: dict[str, Any]) -> int:
    size = spec.get("input_size")
    if isinstance(size, (list, tuple)) and size:
        return int(size[-1])
    return 224
