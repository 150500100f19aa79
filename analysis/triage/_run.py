"""What triage reuses from an ``experiment`` run folder, and how ``NEW`` is brought to it.

An experiment run (``analysis.experiment``) holds, per backbone, one bank per view
(``banks/<view>.zarr``), the heads trained on the original view (``train/<head>/``, each
with the ``splits.csv`` every head shares), and, when the run embedded a ``normalise``
view, the same heads trained on it (``normalised/train/<head>/``). A backbone comparison
(``experiment --backbone A,B``) holds one such run per backbone in ``RUN/<backbone>/``
and the leaderboard in ``RUN/metrics.json``.

``NEW`` is embedded with each backbone under each view of the run, into
``OUT/banks/<backbone>/<view>.zarr``, by ``embed.embed_source`` (resumable: a re-run
embeds only what is missing; metadata recorded; unreadable files skipped and recorded
as the embed failure policy says). A ``NEW`` that is already a feature bank is used as
it is, for the views it was embedded under.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import BankError, DataError

__all__ = ["RunBackbone", "NewBanks", "read_run", "best_leaderboard_row", "bring_new", "append"]


@dataclass
class RunBackbone:
    """One backbone's part of an experiment run.

    Attributes:
        name: the backbone's registry name; run_dir: its experiment folder.
        banks: ``{view: bank path}``, ``"original"`` first.
        heads: ``{head: train run folder}`` of the heads trained on the original view.
        normalised_heads: ``{head: train run folder}`` trained on the ``normalise`` view.
        config: the run's ``config.json``.
    """

    name: str
    run_dir: Path
    banks: dict[str, Path]
    heads: dict[str, Path]
    normalised_heads: dict[str, Path] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def normalise_view(self) -> str | None:
        return next((v for v in self.banks if v.startswith("normalise")), None)


def _slug(view: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", view.replace("=", "")).strip("-") or "view"


def _read_config(run: Path) -> dict[str, Any]:
    from facebank.core.runs import read_json

    path = run / "config.json"
    if not path.is_file():
        raise DataError(
            f"--run {str(run)!r} is not an experiment run folder (no config.json); give a "
            "folder written by `facebank experiment`"
        )
    cfg = read_json(path)
    if cfg.get("command") != "experiment":
        raise DataError(
            f"--run {str(run)!r} was written by `facebank {cfg.get('command')}`, not "
            "`facebank experiment`; give an experiment run folder"
        )
    return cfg


def _one_backbone(run: Path, cfg: Mapping[str, Any]) -> RunBackbone:
    views = list(cfg.get("views") or ["original"])
    banks = {v: run / "banks" / f"{_slug(v)}.zarr" for v in views}
    banks = {v: p for v, p in banks.items() if p.is_dir()}
    if "original" not in banks:
        raise DataError(
            f"--run {str(run)!r} has no banks/original.zarr; was the experiment finished? "
            "rerun `facebank experiment` with the same --out to complete it"
        )

    def heads_in(folder: Path) -> dict[str, Path]:
        names = list(cfg.get("heads") or sorted(p.name for p in folder.glob("*") if p.is_dir()))
        return {h: folder / h for h in names if (folder / h / "head.json").is_file()}

    heads = heads_in(run / "train")
    if not heads:
        raise DataError(
            f"--run {str(run)!r} holds no trained head under train/<head>/; give a finished "
            "experiment run folder"
        )
    return RunBackbone(
        name=str(cfg.get("backbone")),
        run_dir=run,
        banks=banks,
        heads=heads,
        normalised_heads=heads_in(run / "normalised" / "train"),
        config=dict(cfg),
    )


def read_run(run: str | Path) -> list[RunBackbone]:
    """Each backbone of an experiment run (one, or several for a backbone comparison).

    Raises:
        DataError: not an experiment run folder, or one without banks or heads.
    """
    run = Path(run)
    cfg = _read_config(run)
    if isinstance(cfg.get("backbones"), list):
        return [_one_backbone(run / b, _read_config(run / b)) for b in cfg["backbones"]]
    return [_one_backbone(run, cfg)]


def best_leaderboard_row(run: str | Path) -> dict[str, Any] | None:
    """The leaderboard's best single-backbone row of a comparison run (highest TPR at the
    validation-chosen threshold, then AUC), as ``{backbone, head, tpr, auc}``; None for a
    single-backbone run or a run without a leaderboard."""
    from facebank.core.runs import read_json

    path = Path(run) / "metrics.json"
    if not path.is_file():
        return None
    m = read_json(path)
    results = m.get("results") if isinstance(m, dict) else None
    if not isinstance(results, dict):
        return None
    rows = [
        {"backbone": b, "head": h, "tpr": r.get("tpr"), "auc": r.get("auc")}
        for b, heads in results.items()
        if b in (m.get("backbones") or [])
        for h, r in heads.items()
    ]
    rows = [r for r in rows if r["tpr"] is not None]
    return max(rows, key=lambda r: (r["tpr"], r["auc"] or 0.0)) if rows else None


# ----------------------------------------------------------------------------- NEW


@dataclass
class NewBanks:
    """``NEW`` under each view of one backbone: ``{view: bank path}``; ``skipped``: views
    without a bank and why; ``embedding``: per view ``{embedded, skipped_present, failed,
    seconds}``; ``failed``: ``[(path, reason)]`` of images that could not be read."""

    banks: dict[str, Path]
    skipped: dict[str, str] = field(default_factory=dict)
    embedding: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)


def is_bank(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "zarr.json").is_file()


def write_new_manifest(new: str | os.PathLike, out: Path, *, engine: str) -> Path:
    """``OUT/new.csv``: every image of ``NEW`` (folder, manifest or URL) with label -1.

    The rows keep ``NEW``'s own engine column when it is a manifest (``--group-by
    engine`` then separates its sources), else every row is ``engine``.
    """
    from facebank.embed.inputs.datasets import scan_source
    from facebank.heads.scoring import collect_inputs

    rows: list[dict[str, str]] = []
    p = Path(new)
    if p.is_file() and p.suffix.lower() == ".csv":
        for it in scan_source(p).items:
            rows.append({"path": it.file, "engine": it.engine or engine, "group": it.group})
    else:
        found = collect_inputs([os.fspath(new)])
        if found.banks:
            raise DataError(f"NEW {str(new)!r} is a feature bank; it is used as it is")
        root = None if not p.is_dir() else p.resolve()
        for f in found.images:
            if "://" in str(f):  # an image on a store: its URL as listed
                rows.append({"path": str(f), "engine": engine, "group": ""})
                continue
            rel = Path(f).resolve().relative_to(root).as_posix() if root else Path(f).name
            group = rel.split("/")[0] if "/" in rel else ""
            rows.append({"path": str(Path(f).resolve()), "engine": engine, "group": group})
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "new.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "engine", "group"])
        w.writeheader()
        w.writerows({**r, "label": -1} for r in rows)
    return manifest


def bring_new(
    new: str | os.PathLike,
    rb: RunBackbone,
    out: Path,
    *,
    engine: str,
    device: str = "auto",
    progress: bool = False,
) -> NewBanks:
    """``NEW`` as banks of ``rb``'s backbone, one per view of the run (module docstring).

    Raises:
        BackboneMismatchError: ``NEW`` is a bank of another backbone (names both).
    """
    from facebank.embed import FeatureBank, embed_source, require_same_backbone

    if is_bank(new):
        bank = FeatureBank.open(new)
        original = FeatureBank.open(rb.banks["original"])
        require_same_backbone(
            original.backbone, bank.backbone, a_name=f"--run {rb.run_dir}", b_name=f"NEW {new}"
        )
        view = bank.view if bank.view in rb.banks else None
        if view is None:
            raise DataError(
                f"NEW bank {str(new)!r} has view {bank.view!r}; the run has views "
                f"{list(rb.banks)} - give a bank of one of them, or the images"
            )
        skipped = {v: f"NEW was given as a bank of view {view!r}" for v in rb.banks if v != view}
        return NewBanks(banks={view: Path(new)}, skipped=skipped)
    manifest = write_new_manifest(new, out, engine=engine)
    res = NewBanks(banks={})
    cfg = rb.config
    for view in rb.banks:
        path = out / "banks" / rb.name / f"{_slug(view)}.zarr"
        s = embed_source(
            manifest,
            backbone=rb.name,
            out=path,
            view=view,
            device=device,
            weights=cfg.get("weights"),
            image_size=cfg.get("image_size"),
            progress=progress,
        )
        # the bank's own record: failures of this run and of earlier (resumed) runs
        failed = [_failure(f) for f in FeatureBank.open(path).failures]
        res.embedding[view] = {
            "embedded": s.embedded,
            "skipped_present": s.skipped_present,
            "failed": len(failed),
            "seconds": round(float(s.seconds), 2),
        }
        if view == "original":
            res.failed = failed
        res.banks[view] = path
    return res


def _failure(f: Any) -> tuple[str, str]:
    if isinstance(f, Mapping):
        return str(f.get("path")), str(f.get("reason"))
    if isinstance(f, Sequence) and len(f) == 2:
        return str(f[0]), str(f[1])
    return str(f), ""


# ----------------------------------------------------------------------------- --append


def append(
    new_bank: str | os.PathLike,
    bank: str | os.PathLike,
    *,
    engine: str,
    rows: np.ndarray | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Add ``NEW``'s rows (already embedded) to ``bank`` as AI engine ``engine`` (label 1).

    Resumable like ``embed``: rows whose sha256 the bank already holds are skipped, so a
    re-run adds only what is missing. The bank records the addition in its
    ``appended_engines`` attribute (engine, source, rows, date). Backbone and view must
    match the bank's (the error names both).

    Returns:
        ``{"bank", "engine", "added", "already_present"}``.
    """
    from facebank.embed import FeatureBank, require_same_backbone

    src = FeatureBank.open(new_bank)
    if rows is not None:
        src = src.select(rows=rows)
    target = FeatureBank.open(bank, mode="a")
    try:
        require_same_backbone(
            target.backbone, src.backbone, a_name=f"--append {bank}", b_name="NEW"
        )
        if target.view != src.view:
            raise BankError(
                f"--append {str(bank)!r} has view {target.view!r} but NEW was embedded under "
                f"{src.view!r}; append to the run's bank of the same view"
            )
        have = set(np.asarray(target.sha256, dtype=str).tolist())
        sha = np.asarray(src.sha256, dtype=str)
        todo = np.flatnonzero(~np.isin(sha, list(have)))
        if todo.size:
            part = src.select(rows=todo)
            cols: dict[str, np.ndarray] = dict(part.metadata()) if part.has_metadata else {}
            cols["group"] = np.asarray(part.groups, dtype=str)
            n = int(todo.size)
            record = list(target.meta.get("appended_engines") or [])
            record.append(
                {
                    "engine": engine,
                    "source": source or str(new_bank),
                    "rows": n,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
            )
            target.append(
                part.load_features(),
                labels=np.ones(n, dtype=np.int8),
                engines=np.full(n, engine, dtype=object).astype(str),
                paths=np.asarray(part.paths, dtype=str),
                splits=np.full(n, "", dtype=object).astype(str),
                sha256=np.asarray(part.sha256, dtype=str),
                attrs={"appended_engines": record},
                columns=cols,
            )
        return {
            "bank": str(bank),
            "engine": engine,
            "added": int(todo.size),
            "already_present": int(sha.size - todo.size),
        }
    finally:
        target.close()
