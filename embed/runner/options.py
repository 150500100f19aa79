"""One options object per embedding job, taken by every engine.

``facebank embed`` and ``facebank experiment`` build one :class:`EmbedOptions` and pass
it to whichever engine runs: :func:`~facebank.embed.runner.local.embed_source` (one
backbone), :func:`~facebank.embed.runner.multi.embed_source_multi` (several backbones,
one decode) or :func:`~facebank.ray_engine.embedding.embed_source_ray`. Each engine
honours each field or refuses it (:meth:`EmbedOptions.refuse`) with one line naming the
option and the engine, before anything is read or written - never a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facebank.core.errors import FacebankError
from facebank.core.options import refuse_options, replace_options
from facebank.embed.backbones.spec import Layer
from facebank.embed.inputs.decode import check_decode

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DTYPE",
    "DEFAULT_PARTITION_ROWS",
    "EmbedOptions",
]

# Images per forward pass: fills a GPU for ViT-L/14 at 224 px in bf16 and keeps a CPU
# run's batches short enough for a progress bar that moves.
DEFAULT_BATCH_SIZE = 64
# Stored feature dtype: half the disk of float32; heads score in float64 either way.
DEFAULT_DTYPE = "float16"
# Ray: items per partition, the unit of commit and resume. 4096 rows x 1,280 dims x 2
# bytes = 10 MB of features per partition: a few objects per commit, and a killed run
# loses at most one partition per actor.
DEFAULT_PARTITION_ROWS = 4096

# field -> the command-line flag a user typed (one-line refusals name it)
FLAGS = {
    "view": "--view",
    "device": "--device",
    "weights": "--weights",
    "image_size": "--image-size",
    "layer": "--layer",
    "real_names": "--real",
    "batch_size": "--batch-size",
    "num_workers": "--workers",
    "threads": "--threads",
    "decode": "--decode",
    "compile": "--compile",
    "progress": "--progress",
    "dtype": "--dtype",
    "flush_rows": "--flush-rows",
    "chunk_rows": "--chunk-rows",
    "storage_options": "--storage-options",
}


@dataclass(frozen=True)
class EmbedOptions:
    """How images are embedded, whatever the engine.

    Attributes:
        view: view string applied before the backbone, e.g. ``"jpeg:q=50"``.
        device: ``"auto"`` (cuda if present, else cpu), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``.
        weights: checkpoint file overriding the backbone's own weights.
        image_size: backbone input side where the backbone allows it.
        layer: layer tap, ``final``, ``penultimate`` or ``blocks``.
        real_names: engine folders that hold real images (label 0).
        batch_size: images per forward pass.
        num_workers: decoding processes; None = chosen with ``threads`` from the cores
            (:func:`embed.inputs.decode.plan_threads`), 0 = in the main process.
        threads: torch threads of the model; None = chosen from the cores.
        decode: ``"auto"``, ``"cpu"`` or ``"gpu"`` (JPEGs decoded on the model's device;
            :mod:`embed.inputs.decode`).
        compile: ``torch.compile`` the backbone (worth it on GPU for large runs).
        progress: show a rich progress bar on stderr.
        dtype: stored feature dtype of a new bank, ``"float16"`` or ``"float32"``.
        flush_rows: commit at least every this many rows (default 2048, or
            ``$FACEBANK_EMBED_FLUSH_ROWS``); commits also happen every 10 s.
        chunk_rows: rows per stored chunk of a new bank (None: the bank's default,
            ``embed.bank.bank.DEFAULT_CHUNK_ROWS``).
        storage_options: fsspec options when SOURCE or the bank is a URL (endpoint,
            credentials; never recorded).
    """

    view: str = "original"
    device: str = "auto"
    weights: str | os.PathLike | None = None
    image_size: int | None = None
    layer: Layer = "final"
    real_names: tuple[str, ...] = ("real",)
    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int | None = None
    threads: int | None = None
    decode: str = "auto"
    compile: bool = False
    progress: bool = True
    dtype: str = DEFAULT_DTYPE
    flush_rows: int | None = None
    chunk_rows: int | None = None
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FacebankError(
                f"batch_size={self.batch_size!r} is not valid; give a positive integer"
            )
        check_decode(self.decode)  # every engine: refused before any work
        object.__setattr__(self, "real_names", tuple(self.real_names))

    @classmethod
    def build(cls, options: EmbedOptions | None = None, **fields: Any) -> EmbedOptions:
        """``options`` (default: all defaults) with ``fields`` replaced; an unknown field
        is a one-line error naming the valid ones."""
        return replace_options(cls, options, fields, what="embedding")

    def refuse(self, reasons: Mapping[str, str], *, engine: str) -> None:
        """Raise one line for the first field of ``reasons`` (field -> why, or what to
        do instead) set away from its default: the engine cannot honour it. Engines call
        this before any work."""
        refuse_options(self, reasons, engine=engine, flags=FLAGS)
