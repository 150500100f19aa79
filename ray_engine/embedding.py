"""The Ray Data engine: the embedding runner spread over a Ray cluster, into a partitioned bank.

``facebank embed SOURCE --backbone B --out BANK --engine ray`` runs the same work as
:func:`embed.runner.embed_source` as a Ray Data pipeline::

    listed items (folder or manifest)          driver: scan_source, fixed partitions
      -> map_batches(_decode_batch)            CPU tasks: read once, sha256, decode (+ metadata),
                                               view, the backbone's resize/crop -> uint8
      -> map_batches(_EncodeBatches)           actor pool: the model loaded once per actor,
                                               one GPU per actor where the cluster has GPUs
      -> iter_batches (in order)               driver: dedupe by sha256, write_partition
      -> consolidate                           driver: one table for zarr/xarray readers

Scoring (``ray_engine.scoring``) runs the same decode tasks and actors through
:func:`iter_encoded_ray` for any head's spec: for a head of several backbones the
decode task applies each member's transform to the one decoded image and the actor
loads every member (features side by side); for a block range it taps every block
and keeps the range.

Decisions:

- **Partitions** are slices of ``R`` items, in input order, of what the bank does not
  hold yet, numbered after the committed ones
  (:func:`embed.partitions.committed_partitions`); each is committed atomically on
  its own (a single marker object). A resumed run (same arguments) therefore redoes
  only what no committed partition holds - the rest of a killed run, files that
  failed, files added since - so a run killed anywhere loses at most the partitions
  in flight and never duplicates a row.
- **Order and duplicates**: Ray Data runs with ``preserve_order``, so rows reach the
  driver in item order and the duplicate policy is the local runner's (the first
  path with a given sha256 is kept; later copies are recorded in ``duplicates``, and
  copies across engines or splits warn). The final bank equals the local runner's
  (same rows in the same order, features equal up to float rounding of batch
  composition).
- **Writes** go through the driver: it holds the bank's writer lock and writes each
  partition as it completes (features of ``R`` rows are a few MB; the driver is not
  the bottleneck below ~10^4 images/s). Workers could write partitions themselves -
  the partition protocol allows any writer - once dedupe moves to consolidation.
- **Faults**: encoder actors are restarted and their batches retried by Ray Data
  (``max_restarts=-1``); a killed driver leaves committed partitions that the same
  command resumes from. Failed images are recorded and retried on every run, as the
  local runner does (the bank keeps one record per path that still fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facebank.core.errors import FacebankError
from facebank.embed.backbones.compat import backbone_id
from facebank.embed.backbones.spec import as_spec
from facebank.embed.bank.bank import DEFAULT_CHUNK_ROWS, FeatureBank
from facebank.embed.bank.partitions import (
    auto_shard_rows,
    committed_partitions,
    consolidate,
    write_partition,
)
from facebank.embed.inputs.datasets import ImageItem, decode_path, encode_path, scan_source
from facebank.embed.inputs.decode import pixel_transform
from facebank.embed.inputs.metadata import METADATA_SCHEMA, metadata_columns
from facebank.embed.runner.loader import (
    Encoder,
    Transforms,
    input_side,
    load_one,
    make_backbone,
    progress_bar,
)
from facebank.embed.runner.options import DEFAULT_PARTITION_ROWS, EmbedOptions
from facebank.embed.runner.writer import (
    BankState,
    EmbedSummary,
    EncodedImages,
    LoopClock,
    RowWriter,
    interruptible,
    open_bank_for,
)

__all__ = [
    "RAY_INSTALL_HINT",
    "RayOptions",
    "embed_source_ray",
    "encode_images_ray",
    "import_ray",
    "iter_encoded_ray",
    "ray_cluster",
    "ray_options_for",
    "ray_options_for_device",
]

RAY_INSTALL_HINT = "pip install 'facebank[ray]'  (Ray Data: pip install 'ray[data]')"


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # the Data library is a separate extra
    except ImportError:
        raise FacebankError(
            "--engine ray needs Ray Data, which is not installed; install it with "
            f"{RAY_INSTALL_HINT}, or use the default --engine local"
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes.

    Attributes:
        address: ``None`` starts a local cluster for this run (or uses the one this
            process already initialised); ``"auto"`` joins a running cluster;
            ``"ray://host:10001"`` a remote one through Ray Client.
        workers: encoder actors; default one per GPU of the cluster (GPU clusters),
            else 1.
        gpus_per_worker: GPUs per encoder actor; default 1 where the cluster has GPUs,
            else 0 (CPU actors).
        partition_rows: items per partition (the unit of commit and of resume).
        consolidate: move the partitions into the bank's own arrays at the end, so
            plain zarr/xarray readers see every row; ``False`` leaves them as
            partitions (``FeatureBank`` reads them all the same; a later
            ``FeatureBank.open(bank, mode="a")`` or ``partitions.consolidate`` merges
            them), which saves rewriting every feature once on very large banks.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    partition_rows: int = DEFAULT_PARTITION_ROWS
    consolidate: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise FacebankError(f"--workers {self.workers!r} is not valid; give 1 or more")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise FacebankError(
                f"--gpus-per-worker {self.gpus_per_worker!r} is not valid; give 0 or more"
            )
        if self.partition_rows < 1:
            raise FacebankError(
                f"--partition-rows {self.partition_rows!r} is not valid; give 1 or more"
            )


# ---------------------------------------------------------------- CPU tasks
def _decode_batch(
    batch: dict[str, np.ndarray],
    *,
    view: Any,
    transform: Any,
    draft_size: int | None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Ray task: files (paths or store URLs) -> sha256, transformed pixels, metadata
    (failures as reasons).

    ``transform`` returns one tensor per backbone (``embed.runner.loader.Transforms``): each
    image is read and decoded once, and each backbone's own transform is applied to it;
    member ``k``'s pixels are ``pixels_k``."""
    n = len(batch["index"])
    sha: list[str] = []
    reason: list[str] = []
    tensors: list[Any] = []
    metas: list[dict[str, Any]] = []
    for file in batch["file"]:
        digest, x, why, meta = load_one(
            decode_path(str(file)),  # (build_dataset sends names encoded)
            view=view,
            transform=transform,
            draft_size=draft_size,
            storage_options=storage_options,
        )
        sha.append(digest or "")
        reason.append(why or "")
        tensors.append(x)
        metas.append(meta or {})
    out = {
        "index": np.asarray(batch["index"]),
        "sha": np.asarray(sha),
        "reason": np.asarray(reason),
    }
    ok = [x for x in tensors if x is not None]
    for k in range(len(ok[0]) if ok else 1):
        shape = tuple(ok[0][k].shape) if ok else (3, 1, 1)
        # uint8 where the backbone's transform allows (a quarter of float32's bytes
        # through the object store); the actor normalises on its device
        dtype = ok[0][k].numpy().dtype if ok else np.uint8
        pixels = np.zeros((n, *shape), dtype=dtype)
        for j, x in enumerate(tensors):
            if x is not None:
                pixels[j] = x[k].numpy()
        out[f"pixels_{k}"] = pixels
    for key, col in metadata_columns(metas).items():
        out[f"meta_{key}"] = col
    return out


