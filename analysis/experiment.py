"""``facebank experiment``: the whole workbench on one dataset (the demo is ``analysis.demo``).

One call embeds a dataset under the original view and a few degraded views, trains the
default heads, evaluates them at the validation-chosen 0.5 % FPR threshold, runs
leave-one-engine-out, robustness, out-of-distribution detection of a held-out engine and
the neighbour analysis, and writes one HTML report. Every step is a call into the same
library functions the single-purpose commands use; this module only orders them, picks
the run folders, and summarises.

Layout of ``RUN_DIR`` (each sub-folder is an ordinary run folder)::

    RUN_DIR/
      config.json  metrics.json  summary.md  [NOTE.md]  report.html
      banks/<view>.zarr            one bank per view (reused by a re-run: resume)
      train/<head>/                train_run: head + threshold on validation reals
      evaluate/<head>/             evaluate on the original view's held-out rows
      loeo/                        leave-one-engine-out with ``linear``
      robustness/<head>/           each head scored on every view
      train/prototype-without-<E>/ prototype head trained without engine E
      ood/                         OOD scores: engine E (new) vs the known engines
      neighbours/clusters/  neighbours/map/

Splits: the bank's own split column when the source has one, else the seeded
sha256-based split of ``embed.assign_splits`` (the same image lands in the same split in
every view's bank). Thresholds are chosen on validation reals only (``fpr``); nothing
is tuned on test rows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError, UnknownNameError
from facebank.core.options import DEFAULT_HEADS, DEFAULT_VIEWS, ExperimentOptions
from facebank.core.runs import fmt_value, markdown_table, start_run, write_json

from .experiment_steps import (
    FPR,
    Steps,
    check_protocols,
    run_audit,
    run_loeo,
    run_neighbours,
    run_normalised_control,
    run_ood,
    run_protocols,
    run_robustness,
    run_train_and_evaluate,
)

__all__ = [
    "DEFAULT_HEADS",
    "DEFAULT_VIEWS",
    "ExperimentOptions",
    "ExperimentResult",
    "run_experiment",
]

log = logging.getLogger(__name__)

_MAX_NOTES = 12  # caveats listed in summary.md; the sub-runs keep their own notes
# Sub-run folders this module owns inside RUN_DIR and rewrites on every run.
_STEP_DIRS = (
    *("train", "evaluate", "loeo", "robustness", "ood", "neighbours", "audit", "normalised"),
    *("few-shot", "chrono"),
)


@dataclass
class ExperimentResult:
    """What ``run_experiment`` did and found.

    Attributes:
        run_dir: the experiment folder; ``report``: its ``report.html``.
        backbone: the backbone name; ``source``: the dataset given.
        engines: images per engine in the original view's bank.
        banks: ``{view: bank path}``, ``"original"`` first.
        embedding: ``{view: {embedded, skipped_present, duplicates, failed, seconds}}``;
            ``skipped_present`` counts rows a previous run had already embedded.
        heads: ``{head: {...}}`` test metrics of each head at its validation-chosen
            threshold: auc (+ auc_lo/auc_hi), tpr/fpr at that threshold on the test
            rows, tpr_at_0.5% (test ROC, for reference), threshold, train_seconds,
            run_dir and eval_dir.
        loeo: leave-one-engine-out summary (None when skipped).
        robustness: ``{head: {view: {auc, tpr}}}`` (None when skipped).
        ood: the held-out engine's OOD summary (None when skipped).
        neighbours: clustering summary (purity, NMI, ARI) and the map path.
        new_engine: the engine held out for OOD.
        audit: the confounds audit's headline (``analysis.audit.AuditResult.summary``):
            verdict, metadata-only AUC, each head's AUC where the files cannot tell.
        normalised: ``{"view": name, "heads": {head: {...}}}``: each head trained and
            tested on the ``normalise`` view (None when skipped).
        skipped: ``{step: reason}`` for every step that did not run.
        seconds: wall time per step and ``total``.
        notes: caveats worth reading next to the numbers.
    """

    run_dir: Path
    report: Path | None
    backbone: str
    source: str
    engines: dict[str, int]
    banks: dict[str, Path]
    embedding: dict[str, dict[str, Any]]
    heads: dict[str, dict[str, Any]]
    loeo: dict[str, Any] | None = None
    robustness: dict[str, dict[str, dict[str, Any]]] | None = None
    ood: dict[str, Any] | None = None
    neighbours: dict[str, Any] | None = None
    new_engine: str | None = None
    audit: dict[str, Any] | None = None
    normalised: dict[str, Any] | None = None
    protocols: dict[str, Any] | None = None  # optional few-shot / chrono: {name: summary}
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def head_rows(self) -> list[dict[str, Any]]:
        """One row per head: test AUC, and TPR beside the FPR realised on the same test rows
        at the threshold chosen on validation reals (target FPR ``FPR``)."""
        return [
            {
                "head": name,
                "AUC [95% CI]": _with_ci(h.get("auc"), h.get("auc_lo"), h.get("auc_hi")),
                "TPR (test)": _pct(h.get("tpr")),
                f"FPR (test; target {FPR:.1%})": _pct(h.get("fpr"), digits=2),
                **_confound_cells(self, name),
                "train s": fmt_value(h.get("train_seconds"), digits=2),
            }
            for name, h in self.heads.items()
        ]

    def key_rows(self) -> list[dict[str, Any]]:
        """The other steps in one line each; every TPR beside the FPR of the same threshold."""
        rows: list[dict[str, Any]] = []
        if self.loeo:
            fpr = _pct(self.loeo.get("fpr_test_reals"), digits=2)
            rows.append(
                {
                    "step": "leave-one-engine-out (linear, each engine's val-chosen threshold)",
                    "result": f"TPR in-engine {_pct(self.loeo.get('in_engine_tpr'))}, "
                    f"out-of-engine {_pct(self.loeo.get('out_of_engine_tpr'))} "
                    f"(FPR on test reals {fpr})",
                }
            )
        if self.robustness:
            first = next(iter(self.robustness))
            views = self.robustness[first]
            rows.append(
                {
                    "step": f"robustness ({first}, per view: AUC; TPR and FPR at its frozen "
                    "threshold)",
                    "result": "; ".join(
                        f"{v}: AUC {fmt_value(m.get('auc'))}, TPR {_pct(m.get('tpr'))} "
                        f"at FPR {_pct(m.get('fpr'))}"
                        for v, m in views.items()
                    ),
                }
            )
        if self.ood:
            known = _pct(self.ood.get("flag_rate_known"))
            rows.append(
                {
                    "step": f"OOD: {self.ood.get('new_engine')} as a new engine (prototype; "
                    "score -log p(x), higher = less like the training engines)",
                    "result": f"AUROC {fmt_value(self.ood.get('auroc'))}; flags "
                    f"{_pct(self.ood.get('flag_rate_new'))} of {self.ood.get('new_engine')} "
                    f"vs {known} of known-engine test images (threshold set to flag 5% of "
                    "known-engine val images)",
                }
            )
        if self.neighbours:
            rows.append(
                {
                    "step": f"kNN engine purity (k={self.neighbours.get('k')})",
                    "result": f"macro {fmt_value(self.neighbours.get('purity_macro'))}, "
                    f"k-means NMI {fmt_value(self.neighbours.get('nmi'))}",
                }
            )
        rows.extend(
            {"step": step, "result": f"skipped: {why}"} for step, why in self.skipped.items()
        )
        return rows

    def markdown(self) -> str:
        """The summary as Markdown (written to ``summary.md``)."""
        emb = [
            {
                "view": v,
                **{k: e.get(k) for k in ("embedded", "skipped_present", "failed", "seconds")},
            }
            for v, e in self.embedding.items()
        ]
        return "\n".join(
            [
                "### Experiment summary\n",
                _confound_markdown(self),
                f"Backbone `{self.backbone}` on `{self.source}`; engines: "
                + ", ".join(f"{e} ({n})" for e, n in self.engines.items())
                + f". Thresholds chosen on validation reals at FPR {FPR:.1%}; "
                "metrics on test rows.\n",
                markdown_table(self.head_rows()),
                markdown_table(self.key_rows()) if self.key_rows() else "",
                "#### Embedding\n",
                markdown_table(emb, digits=1),
                "#### Caveats\n" if self.notes else "",
                "".join(f"- {n}\n" for n in self.notes),
            ]
        )

    def rich_tables(self) -> list[Any]:
        """The summary as ``rich`` tables for the terminal (heads, then the other steps)."""
        from rich.table import Table

        out = _confound_rich(self)
        t = Table(
            title=f"{self.backbone} on {self.source}: each head's threshold set for FPR "
            f"{FPR:.1%} on validation reals; TPR and FPR realised on the test rows"
        )
        rows = self.head_rows()
        for col in rows[0] if rows else ():
            t.add_column(col, justify="left" if col == "head" else "right")
        for r in rows:
            t.add_row(*(str(v) for v in r.values()))
        out.append(t)
        keys = self.key_rows()
        if keys:
            k = Table(title="other steps", show_header=False)
            k.add_column("step")
            k.add_column("result")
            for r in keys:
                k.add_row(r["step"], r["result"])
            out.append(k)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "report": self.report,
            "backbone": self.backbone,
            "source": self.source,
            "engines": self.engines,
            "banks": self.banks,
            "embedding": self.embedding,
            "heads": self.heads,
            "loeo": self.loeo,
            "robustness": self.robustness,
            "ood": self.ood,
            "neighbours": self.neighbours,
            "new_engine": self.new_engine,
            "audit": self.audit,
            "normalised": self.normalised,
            "protocols": self.protocols,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "notes": self.notes,
            "fpr": FPR,
        }


def _pct(v: Any, digits: int = 1) -> str:
    return fmt_value(v, digits=digits, pct=True)


def _with_ci(v: Any, lo: Any, hi: Any) -> str:
    if lo is None or hi is None or v is None:
        return fmt_value(v)
    return f"{fmt_value(v)} [{fmt_value(lo)}, {fmt_value(hi)}]"


# ----------------------------------------------------------------------------- steps


def view_slug(view: str) -> str:
    """A file-name-safe bank name for a view: ``jpeg:q=50`` -> ``jpeg-q50``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", view.replace("=", "")).strip("-") or "view"


