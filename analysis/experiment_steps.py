"""The steps of ``run_experiment``: each runs one analysis into its sub-run folder and
records a summary on the :class:`~facebank.analysis.experiment.ExperimentResult`.

Which split chose what is each analysis' own rule (its docstring); the experiment only
orders the steps, shares the banks and heads between them, and keeps going when one
step fails (the failure is recorded as a note).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from facebank.core.errors import UnknownNameError

log = logging.getLogger(__name__)

# The operating point of arXiv 2311.08577: 0.5 % of real faces flagged.
FPR = 0.005
# PCA only: sklearn's t-SNE costs tens of seconds even on a few hundred rows on 2 cores,
# more than every head together; `facebank neighbours map --method tsne` draws it on demand.
MAP_METHODS = ("pca",)
# The OOD flag threshold flags this share of known-engine validation images: a new-engine
# alarm, not a real-vs-AI decision, so a looser rate than FPR keeps it informative.
OOD_FLAG_FPR = 0.05


class Steps:
    """Step headers on stderr while ``progress`` is on (the progress display of a run)."""

    def __init__(self, total: int, *, progress: bool) -> None:
        self.total = total
        self.i = 0
        self.seconds: dict[str, float] = {}
        self.console = None
        if progress:
            from rich.console import Console

            self.console = Console(stderr=True)

    @contextlib.contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.i += 1
        if self.console is not None:
            self.console.print(f"[bold cyan][{self.i}/{self.total}][/] {what}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
        log.info(text)


def _metric(m: Any, name: str) -> Any:
    return m.get(name) if isinstance(m, dict) else getattr(m, name, None)


def _head_summary(tr: Any, ev: Any) -> dict[str, Any]:
    m = ev.metrics
    ci = _metric(m, "ci") or {}
    auc_ci = ci.get("auc") or (None, None)
    tpr_at = _metric(m, "tpr_at_fpr") or {}
    return {
        "auc": _metric(m, "auc"),
        "auc_lo": auc_ci[0],
        "auc_hi": auc_ci[1],
        "tpr": _metric(m, "recall"),
        "fpr": _metric(m, "fpr"),
        "tpr_at_0.5%": tpr_at.get("0.5%"),
        "threshold": ev.threshold,
        "n_test": _metric(m, "n"),
        "val_auc": getattr(tr, "val_auc", None),
        "train_seconds": round(float(getattr(tr, "train_seconds", 0.0)), 2),
        "run_dir": Path(tr.run_dir),
        "eval_dir": ev.run_dir,
    }


def run_train_and_evaluate(result, banks, head_names, *, seed, steps, group_by=None) -> None:
    from facebank.heads import train_run

    from .evaluation import evaluate

    original = banks["original"]
    for name in head_names:
        with steps.step(f"head {name}", f"train and evaluate head [bold]{name}[/]"):
            tr = train_run(
                [original],
                head=name,
                params={},
                out=result.run_dir / "train" / name,
                seed=seed,
                fpr=FPR,
                group_by=group_by,
            )
            ev = evaluate(tr.run_dir, [original], out=result.run_dir / "evaluate" / name, seed=seed)
        result.heads[name] = _head_summary(tr, ev)


def run_loeo(result, original, ai, *, seed, steps) -> None:
    with steps.step("loeo", "leave-one-engine-out with [bold]linear[/]"):
        if len(ai) < 2:
            result.skipped["leave-one-engine-out"] = (
                f"needs at least two AI engines, the dataset has {len(ai)} ({', '.join(ai)})"
            )
            return
        from .protocols import leave_one_engine_out

        lo = leave_one_engine_out(
            [original], head="linear", seed=seed, fpr=FPR, out=result.run_dir / "loeo"
        )
        result.loeo = _loeo_summary(lo)


def _loeo_summary(lo: Any) -> dict[str, Any]:
    avg = lo.average or {}
    return {
        "in_engine_tpr": avg.get("tpr_in"),
        "out_of_engine_tpr": avg.get("tpr_out"),
        "drop": avg.get("drop"),
        "fpr_test_reals": avg.get("fpr_test_reals"),
        "per_engine": [
            {
                k: r.get(k)
                for k in ("engine", "n_in", "tpr_in", "n_out", "tpr_out", "drop", "auc_out")
            }
            for r in lo.table
        ],
        "run_dir": lo.run_dir,
    }


def run_robustness(result, banks, *, seed, steps) -> None:
    with steps.step("robustness", "robustness: every head on every view"):
        if len(banks) < 2:
            result.skipped["robustness"] = "no views besides original were asked for"
            return
        from .robustness import robustness

        result.robustness = {}
        for name, h in result.heads.items():
            rb = robustness(
                h["run_dir"],
                list(banks.values()),
                out=result.run_dir / "robustness" / name,
                seed=seed,
            )
            result.robustness[name] = _robustness_summary(rb)


def _robustness_summary(rb: Any) -> dict[str, dict[str, Any]]:
    return {
        str(v["view"]): {"auc": v.get("auc"), "tpr": v.get("tpr"), "fpr": v.get("fpr")}
        for v in rb.views
    }


def run_ood(result, original, ai, new_engine, *, seed, steps) -> None:
    with steps.step("ood", "OOD: prototype head trained without one engine"):
        if len(ai) < 2:
            result.skipped["ood"] = (
                "a new-engine test needs at least two AI engines (one held out, one known), "
                f"the dataset has {len(ai)} ({', '.join(ai)})"
            )
            return
        from facebank.heads import train_run

        from .ood import default_new_engine, ood

        new = new_engine
        if new is None:
            new, why = default_new_engine(result.engines, ai)
            if new is None:
                result.skipped["ood"] = why
                return
        result.new_engine = new
        known_engines = [e for e in result.engines if e != new]
        known = original.select(engines=known_engines)
        fresh = original.select(engines=[new])
        tr = train_run(
            [known],
            head="prototype",
            params={},
            out=result.run_dir / "train" / f"prototype-without-{new}",
            seed=seed,
            fpr=FPR,
        )
        res = ood(
            tr.run_dir,
            known=[known],
            new=[fresh],
            out=result.run_dir / "ood",
            flag_fpr=OOD_FLAG_FPR,
            seed=seed,
        )
        result.ood = {"new_engine": new, **_ood_summary(res), "head_dir": tr.run_dir}


def _ood_summary(res: Any) -> dict[str, Any]:
    row = res.per_engine[0] if res.per_engine else {}
    return {
        "method": res.method,
        "auroc": row.get("auroc"),
        "fpr_at_95tpr": row.get("fpr_at_95tpr"),
        "flag_rate_new": row.get("flag_rate"),
        "flag_rate_known": res.known_flag_rate,
        "n_new": res.n_new,
        "n_known_test": res.n_known_test,
        "run_dir": res.run_dir,
    }


def run_neighbours(result, original, *, seed, steps) -> None:
    with steps.step("neighbours", "neighbours: engine clusters and a map"):
        from .neighbours import engine_clusters, write_maps

        cl = engine_clusters(
            [original],
            k=min(10, len(original) - 1),
            seed=seed,
            out=result.run_dir / "neighbours" / "clusters",
        )
        map_dir, _ = write_maps(
            [original], out=result.run_dir / "neighbours" / "map", methods=MAP_METHODS, seed=seed
        )
        result.neighbours = {
            "k": cl.k,
            "purity_macro": cl.overall.get("macro"),
            "purity_micro": cl.overall.get("micro"),
            "nmi": cl.kmeans.get("nmi"),
            "ari": cl.kmeans.get("ari"),
            "run_dir": cl.run_dir,
            "map_dir": map_dir,
        }


# ----------------------------------------------------------------------------- confounds


def run_normalised_control(result, banks, head_names, *, seed, steps, group_by=None) -> None:
    """Each head trained and tested on the ``normalise`` view (same images, same splits)."""
    view = next((v for v in banks if v.startswith("normalise")), None)
    with steps.step("normalised", f"laundering control: heads on [bold]{view or 'normalise'}[/]"):
        if view is None:
            result.skipped["normalised control"] = (
                "no normalise view was asked for; add --views normalise to see each head "
                "trained and tested with format, size and encoding made identical"
            )
            return
        from facebank.heads import train_run

        from .evaluation import evaluate

        result.normalised = {"view": view, "heads": {}}
        for name in head_names:
            tr = train_run(
                [banks[view]],
                head=name,
                params={},
                out=result.run_dir / "normalised" / "train" / name,
                seed=seed,
                fpr=FPR,
                group_by=group_by,
            )
            ev = evaluate(
                tr.run_dir,
                [banks[view]],
                out=result.run_dir / "normalised" / "evaluate" / name,
                seed=seed,
            )
            result.normalised["heads"][name] = _head_summary(tr, ev)


def run_audit(result, original, *, seed, steps, group_by=None) -> None:
    """The confounds audit on the original bank, with the heads trained on it."""
    with steps.step("audit", "audit: could the files, not the faces, give the answer?"):
        from facebank.core.errors import FacebankError

        from .audit import audit

        try:
            res = audit(
                [original],
                head_runs={name: h["run_dir"] for name, h in result.heads.items()},
                group_by=group_by,
                fpr=FPR,
                seed=seed,
                cv="auto",  # cross-fitted when the test split's band is too thin
            )
        except FacebankError as exc:  # e.g. a bank without metadata, no test rows of a class
            result.skipped["audit"] = str(exc)
            return
        res.write(
            result.run_dir / "audit",
            config={"banks": [str(result.banks["original"])], "heads": list(result.heads)},
        )
        result.audit = res.summary()
        if res.verdict != "no metadata shortcut found":
            result.notes.insert(0, res.summary_sentence())


OPTIONAL_PROTOCOLS = ("few-shot", "chrono")


def check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(protocols) - set(OPTIONAL_PROTOCOLS))
    if unknown:
        raise UnknownNameError(
            f"--protocols {unknown} are not known; valid: {', '.join(OPTIONAL_PROTOCOLS)}"
        )
    return tuple(dict.fromkeys(protocols))


def run_protocols(result, original, ai, protocols, *, seed, steps, engine_dates=None) -> None:
    """Optional protocols (``protocols=("few-shot", "chrono")``) with ``linear``."""
    from facebank.core.errors import DataError

    from .chrono import chronological
    from .fewshot import few_shot

    for name in protocols:
        with steps.step(name, f"protocol [bold]{name}[/] with [bold]linear[/]"):
            if len(ai) < 2:
                result.skipped[name] = f"needs at least two AI engines, the dataset has {ai}"
                continue
            out = result.run_dir / name
            try:
                if name == "few-shot":
                    r = few_shot([original], head="linear", seed=seed, fpr=FPR, out=out)
                    summary = {"average": r.average, "stopped": r.stopped, "run_dir": r.run_dir}
                else:
                    r = chronological(
                        [original], head="linear", seed=seed, fpr=FPR, out=out,
                        engine_dates=engine_dates,
                    )  # fmt: skip
                    summary = {"table": r.table, "dates": r.dates, "run_dir": r.run_dir}
            except DataError as exc:  # e.g. engines without a release date
                result.skipped[name] = str(exc)
                continue
            result.protocols = {**(result.protocols or {}), name: summary}