# ---------------------------------------------------------------- encoder actors
class _EncodeBatches:
    """Ray actor: the backbones loaded once, then pixels -> features batch after batch.

    ``spec`` is a bank's or a head's: a head of several backbones (fusion or joined
    features) loads every member and returns their features side by side in the
    member order; a head of a block range taps every block and returns the range
    (:func:`embed.multi.member_backbones`, as the local engine).
    """

    def __init__(self, spec: dict[str, Any], weights: str | None, device: str) -> None:
        import torch

        from facebank.embed.runner.multi import member_backbones

        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.members = member_backbones(spec, device=device, weights=weights)
        # the local engines' model call: uint8 normalised on the device, freed memory kept
        self.encoders = [Encoder(bb, compile=False, batch_size=1) for bb, _ in self.members]
        self.dim = int(as_spec(spec).dim)  # (member_backbones checked the members add up)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["reason"] == ""
        features = np.zeros((len(ok), self.dim), dtype=np.float32)
        if ok.any():
            parts = []
            for k, (encoder, (_, cols)) in enumerate(zip(self.encoders, self.members, strict=True)):
                x = torch.from_numpy(np.ascontiguousarray(batch[f"pixels_{k}"][ok]))
                parts.append(encoder(x)[:, cols])
            features[ok] = np.concatenate(parts, axis=1)
        result = {k: v for k, v in batch.items() if not k.startswith("pixels_")}
        result["features"] = features
        return result


