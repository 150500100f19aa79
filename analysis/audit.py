"""``audit``: could a detector's answer come from the *files* rather than the faces?

Detectors of AI-generated faces are known to learn the container (JPEG vs PNG), the
image size, the encoder and who is in the photo instead of generation traces. The audit
asks the bank's per-row acquisition metadata (``embed.metadata.METADATA_SCHEMA``: format,
width, height, bytes, bytes per pixel, PIL mode, bit depth, EXIF/ICC/PNG text, JPEG
quality and subsampling) three questions, on the same train/val/test rows a run used:

1. **Metadata-only baseline.** A ``HistGradientBoostingClassifier`` that sees only the
   metadata (never a pixel) is fitted on the **train** rows, its threshold is set on the
   **validation** reals at the run's FPR, and it is scored on the **test** rows: AUC with
   its bootstrap interval, TPR at that threshold with the FPR it realised - side by side
   with each head's.
2. **Where the files cannot tell.** Every labelled row gets a cross-validated metadata
   probability (5 stratified folds, 3 above 100k rows: each row is scored by a model that never saw
   it). Test rows whose probability lies inside ``band`` (default 0.05-0.95) are the rows
   where the files do not give the answer away; each head's AUC on them is the number
   that says whether it learned faces. Too few such rows is said, with the counts.
3. **Per property.** The AUC of each property alone (its value's share of AI images
   among train rows, scored on test rows: any shape, not only monotone), constants
   reported as constant, and distributions per class and per engine (format mix, short
   side and JPEG quality quantiles, grayscale share).

Verdict (the rule, also in ``docs/confounds.md``), from the metadata-only test AUC ``A``
and its 95 % interval ``[lo, hi]``:

- ``confounded``: ``A >= 0.90`` and ``lo >= 0.80`` - the files alone nearly separate the
  classes; any head's AUC on this dataset may be measuring the files.
- ``partly confounded``: otherwise, when ``lo > 0.60`` - the files carry the label
  beyond chance; compare each head's AUC on the uncertain rows with its overall AUC.
- ``no metadata shortcut found``: otherwise. Not a proof of absence: only the recorded
  properties were tried (resampling history and framing are not among them).

Carriers: properties whose AUC alone is ``>= 0.70`` with a lower bound ``> 0.60``,
strongest first; when the verdict is not ``no metadata shortcut found`` and no single
property qualifies, the three strongest are named as carrying it together.

Which split chose what: the baseline is fitted on ``train``, its threshold on ``val``
reals; every reported AUC/TPR is measured on ``test`` rows. The cross-validated
probabilities use all labelled rows but score each row with a model that did not see it;
the band is fixed in advance, never tuned.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from facebank.core.errors import BankError, DataError, HeadError
from facebank.core.runs import markdown_table, start_run, write_json
from facebank.core.splits import resolve_groups
from facebank.embed.bank.types import BanksLike
from facebank.embed.inputs.metadata import METADATA_SCHEMA
from facebank.heads.training import resolve_splits

from ._evalcommon import (
    check_head_backbone,
    load_run_head,
    md_section,
    open_banks,
    read_splits_csv,
    require_one_backbone,
    score_rows,
)
from .metrics import binary_metrics, threshold_at_fpr

__all__ = [
    "AuditResult",
    "audit",
    "audit_verdict",
    "BAND",
    "CONFOUNDED_AUC",
    "CONFOUNDED_LO",
    "PARTLY_LO",
    "CARRIER_AUC",
    "CARRIER_LO",
    "VERDICTS",
]

VERDICTS = ("confounded", "partly confounded", "no metadata shortcut found")
# The rule of the module docstring. 0.90 is where a reviewer would call a detector
# "nearly perfect"; a lower bound of 0.60 keeps a handful of test rows from crying wolf.
CONFOUNDED_AUC = 0.90
CONFOUNDED_LO = 0.80
PARTLY_LO = 0.60
CARRIER_AUC = 0.70
CARRIER_LO = 0.60
#: cross-validated metadata probability inside which "the files cannot tell"
BAND = (0.05, 0.95)
# An AUC on fewer rows of either class is noise with an interval wider than its meaning.
MIN_ROWS_PER_CLASS = 5
CV_FOLDS = 5
# Above this many labelled rows, 3 folds: each model still sees hundreds of thousands
# of rows, and two fewer fits keep an audit of 1M rows within seconds.
CV_FOLDS_LARGE_FROM = 100_000
# Numeric properties with more distinct values are binned at train-row quantiles (the
# model's columns and each property's "alone" lookup table): 32 bins resolve the size and
# quality steps that matter while keeping a 1M-row bank to tens of thousands of vectors.
_BINS = 32
_PROPERTIES = tuple(k for k in METADATA_SCHEMA if k != "meta_error")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_N_BOOT = 500


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
            "run_dir": self.run_dir,
        }

    def summary_sentence(self) -> str:
        """One plain sentence for the top of a report or terminal summary."""
        auc = _fmt(self.metadata_auc)
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
            f"{_fmt_ci(self.metadata_auc, ci)}, not clearly above chance (rule: lower bound "
            f"> {PARTLY_LO}); only the recorded properties were tried."
        )

    def head_rows(self) -> list[dict[str, Any]]:
        """Metadata-only baseline and each head: AUC, TPR/FPR at threshold, AUC where uncertain."""
        m = self.metadata_model
        rows = [
            {
                "model": "metadata only (no pixels)",
                "AUC [95% CI]": _fmt_ci(m.get("auc"), m.get("auc_ci")),
                "TPR @ val thr": m.get("tpr"),
                "FPR realised": m.get("fpr"),
                "AUC where files cannot tell": "-",
            }
        ]
        for name, h in self.heads.items():
            rows.append(
                {
                    "model": name,
                    "AUC [95% CI]": _fmt_ci(h.get("auc"), h.get("auc_ci")),
                    "TPR @ val thr": h.get("tpr"),
                    "FPR realised": h.get("fpr"),
                    "AUC where files cannot tell": _fmt_ci(
                        h.get("uncertain_auc"), h.get("uncertain_auc_ci")
                    )
                    if h.get("uncertain_auc") is not None
                    else f"too few rows ({h.get('uncertain_n_real', 0)} real, "
                    f"{h.get('uncertain_n_fake', 0)} AI)",
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
                else _fmt_ci(p.get("auc_alone"), p.get("auc_ci")),
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
        text += md_section("Rule", _RULE_MD)
        return text

    def write(self, run_dir: str | Path, *, config: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``metrics.json``, ``audit.md``, ``properties.csv``,
        ``uncertain_rows.csv`` and ``audit.png`` into ``run_dir`` (a new run folder)."""
        run = start_run(run_dir, command="audit", config=dict(config or {}))
        write_json(run / "metrics.json", self.metrics())
        (run / "audit.md").write_text(self.markdown())
        with open(run / "properties.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["property", "kind", "constant", "distinct", "auc_alone", "lo", "hi"])
            for p in self.properties:
                lo, hi = p.get("auc_ci") or (None, None)
                w.writerow(
                    [p["name"], p["kind"], p["constant"], p["values"], p.get("auc_alone"), lo, hi]
                )
        lo, hi = self.uncertain["band"]
        rows = np.flatnonzero(self.test_mask & (self.propensity >= lo) & (self.propensity <= hi))
        with open(run / "uncertain_rows.csv", "w", newline="") as fh:
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
        from .plots import save_figure

        save_figure(audit_figure(self), run / "audit.png")
        self.run_dir = run
        return run


_RULE_MD = (
    f"- `confounded`: metadata-only test AUC >= {CONFOUNDED_AUC} and its 95% lower bound "
    f">= {CONFOUNDED_LO}.\n"
    f"- `partly confounded`: otherwise, when the lower bound is > {PARTLY_LO}.\n"
    "- `no metadata shortcut found`: otherwise (only the recorded properties were tried).\n"
    f"- carrier: a property whose AUC alone is >= {CARRIER_AUC} with lower bound > {CARRIER_LO}.\n"
)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _fmt_ci(v: Any, ci: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if not ci or ci[0] is None or any(isinstance(c, float) and math.isnan(c) for c in ci):
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


# ----------------------------------------------------------------------------- rule


def audit_verdict(
    metadata_auc: float | None,
    metadata_auc_ci: Sequence[float] | None,
    properties: Sequence[Mapping[str, Any]],
) -> tuple[str, list[str]]:
    """``(verdict, carriers)`` by the rule of the module docstring.

    Args:
        metadata_auc: the metadata-only baseline's test AUC (None: not measurable).
        metadata_auc_ci: its 95 % interval.
        properties: dicts with ``name``, ``constant``, ``auc_alone``, ``auc_ci``.
    """
    if metadata_auc is None or not math.isfinite(metadata_auc):
        return "no metadata shortcut found", []
    lo = metadata_auc_ci[0] if metadata_auc_ci else metadata_auc
    lo = metadata_auc if lo is None or not math.isfinite(lo) else lo
    if metadata_auc >= CONFOUNDED_AUC and lo >= CONFOUNDED_LO:
        verdict = "confounded"
    elif lo > PARTLY_LO:
        verdict = "partly confounded"
    else:
        return "no metadata shortcut found", []
    ranked = sorted(
        (p for p in properties if not p["constant"] and p.get("auc_alone") is not None),
        key=lambda p: -p["auc_alone"],
    )
    carriers = [
        p["name"]
        for p in ranked
        if p["auc_alone"] >= CARRIER_AUC and (p.get("auc_ci") or (0, 0))[0] > CARRIER_LO
    ]
    return verdict, carriers or [p["name"] for p in ranked[:3]]


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass
class _Encoded:
    """Every property as small integer codes, and the rows' distinct code vectors.

    Numbers are binned at ``_BINS`` train-row quantiles (exact values when they have no
    more), code 0 = missing (-1/NaN: not read, or not applicable such as the JPEG quality
    of a PNG); strings and flags are category codes. Rows with the same code vector get
    the same prediction from any model of these codes, so models are fitted on the
    distinct vectors weighted by their counts per class and predict each vector once:
    a 1M-row bank holds a few thousand distinct vectors.
    """

    codes: dict[str, np.ndarray]  # property -> (n,) int codes
    distinct: dict[str, int]  # property -> distinct values among labelled rows
    names: list[str]  # the model's columns: non-constant properties
    cats: list[bool]  # per model column: a category (no order)
    U: np.ndarray  # (n_vectors, k) distinct code vectors of the model's columns
    row_vector: np.ndarray  # (n,) index into U of each row


def _bin_codes(v: np.ndarray, train: np.ndarray) -> np.ndarray:
    x = v.astype(np.float64)
    x = np.where(x < 0, np.nan, x)
    finite = x[train & np.isfinite(x)]
    uniq = np.unique(finite)
    if uniq.size > _BINS:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, _BINS + 1)[1:-1]))
    else:
        edges = (uniq[:-1] + uniq[1:]) / 2 if uniq.size > 1 else np.zeros(0)
    codes = np.searchsorted(edges, np.nan_to_num(x, nan=-np.inf)) + 1
    return np.where(np.isfinite(x), codes, 0).astype(np.int64)


