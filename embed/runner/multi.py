"""Several backbones over one dataset: embedded with one decode, joined by image content.

:func:`embed_source_multi` decodes each image once and embeds it with every backbone
(one bank per backbone), reusing the runner's load -> compute -> write steps.

:func:`join_banks` matches the rows of banks embedded by *different* backbones from the
same images by ``sha256`` of the file bytes, and serves their features side by side as
one bank-like object (:class:`JoinedBank`): a head trained on it is a
feature-level fusion. Rows present in some banks only are left out and reported (a
:class:`~facebank.core.errors.UnmatchedRowsWarning` and ``JoinedBank.unmatched``); rows
whose label, engine or split disagree between banks are an error. Banks of one backbone
given together are concatenated first (several datasets of one backbone).

Banks of one backbone whose layer taps or preprocessing differ are not joined (an error
naming both banks): a tap is part of a bank's identity, and such banks never mix silently.

The joined identity is a :class:`~facebank.embed.backbones.spec.BackboneSpec` with library
``"joined"`` whose model names every member and whose ``weights_sha256`` digests the
member specs, so a head trained on joined banks refuses any other combination.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    FacebankError,
    TestOnlyBackboneWarning,
    UnmatchedRowsWarning,
)
from facebank.core.types import Device
from facebank.embed.backbones.compat import backbone_id, require_same_backbone, same_backbone
from facebank.embed.backbones.spec import BackboneSpec, as_spec
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.datasets import scan_source
from facebank.embed.inputs.decode import plan_threads, torch_threads
from facebank.embed.inputs.views import parse_view
from facebank.embed.runner.loader import (
    Encoder,
    ImageDataset,
    ItemFiles,
    Transforms,
    collate_each,
    columns_width,
    decoded_batches,
    input_side,
    make_backbone,
    progress_bar,
)
from facebank.embed.runner.local import encode_files, encode_images
from facebank.embed.runner.options import EmbedOptions
from facebank.embed.runner.writer import (
    BankState,
    EmbedSummary,
    EncodedImages,
    RowWriter,
    interruptible,
    open_bank_for,
    plan_batches,
    record_runtime,
    resolve_flush_rows,
)

_log = logging.getLogger(__name__)

__all__ = [
    "BlockView",
    "JoinedBank",
    "banks_for_spec",
    "embed_source_multi",
    "encode_images_for",
    "join_banks",
    "joined_spec",
    "member_backbones",
    "member_specs",
    "select_blocks",
]


def joined_spec(specs: Sequence[Any]) -> BackboneSpec:
    """The identity of features made by ``specs`` side by side, in this order."""
    members = [as_spec(s) for s in specs]
    digest = hashlib.sha256(
        json.dumps([m.to_dict() for m in members], sort_keys=True).encode()
    ).hexdigest()
    return BackboneSpec(
        name="+".join(m.name for m in members),
        library="joined",
        model=" + ".join(backbone_id(m) for m in members),
        pretrained=None,
        weights_sha256=digest,
        dim=sum(m.dim for m in members),
        test_only=any(m.test_only for m in members),
    )


@dataclass
class JoinedBank:
    """Banks of different backbones over the same images, rows matched by sha256.

    Attributes:
        members: One bank per backbone, in the order their columns appear.
        rows: ``(n, len(members))`` int64: row ``i`` of the join is ``rows[i, k]`` of
            member ``k``.
        columns: ``(start, stop)`` of each member's features in a joined row.
        unmatched: Per member path, how many of its rows have no partner in every other.
    """

    members: list[Any]
    rows: np.ndarray
    columns: list[tuple[int, int]]
    unmatched: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def member_specs(self) -> list[dict[str, Any]]:
        return [dict(m.backbone) for m in self.members]

    @property
    def backbone(self) -> dict[str, Any]:
        """The joined spec, plus ``members``: each member's own spec, in column order.

        ``members`` is what lets a head trained on this join embed images later
        (:func:`encode_images_for`); the identity check reads the joined fields only
        (``weights_sha256`` digests the member specs).
        """
        return {**joined_spec(self.member_specs).to_dict(), "members": self.member_specs}

    @property
    def dim(self) -> int:
        return self.columns[-1][1]

    @property
    def name(self) -> str:
        return "+".join(str(m.name) for m in self.members)

    @property
    def path(self) -> str:
        return " + ".join(str(m.path) for m in self.members)

    @property
    def view(self) -> str:
        return str(self.members[0].view)

    def _column(self, attr: str) -> np.ndarray:
        return np.asarray(getattr(self.members[0], attr))[self.rows[:, 0]]

    @property
    def labels(self) -> np.ndarray:
        return self._column("labels")

    @property
    def engines(self) -> np.ndarray:
        return self._column("engines")

    @property
    def paths(self) -> np.ndarray:
        return self._column("paths")

    @property
    def splits(self) -> np.ndarray:
        return self._column("splits")

    @property
    def sha256(self) -> np.ndarray:
        return self._column("sha256")

    @property
    def digest(self) -> str:
        """Digest of the member digests and the row matching."""
        h = hashlib.blake2b(digest_size=16)
        for m in self.members:
            h.update(str(m.digest).encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        return h.hexdigest()

    def load_features(
        self, rows: Sequence[int] | np.ndarray | None = None, *, dtype: Any = np.float32
    ) -> np.ndarray:
        """``(n, dim)`` features of joined rows (all when ``rows`` is None), side by side."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        parts = [
            m.load_features(self.rows[idx, k], dtype=dtype) for k, m in enumerate(self.members)
        ]
        return np.concatenate(parts, axis=1)

    def iter_features(self, *, chunk_rows: int | None = None, dtype: Any = np.float32) -> Any:
        """``(start, stop, X)`` over the joined rows in order; ``X`` is ``(stop - start, dim)``."""
        step = int(chunk_rows or 4096)
        for a in range(0, len(self), step):
            b = min(a + step, len(self))
            yield a, b, self.load_features(np.arange(a, b), dtype=dtype)

    def member_features(self, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of member ``k`` alone for joined rows (all when None)."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows)
        return self.members[k].load_features(self.rows[idx, k])


def _group_by_backbone(banks: Sequence[Any]) -> list[Any]:
    groups: list[list[Any]] = []
    for bank in banks:
        for group in groups:
            if same_backbone(group[0].backbone, bank.backbone):
                group.append(bank)
                break
        else:
            groups.append([bank])
    return [g[0] if len(g) == 1 else FeatureBank.concat(g) for g in groups]


def join_banks(banks: Sequence[Any], *, warn: bool = True) -> JoinedBank:
    """Join banks of different backbones over the same images (rows matched by sha256).

    Args:
        banks: Open banks, at least two backbones among them; banks sharing a backbone
            are concatenated first.
        warn: Warn (``UnmatchedRowsWarning``) when some rows have no partner.

    Returns:
        A :class:`JoinedBank` in the order of the first bank's rows.

    Raises:
        BackboneMismatchError: Banks of one backbone with different layer taps or
            preprocessing (both are named): they are one backbone, not two to fuse.
        FacebankError: Fewer than two backbones, banks of different views, no row shared
            by every bank, or shared rows whose label, engine or split disagree.
    """
    members = _group_by_backbone(list(banks))
    for i, m in enumerate(members):  # one backbone's banks of two taps/preprocessings
        for other in members[i + 1 :]:
            a, b = as_spec(m.backbone), as_spec(other.backbone)
            if (a.name, a.library, a.model, a.pretrained) == (
                b.name,
                b.library,
                b.model,
                b.pretrained,
            ):
                require_same_backbone(
                    a, b, a_name=f"bank {str(m.path)!r}", b_name=f"bank {str(other.path)!r}"
                )
    if len(members) < 2:
        raise FacebankError(
            f"join_banks needs banks of at least two backbones; all {len(banks)} share "
            f"{backbone_id(members[0].backbone)} - concatenate them instead"
        )
    views = {str(m.view) for m in members}
    if len(views) > 1:
        raise BankError(
            f"banks to join have views {sorted(views)}; join banks of one view (embed each "
            "backbone with the same --view)"
        )
    keys = [np.asarray(m.sha256).astype(str) for m in members]
    position = [{h: i for i, h in enumerate(k) if h} for k in keys]
    common = [h for h in keys[0] if h and all(h in pos for pos in position[1:])]
    if not common:
        names = ", ".join(repr(str(m.path)) for m in members)
        raise FacebankError(
            f"banks {names} share no rows (no image sha256 is in every one); embed the same "
            "images with each backbone before joining them"
        )
    rows = np.array([[pos[h] for pos in position] for h in common], dtype=np.int64)
    for attr in ("labels", "engines", "splits"):
        first = np.asarray(getattr(members[0], attr))[rows[:, 0]]
        for k, m in enumerate(members[1:], start=1):
            other = np.asarray(getattr(m, attr))[rows[:, k]]
            bad = np.flatnonzero(first.astype(str) != other.astype(str))
            if bad.size:
                i = int(bad[0])
                raise BankError(
                    f"{bad.size} image(s) have another {attr[:-1]} in bank "
                    f"{str(members[0].path)!r} than in bank {str(m.path)!r} (e.g. sha256 "
                    f"{common[i][:12]}: {first[i]!r} vs {other[i]!r}); embed both from the "
                    "same SOURCE"
                )
    unmatched = {str(m.path): int(len(m) - len(common)) for m in members}
    if warn and any(unmatched.values()):
        detail = ", ".join(f"{p!r}: {n}" for p, n in unmatched.items() if n)
        warnings.warn(
            f"joining banks by image sha256 left out rows without a partner in every bank "
            f"({detail}); {len(common)} rows are joined",
            UnmatchedRowsWarning,
            stacklevel=2,
        )
    columns, start = [], 0
    for m in members:
        columns.append((start, start + int(m.dim)))
        start += int(m.dim)
    return JoinedBank(members=members, rows=rows, columns=columns, unmatched=unmatched)


# ---------------------------------------------------------------- one decode, several backbones
def embed_source_multi(
    source: str | os.PathLike,
    *,
    backbones: Sequence[str],
    outs: Sequence[str | os.PathLike],
    options: EmbedOptions | None = None,
    **fields: Any,
) -> list[EmbedSummary]:
    """Embed SOURCE with several backbones, decoding each image once, into one bank each.

    Each worker reads, hashes and decodes a file once, applies the view once, then each
    backbone's own transform; the main process encodes the batch with every backbone and
    appends to every bank. Each bank resumes on its own (an image already in bank ``k``
    is not appended to it again), with the runner's commit, duplicate and failure rules.

    Args:
        source: As in :func:`~facebank.embed.runner.local.embed_source`.
        backbones: Registry names, one per bank (at least one).
        outs: Bank folders, aligned with ``backbones``.
        options, **fields: The :class:`~facebank.embed.runner.options.EmbedOptions` of
            ``embed_source``; one view, device, layer tap, batch and dtype for every
            backbone. ``weights`` and ``image_size`` belong to one backbone and are
            refused (one line, before any work).

    Returns:
        One :class:`~facebank.embed.runner.writer.EmbedSummary` per backbone, in order.

    Raises:
        FacebankError: ``backbones`` and ``outs`` differ in length, or repeat a name; an
        option this engine refuses. Any error of ``embed_source`` (weights missing: no
        bank is touched).
    """
    t0 = time.perf_counter()
    opts = EmbedOptions.build(options, **fields)
    opts.refuse(
        {
            "weights": "each backbone loads its own weights; embed one backbone at a time "
            "to use a checkpoint",
            "image_size": "each backbone keeps its own input size; embed one backbone at a "
            "time to change it",
        },
        engine="several-backbones",
    )
    if opts.decode == "gpu":
        raise FacebankError(
            "--decode 'gpu' is not supported by the several-backbones engine; each backbone "
            "resizes the one CPU-decoded image its own way: use --decode cpu (or auto), or "
            "embed one backbone at a time"
        )
    if len(backbones) != len(outs) or not backbones:
        raise FacebankError(
            f"give one --out per backbone: {len(backbones)} backbone(s), {len(outs)} bank(s)"
        )
    if len(set(backbones)) != len(backbones) or len({str(o) for o in outs}) != len(outs):
        raise FacebankError(f"backbones {list(backbones)} and their banks must not repeat")
    src = scan_source(source, real_names=opts.real_names, storage_options=opts.storage_options)
    vw = parse_view(opts.view)
    # every backbone first: missing weights fail before any bank is created or touched
    bbs = [
        make_backbone(name, device=opts.device, weights=None, image_size=None, layer=opts.layer)
        for name in backbones
    ]
    with contextlib.ExitStack() as stack:
        banks = []
        for name, out, bb in zip(backbones, outs, bbs, strict=True):
            bank = open_bank_for(
                out, spec=dict(bb.spec), backbone=name, view=vw.name, src=src, source=source,
                dtype=opts.dtype, chunk_rows=opts.chunk_rows,
                storage_options=opts.storage_options,
            )  # fmt: skip
            stack.callback(bank.close)
            stack.enter_context(interruptible(bank))
            banks.append(bank)
        return _run_multi(src, banks, bbs, vw, opts=opts, names=backbones, t0=t0)


def _run_multi(
    src: Any,
    banks: Sequence[FeatureBank],
    bbs: Sequence[Any],
    vw: Any,
    *,
    opts: EmbedOptions,
    names: Sequence[str],
    t0: float,
) -> list[EmbedSummary]:
    """load (what each bank holds) -> compute (one decode, every backbone) -> write."""
    batch_size = opts.batch_size
    states = [BankState.load(b) for b in banks]
    # an image is decoded when any bank still lacks it
    common = set.intersection(*(s.present for s in states))
    batches, skipped = plan_batches(src.items, common, batch_size)
    todo = [{i for b in batches for i in b if src.items[i].path not in s.present} for s in states]
    encoders = [Encoder(bb, compile=opts.compile, batch_size=batch_size) for bb in bbs]
    dev = encoders[0].device.type
    plan = plan_threads(
        device_type=dev, decode="cpu", workers=opts.num_workers, threads=opts.threads,
        heap=encoders[0].heap,
    )  # fmt: skip
    _log.info("embed: %s", plan.describe())
    for k, bank in enumerate(banks):
        record_runtime(bank, plan, device_type=dev, pending=len(todo[k]))
    dataset = ImageDataset(
        ItemFiles(src.items),
        view=vw,
        # uint8 pixels where a backbone's transform allows; each normalised by its Encoder
        transform=Transforms([e.pixels or e.backbone.transform for e in encoders]),
        draft_size=vw.draft_size(max(input_side(bb.spec) for bb in bbs)),
        storage_options=opts.storage_options,
    )
    flush = resolve_flush_rows(opts.flush_rows, batch_size)
    writers = [
        RowWriter(b, s, ignored=src.ignored, flush_rows=flush)
        for b, s in zip(banks, states, strict=True)
    ]
    loader = decoded_batches(
        dataset, batches, plan, device_type=dev, collate=collate_each,
        locks=[getattr(b, "_lock", None) for b in banks],
    )  # fmt: skip
    total = sum(len(b) for b in batches)
    description = f"embed {'+'.join(names)} \\[{vw.name}]"
    t_loop = time.perf_counter()
    threads = torch_threads(plan.torch_threads)
    with threads, progress_bar(opts.progress, total, description) as bar:
        task = bar.add_task(description, total=total) if bar is not None else None
        _multi_loop(loader, src.items, writers, encoders, todo, bar=bar, task=task)
    for w in writers:
        w.warn_cross_duplicates(stacklevel=3)
    t_end = time.perf_counter()
    summaries = [
        w.summary(
            skipped_present=len(src.items) - len(todo[k]),
            seconds=t_end - t0,
            loop_seconds=t_end - t_loop,
            ignored=src.ignored,
            device=str(encoders[k].device),
            backbone=backbone_id(bbs[k].spec),
            view=vw.name,
        )
        for k, w in enumerate(writers)
    ]
    for summary in summaries:
        summary.runtime = plan.as_dict()
    return summaries


def _multi_loop(
    loader: Any,
    items: Sequence[Any],
    writers: Sequence[RowWriter],
    encoders: Sequence[Encoder],
    todo: Sequence[set[int]],
    *,
    bar: Any,
    task: Any,
) -> None:
    """Encode each decoded batch with every backbone whose bank lacks its images
    (``todo[k]``), hand the rows to that bank's writer, commit all banks together."""
    for batch in loader:
        for k, writer in enumerate(writers):
            for index, _sha, reason in batch["failed"]:
                if index in todo[k]:
                    writer.fail(items[index], reason)
            if batch["x"] is None:
                continue
            keep = [j for j, i in enumerate(batch["index"]) if i in todo[k]]
            if not keep:
                continue
            X = encoders[k](
                batch["x"][k][keep] if len(keep) < len(batch["index"]) else batch["x"][k]
            )
            writer.take(
                [items[batch["index"][j]] for j in keep],
                [batch["sha"][j] for j in keep],
                X,
                [batch["meta"][j] for j in keep],
            )
        if bar is not None:
            bar.advance(task, len(batch["index"]) + len(batch["failed"]))
        if any(w.due() for w in writers):
            for w in writers:
                w.flush()
    for w in writers:
        w.flush()


# ---------------------------------------------------------------- block taps: some blocks
class BlockView:
    """A bank of ``layer="blocks"`` features seen through some of its blocks.

    Everything is the bank's except the features (their block columns only) and the
    backbone spec (``BackboneSpec.select_blocks``: the block range is part of the
    identity, so a head trained on blocks 20:24 refuses the full bank and block 23 alone).
    """

    def __init__(self, bank: Any, blocks: int | slice | str) -> None:
        spec = as_spec(bank.backbone)
        self.bank = bank
        self.columns = spec.block_columns(blocks)
        self.spec = spec.select_blocks(blocks)

    def __len__(self) -> int:
        return len(self.bank)

    def __getattr__(self, name: str) -> Any:  # labels, engines, paths, splits, sha256...
        return getattr(self.bank, name)

    @property
    def backbone(self) -> dict[str, Any]:
        return self.spec.to_dict()

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.bank.digest}:{self.columns.start}:{self.columns.stop}".encode())
        return h.hexdigest()

    def load_features(
        self, rows: Sequence[int] | np.ndarray | None = None, *, dtype: Any = np.float32
    ) -> np.ndarray:
        """``(n, dim)`` features of the selected blocks (all rows when None)."""
        return np.ascontiguousarray(self.bank.load_features(rows, dtype=dtype)[:, self.columns])

    def iter_features(self, *, chunk_rows: int | None = None, dtype: Any = np.float32) -> Any:
        """The bank's :meth:`~FeatureBank.iter_features`, selected blocks only."""
        for a, b, X in self.bank.iter_features(chunk_rows=chunk_rows, dtype=dtype):
            yield a, b, np.ascontiguousarray(X[:, self.columns])