def resolve_workers(ray: Any, opts: RayOptions) -> tuple[int, float, str]:
    """``(encoder actors, GPUs per actor, actor device)`` for the connected cluster."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = opts.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    if gpus > cluster_gpus:
        raise FacebankError(
            f"--gpus-per-worker {gpus:g} but the Ray cluster has {cluster_gpus:g} GPU(s); "
            "give --gpus-per-worker 0 to encode on CPUs, or connect to a cluster with GPUs"
        )
    workers = opts.workers or (max(1, int(cluster_gpus // gpus)) if gpus > 0 else 1)
    return workers, float(gpus), "cuda" if gpus > 0 else "cpu"


def build_dataset(
    ray: Any,
    files: Sequence[str],
    *,
    ids: Sequence[int],
    backbone: Any,
    view: Any,
    weights: Any,
    device: str,
    workers: int,
    gpus: float,
    batch_size: int,
    spec: Mapping[str, Any] | None = None,
    actor: type = _EncodeBatches,
    actor_kwargs: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """The Ray Data pipeline files -> decode tasks -> encoder actors, in input order.

    Args:
        backbone: one backbone, or ``[(backbone, columns)]`` of every backbone a head
            needs (:func:`embed.multi.member_backbones`), built on the driver for their
            transforms and input sizes.
        spec: what the actors rebuild (default ``backbone.spec``): a head's spec for
            several backbones or a block range.

    Returns a ``ray.data.Dataset`` whose batches hold ``index`` (from ``ids``), ``sha``,
    ``reason`` ("" when embedded), ``features`` ``(n, dim)`` and ``meta_<column>``.
    """
    members = [bb for bb, _ in backbone] if isinstance(backbone, list) else [backbone]
    if spec is None:
        spec = members[0].spec
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    # names travel as the one encoding writes them (encode_path: a name that is not UTF-8
    # or holds a newline is still text Arrow can hold, not a pickled fallback column);
    # the decode tasks give the exact name back
    rows = [{"index": int(i), "file": encode_path(f)} for i, f in zip(ids, files, strict=True)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={
            "view": view,
            "transform": Transforms([pixel_transform(t.transform) or t.transform for t in members]),
            "draft_size": view.draft_size(max(input_side(bb.spec) for bb in members)),
            # (for a SOURCE on a store: travels with the task, is never logged)
            "storage_options": storage_options,
        },
        batch_size=batch_size,
        batch_format="numpy",
        # on a CPU-only cluster this matches the encoders' resources, so Ray Data
        # fuses decoding into the encoder actors (no pixels through the object
        # store); with GPUs the two stay apart: CPU tasks feed the GPU actors
        num_cpus=1,
    )
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs={
            "spec": dict(spec),
            "weights": str(weights) if weights is not None else None,
            "device": device,
            **(actor_kwargs or {}),
        },
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus,
        num_cpus=1 if gpus == 0 else 0.5,  # (the GPU actor's host side is light)
        batch_size=batch_size,
        batch_format="numpy",
    )
    return ds


# ---------------------------------------------------------------- driver
def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class _PartitionWriter(RowWriter):
    """The local runner's write step, committing one partition per flush."""

    def __init__(self, bank: FeatureBank, state: BankState) -> None:
        super().__init__(bank, state, flush_rows=1 << 62, flush_seconds=float("inf"))
        self.part_failures: list[dict[str, str]] = []
        self.part_dups_start = len(state.duplicates)
        self.partitions_written = 0
        self.write_seconds = 0.0

    def fail(self, item: ImageItem, reason: str) -> None:
        super().fail(item, reason)
        self.part_failures.append({"path": item.path, "reason": reason})

    def commit_partition(self, index: int) -> None:
        t = time.perf_counter()
        items = self.pending_items
        n = len(items)
        X = np.concatenate(self.pending_X) if n else np.zeros((0, self.bank.dim), np.float32)
        columns = {
            "label": np.asarray([it.label for it in items], dtype=np.int8),
            "engine": np.asarray([it.engine for it in items], dtype=str),
            "path": np.asarray([it.path for it in items], dtype=str),
            "split": np.asarray([it.split for it in items], dtype=str),
            "sha256": np.asarray(self.pending_sha, dtype=str),
            **metadata_columns(self.pending_meta),
            "group": np.asarray([it.group for it in items], dtype=str),
        }
        attrs = {
            "failures": self.part_failures,
            "duplicates": self.state.duplicates[self.part_dups_start :],
        }
        write_partition(self.bank, index, features=X, columns=columns, attrs=attrs)
        self.embedded += n
        self.pending_items, self.pending_sha, self.pending_meta, self.pending_X = [], [], [], []
        self.part_failures = []
        self.part_dups_start = len(self.state.duplicates)
        self.partitions_written += 1
        self.write_seconds += time.perf_counter() - t


