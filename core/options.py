"""Options objects of the jobs above the embedding runner, and the one refusal rule.

``facebank experiment`` builds one :class:`ExperimentOptions` and passes it to
:func:`~facebank.analysis.experiment.run_experiment` (one backbone) or
:func:`~facebank.analysis.leaderboard.run_backbone_comparison` (several); each honours
every field or refuses it in one line naming the option (:func:`refuse_options`, before
any work). The embedding engines take ``embed.runner.options.EmbedOptions``. Here in
``core`` because the command line reads these defaults for its help texts and must not
import the analysis layer (sklearn, zarr) to print them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facebank.core.errors import FacebankError

__all__ = [
    "replace_options",
    "DEFAULT_SCORE_BATCH_SIZE",
    "DEFAULT_SCORE_PARTITION_ROWS",
    "MIN_NEW_ROWS",
    "ScoreOptions",
    "refuse_options",
    "CONTROL_VIEWS",
    "DEFAULT_HEADS",
    "DEFAULT_VIEWS",
    "DEGRADED_VIEWS",
    "ExperimentOptions",
]

# normalise: the laundering control (every image the same format, size and encoder);
# added to the views a user asks for unless `--no-controls`
CONTROL_VIEWS = ("normalise",)
# the degradations every head is scored under (robustness) when --views is not given
DEGRADED_VIEWS = ("jpeg:q=50", "resize:128", "vflip")
DEFAULT_VIEWS = (*CONTROL_VIEWS, *DEGRADED_VIEWS)
DEFAULT_HEADS = ("linear", "mlp", "prototype")
# An AUROC or a flag rate on fewer images is an anecdote: 20 gives a flag-rate interval
# about +-20 points wide, the widest worth printing as a result (the default new engine
# for OOD is the smallest AI engine with at least this many images).
MIN_NEW_ROWS = 20

# field -> the command-line flag a user typed (one-line refusals name it)
FLAGS = {
    "views": "--views",
    "heads": "--heads",
    "new_engine": "--new-engine",
    "device": "--device",
    "weights": "--weights",
    "image_size": "--image-size",
    "seed": "--seed",
    "real_names": "--real",
    "protocols": "--protocols",
    "group_by": "--group-by",
    "storage_options": "--storage-options",
    "engine_dates": "--engine-dates",
}


@dataclass(frozen=True)
class ExperimentOptions:
    """How an experiment runs, whatever the number of backbones.

    Attributes:
        views: views embedded besides ``original`` (``embed.parse_view`` forms), the
            control views included (``DEFAULT_VIEWS``: ``normalise`` and three
            degradations).
        heads: heads trained and evaluated (``facebank heads``).
        new_engine: the AI engine held out as new for OOD; None: the AI engine with the
            fewest images among those with at least ``MIN_NEW_ROWS``
            (``analysis.ood.default_new_engine``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; used for embedding.
        weights: a checkpoint file for the backbone (one backbone only).
        image_size: backbone input side where the backbone allows it (one backbone only).
        seed: seeds splits (when the source has none), head training, bootstraps,
            clustering and maps - every random step.
        real_names: engine folder names that hold real images.
        progress: progress bars and step headers on stderr.
        protocols: optional protocols with ``linear``: ``few-shot``, ``chrono``.
        group_by: keep each group in one split (``level:K``, a bank column, ``none``).
        storage_options: fsspec options for a SOURCE on a store; never recorded.
        engine_dates: ``engine,date`` CSV for the chrono protocol; None: a manifest
            SOURCE's ``date`` column when it has one, then the shipped dates.
        note: Markdown written to ``NOTE.md`` and shown at the top of the report.
    """

    views: tuple[str, ...] = DEFAULT_VIEWS
    heads: tuple[str, ...] = DEFAULT_HEADS
    new_engine: str | None = None
    device: str = "auto"
    weights: str | os.PathLike | None = None
    image_size: int | None = None
    seed: int = 0
    real_names: tuple[str, ...] = ("real",)
    progress: bool = True
    protocols: tuple[str, ...] = ()
    group_by: str | None = None
    storage_options: Mapping[str, Any] | None = None
    engine_dates: str | os.PathLike | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        for name in ("views", "heads", "real_names", "protocols"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def build(cls, options: ExperimentOptions | None = None, **fields: Any) -> ExperimentOptions:
        """``options`` (default: all defaults) with ``fields`` replaced."""
        return replace_options(cls, options, fields, what="experiment")

    def refuse(self, reasons: Mapping[str, str], *, engine: str) -> None:
        """One line for the first field of ``reasons`` set away from its default."""
        refuse_options(self, reasons, engine=engine, flags=FLAGS)

    def config(self) -> dict[str, Any]:
        """What ``config.json`` records (storage options never: they hold credentials)."""
        return {
            "views": list(self.views),
            "heads": list(self.heads),
            "new_engine": self.new_engine,
            "device": self.device,
            "image_size": self.image_size,
            "weights": os.fspath(self.weights) if self.weights else None,
            "seed": self.seed,
            "real_names": list(self.real_names),
            "protocols": list(self.protocols),
            "group_by": self.group_by,
            "engine_dates": os.fspath(self.engine_dates) if self.engine_dates else None,
        }


# Images per forward pass when `score` embeds images: a few loose images are the usual
# case, so a smaller batch than `embed`'s starts scoring sooner.
DEFAULT_SCORE_BATCH_SIZE = 32
# 16,384 images a partition: minutes of work on one CPU actor, seconds on a GPU, and a
# killed run redoes little; each partition's commit is a few objects. (With --views
# each partition and view restarts the encoder actors, a model load each.)
DEFAULT_SCORE_PARTITION_ROWS = 16384

SCORE_FLAGS = {
    "views": "--views",
    "prevalence": "--prevalence",
    "weights": "--weights",
    "device": "--device",
    "batch_size": "--batch-size",
    "address": "--address",
    "workers": "--workers",
    "gpus_per_worker": "--gpus-per-worker",
    "fmt": "--format",
    "partition_rows": "--partition-rows",
}


@dataclass(frozen=True)
class ScoreOptions:
    """How ``facebank score`` scores, whatever the engine.

    Attributes:
        views: also score each image under these views.
        prevalence: base rate of AI images for probabilities and precision.
        weights: backbone weights file for embedding images offline.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (Ray: ``cpu`` or
            ``cuda`` actors only).
        batch_size: images per forward pass when embedding.
        progress: progress bars on stderr.
        storage_options: fsspec options for inputs, head or output on a store.
        address, workers, gpus_per_worker: the Ray cluster and its encoder actors
            (``--engine ray`` only).
        fmt, partition_rows: the partition files of ``--engine ray --out DIR``.
    """

    views: tuple[str, ...] = ()
    prevalence: float | None = None
    weights: str | os.PathLike | None = None
    device: str = "auto"
    batch_size: int = DEFAULT_SCORE_BATCH_SIZE
    progress: bool = False
    storage_options: Mapping[str, Any] | None = None
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    fmt: str = "parquet"
    partition_rows: int = DEFAULT_SCORE_PARTITION_ROWS

    def refuse(self, reasons: Mapping[str, str], *, engine: str) -> None:
        """One line for the first field of ``reasons`` set away from its default."""
        refuse_options(self, reasons, engine=engine, flags=SCORE_FLAGS)


def replace_options(cls: type[Any], options: Any, fields: Mapping[str, Any], *, what: str) -> Any:
    """``options`` (an instance of the frozen dataclass ``cls``; None: its defaults) with
    ``fields`` replaced; an unknown field is a one-line error naming the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise FacebankError(f"unknown {what} option(s) {unknown}; valid: {', '.join(names)}")
    base = options if options is not None else cls()
    return dataclasses.replace(base, **fields) if fields else base


def refuse_options(
    options: Any, reasons: Mapping[str, str], *, engine: str, flags: Mapping[str, str]
) -> None:
    """One-line :class:`FacebankError` for the first field of ``reasons`` (field -> why,
    or what to do instead) that ``options`` (a dataclass) sets away from its default:
    ``--flag V is not supported by the X engine; why``."""
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    for name, why in reasons.items():
        value = getattr(options, name)
        if value != defaults[name]:
            shown = os.fspath(value) if isinstance(value, os.PathLike) else value
            raise FacebankError(
                f"{flags.get(name, name)} {shown!r} is not supported by the {engine} engine; {why}"
            )