def _n_codes(codes: np.ndarray) -> int:
    """Distinct values among small non-negative integer codes (a count, not a sort)."""
    return int(np.count_nonzero(np.bincount(codes))) if codes.size else 0


def _encode(meta: Mapping[str, np.ndarray], labelled: np.ndarray, train: np.ndarray) -> _Encoded:
    codes, distinct = {}, {}
    names, cats = [], []
    for key in _PROPERTIES:
        v = np.asarray(meta[key])
        kind = METADATA_SCHEMA[key]
        if kind in ("str", "bool"):
            values, c = np.unique(v, return_inverse=True)
            c = c.ravel().astype(np.int64)
            distinct[key] = _n_codes(c[labelled])
        else:
            c = _bin_codes(v, train)
            lab = v[labelled].astype(np.float64)
            lab = np.where(lab < 0, -1.0, np.nan_to_num(lab, nan=-1.0))
            distinct[key] = int(np.unique(lab).size)
        codes[key] = c
        if distinct[key] > 1 and _n_codes(c[labelled]) > 1:
            names.append(key)
            # the trees take at most 255 categories; more (never seen in practice) as codes
            cats.append(kind == "str" and int(c.max()) < 250)
    if names:
        M = np.column_stack([codes[k] for k in names])
        # one int64 key per row when the code space fits, else a row-wise unique
        radix = M.max(axis=0) + 1
        if float(np.prod(radix.astype(np.float64))) < 2.0**62:
            key = np.zeros(M.shape[0], dtype=np.int64)
            for j in range(M.shape[1]):
                key = key * radix[j] + M[:, j]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(M, axis=0, return_index=True, return_inverse=True)
        U, row_vector = M[first], inverse.ravel()
    else:
        U, row_vector = np.zeros((1, 0), np.int64), np.zeros(labelled.size, np.int64)
    return _Encoded(codes, distinct, names, cats, U, row_vector)