def plan_partitions(
    items: Sequence[ImageItem], present: set[str], done: set[int], rows: int
) -> tuple[list[tuple[int, list[int]]], int]:
    """Partitions of the items the bank does not hold yet, numbered after the committed ones.

    What is left (not embedded, not a recorded duplicate: new files, files that failed,
    the rest of a killed run) is cut in input order into partitions of ``rows`` items,
    indexed from ``max(done) + 1``, so they are read after every committed partition
    - the local runner's append order - and a file added to SOURCE later is never
    hidden inside an old partition's range.

    Returns:
        ``([(partition index, item indices to embed)], items skipped as present)``.
    """
    left = [i for i, it in enumerate(items) if it.path not in present]
    start = max(done) + 1 if done else 0
    todo = [(start + k, left[a : a + rows]) for k, a in enumerate(range(0, len(left), rows))]
    return todo, len(items) - len(left)


@contextlib.contextmanager
def ray_cluster(ray: Any, address: str | None) -> Iterator[None]:
    """Connect to (or start) a cluster; shut down only one this call started."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise FacebankError(
            f"cannot reach Ray cluster {where!r} ({type(exc).__name__}: {str(exc)[:160]}); "
            "give --address auto for a running cluster, ray://HOST:10001 for a remote one, "
            "or leave it out to start a local one"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def ray_options_for(embed: EmbedOptions, opts: RayOptions) -> RayOptions:
    """``opts`` with ``embed.device`` applied (cpu: CPU actors; cuda: GPU actors), after
    refusing in one line what a Ray run cannot honour."""
    embed.refuse(
        {
            "num_workers": "the Ray cluster's CPUs decode; --workers with --engine ray sets "
            "the encoder actors",
            "compile": "Ray actors run the backbone uncompiled; drop --compile or use "
            "--engine local",
            "flush_rows": "a Ray run commits one partition at a time; set --partition-rows",
            "threads": "each Ray actor takes its threads from its CPUs (OMP_NUM_THREADS); "
            "drop --threads or use --engine local",
        },
        engine="ray",
    )
    if embed.decode == "gpu":
        raise FacebankError(
            "--decode gpu is not possible with --engine ray: its decode tasks run on CPUs; "
            "use --decode cpu (or auto), or --engine local"
        )
    return ray_options_for_device(str(embed.device), opts)


def ray_options_for_device(device: str, opts: RayOptions) -> RayOptions:
    """``opts`` with a ``--device`` applied to the encoder actors: ``cpu`` CPU actors
    (``gpus_per_worker`` 0), ``cuda`` GPU actors (1 GPU each unless given), ``auto`` as
    the cluster has; ``cuda:N`` is refused in one line (Ray places the actors)."""
    if device not in ("auto", "cpu", "cuda"):
        raise FacebankError(
            f"--device {device!r} is not supported by the ray engine; Ray places the actors "
            "on GPUs itself: give --device cuda (or cpu) and --gpus-per-worker"
        )
    if device == "cpu":
        if opts.gpus_per_worker:
            raise FacebankError(
                f"--device cpu contradicts --gpus-per-worker {opts.gpus_per_worker:g}; "
                "give one of them"
            )
        return dataclasses.replace(opts, gpus_per_worker=0.0)
    if device == "cuda" and opts.gpus_per_worker is None:
        return dataclasses.replace(opts, gpus_per_worker=1.0)
    return opts


def embed_source_ray(
    source: str | os.PathLike,
    *,
    backbone: str,
    out: str | os.PathLike,
    options: EmbedOptions | None = None,
    ray_options: RayOptions | None = None,
    **fields: Any,
) -> EmbedSummary:
    """:func:`embed.runner.embed_source` on a Ray cluster (see the module docstring).

    Args:
        source, backbone, out: as for :func:`~embed.runner.embed_source`.
        options, **fields: the :class:`~facebank.embed.runner.options.EmbedOptions` of
            ``embed_source``. ``device="cpu"`` runs CPU actors (``gpus_per_worker`` 0),
            ``"cuda"`` GPU actors; ``cuda:N``, ``num_workers`` (decoding processes; the
            cluster's CPUs decode here), ``compile`` and ``flush_rows`` (a partition is
            the unit of commit: ``partition_rows``) are refused in one line before any
            work.
        ray_options: cluster address, encoder actors, GPUs per actor, partition size.

    Returns:
        An :class:`~embed.runner.EmbedSummary`; ``device`` names the actors' device.

    Raises:
        FacebankError: Ray is not installed, the cluster cannot be reached, or an option
        this engine refuses (before any work). The errors of
        :func:`~embed.runner.embed_source`.
        EmbedInterrupted: SIGINT/SIGTERM; committed partitions are kept.
    """
    from facebank.embed.inputs.views import parse_view

    embed = EmbedOptions.build(options, **fields)
    opts = ray_options_for(embed, ray_options or RayOptions())
    ray = import_ray()
    t0 = time.perf_counter()
    batch_size, storage_options = embed.batch_size, embed.storage_options
    src = scan_source(source, real_names=embed.real_names, storage_options=storage_options)
    vw = parse_view(embed.view)
    # on the driver only for its spec, transform and the weights check (before any bank)
    bb = make_backbone(
        backbone, device="cpu", weights=embed.weights, image_size=embed.image_size,
        layer=embed.layer,
    )  # fmt: skip
    spec = dict(bb.spec)
    weights, progress, dtype, chunk_rows = (
        embed.weights,
        embed.progress,
        embed.dtype,
        embed.chunk_rows,
    )
    with ray_cluster(ray, opts.address):
        bank = open_bank_for(
            out, spec=spec, backbone=backbone, view=vw.name, src=src, source=source,
            dtype=dtype, chunk_rows=chunk_rows, storage_options=storage_options,
            # large partitions: a sharded bank, so consolidation writes one object per
            # array and partition (docs/bank-format.md "Chunks, shards and size")
            shard_rows=auto_shard_rows(opts.partition_rows, chunk_rows or DEFAULT_CHUNK_ROWS),
        )  # fmt: skip
        try:
            with interruptible(bank):
                return _run_ray(
                    ray, src, bank, bb, vw, opts, batch_size, progress, weights, t0,
                    storage_options=storage_options,
                )  # fmt: skip
        finally:
            bank.close()


def _run_ray(
    ray: Any,
    src: Any,
    bank: FeatureBank,
    bb: Any,
    vw: Any,
    opts: RayOptions,
    batch_size: int,
    progress: bool,
    weights: Any,
    t0: float,
    *,
    storage_options: dict[str, Any] | None = None,
) -> EmbedSummary:
    items = src.items
    state = BankState.load(bank)
    plan, skipped = plan_partitions(
        items, state.present, committed_partitions(bank), opts.partition_rows
    )
    total = sum(len(ix) for _, ix in plan)
    workers, gpus, device = resolve_workers(ray, opts)
    writer = _PartitionWriter(bank, state)
    part_of = {i: k for k, ix in plan for i in ix}
    t_loop = time.perf_counter()
    clock = LoopClock()
    if plan:
        ds = build_dataset(
            ray,
            [items[i].file for _, ix in plan for i in ix],
            ids=[i for _, ix in plan for i in ix],
            backbone=bb,
            view=vw,
            weights=weights,
            device=device,
            workers=workers,
            gpus=gpus,
            batch_size=batch_size,
            storage_options=storage_options,
        )
        description = f"embed {bb.spec.get('name', '?')} \\[{vw.name}] on Ray"
        current: int | None = None
        with progress_bar(progress, total, description) as bar:
            task = bar.add_task(description, total=total) if bar is not None else None
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for j, index in enumerate(batch["index"].tolist()):
                    k = part_of[index]
                    if current is not None and k != current:
                        writer.commit_partition(current)
                    current = k
                    item = items[index]
                    reason = str(batch["reason"][j])
                    if reason:
                        writer.fail(item, reason)
                        continue
                    meta = {
                        key: _py(batch[f"meta_{key}"][j])
                        for key in (*METADATA_SCHEMA, "face_found")
                    }
                    writer.take(
                        [item], [str(batch["sha"][j])], batch["features"][j : j + 1], [meta]
                    )
                clock.tick(len(batch["index"]))
                if bar is not None:
                    bar.advance(task, len(batch["index"]))
            if current is not None:
                writer.commit_partition(current)
    bank.update_attrs({"ignored": [{"path": p, "reason": r} for p, r in src.ignored]})
    if opts.consolidate:
        consolidate(bank)
    # one record per path that is still failing (retried ones that failed again were
    # recorded again by their new partition; ones that now succeeded are dropped)
    held = set(bank.paths.tolist())
    still = {f["path"]: f for f in bank.failures if f["path"] not in held}
    bank.update_attrs({"failures": list(still.values())})
    writer.warn_cross_duplicates(stacklevel=4)
    t_end = time.perf_counter()
    return writer.summary(
        skipped_present=skipped,
        seconds=t_end - t0,
        loop_seconds=t_end - t_loop,
        ignored=src.ignored,
        device=f"ray:{workers}x{device}",
        backbone=backbone_id(bb.spec),
        view=vw.name,
        clock=clock,
    )


def _driver_backbones(backbone: Any, weights: Any) -> tuple[list[tuple[Any, slice]], dict]:
    """The backbones ``backbone`` (a registry name or a bank's/head's spec) needs, built
    on the driver's CPU for their transforms, and the spec the actors rebuild.

    Built as the local engine builds them (:func:`embed.multi.member_backbones`), so
    the weights resolve alike and a missing one fails with the local message, in one
    line and before the pipeline starts.
    """
    from facebank.embed.runner.multi import member_backbones

    if isinstance(backbone, str):
        bb = make_backbone(backbone, device="cpu", weights=weights, image_size=None)
        return [(bb, slice(None))], dict(bb.spec)
    return member_backbones(backbone, device="cpu", weights=weights), dict(backbone)


def iter_encoded_ray(
    paths: Sequence[str | os.PathLike],
    *,
    backbone: Any,
    view: str = "original",
    weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    ray_options: RayOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[list[int], EncodedImages]]:
    """Features of ``paths`` streamed batch by batch, in input order, from ONE pipeline.

    The encoder actors start (and load the models) once for the whole list, however
    long; the caller cuts the stream where it likes (``ray_engine.scoring`` cuts it
    into output partitions). Must be consumed inside :func:`ray_cluster`.

    ``backbone`` may be any head's spec: for a head of several backbones (fusion or
    joined features) each image is decoded once and embedded with every member, the
    features side by side in the member order; for a block range every block is
    tapped and the range kept - the features :func:`embed.multi.encode_images_for`
    gives on this machine.

    The backbones are built on the driver when this is called (a missing weight fails
    here, with the local engine's message); the pipeline starts at the first ``next``.

    Args:
        storage_options: fsspec options for ``paths`` that are store URLs; they travel
            with the decode tasks (never logged).

    Returns:
        An iterator of ``(positions, encoded)``: the input positions a batch covers
        (embedded or failed, ascending) and their :class:`~embed.runner.EncodedImages`.
    """
    from facebank.embed.inputs.views import parse_view

    opts = ray_options or RayOptions()
    ray = import_ray()
    vw = parse_view(view)
    # built now, not at the first batch: a backbone that cannot be loaded stops the
    # caller here, before it writes anything
    members, spec = _driver_backbones(backbone, weights)
    files = [str(p) for p in paths]
    return _iter_pipeline(
        ray, files, members=members, spec=spec, view=vw, weights=weights,
        batch_size=batch_size, opts=opts,
        storage_options=dict(storage_options) if storage_options else None,
    )  # fmt: skip


def _iter_pipeline(
    ray: Any,
    files: list[str],
    *,
    members: list[tuple[Any, slice]],
    spec: dict[str, Any],
    view: Any,
    weights: Any,
    batch_size: int,
    opts: RayOptions,
    storage_options: dict[str, Any] | None,
) -> Iterator[tuple[list[int], EncodedImages]]:
    """:func:`iter_encoded_ray`'s pipeline; it starts at the first ``next``."""
    if not files:
        return
    workers, gpus, dev = resolve_workers(ray, opts)
    ds = build_dataset(
        ray, files, ids=range(len(files)), backbone=members, spec=spec, view=view,
        weights=weights, device=dev, workers=workers, gpus=gpus, batch_size=batch_size,
        storage_options=storage_options,
    )  # fmt: skip
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        good = batch["reason"] == ""
        failures = [
            (files[i], str(why))
            for i, why in zip(batch["index"][~good].tolist(), batch["reason"][~good], strict=True)
        ]
        enc = EncodedImages(
            features=np.asarray(batch["features"][good], dtype=np.float32),
            paths=[files[i] for i in batch["index"][good].tolist()],
            failures=failures,
            sha256=[str(h) for h in batch["sha"][good]],
        )
        yield sorted(batch["index"].tolist()), enc


def encode_images_ray(
    paths: Sequence[str | os.PathLike],
    *,
    backbone: Any,
    view: str = "original",
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    ray_options: RayOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> EncodedImages:
    """:func:`embed.multi.encode_images_for` on a Ray cluster (same arguments and result:
    any head's spec, several backbones or a block range included).

    ``device`` is decided by the cluster (GPU actors where it has GPUs) and is accepted
    only for the common signature, so ``heads.scoring.score_run(encode=...)`` can take
    this function. Call it inside :func:`ray_cluster` to reuse one cluster across calls.
    ``storage_options``: fsspec options for image URLs, passed to the decode tasks.

    Returns:
        :class:`~embed.runner.EncodedImages` in input order; unreadable files are
        ``failures``.
    """
    del device  # the actors' device follows the cluster's GPUs
    opts = ray_options or RayOptions()
    ray = import_ray()
    parts: list[EncodedImages] = []
    dim = 0
    with ray_cluster(ray, opts.address):
        for _, enc in iter_encoded_ray(
            paths, backbone=backbone, view=view, weights=weights, batch_size=batch_size,
            ray_options=opts, storage_options=storage_options,
        ):  # fmt: skip
            parts.append(enc)
            dim = enc.features.shape[1]
    if not dim:  # nothing embedded: the width from the spec (a name: its backbone built)
        spec = (
            make_backbone(backbone, device="cpu", weights=weights, image_size=None).spec
            if isinstance(backbone, str)
            else backbone
        )
        dim = int(as_spec(spec).dim)
    return EncodedImages(
        features=np.concatenate([p.features for p in parts] or [np.zeros((0, dim))]).astype(
            np.float32
        ),
        paths=[q for p in parts for q in p.paths],
        failures=[f for p in parts for f in p.failures],
        sha256=[h for p in parts for h in p.sha256],
    )