def select_blocks(bank: Any, blocks: int | slice | str | None) -> Any:
    """``bank`` seen through some of its blocks (``"-1"``, ``"20:24"``, ``7``); ``None``/``"all"``
    returns the bank itself.

    Raises:
        FacebankError: The bank was not tapped at ``blocks``, or the selection is out of
            range (the valid range is named).
    """
    if blocks is None or blocks == "all":
        return bank
    return BlockView(bank, blocks)


# ---------------------------------------------------------------- a head's feature space
def member_specs(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The backbone specs whose features, side by side, make ``spec``'s features.

    A joined spec (``library="joined"``, written by :attr:`JoinedBank.backbone`) lists
    its members; any other spec is its own one member.

    Raises:
        FacebankError: A joined spec stored without its members (written before they
            were kept).
    """
    if as_spec(spec).library != "joined":
        return [dict(spec)]
    members = spec.get("members")
    if not members:
        raise FacebankError(
            f"the joined backbone {spec.get('name')!r} was stored without its member specs, "
            "so its features cannot be rebuilt from banks or images; re-train the head with "
            "`facebank train BANK_A BANK_B ...`"
        )
    return [dict(m) for m in members]


def _fit_bank(spec: Mapping[str, Any], bank: Any) -> Any | None:
    """``bank`` as the features ``spec`` names (itself, or some of its blocks), or None."""
    want, have = as_spec(spec), as_spec(bank.backbone)
    if want.same_space(have):
        return bank
    if want.layer == "blocks" and have.layer == "blocks" and want.blocks and have.blocks:
        (f, s), (f0, s0) = want.blocks, have.blocks
        if f0 <= f < s <= s0 and want.block_dim == have.block_dim:
            view = BlockView(bank, slice(f - f0, s - f0))
            if want.same_space(view.spec):
                return view
    return None


def banks_for_spec(spec: Mapping[str, Any] | None, banks: Sequence[Any], *, what: str) -> list[Any]:
    """Present ``banks`` as the feature space ``spec`` (a head's) was trained on.

    - a joined spec (feature-level or score-level fusion): each bank is matched to one
      member backbone (a ``--layer blocks`` bank through the member's block range), and
      the banks are joined by image sha256 (:func:`join_banks`, columns in the member
      order; rows lacking a partner are left out with an ``UnmatchedRowsWarning``);
    - a block range (``layer="blocks"``): a ``blocks`` bank of the same backbone is
      seen through that range (:class:`BlockView`);
    - anything else: the banks as given.

    A bank of another backbone is left for the caller's identity check (which names both)
    in the last two cases; in the first it is refused here.

    Args:
        spec: The head's stored backbone spec (``None``: banks returned as given).
        banks: Open banks.
        what: How the head is named in errors.

    Raises:
        BackboneMismatchError: A bank matching no member of a joined spec, or a member
            with no bank (both are named).
    """
    banks = list(banks)
    if not spec or not banks:
        return banks
    if as_spec(spec).library != "joined":
        return [_fit_bank(spec, b) or b for b in banks]
    members = member_specs(spec)
    names = ", ".join(backbone_id(m) for m in members)
    placed: list[tuple[int, Any]] = []
    for bank in banks:
        for k, m in enumerate(members):
            fitted = _fit_bank(m, bank)
            if fitted is not None:
                placed.append((k, fitted))
                break
        else:
            raise BackboneMismatchError(
                f"{what} was trained on the backbones {names} together, but bank "
                f"{str(bank.path)!r} uses {backbone_id(bank.backbone)}; give banks of those "
                "backbones (the same --layer and preprocessing), one or more per backbone"
            )
    missing = [backbone_id(m) for k, m in enumerate(members) if k not in {p[0] for p in placed}]
    if missing:
        raise BackboneMismatchError(
            f"{what} was trained on the backbones {names} together, but no bank given uses "
            f"{', '.join(missing)}; give a bank of every one of them over the same images"
        )
    placed.sort(key=lambda p: p[0])  # join_banks orders the columns by first appearance
    return [join_banks([b for _, b in placed])]


def _backbone_for(spec: Mapping[str, Any], *, device: Device, weights: Any) -> tuple[Any, slice]:
    """The backbone making ``spec``'s features, and the columns of its output to keep."""
    # torch and model zoos, imported when images are embedded
    import facebank.embed.backbones.registry as _bb

    want = as_spec(spec)
    if want.layer != "blocks" or not want.blocks:
        return _bb.backbone_from_spec(want, device=device, weights=weights), slice(None)
    # a block range: tap every block, keep the range (and check it is the same space)
    info = _bb.backbone_info(want.name)
    image_size = int(want.input_size[-1]) if info.library == "timm" and want.input_size else None
    with warnings.catch_warnings():
        if info.test_only:
            warnings.simplefilter("ignore", TestOnlyBackboneWarning)
        bb = _bb.build_backbone(
            info, device=device, weights=weights, image_size=image_size, layer="blocks"
        )
    full = as_spec(bb.spec)
    f0, s0 = full.blocks or (0, 0)
    f, s = want.blocks
    if not f0 <= f < s <= s0:
        raise BackboneMismatchError(
            f"the stored spec {backbone_id(want)} asks for blocks {f}:{s}, but the recreated "
            f"backbone taps blocks {f0}:{s0}; re-embed or re-train with this backbone"
        )
    sel = slice(f - f0, s - f0)
    require_same_backbone(
        want, full.select_blocks(sel), a_name="the stored spec", b_name="the recreated backbone"
    )
    return bb, full.block_columns(sel)


def member_backbones(
    spec: Mapping[str, Any], *, device: Device, weights: str | os.PathLike | None = None
) -> list[tuple[Any, slice]]:
    """The backbones making ``spec``'s features, and the columns of each output to keep.

    One per member of a joined spec (in column order), or one for any other spec (a
    block range keeps its blocks' columns). Every engine that embeds images for a head
    builds them here, so the weights resolve alike (``--weights`` for one backbone
    only; several resolve from their libraries' caches) and fail with one message.

    Raises:
        FacebankError: ``weights`` given for several backbones; any error of building
            a backbone (e.g. ``WeightsUnavailableError`` offline).
        BackboneMismatchError: The rebuilt backbones' features are not ``spec``'s width.
    """
    members = member_specs(spec)
    if weights is not None and len(members) > 1:
        raise FacebankError(
            f"--weights names one file, but this head needs {len(members)} backbones "
            f"({', '.join(backbone_id(m) for m in members)}); leave --weights out and put each "
            "backbone's weights in its library's cache"
        )
    built = [_backbone_for(m, device=device, weights=weights) for m in members]
    width = columns_width(built)
    dim = int(as_spec(spec).dim)
    if width != dim:
        raise BackboneMismatchError(
            f"the rebuilt backbones give {width}-d features but the spec "
            f"{backbone_id(spec)} is {dim}-d; re-train the head"
        )
    return built


def encode_images_for(
    paths: Sequence[str | os.PathLike],
    *,
    backbone: str | Mapping[str, Any],
    view: str = "original",
    device: Device = "auto",
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
) -> EncodedImages:
    """:func:`~facebank.embed.runner.local.encode_images` for any head's spec.

    A joined spec embeds every image with each member backbone, **decoding it once**
    (each backbone's own transform on the one decoded image), and puts the features
    side by side in the member order; a block range taps every block and keeps the
    range. Other specs and registry names go to ``encode_images`` unchanged.

    Args:
        paths, view, device, batch_size, num_workers: As in ``encode_images``.
        backbone: A registry name or a stored spec (a head's ``backbone_``).
        weights: A weights file; only for a spec of one backbone (several backbones
            resolve their weights from their libraries' caches).

    Returns:
        ``EncodedImages`` with ``features`` ``(n_ok, spec dim)`` float32.

    Raises:
        FacebankError: ``weights`` given for several backbones; any error of building
            a backbone (weights missing: nothing is embedded).
    """
    kw = {"view": view, "device": device, "batch_size": batch_size, "num_workers": num_workers}
    if isinstance(backbone, str):
        return encode_images(paths, backbone=backbone, weights=weights, **kw)
    members = member_specs(backbone)
    if len(members) == 1 and as_spec(members[0]).layer != "blocks":
        return encode_images(paths, backbone=dict(members[0]), weights=weights, **kw)
    built = member_backbones(backbone, device=device, weights=weights)
    out = encode_files(built, paths, view=view, batch_size=batch_size, num_workers=num_workers)
    dim = int(as_spec(backbone).dim)
    if out.features.shape[1] != dim:
        raise BackboneMismatchError(
            f"the rebuilt backbones give {out.features.shape[1]}-d features but the spec "
            f"{backbone_id(backbone)} is {dim}-d; re-train the head"
        )
    return out