def _model(cats: list[bool], n_fit: int, seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        # a dozen columns need few trees (AUC within 0.002 of 200 trees on realfaces);
        # each costs ~10 ms even on 50 rows
        max_iter=50,
        early_stopping=False,  # deterministic: no random validation carve-out
        # a few dozen vectors (tests, tiny engines) must still be able to split
        min_samples_leaf=int(max(1, min(20, n_fit // 20))),
        categorical_features=np.asarray(cats, dtype=bool) if any(cats) else None,
        random_state=seed,
    )


def _fit(
    enc: _Encoded, y: np.ndarray, rows: np.ndarray, seed: int, predict: np.ndarray | None = None
) -> np.ndarray:
    """Fit on ``rows`` (as weighted distinct vectors); the AI probability of each vector
    (NaN for vectors not among ``predict`` rows' vectors, when given)."""
    nu = enc.U.shape[0]
    w = np.bincount(enc.row_vector[rows] * 2 + y[rows], minlength=2 * nu).reshape(nu, 2)
    vec, cls = np.nonzero(w)
    model = _model(enc.cats, vec.size, seed)
    model.fit(enc.U[vec], cls, sample_weight=w[vec, cls].astype(np.float64))
    if predict is None:
        return model.predict_proba(enc.U)[:, 1]
    need = np.unique(enc.row_vector[predict])
    out = np.full(nu, np.nan)
    out[need] = model.predict_proba(enc.U[need])[:, 1]
    return out


def _cross_val_proba(enc, y, labelled, seed, notes) -> np.ndarray:
    """Out-of-fold metadata probability of every labelled row (NaN elsewhere)."""
    p = np.full(y.size, np.nan)
    rows = np.flatnonzero(labelled)
    counts = np.bincount(y[rows], minlength=2)
    folds = int(min(CV_FOLDS if rows.size < CV_FOLDS_LARGE_FROM else 3, counts.min()))
    if folds < 2 or not enc.names:
        why = "no property varies" if not enc.names else f"class counts {counts.tolist()}"
        if not enc.names:
            p[rows] = counts[1] / counts.sum()  # nothing to learn from: the base rate
        notes.append(f"cross-validated metadata probabilities: {why}")
        return p
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit, held in skf.split(rows, y[rows]):
        p[rows[held]] = _fit(enc, y, rows[fit], seed, rows[held])[enc.row_vector[rows[held]]]
    return p


# ----------------------------------------------------------------------------- properties


def _alone_scores(codes: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each row's score from one property: the AI share of its value (bin) among train rows."""
    k = int(codes.max()) + 1 if codes.size else 1
    pos = np.bincount(codes[train], weights=(y[train] == 1).astype(float), minlength=k)
    tot = np.bincount(codes[train], minlength=k).astype(float)
    base = pos.sum() / max(tot.sum(), 1.0)
    share = np.where(tot > 0, pos / np.maximum(tot, 1.0), base)
    return share[codes]


def _properties(enc: _Encoded, y, train, test, seed) -> list[dict[str, Any]]:
    out = []
    for key in _PROPERTIES:
        kind = METADATA_SCHEMA[key]
        distinct = enc.distinct[key]
        row: dict[str, Any] = {
            "name": key,
            "kind": {"str": "category", "bool": "flag"}.get(kind, "number"),
            "values": distinct,
            "constant": distinct <= 1,
            "auc_alone": None,
            "auc_ci": None,
            "carrier": False,
        }
        if not row["constant"] and _both(y[test]):
            s = _alone_scores(enc.codes[key], y, train)
            bm = binary_metrics(y[test], s[test], n_boot=_N_BOOT, seed=seed)
            row["auc_alone"] = float(bm.auc)
            row["auc_ci"] = list(bm.ci.get("auc", (None, None)))
        out.append(row)
    return out


def _both(y: np.ndarray) -> bool:
    return bool((y == 0).any() and (y == 1).any())


def _quantiles(x: np.ndarray) -> list[int]:
    x = x[np.isfinite(x) & (x >= 0)]
    return [int(round(v)) for v in np.quantile(x, [0.05, 0.5, 0.95])] if x.size else []


def _summary(
    meta: Mapping[str, np.ndarray], rows: np.ndarray, face_found: np.ndarray | None = None
) -> dict[str, Any]:
    fmt = np.asarray(meta["file_format"]).astype(str)[rows]
    names, counts = np.unique(np.where(fmt == "", "unknown", fmt), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    short = np.minimum(
        np.asarray(meta["width"], dtype=np.float64)[rows],
        np.asarray(meta["height"], dtype=np.float64)[rows],
    )
    q = np.asarray(meta["jpeg_quality"], dtype=np.float64)[rows]
    mode = np.asarray(meta["pil_mode"]).astype(str)[rows]
    bpp = np.asarray(meta["bytes_per_pixel"], dtype=np.float64)[rows]
    bpp = bpp[np.isfinite(bpp)]
    return {
        "n": int(rows.size),
        "formats": {str(names[i]): float(counts[i] / rows.size) for i in order},
        "short_side_q": _quantiles(short),
        "jpeg_quality_q": _quantiles(q),
        "grayscale": float(np.isin(mode, list(_GRAYSCALE_MODES)).mean()) if rows.size else None,
        "bytes_per_pixel_median": float(np.median(bpp)) if bpp.size else None,
        "face_found": _face_share(face_found, rows),
    }


def _face_share(face_found: np.ndarray | None, rows: np.ndarray) -> float | None:
    """Share of ``rows`` of a face view where a face was found (None: not a face view)."""
    if face_found is None:
        return None
    f = face_found[rows]
    f = f[f >= 0]
    return float((f == 1).mean()) if f.size else None


def _distributions(meta, labels, engines, face_found=None) -> dict[str, dict[str, dict[str, Any]]]:
    by_class = {
        name: _summary(meta, np.flatnonzero(labels == c), face_found)
        for c, name in ((0, "real"), (1, "AI-generated"))
        if (labels == c).any()
    }
    by_engine = {
        str(e): _summary(meta, np.flatnonzero(engines == e), face_found)
        for e in np.unique(engines[labels >= 0]).tolist()
    }
    return {"class": by_class, "engine": by_engine}


def straddling_groups(groups: np.ndarray, splits: np.ndarray) -> list[dict[str, Any]]:
    """Groups (identity, source...) whose rows fall in more than one split.

    Args:
        groups: (n,) group per row ("" = no group, ignored).
        splits: (n,) split per row ("" = unused, ignored).

    Returns:
        One dict per straddling group: ``group``, ``rows``, and rows per split.
    """
    g = np.asarray(groups, dtype=str)
    s = np.asarray(splits, dtype=str)
    keep = (g != "") & (s != "")
    out = []
    if not keep.any():
        return out
    pairs, counts = np.unique(np.stack([g[keep], s[keep]]), axis=1, return_counts=True)
    per: dict[str, dict[str, int]] = {}
    for (grp, sp), c in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        per.setdefault(grp, {})[sp] = c
    for grp, d in sorted(per.items()):
        if len(d) > 1:
            out.append(
                {
                    "group": grp,
                    "rows": sum(d.values()),
                    **{k: d.get(k, 0) for k in ("train", "val", "test")},
                }
            )
    return out


# ----------------------------------------------------------------------------- heads


def _run_head_dirs(run: Path) -> list[tuple[str, Path]]:
    """``[(name, head run folder)]``: the run itself, or each ``train/<head>`` of an experiment
    (the heads its ``config.json`` lists, not the helper heads of its OOD step)."""
    if (run / "head.json").is_file():
        doc = json.loads((run / "head.json").read_text())
        return [(str(doc.get("name", run.name)), run)]
    train = run / "train"
    found = (
        sorted(d for d in train.iterdir() if (d / "head.json").is_file()) if train.is_dir() else []
    )
    try:
        listed = json.loads((run / "config.json").read_text()).get("heads")
    except (OSError, ValueError, AttributeError):
        listed = None
    if isinstance(listed, list):
        found = [d for d in found if d.name in listed]
    if not found:
        raise HeadError(
            f"--run {str(run)!r} holds no head: give a `facebank train` run folder (head.json, "
            "splits.csv) or a `facebank experiment` folder (train/<head>/head.json)"
        )
    return [(d.name, d) for d in found]


def _head_metrics(
    name: str,
    scores: np.ndarray,
    threshold: float,
    y: np.ndarray,
    test: np.ndarray,
    uncertain: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {"auc": None, "auc_ci": None, "tpr": None, "fpr": None}
    out["threshold"] = float(threshold)
    if _both(y[test]):
        bm = binary_metrics(y[test], scores[test], threshold=threshold, n_boot=_N_BOOT, seed=seed)
        out.update(
            auc=bm.auc, auc_ci=list(bm.ci.get("auc", (None, None))), tpr=bm.recall, fpr=bm.fpr
        )
    rows = test & uncertain
    nr, nf = int((y[rows] == 0).sum()), int((y[rows] == 1).sum())
    out.update(uncertain_n_real=nr, uncertain_n_fake=nf, uncertain_auc=None, uncertain_auc_ci=None)
    if min(nr, nf) >= MIN_ROWS_PER_CLASS:
        bm = binary_metrics(y[rows], scores[rows], n_boot=_N_BOOT, seed=seed)
        out.update(uncertain_auc=bm.auc, uncertain_auc_ci=list(bm.ci.get("auc", (None, None))))
        out["uncertain_note"] = ""
    else:
        out["uncertain_note"] = (
            f"{nr} real and {nf} AI test rows are uncertain: fewer than {MIN_ROWS_PER_CLASS} "
            "of a class, no AUC"
        )
    return out


# ----------------------------------------------------------------------------- audit


def audit(
    banks: BanksLike,
    *,
    run: str | Path | None = None,
    head_runs: Mapping[str, str | Path] | None = None,
    scores: Mapping[str, tuple[np.ndarray, float]] | None = None,
    metadata: Mapping[str, np.ndarray] | None = None,
    groups: np.ndarray | None = None,
    group_by: str | None = None,
    band: tuple[float, float] = BAND,
    fpr: float = 0.005,
    seed: int = 0,
) -> AuditResult:
    """Audit banks for metadata shortcuts, on the rows a run used (module docstring).

    Which split chose what: the metadata baseline is fitted on ``train`` rows and its
    threshold on ``val`` reals at ``fpr``; AUCs and TPRs are measured on ``test`` rows.
    Splits come from the run's ``splits.csv`` when ``run`` is given, else from the
    banks' split column, else from ``embed.assign_splits(seed)`` - the same rule training
    uses, so an audit without ``run`` sees the rows ``facebank train --seed`` would.

    Args:
        banks: feature banks (or paths) carrying acquisition metadata (format 2).
        run: a ``facebank train`` run folder or a ``facebank experiment`` folder; its
            heads are scored on the test rows next to the baseline.
        head_runs: more heads as ``{name: train run folder}`` (the first folder's
            ``splits.csv`` sets the splits when ``run`` is not given).
        scores: extra heads as ``{name: ((n_rows,) scores, threshold)}`` (higher = AI).
        metadata: ``{column: (n_rows,) array}`` instead of the banks' own columns.
        groups: ``(n_rows,)`` group per row; groups straddling splits are listed.
        group_by: used when ``groups`` is not given (``embed.splits.resolve_groups``):
            ``None`` - the banks' ``group`` column (a manifest's) when rows carry one;
            ``"level:K"`` - the K-th folder of each stored path; a column name; ``"none"``.
            Without ``run``, the seeded split is grouped the same way, as training's is.
        band: the cross-validated metadata probability band of "files cannot tell".
        fpr: false-positive rate at which thresholds are set on validation reals.
        seed: seeds the folds, subsamples, bootstraps and (without ``run``) the split.

    Returns:
        An :class:`AuditResult`.

    Raises:
        BankError: a bank without metadata columns (names the backfill command).
        DataError: no labelled test rows of both classes, or a bad ``band``.
        HeadError: ``run`` without a head.
    """
    lo_b, hi_b = (float(b) for b in band)
    if not 0.0 <= lo_b < hi_b <= 1.0:
        raise DataError(f"band {band!r} is not valid; give (low, high) with 0 <= low < high <= 1")
    opened = open_banks(banks, what="banks to audit")
    require_one_backbone(opened)
    bank = opened[0] if len(opened) == 1 else type(opened[0]).concat(opened)
    n = len(bank)
    if metadata is None:
        if not getattr(bank, "has_metadata", False):
            raise BankError(
                f"bank {getattr(bank, 'name', 'bank')!r} holds no acquisition metadata (format 1); "
                "run `facebank bank backfill BANK --source DIR` to read it from the source files, "
                "then audit again"
            )
        metadata = bank.metadata()
    meta = {k: np.asarray(metadata[k]) for k in METADATA_SCHEMA if k in metadata}
    missing = [k for k in _PROPERTIES if k not in meta or meta[k].shape != (n,)]
    if missing:
        raise DataError(
            f"metadata lacks columns (or rows) {missing}; give one (n_rows,) array per key"
        )
    y = np.asarray(bank.labels).astype(np.int64)
    if not (meta["file_format"].astype(str) != "").any():
        raise DataError(
            f"bank {getattr(bank, 'name', 'bank')!r} has metadata columns but no row has a value "
            "(a bank written from arrays, or never backfilled); run `facebank bank backfill "
            "BANK --source DIR` to read them from the source files"
        )
    engines = np.asarray(bank.engines, dtype=str)
    sha = np.asarray(bank.sha256, dtype=str)
    labelled = y >= 0
    notes: list[str] = []
    head_dirs: list[tuple[str, Path]] = []
    if run is not None:
        head_dirs = _run_head_dirs(Path(run))
    head_dirs += [(str(k), Path(v)) for k, v in (head_runs or {}).items()]
    if head_dirs:
        split_of = read_splits_csv(head_dirs[0][1] / "splits.csv")
        splits = np.array([split_of.get(s, "") for s in sha.tolist()], dtype="<U5")
        splits_source = f"{head_dirs[0][1] / 'splits.csv'}"
        unseen = int((labelled & (splits == "")).sum())
        if unseen:
            notes.append(f"{unseen} labelled rows are not in the run's splits.csv: left out")
    else:
        splits, splits_source = resolve_splits(bank, seed=seed, group_by=group_by)
        splits = np.asarray(splits, dtype=str)
    train, val, test = (labelled & (splits == s) for s in ("train", "val", "test"))
    if not _both(y[test]):
        raise DataError(
            f"the audit needs test rows of both classes; test has {int((y[test] == 0).sum())} "
            f"real and {int((y[test] == 1).sum())} AI rows (splits from {splits_source})"
        )
    enc = _encode(meta, labelled, train)
    err = np.asarray(meta.get("meta_error", np.full(n, "")), dtype=str)
    if (err[labelled] != "").any():
        notes.append(
            f"{int((err[labelled] != '').sum())} rows have properties that could not be read "
            "(kept, with those properties missing)"
        )

    # Threads: a dozen columns give OpenMP little to share, and on a loaded machine its
    # spin-waiting made two threads 20x slower than one (measured); one thread is steady.
    with threadpool_limits(limits=1, user_api="openmp"):
        model: dict[str, Any] = {"features": enc.names, "fit_rows": 0, "fpr_target": fpr}
        if not enc.names or not _both(y[train]) or not (y[val] == 0).any():
            why = (
                "no metadata property varies"
                if not enc.names
                else "train rows lack a class or validation has no reals"
            )
            notes.append(f"metadata-only baseline not fitted: {why}")
            model.update(auc=0.5 if not enc.names else None, auc_ci=None, tpr=None, fpr=None)
        else:
            fit_rows = np.flatnonzero(train)
            val_real = np.flatnonzero(val & (y == 0))
            test_rows = np.flatnonzero(test)
            p_vec = _fit(enc, y, fit_rows, seed, np.concatenate([val_real, test_rows]))
            thr = threshold_at_fpr(p_vec[enc.row_vector[val_real]], fpr)
            s_test = p_vec[enc.row_vector[test_rows]]
            bm = binary_metrics(y[test_rows], s_test, threshold=thr, n_boot=_N_BOOT, seed=seed)
            model.update(
                auc=float(bm.auc),
                auc_ci=list(bm.ci.get("auc", (None, None))),
                tpr=bm.recall,
                fpr=bm.fpr,
                threshold=thr,
                n_real=bm.n_real,
                n_fake=bm.n_fake,
                fit_rows=int(fit_rows.size),
                distinct_vectors=int(enc.U.shape[0]),
            )
        propensity = _cross_val_proba(enc, y, labelled, seed, notes)

    uncertain = (propensity >= lo_b) & (propensity <= hi_b)
    ut = test & uncertain
    nr, nf = int((y[ut] == 0).sum()), int((y[ut] == 1).sum())
    enough = min(nr, nf) >= MIN_ROWS_PER_CLASS
    unc = {
        "band": [lo_b, hi_b],
        "n": int(ut.sum()),
        "n_real": nr,
        "n_fake": nf,
        "n_test": int(test.sum()),
        "enough": enough,
        "note": ""
        if enough
        else f"only {nr} real and {nf} AI test rows are inside the band: too few for an AUC "
        f"(needs {MIN_ROWS_PER_CLASS} of each)",
    }
    if not enough:
        notes.append(unc["note"])

    heads: dict[str, dict[str, Any]] = {}
    for name, d in head_dirs:
        rh = load_run_head(d)
        check_head_backbone(rh.head, bank)
        s = np.full(n, np.nan)
        rows = np.flatnonzero(test)
        s[rows] = score_rows(rh.head, bank, rows)
        heads[name] = _head_metrics(name, s, rh.threshold, y, test, uncertain, seed)
    for name, (s, thr) in (scores or {}).items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n,):
            raise DataError(f"scores of {name!r} have shape {s.shape}; give one per bank row ({n})")
        heads[name] = _head_metrics(name, s, float(thr), y, test, uncertain, seed)

    properties = _properties(enc, y, train, test, seed)
    verdict, carriers = audit_verdict(model.get("auc"), model.get("auc_ci"), properties)
    for p in properties:
        p["carrier"] = p["name"] in carriers
    reason = _reason(verdict, model, carriers, properties, heads, unc)
    if groups is None:
        groups, _ = resolve_groups(bank, group_by)
    straddling = straddling_groups(groups, splits) if groups is not None else []
    face_found = getattr(bank, "face_found", None)
    if face_found is not None:
        face_found = np.asarray(face_found, dtype=np.int8)
        if not (face_found >= 0).any():
            face_found = None  # not a face view
        elif (face_found[labelled] == 0).any():
            missed = face_found[labelled] == 0
            by_class = ", ".join(
                f"{int((missed & (y[labelled] == c)).sum())} {name}"
                for c, name in ((0, "real"), (1, "AI"))
            )
            notes.append(
                f"{int(missed.sum())} of {int((face_found[labelled] >= 0).sum())} rows: no face "
                f"found by the face view ({by_class}), kept uncropped; a class difference in "
                "this share is itself a shortcut (see 'face found' per class and engine)"
            )
    if straddling:
        notes.append(
            f"{len(straddling)} groups have rows in more than one split: the same identity or "
            "source on both sides inflates every score"
        )
    return AuditResult(
        verdict=verdict,
        reason=reason,
        carriers=carriers,
        metadata_model=model,
        heads=heads,
        uncertain=unc,
        properties=properties,
        distributions=_distributions(meta, y, engines, face_found),
        straddling_groups=straddling,
        splits={s: int((labelled & (splits == s)).sum()) for s in ("train", "val", "test")},
        splits_source=splits_source,
        fpr=fpr,
        propensity=propensity,
        test_mask=test,
        paths=np.asarray(bank.paths, dtype=str),
        labels=y,
        engines=engines,
        notes=notes,
    )


def _reason(verdict, model, carriers, properties, heads, unc) -> str:
    auc = model.get("auc")
    if auc is None:
        return "The metadata-only baseline could not be fitted (see notes)."
    alone = {p["name"]: p.get("auc_alone") for p in properties}
    text = (
        f"A classifier that sees only file properties (no pixels) reaches test AUC "
        f"{_fmt_ci(auc, model.get('auc_ci'))}"
    )
    if verdict == "no metadata shortcut found":
        text += (
            f", not clearly above chance (rule: its 95% lower bound must exceed {PARTLY_LO} "
            "to count); no recorded property carries the label."
        )
    else:
        named = ", ".join(f"{c} (alone {_fmt(alone.get(c))})" for c in carriers)
        text += f"; the label is carried by {named}."
    drops = [
        f"{h}: {_fmt(m.get('auc'))} overall, {_fmt(m.get('uncertain_auc'))} where files cannot tell"
        for h, m in heads.items()
        if m.get("uncertain_auc") is not None
    ]
    if drops:
        text += " Heads " + "; ".join(drops) + f" ({unc['n']} test rows)."
    elif heads:
        text += f" Heads cannot be checked where files cannot tell: {unc['note'] or 'no rows'}."
    return text


# ----------------------------------------------------------------------------- figure


def audit_figure(result: AuditResult) -> Any:
    """Four panels: AUC of each property alone; format mix per engine; short side per class;
    cross-validated metadata probability per class with the uncertain band."""
    import matplotlib.pyplot as plt

    from .plots import engine_colours

    # fixed margins: tight_layout doubles the drawing time of four labelled panels
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    fig.subplots_adjust(left=0.13, right=0.98, top=0.91, bottom=0.07, wspace=0.45, hspace=0.3)
    fig.suptitle(f"Confounds audit - verdict: {result.verdict}")

    ax = axes[0, 0]
    props = [p for p in result.properties if not p["constant"] and p.get("auc_alone") is not None]
    props.sort(key=lambda p: p["auc_alone"])
    ypos = np.arange(len(props))
    vals = [p["auc_alone"] for p in props]
    err = np.array(
        [
            [
                p["auc_alone"]
                - (
                    p["auc_ci"][0] if p["auc_ci"] and p["auc_ci"][0] is not None else p["auc_alone"]
                ),
                (p["auc_ci"][1] if p["auc_ci"] and p["auc_ci"][1] is not None else p["auc_alone"])
                - p["auc_alone"],
            ]
            for p in props
        ]
    ).T.reshape(2, -1)
    colours = ["#c44e52" if p["carrier"] else "#8c8c8c" for p in props]
    ax.barh(ypos, vals, xerr=err if props else None, color=colours, capsize=2)
    ax.set_yticks(ypos, [p["name"] for p in props])
    ax.axvline(0.5, color="k", lw=0.8, ls=":")
    ax.axvline(CARRIER_AUC, color="#c44e52", lw=0.8, ls="--")
    ax.set_xlim(0.0, 1.0)
    consts = [p["name"] for p in result.properties if p["constant"]]
    ax.set_title("AUC of each property alone (test); red = carrier")
    if consts:
        ax.set_xlabel("constant: " + ", ".join(consts), fontsize=8)

    ax = axes[0, 1]
    eng = result.distributions.get("engine", {})
    formats = sorted({f for d in eng.values() for f in d["formats"]})
    fmt_colours = dict(zip(formats, plt.get_cmap("Set2").colors, strict=False))
    names = list(eng)
    left = np.zeros(len(names))
    for f in formats:
        share = np.array([eng[e]["formats"].get(f, 0.0) for e in names])
        ax.barh(np.arange(len(names)), share, left=left, color=fmt_colours.get(f), label=f)
        left += share
    ax.set_yticks(np.arange(len(names)), [f"{e} ({eng[e]['n']})" for e in names])
    ax.set_xlim(0, 1)
    ax.set_title("container format per engine")
    if formats:
        ax.legend(loc="lower right", fontsize=8)

    ax = axes[1, 0]
    colours_e = engine_colours(list(eng))
    for i, e in enumerate(names):
        q = eng[e]["short_side_q"]
        if q:
            ax.plot([q[0], q[2]], [i, i], color=colours_e.get(e, "#333"), lw=2)
            ax.plot([q[1]], [i], "o", color=colours_e.get(e, "#333"))
    ax.set_yticks(np.arange(len(names)), names)
    ax.set_xlim(left=0)
    ax.set_title("short side, px (5%-95% and median) per engine")

    ax = axes[1, 1]
    p = result.propensity
    bins = np.linspace(0, 1, 41)
    for c, name, col in ((0, "real", "#4c72b0"), (1, "AI-generated", "#dd8452")):
        sel = (result.labels == c) & np.isfinite(p)
        ax.hist(p[sel], bins=bins, alpha=0.6, label=f"{name} ({int(sel.sum())})", color=col)
    lo, hi = result.uncertain["band"]
    ax.axvspan(lo, hi, color="#bbbbbb", alpha=0.25, lw=0)
    ax.set_yscale("log")
    ax.set_title(
        f"cross-validated metadata probability; band = {result.uncertain['n']} uncertain test rows"
    )
    ax.legend(fontsize=8)
    return fig
