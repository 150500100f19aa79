"""``AuditResult``: what the audit found, as tables, Markdown, ``metrics.json`` and a folder."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from facebank.core.runs import markdown_table

from .._evalcommon import md_section
from ._rule import (
    CARRIER_AUC,
    CARRIER_LO,
    CONFOUNDED_AUC,
    CONFOUNDED_LO,
    PARTLY_LO,
    RULE_MD,
    fmt,
    fmt_ci,
)


@dataclasses.dataclass
class AuditResult:
    """What ``audit`` found; ``write(run_dir)`` puts it in a run folder.

    Attributes:
        verdict: one of :data:`VERDICTS`; ``reason``: one paragraph saying why.
        carriers: metadata properties that carry the label (strongest first).
        metadata_model: the metadata-only baseline on test rows: ``auc``, ``auc_ci``,
            ``tpr`` and ``fpr`` at ``threshold`` (chosen on validation reals at ``fpr_target``),
            ``n_real``/``n_fake``, ``features`` used, ``fit_rows``.
        heads: ``{name: {auc, auc_ci, tpr, fpr, threshold, uncertain_auc,
            uncertain_auc_ci, uncertain_n_real, uncertain_n_fake, uncertain_note}}``.
        uncertain: ``band``, ``n`` (test rows inside it), ``n_real``, ``n_fake``,
            ``enough`` (both classes >= ``MIN_ROWS_PER_CLASS``), ``note``.
        properties: one dict per property: ``name``, ``kind``, ``constant``, ``values``
            (distinct count), ``auc_alone`` (+ ``auc_ci``), ``carrier``.
        distributions: ``{"class": {...}, "engine": {...}}`` per-group summaries.
        straddling_groups: groups whose rows fall in more than one split.
        splits: rows per split; ``splits_source``: where the split came from.
        propensity: ``(n_rows,)`` cross-validated metadata probability (NaN: unlabelled
            or not computed); ``test_mask``: ``(n_rows,)`` test rows.
        crossfit: the cross-fitted audit (``audit(cv=K)``; None without): ``k``,
            ``fold_rows``, ``uncertain`` (every labelled row in the band), ``metadata`` and
            ``heads.<name>.{plain,balanced}``: ``auc``, ``uncertain_auc`` (+ ``_ci``,
            counts), ``stratified_auc``, ``overlap_auc`` (+ ``_ci``), ``notes``.
        notes: caveats in words.
    """

    verdict: str
    reason: str
    carriers: list[str]
    metadata_model: dict[str, Any]
    heads: dict[str, dict[str, Any]]
    uncertain: dict[str, Any]
    properties: list[dict[str, Any]]
    distributions: dict[str, dict[str, dict[str, Any]]]
    straddling_groups: list[dict[str, Any]]
    splits: dict[str, int]
    splits_source: str
    fpr: float
    propensity: np.ndarray
    test_mask: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    engines: np.ndarray
    notes: list[str] = dataclasses.field(default_factory=list)
    crossfit: dict[str, Any] | None = None
    run_dir: Path | None = None

    @property
    def metadata_auc(self) -> float | None:
        return self.metadata_model.get("auc")

    @property
    def uncertain_rows(self) -> int:
        return int(self.uncertain.get("n", 0))

    def metrics(self) -> dict[str, Any]:
        """The ``{"audit": {...}}`` block of ``metrics.json`` (keys: docs/confounds.md)."""
        return {
            "audit": {
                "verdict": self.verdict,
                "reason": self.reason,
                "carriers": list(self.carriers),
                "metadata_auc": self.metadata_auc,
                "metadata_auc_ci": self.metadata_model.get("auc_ci"),
                "metadata_model": self.metadata_model,
                "uncertain_rows": self.uncertain_rows,
                "uncertain": self.uncertain,
                "heads": self.heads,
                "properties": self.properties,
                "distributions": self.distributions,
                "straddling_groups": self.straddling_groups,
                "splits": self.splits,
                "splits_source": self.splits_source,
                "fpr": self.fpr,
                "rule": {
                    "confounded": f"metadata AUC >= {CONFOUNDED_AUC} and its 95% lower bound "
                    f">= {CONFOUNDED_LO}",
                    "partly confounded": f"else metadata AUC 95% lower bound > {PARTLY_LO}",
                    "no metadata shortcut found": "else",
                    "carrier": f"property alone AUC >= {CARRIER_AUC}, lower bound > {CARRIER_LO}",
                },
                "notes": list(self.notes),
                "crossfit": self.crossfit,
            }
        }

    def summary(self) -> dict[str, Any]:
        """The headline keys (what an experiment's ``metrics.json`` carries under ``audit``)."""
        m = self.metrics()["audit"]
        keep = ("verdict", "reason", "carriers", "metadata_auc", "metadata_auc_ci")
        return {
            **{k: m[k] for k in keep},
            "sentence": self.summary_sentence(),
            "metadata_tpr": self.metadata_model.get("tpr"),
            "metadata_fpr": self.metadata_model.get("fpr"),
            "uncertain_rows": self.uncertain_rows,
            "uncertain": self.uncertain,
            "heads": self.heads,
            "crossfit": self.crossfit,
            "run_dir": self.run_dir,
        }

    def summary_sentence(self) -> str:
        """One plain sentence for the top of a report or terminal summary."""
        auc = fmt(self.metadata_auc)
        if self.verdict == "confounded":
            return (
                f"CONFOUNDED: file properties alone ({', '.join(self.carriers) or 'together'}) "
                f"separate real from AI with AUC {auc}; the heads' scores on this dataset may "
                "measure the files, not the faces - read their AUC on the uncertain rows."
            )
        if self.verdict == "partly confounded":
            return (
                f"Partly confounded: file properties alone reach AUC {auc} "
                f"({', '.join(self.carriers) or 'together'}); compare each head's AUC on the "
                "rows where the files cannot tell with its overall AUC."
            )
        ci = self.metadata_model.get("auc_ci") or (None, None)
        return (
            f"No metadata shortcut found: file properties alone reach test AUC "
            f"{fmt_ci(self.metadata_auc, ci)}, not clearly above chance (rule: lower bound "
            f"> {PARTLY_LO}); only the recorded properties were tried."
        )

    def head_rows(self) -> list[dict[str, Any]]:
        """Metadata-only baseline and each head: AUC, TPR/FPR at threshold, AUC where uncertain."""
        m = self.metadata_model
        rows = [
            {
                "model": "metadata only (no pixels)",
                "AUC [95% CI]": fmt_ci(m.get("auc"), m.get("auc_ci")),
                "TPR @ val thr": m.get("tpr"),
                "FPR realised": m.get("fpr"),
                "AUC where files cannot tell": "-",
                **_balanced_cells(m),
            }
        ]
        for name, h in self.heads.items():
            rows.append(
                {
                    "model": name,
                    "AUC [95% CI]": fmt_ci(h.get("auc"), h.get("auc_ci")),
                    "TPR @ val thr": h.get("tpr"),
                    "FPR realised": h.get("fpr"),
                    "AUC where files cannot tell": fmt_ci(
                        h.get("uncertain_auc"), h.get("uncertain_auc_ci")
                    )
                    if h.get("uncertain_auc") is not None
                    else f"too few rows ({h.get('uncertain_n_real', 0)} real, "
                    f"{h.get('uncertain_n_fake', 0)} AI)",
                    **_balanced_cells(h),
                }
            )
        return rows

    def crossfit_rows(self) -> list[dict[str, Any]]:
        """Cross-fitted figures: the metadata model, then each head trained plain and balanced."""
        cf = self.crossfit or {}
        rows = []
        entries = [("metadata only (no pixels)", "-", cf.get("metadata") or {})]
        for name, variants in (cf.get("heads") or {}).items():
            entries += [(name, v, block) for v, block in variants.items()]
        for model, training, b in entries:
            rows.append(
                {
                    "model": model,
                    "training": training,
                    "AUC, all rows out of fold": fmt_ci(b.get("auc"), b.get("auc_ci")),
                    "AUC where files cannot tell": fmt_ci(
                        b.get("uncertain_auc"), b.get("uncertain_auc_ci")
                    )
                    if b.get("uncertain_auc") is not None
                    else "too few rows",
                    "rows (real/AI)": f"{b.get('uncertain_n_real', 0)}/"
                    f"{b.get('uncertain_n_fake', 0)}",
                    **_balanced_cells(b),
                }
            )
        return rows

    def property_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "property": p["name"],
                "kind": p["kind"],
                "distinct values": p["values"],
                "AUC alone [95% CI]": "constant"
                if p["constant"]
                else fmt_ci(p.get("auc_alone"), p.get("auc_ci")),
                "carrier": "yes" if p.get("carrier") else "",
            }
            for p in self.properties
        ]

    def distribution_rows(self, by: str) -> list[dict[str, Any]]:
        rows = []
        for name, d in self.distributions.get(by, {}).items():
            rows.append(
                {
                    by: name,
                    "n": d["n"],
                    "formats": ", ".join(f"{k} {v:.0%}" for k, v in d["formats"].items()),
                    "short side q05/q50/q95": "/".join(str(v) for v in d["short_side_q"]) or "-",
                    "JPEG quality q05/q50/q95": "/".join(str(v) for v in d["jpeg_quality_q"])
                    or "-",
                    "grayscale": d["grayscale"],
                    "bytes/pixel median": d["bytes_per_pixel_median"],
                    # a face view: the share of rows where the detector found a face
                    **({"face found": d["face_found"]} if d.get("face_found") is not None else {}),
                }
            )
        return rows

    def markdown(self) -> str:
        u = self.uncertain
        text = "# Confounds audit: could the files give the answer?\n\n"
        text += f"**Verdict: {self.verdict}.** {self.reason}\n\n"
        text += md_section(
            "Metadata-only baseline and heads (test rows)",
            f"Thresholds on validation reals at FPR {self.fpr:.1%}; splits from "
            f"{self.splits_source} ({', '.join(f'{k} {v}' for k, v in self.splits.items())}). "
            f"'Where files cannot tell': the {u['n']} test rows ({u['n_real']} real, "
            f"{u['n_fake']} AI) whose cross-validated metadata probability is within "
            f"{u['band'][0]:.2f}-{u['band'][1]:.2f}.\n\n" + markdown_table(self.head_rows()),
        )
        if self.crossfit and self.crossfit.get("k"):
            cf = self.crossfit
            text += md_section(
                f"Cross-fitted: {cf['k']} folds, every row scored by models that never saw it",
                f"Folds are stratified{' and keep each group whole' if cf.get('grouped') else ''} "
                f"(rows per fold: {', '.join(map(str, cf['fold_rows']))}); heads refitted per "
                f"fold, plain and balanced (overlap-weighted draw of the training rows). "
                f"{cf['uncertain']['n']} of {cf['uncertain']['n_rows']} rows are inside the "
                f"band.\n\n"
                + markdown_table(self.crossfit_rows())
                + "".join(f"\n- {n}" for n in cf.get("notes", [])),
            )
        text += md_section("Each property alone (test rows)", markdown_table(self.property_rows()))
        text += md_section("Per class", markdown_table(self.distribution_rows("class")))
        text += md_section("Per engine", markdown_table(self.distribution_rows("engine")))
        if self.straddling_groups:
            text += md_section(
                "Groups in more than one split",
                markdown_table(self.straddling_groups[:50])
                + (
                    f"\n... and {len(self.straddling_groups) - 50} more\n"
                    if len(self.straddling_groups) > 50
                    else ""
                ),
            )
        if self.notes:
            text += md_section("Notes", "\n".join(f"- {n}" for n in self.notes))
        text += md_section("Rule", RULE_MD)
        return text

    def write(self, run_dir: str | Path, *, config: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``metrics.json``, ``audit.md``, ``properties.csv``,
        ``uncertain_rows.csv`` and ``audit.png`` into ``run_dir`` (a new run folder)."""
        from ..runfolder import RunContents, write_run
        from ._figure import audit_figure

        self.run_dir = write_run(
            run_dir,
            RunContents(
                command="audit",
                config=dict(config or {}),
                metrics=self.metrics(),
                pages={"audit.md": self.markdown()},
                files={
                    "properties.csv": self._properties_csv,
                    "uncertain_rows.csv": self._uncertain_csv,
                },
                figures={"audit.png": lambda: audit_figure(self)},
            ),
        )
        return self.run_dir

    def _properties_csv(self, fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(["property", "kind", "constant", "distinct", "auc_alone", "lo", "hi"])
        for p in self.properties:
            lo, hi = p.get("auc_ci") or (None, None)
            w.writerow(
                [p["name"], p["kind"], p["constant"], p["values"], p.get("auc_alone"), lo, hi]
            )

    def _uncertain_csv(self, fh: TextIO) -> None:
        """The rows whose metadata probability lies in the uncertainty band."""
        lo, hi = self.uncertain["band"]
        # cross-fitted: every labelled row has an out-of-fold probability; else test rows
        scope = (self.labels >= 0) if self.crossfit else self.test_mask
        rows = np.flatnonzero(scope & (self.propensity >= lo) & (self.propensity <= hi))
        w = csv.writer(fh)
        w.writerow(["path", "engine", "label", "metadata_probability"])
        for i in rows:
            w.writerow(
                [
                    self.paths[i],
                    self.engines[i],
                    int(self.labels[i]),
                    repr(float(self.propensity[i])),
                ]
            )


def _balanced_cells(h: Mapping[str, Any]) -> dict[str, str]:
    """The two balanced-AUC cells of a table row (docs/confounds.md)."""
    return {
        "stratified AUC": fmt_ci(h.get("stratified_auc"), h.get("stratified_auc_ci")),
        "overlap-weighted AUC": fmt_ci(h.get("overlap_auc"), h.get("overlap_auc_ci")),
    }