def canonical_views(views: Sequence[str]) -> list[str]:
    from facebank.embed.inputs.views import parse_view

    out = ["original"]
    for v in views:
        name = parse_view(v).name  # UnknownNameError with the valid forms
        if name not in out:
            out.append(name)
    return out


def check_heads(heads: Sequence[str]) -> list[str]:
    from facebank.heads import list_heads

    valid = list_heads()
    heads = list(dict.fromkeys(heads))
    for h in heads:
        if h not in valid:
            raise UnknownNameError(f"unknown head {h!r}; valid heads: {', '.join(valid)}")
    if not heads:
        raise DataError(f"no heads given; pass at least one of {', '.join(valid)}")
    return heads


def _survey(
    source: str | Path,
    real_names: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Images per engine and the AI engines of SOURCE, without decoding anything."""
    from facebank.embed.inputs.datasets import scan_source

    # SourceError: missing, empty, bad CSV; an unreachable store before any work
    src = scan_source(source, real_names=real_names, storage_options=storage_options)
    counts = Counter(it.engine for it in src.items if it.label in (0, 1))
    ai = sorted({it.engine for it in src.items if it.label == 1})
    real = sorted({it.engine for it in src.items if it.label == 0})
    _check_classes(counts, real, ai, source)
    return dict(sorted(counts.items())), ai


def _check_classes(counts: Counter, real: list[str], ai: list[str], source: str | Path) -> None:
    """Raise when the experiment cannot run at all (no reals, or no AI images)."""
    have = ", ".join(f"{e} ({n})" for e, n in sorted(counts.items())) or "no labelled images"
    needs = (
        "an experiment needs real images (SOURCE/real/...) and AI-generated images of at "
        "least one engine (SOURCE/<engine>/...); leave-one-engine-out and the new-engine "
        "OOD test need at least two AI engines"
    )
    if not real:
        raise DataError(f"{str(source)!r} has no real images (found: {have}); {needs}")
    if not ai:
        raise DataError(f"{str(source)!r} has only real images (found: {have}); {needs}")


def _source_name(source: str | Path) -> str:
    """The last component of a SOURCE path or URL (``s3://b/faces`` -> ``faces``)."""
    return Path(source).name if isinstance(source, Path) else source.rstrip("/").rsplit("/", 1)[-1]


def _check_out(run_dir: Path, source: str | Path) -> None:
    """``out`` must not hold the dataset (the run folder rule itself is ``start_run``'s)."""
    if isinstance(source, str):  # a SOURCE on a store is never inside a local run folder
        return
    if source.resolve() == run_dir.resolve() or run_dir.resolve() in source.resolve().parents:
        raise DataError(
            f"--out {str(run_dir)!r} contains the dataset {str(source)!r}; write the run elsewhere"
        )


def _clear_previous_steps(run_dir: Path) -> None:
    """Remove the derived sub-runs of an earlier experiment (banks are kept: resume)."""
    for name in _STEP_DIRS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
    for name in ("report.html", "summary.md", "NOTE.md"):
        (run_dir / name).unlink(missing_ok=True)


def _embed_all(source, views, banks_dir, *, backbone, opts, steps):
    from facebank.embed import FeatureBank, embed_source
    from facebank.embed.runner.options import EmbedOptions

    embed = EmbedOptions(
        device=opts.device,
        weights=opts.weights,
        image_size=opts.image_size,
        real_names=opts.real_names,
        progress=opts.progress,
        storage_options=opts.storage_options,  # a SOURCE on a store; never recorded
    )
    banks: dict[str, Path] = {}
    embedding: dict[str, dict[str, Any]] = {}
    for view in views:
        path = banks_dir / f"{view_slug(view)}.zarr"
        with steps.step(f"embed {view}", f"embed view [bold]{view}[/] -> {path}"):
            s = embed_source(source, backbone=backbone, out=path, options=embed, view=view)
        embedding[view] = {
            "embedded": s.embedded,
            "skipped_present": s.skipped_present,
            "duplicates": _count(s.duplicates),
            "failed": _count(s.failed),
            "seconds": round(float(s.seconds), 2),
        }
        banks[view] = path
    opened = {v: FeatureBank.open(p) for v, p in banks.items()}
    return banks, opened, embedding


def _count(x: Any) -> int:
    return len(x) if hasattr(x, "__len__") else int(x or 0)


def run_experiment(
    source: str | Path,
    *,
    backbone: str,
    out: str | Path,
    options: ExperimentOptions | None = None,
    **fields: Any,
) -> ExperimentResult:
    """Run the whole workbench on one dataset and write ``out/report.html``.

    Steps: embed SOURCE under ``original`` and each of ``options.views`` (one bank per
    view in ``out/banks``; a re-run on the same ``out`` resumes the banks, so only images
    not embedded yet are processed); train each head on the original view's train split
    and set its threshold on the validation reals at FPR 0.5 %; evaluate each head on the
    test rows; leave-one-engine-out with ``linear``; every head scored on every view
    (robustness, at its frozen threshold); a ``prototype`` head trained without
    ``new_engine`` and its OOD score of that engine vs the known ones; kNN engine purity
    and a PCA map of the original bank; one HTML report.

    Which split chose what: heads are fitted on ``train``, thresholds on ``val`` reals,
    every reported TPR/FPR/AUC comes from ``test`` rows (robustness: the same test images
    under each view). The OOD flag threshold is set by ``analysis.ood`` on known-engine
    validation data.

    Args:
        source: a folder ``SOURCE/<engine>/...`` (optionally ``SOURCE/<split>/<engine>/``)
            or a CSV manifest ``path,label,engine[,split][,date]``; local, or an fsspec
            URL (``s3://bucket/faces``) read as ``facebank embed`` reads one (the banks
            are still written under ``out/banks``).
        backbone: a registered backbone name (``facebank backbones``).
        out: the run folder; created if missing, reused (banks resumed) if present.
        options: an :class:`~facebank.analysis.options.ExperimentOptions` (views, heads,
            new engine, device, weights, image size, seed, real names, progress,
            protocols, group_by, storage options, engine dates, note); every field is
            honoured and recorded in ``config.json`` (storage options by key only).
        **fields: ``ExperimentOptions`` fields replacing those of ``options``.

    Returns:
        An :class:`ExperimentResult`; ``result.rich_tables()`` is the terminal summary.

    Raises:
        DataError: SOURCE missing, empty, without reals or without AI images; ``out``
            holding files that are not an earlier experiment run (nothing is deleted).
        UnknownNameError: an unknown view, head, backbone or ``new_engine``.
        BackboneMismatchError / BankError: ``out`` holds banks of another backbone.

    With a single AI engine, leave-one-engine-out and OOD are skipped; the reason is
    recorded in ``result.skipped``, ``metrics.json`` and the report.
    """
    from facebank.core.stores import is_url, local_path
    from facebank.embed.backbones.registry import backbone_info, resolve_device

    opts = ExperimentOptions.build(options, **fields)
    source = os.fspath(source) if is_url(source) else Path(local_path(source))
    run_dir = Path(out)
    backbone_info(backbone)  # UnknownNameError with the list, before any work
    view_names = canonical_views(opts.views)
    head_names = check_heads(opts.heads)
    protocols = check_protocols(opts.protocols)
    _, ai = _survey(source, opts.real_names, opts.storage_options)
    new_engine = opts.new_engine
    if new_engine is not None:
        new_engine = new_engine.lower()
        if new_engine not in ai:
            raise UnknownNameError(
                f"--new-engine {new_engine!r} is not an AI engine of {str(source)!r}; "
                f"valid: {', '.join(ai)}"
            )
    opts = dataclasses.replace(
        opts, views=tuple(view_names[1:]), heads=tuple(head_names), protocols=protocols,
        new_engine=new_engine, engine_dates=engine_dates_of(source, opts),
    )  # fmt: skip

    _check_out(run_dir, source)
    resolve_device(opts.device)  # FacebankError before any work (e.g. cuda on a CPU machine)
    start = time.perf_counter()
    config = {
        "source": str(source),
        "backbone": backbone,
        **opts.config(),
        "views": view_names,
        "fpr": FPR,
        "threshold_split": "val (reals only)",
        "test_split": "test",
    }
    fresh = not run_dir.exists()
    # resume: an earlier experiment in run_dir keeps its banks; anything else is refused
    start_run(run_dir, command="experiment", config=config, resume=True)
    try:
        return _run_steps(run_dir, source, view_names, backbone=backbone, opts=opts, start=start)
    except Exception:
        if fresh and not any(p.is_file() for p in run_dir.rglob("*") if p.name != "config.json"):
            shutil.rmtree(run_dir, ignore_errors=True)  # e.g. weights missing: leave nothing
        raise


def engine_dates_of(source: str | Path, opts: ExperimentOptions) -> str | os.PathLike | None:
    """``--engine-dates``, else a local CSV manifest SOURCE that has a ``date`` column
    (``analysis.chrono.read_engine_dates`` reads either), else None (shipped dates)."""
    if opts.engine_dates is not None or "chrono" not in opts.protocols:
        return opts.engine_dates
    if isinstance(source, Path) and source.is_file() and source.suffix.lower() == ".csv":
        import csv

        with open(source, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if "date" in [h.strip().lower() for h in header]:
            return source
    return None


def _run_steps(
    run_dir: Path,
    source: str | Path,
    view_names: list[str],
    *,
    backbone: str,
    opts: ExperimentOptions,
    start: float,
) -> ExperimentResult:
    _clear_previous_steps(run_dir)
    if opts.note:
        (run_dir / "NOTE.md").write_text(opts.note.rstrip() + "\n")
    head_names = list(opts.heads)
    seed = opts.seed

    # + normalised control, audit, loeo, robustness, ood, neighbours, report
    n_steps = len(view_names) + len(head_names) + 7 + len(opts.protocols)
    steps = Steps(n_steps, progress=opts.progress)
    bank_paths, banks, embedding = _embed_all(
        source, view_names, run_dir / "banks", backbone=backbone, opts=opts, steps=steps
    )
    original = banks["original"]
    labels = np.asarray(original.labels)
    bank_engines = np.asarray(original.engines, dtype=str)
    known = labels >= 0
    engines = dict(sorted(Counter(bank_engines[known].tolist()).items()))
    ai = sorted(set(bank_engines[labels == 1].tolist()))
    # every image of one class may have failed to decode
    _check_classes(Counter(engines), sorted(set(bank_engines[labels == 0].tolist())), ai, source)

    result = ExperimentResult(
        run_dir=run_dir,
        report=None,
        backbone=backbone,
        source=str(source),
        engines=engines,
        banks=bank_paths,
        embedding=embedding,
        heads={},
    )
    failed = sum(e["failed"] for e in embedding.values())
    if failed:
        result.notes.append(f"{failed} image(s) could not be embedded; see `facebank bank info`.")

    # Small-sample caveats (an engine with 3 test images, 9 validation reals for a 0.5 %
    # threshold...) are warned about by every step, often once per head and view: collect
    # them once each into the summary instead of flooding the terminal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grouping = {"seed": seed, "steps": steps, "group_by": opts.group_by}
        run_train_and_evaluate(result, banks, head_names, **grouping)
        run_normalised_control(result, banks, head_names, **grouping)
        run_audit(result, original, **grouping)
        run_loeo(result, original, ai, seed=seed, steps=steps)
        run_protocols(
            result, original, ai, opts.protocols, seed=seed, steps=steps,
            engine_dates=opts.engine_dates,
        )  # fmt: skip
        run_robustness(result, banks, seed=seed, steps=steps)
        run_ood(result, original, ai, opts.new_engine, seed=seed, steps=steps)
        run_neighbours(result, original, seed=seed, steps=steps)
    _record_warnings(result, caught, steps)

    result.seconds = {**steps.seconds}
    result.seconds["total"] = round(time.perf_counter() - start, 2)
    write_json(run_dir / "metrics.json", result.to_dict())
    (run_dir / "summary.md").write_text(result.markdown())
    with steps.step("report", "write the report"):
        from .report import write_report

        # the report nests every sub-run of run_dir (banks are skipped) under the summary
        result.report = write_report(
            [run_dir],
            out=run_dir / "report.html",
            title=f"facebank experiment: {backbone} on {_source_name(source)}",
        )
    result.seconds["report"] = steps.seconds["report"]
    result.seconds["total"] = round(time.perf_counter() - start, 2)
    write_json(run_dir / "metrics.json", result.to_dict())
    return result


def _record_warnings(result: ExperimentResult, caught: list, steps: Steps) -> None:
    """Unique warning texts into ``result.notes`` (at most ``_MAX_NOTES``), one line on stderr."""
    seen = list(dict.fromkeys(str(w.message) for w in caught))
    if not seen:
        return
    result.notes.extend(seen[:_MAX_NOTES])
    if len(seen) > _MAX_NOTES:
        result.notes.append(f"... and {len(seen) - _MAX_NOTES} more caveats of the same kinds")
    steps.say(
        f"{len(seen)} caveat(s) about small samples or settings: see summary.md in the report"
    )


def _confound_cells(result: ExperimentResult, head: str) -> dict[str, str]:
    """The heads table's columns from the audit and the normalised control."""
    cells: dict[str, str] = {}
    if result.normalised:
        n = result.normalised["heads"].get(head, {})
        cells["AUC normalised"] = _with_ci(n.get("auc"), n.get("auc_lo"), n.get("auc_hi"))
    if result.audit:
        a = result.audit["heads"].get(head, {})
        cf = ((result.audit.get("crossfit") or {}).get("heads") or {}).get(head, {})
        if cf:  # cross-fitted: every row in the band, scored out of fold
            a = {**cf["plain"], "cross-fitted": True}
        ci = a.get("uncertain_auc_ci") or (None, None)
        cells["AUC where files cannot tell"] = (
            _with_ci(a.get("uncertain_auc"), ci[0], ci[1])
            + (
                f" (cross-fitted, {a['uncertain_n_real']}+{a['uncertain_n_fake']} rows)"
                if a.get("cross-fitted")
                else ""
            )
            if a.get("uncertain_auc") is not None
            else "too few rows"
        )
    return cells


def _confound_lines(result: ExperimentResult) -> list[str]:
    """Plain sentences: the verdict first, then what the heads' three AUCs mean."""
    a = result.audit
    if not a:
        why = result.skipped.get("audit")
        return [f"Confounds audit skipped: {why}"] if why else []
    u = a["uncertain"]
    lines = [
        a["sentence"],
        f"Metadata-only baseline (file properties, no pixels): test AUC "
        f"{_with_ci(a['metadata_auc'], *(a['metadata_auc_ci'] or (None, None)))}, TPR "
        f"{_pct(a['metadata_tpr'])} at FPR {_pct(a['metadata_fpr'], digits=2)} "
        f"(threshold on validation reals).",
        f"'Where files cannot tell' = the {u['n']} test rows ({u['n_real']} real, "
        f"{u['n_fake']} AI) on which that baseline's cross-validated probability is within "
        f"{u['band'][0]:.2f}-{u['band'][1]:.2f}"
        + (f" ({u['note']})" if u.get("note") else "")
        + ". A head whose AUC holds there (and on the normalised view) is reading the faces; "
        "one that falls towards 0.5 was reading the files.",
    ]
    cf = a.get("crossfit") or {}
    if cf.get("k"):
        cu = cf["uncertain"]
        lines.append(
            f"Too few test rows in the band, so the audit cross-fitted {cf['k']} folds: every "
            f"labelled row scored by models that never saw it; {cu['n']} rows ({cu['n_real']} "
            f"real, {cu['n_fake']} AI) are where the files cannot tell (table column)."
        )
    return lines


def _confound_markdown(result: ExperimentResult) -> str:
    lines = _confound_lines(result)
    if not lines:
        return ""
    verdict = (result.audit or {}).get("verdict", "not run")
    return f"**Confounds: {verdict}.** " + "\n\n".join(lines) + "\n"


def _confound_rich(result: ExperimentResult) -> list[Any]:
    from rich.panel import Panel

    lines = _confound_lines(result)
    if not lines:
        return []
    verdict = (result.audit or {}).get("verdict", "not run")
    style = "bold red" if verdict == "confounded" else "bold"
    return [Panel("\n".join(lines), title=f"confounds: {verdict}", title_align="left", style=style)]
