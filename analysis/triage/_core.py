"""``triage``: one call that answers, for a folder of images from an unknown source, the
five questions of a new generator - new? like what? caught? how many images to teach it?
about files? - against an ``experiment`` run (``_answers`` computes, ``_page`` writes)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError

from . import _answers as A
from ._run import NewBanks, RunBackbone, append, best_leaderboard_row, bring_new, read_run

__all__ = ["TriageConfig", "SourceTriage", "BackboneTriage", "TriageResult", "triage"]


@dataclasses.dataclass(frozen=True)
class TriageConfig:
    """What a triage measures and how (defaults explained).

    Attributes:
        shots: k values of the few-shot curve (the few-shot protocol's default ladder).
        draws: seeded draws of k images per k > 0 (three: a range, not a single luck).
        target_tpr: the few-shot target at ``fpr`` (90 %: a detector worth deploying).
        fpr: the operating point on real faces (0.5 %, as in arXiv 2311.08577).
        k: neighbours of the kNN distance and the majority vote (the experiment's 10).
        group_by: split NEW into sources: ``"level:K"`` (the K-th folder of NEW's paths,
            from 1), ``"group"`` or ``"engine"`` (a manifest's column), or None.
        engine_name: the name NEW gets in tables, curves and ``--append``.
        seed: seeds densities, bootstraps and the few-shot draws.
        few_shot_heads: the heads retrained for the few-shot curve (each must be a head of
            the run; ``None``: every head). ``linear`` by default: it warm-starts, so its
            curve costs seconds, where ``mlp`` and ``prototype`` cost 3-13 s per fit on a
            2-core CPU - the full curve of every head (96 fits with a shortcut) is minutes.
    """

    shots: tuple[int, ...] = (0, 5, 10, 20, 50, 100)
    draws: int = 3
    target_tpr: float = 0.90
    fpr: float = 0.005
    k: int = 10
    group_by: str | None = None
    engine_name: str = "new"
    seed: int = 0
    few_shot_heads: tuple[str, ...] | None = ("linear",)


@dataclasses.dataclass
class SourceTriage:
    """The five answers for one source of NEW under one backbone (``_answers`` keys).

    Attributes:
        name: the source (``engine_name``, or a group with ``group_by``); n: its images.
        new, resemble: ``is_it_new`` and ``resemblance`` answers.
        detect: one row per head and view (``detection``).
        few_shot: ``{head: curve}`` on the original view; few_shot_normalised: the same
            on the ``normalise`` view (only when the metadata check finds a shortcut).
        metadata: ``metadata_check``'s answer. verdict: the plain sentences.
        per_image: ``{column: (n,) array}`` of the per-image CSV.
    """

    name: str
    n: int
    new: dict[str, Any]
    resemble: dict[str, Any]
    detect: list[dict[str, Any]]
    few_shot: dict[str, Any]
    few_shot_normalised: dict[str, Any] | None
    metadata: dict[str, Any]
    verdict: list[str]
    per_image: dict[str, np.ndarray]


@dataclasses.dataclass
class BackboneTriage:
    """One backbone's triage: its sources, and what embedding NEW took."""

    backbone: str
    run_dir: Path
    sources: list[SourceTriage]
    embedding: dict[str, dict[str, Any]]
    skipped_views: dict[str, str]
    new_banks: dict[str, str] = dataclasses.field(default_factory=dict)
    map: dict[str, Any] | None = None
    neighbours: list[Any] | None = None


@dataclasses.dataclass
class TriageResult:
    """What ``triage`` found; ``write(out)`` writes the run folder.

    Attributes:
        run, new: what was triaged against what. config: the ``TriageConfig``.
        backbones: one ``BackboneTriage`` per backbone of the run, the leaderboard's best
            first. lead: that best row (``{backbone, head, tpr, auc}``) or None.
        overlap: NEW images already among the run's rows (same sha256): path, sha256,
            engine and split in the run; they are excluded from every answer.
        failed: ``(path, reason)`` of NEW's images that could not be read.
        appended: ``--append`` summaries. seconds: wall time per step.
    """

    run: Path
    new: str
    config: TriageConfig
    backbones: list[BackboneTriage]
    lead: dict[str, Any] | None = None
    overlap: list[dict[str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    appended: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    run_dir: Path | None = None

    @property
    def verdict(self) -> list[str]:
        """The plain sentences of the lead backbone, each source in turn."""
        b = self.backbones[0]
        many = len(b.sources) > 1
        return [(f"[{s.name}] " if many else "") + line for s in b.sources for line in s.verdict]

    def metrics(self) -> dict[str, Any]:
        from ._page import metrics

        return metrics(self)

    def write(self, out: str | Path) -> Path:
        """Write ``triage.html``, ``triage.md``, ``metrics.json``, ``per_image.csv`` and the
        figures into the run folder ``out`` (``config.json`` is written by ``triage``)."""
        from ._page import write

        self.run_dir = write(self, Path(out))
        return self.run_dir


# ----------------------------------------------------------------------------- the call


def triage(
    new: str | Path,
    *,
    run: str | Path,
    out: str | Path,
    config: TriageConfig = TriageConfig(),
    append_to: Sequence[str | Path] = (),
    device: str = "auto",
    progress: bool = False,
) -> TriageResult:
    """Triage images of an unknown source against an ``experiment`` run, and write ``out``.

    NEW is embedded with each of the run's backbones under each of its views (resumably,
    into ``out/banks``); images already among the run's rows (same sha256) are reported
    and excluded; then, per backbone and per source of NEW: is it new (OOD scores and the
    real-only density), what it resembles, whether each head catches it at its frozen
    threshold, a few-shot curve per head, and a metadata check against the run's reals.

    Which split chose what: densities, centroids, the kNN index and few-shot heads are fit
    on the run's **train** rows (its ``splits.csv``); every threshold is set on
    **validation** rows (reals only for the heads and the real-only score, at
    ``config.fpr``); rates are measured on NEW and on the run's **test** rows. Nothing is
    tuned on NEW.

    Args:
        new: a folder, CSV manifest or URL of images (or a feature bank of the run's
            backbone).
        run: an ``experiment`` run folder (one backbone, or a backbone comparison).
        out: the triage run folder (resumed: banks already embedded are reused).
        config: a ``TriageConfig``.
        append_to: banks to add NEW to as AI engine ``config.engine_name`` (``append``).
        device: embedding device. progress: progress bars while embedding.

    Returns:
        A ``TriageResult`` whose ``run_dir`` is ``out``.

    Raises:
        DataError: RUN is not an experiment run; NEW has no readable image left.
        BackboneMismatchError: NEW is a bank of another backbone than the run's.
    """
    from facebank.core.runs import start_run

    t0 = time.perf_counter()
    backbones = read_run(run)
    lead = best_leaderboard_row(run)
    if lead is not None:
        backbones.sort(key=lambda b: b.name != lead["backbone"])
    out = Path(out)
    start_run(
        out,
        command="triage",
        config={
            "new": str(new),
            "run": str(run),
            "backbones": [b.name for b in backbones],
            **dataclasses.asdict(config),
            "fit_split": "train rows of the run (its splits.csv)",
            "threshold_split": "val: reals for heads and the real-only score; known-engine "
            "rows for the OOD flags",
            "test_split": "test rows of the run, and NEW",
        },
        resume=True,
    )
    res = TriageResult(run=Path(run), new=str(new), config=config, backbones=[], lead=lead)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rb in backbones:
            t = time.perf_counter()
            nb = bring_new(
                new, rb, out, engine=config.engine_name, device=device, progress=progress
            )
            res.seconds[f"embed {rb.name}"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            res.backbones.append(_triage_backbone(rb, nb, res, config))
            res.seconds[f"analyse {rb.name}"] = round(time.perf_counter() - t, 2)
        for bank in append_to:
            res.appended.append(_append(res, Path(bank), config))
    res.notes.extend(dict.fromkeys(str(w.message) for w in caught))
    t = time.perf_counter()
    res.write(out)
    res.seconds["write"] = round(time.perf_counter() - t, 2)
    res.seconds["total"] = round(time.perf_counter() - t0, 2)
    from facebank.core.runs import write_json

    write_json(out / "metrics.json", res.metrics())  # with the writing's own time
    return res


def _append(res: TriageResult, bank: Path, config: TriageConfig) -> dict[str, Any]:
    from facebank.embed import FeatureBank, same_backbone

    target = FeatureBank.open(bank)
    for b in res.backbones:
        nb = b.new_banks
        if target.view in nb and same_backbone(
            target.backbone, FeatureBank.open(nb[target.view]).backbone
        ):
            keep = np.flatnonzero(~_overlapping(FeatureBank.open(nb[target.view]), res))
            return append(
                nb[target.view], bank, engine=config.engine_name, rows=keep, source=res.new
            )
    raise DataError(
        f"--append {str(bank)!r} has view {target.view!r}; NEW was embedded under "
        f"{sorted({v for b in res.backbones for v in b.new_banks})} - give a bank of the run"
    )


def _overlapping(bank: Any, res: TriageResult) -> np.ndarray:
    sha = {o["sha256"] for o in res.overlap}
    return np.isin(np.asarray(bank.sha256, dtype=str), list(sha))


# ----------------------------------------------------------------------------- per backbone


def _sources(paths: np.ndarray, groups: np.ndarray, engines: np.ndarray, config: TriageConfig):
    """``{source name: row mask}`` of NEW (module ``TriageConfig.group_by``)."""
    by = config.group_by
    if not by or by == "none":
        return {config.engine_name: np.ones(len(paths), dtype=bool)}
    if by.startswith("level:"):
        level = int(by.split(":", 1)[1])
        key = np.array(
            [p.split("/")[-level - 1] if p.count("/") >= level else "" for p in paths.tolist()]
        )
    elif by in ("group", "engine"):
        key = groups if by == "group" else engines
    else:
        raise DataError(f"--group-by {by!r} is not valid; give level:K, group, engine or none")
    return {str(g): key == g for g in sorted(set(key.tolist()))}


def _triage_backbone(
    rb: RunBackbone, nb: NewBanks, res: TriageResult, config: TriageConfig
) -> BackboneTriage:
    from facebank.embed import FeatureBank
    from facebank.heads import load_head

    from ..neighbours import NeighbourIndex

    splits_csv = next(iter(rb.heads.values())) / "splits.csv"
    known = {v: A.load_known(rb.banks[v], splits_csv) for v in nb.banks}
    if "original" not in known:  # a NEW bank of another view: answer on that view
        known["original"] = known[next(iter(nb.banks))]
    view0 = "original" if "original" in nb.banks else next(iter(nb.banks))
    new_banks = {v: FeatureBank.open(p) for v, p in nb.banks.items()}
    b0 = new_banks[view0]
    res.failed = res.failed or nb.failed
    keep = _exclude_overlap(b0, known[view0], res)
    if keep.sum() == 0:
        raise DataError(
            f"NEW {res.new!r} has no readable image left to triage ({len(nb.failed)} "
            f"unreadable, {int((~keep).sum())} already in the run)"
        )
    X_new = {
        v: b.load_features()[_align(b, b0, keep)].astype(np.float32) for v, b in new_banks.items()
    }
    paths = np.asarray(b0.paths, dtype=str)[keep]
    meta = {k: np.asarray(c)[keep] for k, c in b0.metadata().items()} if b0.has_metadata else None
    heads = {h: load_head(p) for h, p in rb.heads.items()}
    norm_heads = {h: load_head(p) for h, p in rb.normalised_heads.items()}
    k0 = known[view0]
    index = NeighbourIndex(k0.bank.select(rows=np.flatnonzero(k0.split == "train")), device="cpu")
    bt = BackboneTriage(
        backbone=rb.name,
        run_dir=rb.run_dir,
        sources=[],
        embedding=nb.embedding,
        skipped_views=nb.skipped,
        new_banks={v: str(p) for v, p in nb.banks.items()},
    )
    sources = _sources(
        paths,
        np.asarray(b0.groups, dtype=str)[keep],
        np.asarray(b0.engines, dtype=str)[keep],
        config,
    )
    for name, m in sources.items():
        bt.sources.append(
            _triage_source(
                name, m, rb, known, X_new, heads, norm_heads, index, config,
                paths=paths, sha=np.asarray(b0.sha256, dtype=str)[keep],
                meta=None if meta is None else {k: v[m] for k, v in meta.items()},
            )
        )  # fmt: skip
    from ._page import map_data, neighbour_records

    bt.map = map_data(k0, X_new[view0], config.seed)
    bt.neighbours = neighbour_records(index, X_new[view0], paths, k=4, n=4)
    return bt


def _align(b: Any, b0: Any, keep: np.ndarray) -> np.ndarray:
    """Rows of view bank ``b`` in the order of ``b0``'s kept rows (matched by sha256)."""
    pos = {s: i for i, s in enumerate(np.asarray(b.sha256, dtype=str).tolist())}
    want = np.asarray(b0.sha256, dtype=str)[keep].tolist()
    missing = [s for s in want if s not in pos]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of NEW are in the original view's bank but not in "
            f"{b.name!r}; rerun the triage to finish embedding that view"
        )
    return np.array([pos[s] for s in want], dtype=np.int64)


def _exclude_overlap(b0: Any, known: A.Known, res: TriageResult) -> np.ndarray:
    sha = np.asarray(b0.sha256, dtype=str)
    paths = np.asarray(b0.paths, dtype=str)
    where = {s: i for i, s in enumerate(known.sha256.tolist())}
    hit = np.array([s in where for s in sha.tolist()], dtype=bool)
    seen = {o["sha256"] for o in res.overlap}
    for i in np.flatnonzero(hit):
        if sha[i] in seen:
            continue
        j = where[sha[i]]
        res.overlap.append(
            {
                "path": str(paths[i]),
                "sha256": str(sha[i]),
                "run_path": str(known.paths[j]),
                "run_engine": str(known.engines[j]),
                "run_split": str(known.split[j]),
            }
        )
    return ~hit


def _triage_source(
    name, m, rb, known, X_new, heads, norm_heads, index, config, *, paths, sha, meta
):
    k0 = known["original"]
    Xo = X_new["original"][m] if "original" in X_new else next(iter(X_new.values()))[m]
    proto = heads.get("prototype")
    new_ans, per = A.is_it_new(
        k0, Xo, index=index, prototype=proto, k=config.k, fpr=config.fpr, seed=config.seed
    )
    like, per_like = A.resemblance(k0, Xo, index=index, k=config.k, seed=config.seed)
    detect: list[dict[str, Any]] = []
    scores: dict[str, np.ndarray] = {}
    for view, X in X_new.items():
        rows, s = A.detection(heads, known[view], X[m], view=view, trained_on="original")
        detect += rows
        if view == "original":
            scores = s
    nv = rb.normalise_view
    if nv and nv in X_new and norm_heads:
        rows, _ = A.detection(norm_heads, known[nv], X_new[nv][m], view=nv, trained_on=nv)
        detect += rows
    metadata = A.metadata_check(k0, meta, seed=config.seed)
    few = _curves(heads, k0, Xo, config, name)
    few_norm = None
    if metadata.get("shortcut") and nv and nv in X_new:
        src = norm_heads or heads
        few_norm = _curves(src, known[nv], X_new[nv][m], config, name)
    per_image = {"path": paths[m], "sha256": sha[m], **per, **per_like}
    for h, s in scores.items():
        per_image[f"{h}_score"] = s
        per_image[f"{h}_flag"] = s > float(heads[h].threshold_)
    st = SourceTriage(
        name=name, n=int(m.sum()), new=new_ans, resemble=like, detect=detect, few_shot=few,
        few_shot_normalised=few_norm, metadata=metadata, verdict=[], per_image=per_image,
    )  # fmt: skip
    from ._page import verdict_sentences

    st.verdict = verdict_sentences(st, config)
    return st


def _curves(heads, known, X, config, name) -> dict[str, Any]:
    out = {}
    want = config.few_shot_heads
    chosen = {h: v for h, v in heads.items() if want is None or h in want}
    if not chosen and heads:  # a run without the asked heads: its first head
        first = next(iter(heads))
        chosen = {first: heads[first]}
    for h, head in chosen.items():
        out[h] = A.few_shot_curve(
            known, X, head=h, params=head.get_params(), shots=config.shots, draws=config.draws,
            target_tpr=config.target_tpr, fpr=config.fpr, seed=config.seed, engine=name,
        )  # fmt: skip
    return out
