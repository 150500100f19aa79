"""Detection metrics at the operating point that matters, with bootstrap intervals.

Conventions (see docs/design.md): ``y`` is 1 for AI-generated (positive), 0 for real;
scores are "higher = more likely AI-generated"; an image is **flagged as AI when its
score is strictly greater than the threshold** (``score > threshold``).

Threshold at a target FPR, exactly (``threshold_at_fpr``): with ``n`` real scores and
a target ``fpr``, at most ``m = floor(fpr * n)`` reals may be flagged. The threshold
is the ``(m + 1)``-th largest real score, i.e. the smallest real score ``t`` such that
at most ``m`` reals score strictly above ``t``. With ties the realised FPR can be
below the target (never above); with ``m = 0`` (e.g. 0.1% of 200 reals) the threshold
is the largest real score and the realised FPR is 0. ``tpr_at_fpr`` is the fraction of
AI images scoring strictly above that threshold; it equals the largest TPR of any ROC
point (``sklearn.metrics.roc_curve``) whose FPR does not exceed ``m / n``.

Bootstrap intervals are stratified (reals and AI images resampled separately, so
every resample has both classes and the class counts of the data). Resampling is
done on counts: the scores are grouped by distinct value and each resample draws
multinomial counts per value, so 1,000 resamples never materialise 1,000 copies of
the data. When there are more than ``max_bins`` distinct values (large banks), values
are grouped into at most ``max_bins`` quantile bins (finer in the upper tail of the
reals, where low-FPR thresholds live, and with the fixed threshold as a bin edge) and
the percentile interval is shifted by (exact estimate - binned estimate). Point
estimates are always computed exactly from the full data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from facebank.core.errors import DataError, SmallSampleWarning
from facebank.heads.base import allowed_false_positives, threshold_at_fpr

__all__ = [
    "DEFAULT_FPRS",
    "SMALL_GROUP",
    "BinaryMetrics",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "binary_metrics",
    "per_engine_table",
    "proportion_interval",
    "fpr_label",
]

# The operating points of 2311.08577 (0.5%) and one either side of it.
DEFAULT_FPRS = (0.001, 0.005, 0.01)
# Groups (engines) smaller than this get a warning: their rates move in steps of >= 10%.
SMALL_GROUP = 10
# Guards floor(fpr * n) against 0.005 * 200 = 0.99999...
_EPS = 1e-9


def fpr_label(fpr: float) -> str:
    """``0.005`` -> ``"0.5%"`` (used for keys and column names)."""
    return f"{fpr * 100:g}%"


def _check_scores(y: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise DataError(
            f"labels {y.shape} and scores {s.shape} have different lengths; pass one score per "
            "label"
        )
    if s.size and not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise DataError(
            f"{bad} scores are NaN or infinite; metrics need finite scores - check the head's "
            "output"
        )
    bad_labels = set(np.unique(y).tolist()) - {0, 1}
    if bad_labels:
        raise DataError(
            f"labels must be 0 (real) or 1 (AI-generated), got {sorted(bad_labels)!r}; "
            "drop rows with unknown label (-1) before computing metrics"
        )
    return y.astype(np.int8), s


def _require_both_classes(y: np.ndarray, what: str = "the scores given") -> None:
    n_real = int((y == 0).sum())
    n_fake = int((y == 1).sum())
    if n_real == 0:
        raise DataError(
            f"{what} contain no real images (label 0) and {n_fake} AI images: FPR, AUC and "
            "thresholds "
            "are undefined; add real images (e.g. the bank's test reals) to evaluate"
        )
    if n_fake == 0:
        raise DataError(
            f"{what} contain no AI-generated images (label 1) and {n_real} reals: TPR and AUC are "
            "undefined; add AI images to evaluate (FPR alone: see per_engine_table)"
        )


def tpr_at_fpr(y: Any, scores: Any, fpr: float) -> float:
    """TPR at the threshold ``threshold_at_fpr(scores[y == 0], fpr)`` taken from the same reals.

    This is the test-set ROC operating point (both the threshold and the TPR come from
    the data given); for a threshold chosen on validation data use ``binary_metrics(...,
    threshold=...)``.

    Args:
        y: (n,) labels 0/1.
        scores: (n,) scores, higher = AI.
        fpr: target false-positive rate.

    Returns:
        Fraction of AI images scoring strictly above the threshold.
    """
    y, s = _check_scores(y, scores)
    _require_both_classes(y)
    t = threshold_at_fpr(s[y == 0], fpr)
    return float((s[y == 1] > t).mean())


# ---------------------------------------------------------------- count-based core
# Every metric below is a function of per-value counts on an ascending grid: r[b, k]
# reals and f[b, k] AI images at grid value k, for b in a batch of resamples.


def _count_metrics(
    r: np.ndarray, f: np.ndarray, *, fprs: Sequence[float], t_index: int | None
) -> dict[str, np.ndarray]:
    """Metrics for each row of count matrices r, f (B, K); grid ascending."""
    r = r.astype(np.float64)
    f = f.astype(np.float64)
    n_real = r.sum(axis=1)
    n_fake = f.sum(axis=1)
    # ">= grid[k]" counts: reverse cumulative sums, with a trailing 0 for "above everything"
    fp_ge = np.cumsum(r[:, ::-1], axis=1)[:, ::-1]
    tp_ge = np.cumsum(f[:, ::-1], axis=1)[:, ::-1]
    out: dict[str, np.ndarray] = {}

    # pairs (fake, real) with the real strictly below, plus half the ties
    out["auc"] = 1.0 - ((f * fp_ge).sum(axis=1) - 0.5 * (f * r).sum(axis=1)) / (n_real * n_fake)

    with np.errstate(invalid="ignore", divide="ignore"):
        precision_ge = np.where(fp_ge + tp_ge > 0, tp_ge / (fp_ge + tp_ge), 0.0)
    out["ap"] = (f * precision_ge).sum(axis=1) / n_fake

    # EER: walk thresholds from +inf down; d = FNR - FPR goes from 1 to -1.
    fpr_pts = np.concatenate([np.zeros((r.shape[0], 1)), fp_ge[:, ::-1] / n_real[:, None]], axis=1)
    fnr_pts = np.concatenate(
        [np.ones((r.shape[0], 1)), 1.0 - tp_ge[:, ::-1] / n_fake[:, None]], axis=1
    )
    d = fnr_pts - fpr_pts
    j = np.argmax(d <= 0, axis=1)  # first crossing (j >= 1 since d[0] = 1)
    rows = np.arange(r.shape[0])
    d0, d1 = d[rows, j - 1], d[rows, j]
    w = d0 / (d0 - d1)
    out["eer"] = fpr_pts[rows, j - 1] + w * (fpr_pts[rows, j] - fpr_pts[rows, j - 1])

    fp_ge_ext = np.concatenate([fp_ge, np.zeros((r.shape[0], 1))], axis=1)
    tp_ge_ext = np.concatenate([tp_ge, np.zeros((r.shape[0], 1))], axis=1)
    for a in fprs:
        m = np.floor(a * n_real + _EPS)
        k0 = np.argmax(fp_ge_ext <= m[:, None], axis=1)  # first grid value above the threshold
        out[f"tpr@fpr={fpr_label(a)}"] = tp_ge_ext[rows, k0] / n_fake

    if t_index is not None:  # flagged = grid values > threshold = indices >= t_index
        tp = tp_ge_ext[:, t_index]
        fp = fp_ge_ext[:, t_index]
        fn = n_fake - tp
        tn = n_real - fp
        with np.errstate(invalid="ignore", divide="ignore"):
            out["accuracy"] = (tp + tn) / (n_real + n_fake)
            out["precision"] = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
            out["recall"] = tp / n_fake
            out["f1"] = 2 * tp / (2 * tp + fp + fn)
            out["fpr"] = fp / n_real
    return out


def _grid(
    s_real: np.ndarray, s_fake: np.ndarray, threshold: float | None, max_bins: int
) -> tuple[np.ndarray, bool]:
    """Ascending bin right-edges: every distinct value, or quantile edges when too many."""
    values = np.unique(np.concatenate([s_real, s_fake]))
    if threshold is not None:
        values = np.union1d(values, [threshold])
    if values.size <= max_bins:
        return values, False
    # A fifth of the bins for the bulk of reals, two fifths for their top 5% (low-FPR
    # thresholds), two fifths for the AI scores (TPR resolution).
    nb = max_bins // 5
    levels_real = np.concatenate([np.linspace(0, 0.95, nb), np.linspace(0.95, 1, 2 * nb)])
    edges = [
        np.quantile(s_real, levels_real, method="inverted_cdf"),
        np.quantile(s_fake, np.linspace(0, 1, 2 * nb), method="inverted_cdf"),
        [s_real.max(), s_fake.max()],
    ]
    if threshold is not None:
        edges.append([threshold])
    return np.unique(np.concatenate(edges)), True


def _counts(grid: np.ndarray, s: np.ndarray) -> np.ndarray:
    # bin k holds values in (grid[k-1], grid[k]]
    return np.bincount(np.searchsorted(grid, s, side="left"), minlength=grid.size)[: grid.size]


@dataclasses.dataclass
class BinaryMetrics:
    """Real-vs-AI metrics of one set of scores, with bootstrap 95% intervals.

    Attributes:
        n_real, n_fake: class counts (label 0 / label 1).
        auc, ap, eer: threshold-free metrics (``ap`` with AI as the positive class).
        tpr_at_fpr: ``{"0.5%": tpr, ...}``: TPR at a threshold taken from *these* reals
            (test-set ROC operating points; see the module docstring for the exact rule).
        thresholds_at_fpr: the threshold behind each of those TPRs.
        realised_fpr_at: the FPR each of those thresholds realises on these reals (at most
            the target; below it when the target is not a whole number of reals).
        threshold: the fixed threshold the next five metrics use (``None`` when none was
            given); flagged = ``score > threshold``.
        accuracy, precision, recall, f1, fpr: at ``threshold`` (``None`` without one);
            ``precision`` is NaN when nothing is flagged.
        ci: ``{metric: (low, high)}`` percentile 95% intervals from ``n_boot`` stratified
            bootstrap resamples (empty when ``n_boot == 0``).
        bootstrap: ``"exact"`` (resampled per distinct score) or ``"binned:K"``.
        notes: caveats in words (e.g. a target FPR below one real image).
    """

    n_real: int
    n_fake: int
    auc: float
    ap: float
    eer: float
    tpr_at_fpr: dict[str, float]
    thresholds_at_fpr: dict[str, float]
    threshold: float | None = None
    realised_fpr_at: dict[str, float] = dataclasses.field(default_factory=dict)
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    fpr: float | None = None
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    n_boot: int = 0
    seed: int = 0
    bootstrap: str = "exact"
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def n(self) -> int:
        return self.n_real + self.n_fake

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly dict: every metric, then ``<metric>_ci``: [low, high]."""
        out: dict[str, Any] = {"n": self.n, "n_real": self.n_real, "n_fake": self.n_fake}
        for name in ("auc", "ap", "eer"):
            out[name] = getattr(self, name)
        for k, v in self.tpr_at_fpr.items():
            out[f"tpr@fpr={k}"] = v
            out[f"threshold@fpr={k}"] = self.thresholds_at_fpr[k]
            if k in self.realised_fpr_at:
                out[f"realised_fpr@fpr={k}"] = self.realised_fpr_at[k]
        out["threshold"] = self.threshold
        for name in ("accuracy", "precision", "recall", "f1", "fpr"):
            out[name] = getattr(self, name)
        for k, (lo, hi) in self.ci.items():
            out[f"{k}_ci"] = [lo, hi]
        out.update(
            n_boot=self.n_boot, seed=self.seed, bootstrap=self.bootstrap, notes=list(self.notes)
        )
        return out

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per metric (metric, value, ci_low, ci_high, note) for a Markdown table.

        ``note`` says what a number stands beside: the FPR a TPR was measured at, and why
        a value is undefined (NaN, shown as ``n/a``).
        """
        rows = []
        names = ["auc", "ap", "eer"] + [f"tpr@fpr={k}" for k in self.tpr_at_fpr]
        if self.threshold is not None:
            names += ["accuracy", "precision", "recall", "f1", "fpr"]
        flat = self.to_dict()
        for name in names:
            lo, hi = self.ci.get(name, (None, None))
            rows.append(
                {
                    "metric": name,
                    "value": flat[name],
                    "ci_low": lo,
                    "ci_high": hi,
                    "note": self._note(name, flat[name]),
                }
            )
        return rows

    def _note(self, name: str, value: Any) -> str:
        if name.startswith("tpr@fpr="):
            k = name.removeprefix("tpr@fpr=")
            realised = self.realised_fpr_at.get(k)
            at = "" if realised is None else f"; realised FPR {realised:.2%}"
            return f"threshold taken from these {self.n_real} reals (ROC point){at}"
        undefined = value is None or (isinstance(value, float) and math.isnan(value))
        if name == "precision" and undefined:
            return "n/a: no image scores above the threshold, so precision is undefined"
        if name == "recall" and self.fpr is not None:
            return f"TPR at the frozen threshold; FPR {self.fpr:.2%} on the same rows"
        if name == "fpr":
            return f"at the frozen threshold, on these {self.n_real} reals"
        if undefined:
            return "n/a: undefined on these rows"
        return ""


def binary_metrics(
    y: Any,
    scores: Any,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    fprs: Sequence[float] = DEFAULT_FPRS,
    max_bins: int = 2048,
) -> BinaryMetrics:
    """AUC, AP, EER, TPR at fixed FPRs, and threshold metrics, with bootstrap 95% intervals.

    Which split chose what: nothing is tuned here. ``threshold`` is whatever the caller
    froze (for a head: chosen on validation reals); ``tpr_at_fpr`` takes its thresholds
    from the reals given (the ROC operating point of these data).

    Args:
        y: (n_samples,) labels, 1 = AI-generated, 0 = real; both classes required.
        scores: (n_samples,) scores, higher = more likely AI.
        threshold: flag ``score > threshold``; gives accuracy/precision/recall/F1/FPR.
        n_boot: stratified bootstrap resamples (0 = no intervals).
        seed: seed of the bootstrap.
        fprs: target FPRs for ``tpr_at_fpr``.
        max_bins: above this many distinct scores, resample on quantile bins.

    Returns:
        ``BinaryMetrics``.
    """
    y, s = _check_scores(y, scores)
    _require_both_classes(y)
    if threshold is not None and not math.isfinite(float(threshold)):
        raise DataError(f"threshold must be a finite number, got {threshold!r}")
    # sorted once: every count below is a searchsorted of sorted keys (cache-friendly)
    s_real, s_fake = np.sort(s[y == 0]), np.sort(s[y == 1])
    n_real, n_fake = s_real.size, s_fake.size

    exact_grid = np.union1d(s, [threshold]) if threshold is not None else np.unique(s)
    t_idx = None if threshold is None else int(np.searchsorted(exact_grid, threshold, side="right"))
    r0, f0 = _counts(exact_grid, s_real)[None], _counts(exact_grid, s_fake)[None]
    point = {k: float(v[0]) for k, v in _count_metrics(r0, f0, fprs=fprs, t_index=t_idx).items()}

    notes = []
    for a in fprs:
        m = allowed_false_positives(a, n_real)
        if m == 0:
            notes.append(
                f"FPR {fpr_label(a)} of {n_real} reals is below one image: its threshold is the "
                "highest real score (realised FPR 0)"
            )
    result = BinaryMetrics(
        n_real=n_real,
        n_fake=n_fake,
        auc=point["auc"],
        ap=point["ap"],
        eer=point["eer"],
        tpr_at_fpr={fpr_label(a): point[f"tpr@fpr={fpr_label(a)}"] for a in fprs},
        thresholds_at_fpr={fpr_label(a): threshold_at_fpr(s_real, a) for a in fprs},
        realised_fpr_at={
            fpr_label(a): float((s_real > threshold_at_fpr(s_real, a)).mean()) for a in fprs
        },
        n_boot=n_boot,
        seed=seed,
        notes=notes,
    )
    if threshold is not None:
        result.threshold = float(threshold)
        for k in ("accuracy", "precision", "recall", "f1", "fpr"):
            setattr(result, k, point[k])

    if n_boot > 0:
        result.ci, result.bootstrap = _bootstrap(
            s_real,
            s_fake,
            point,
            threshold=threshold,
            n_boot=n_boot,
            seed=seed,
            fprs=fprs,
            max_bins=max_bins,
        )
    return result


def _bootstrap(
    s_real: np.ndarray,
    s_fake: np.ndarray,
    point: dict[str, float],
    *,
    threshold: float | None,
    n_boot: int,
    seed: int,
    fprs: Sequence[float],
    max_bins: int,
) -> tuple[dict[str, tuple[float, float]], str]:
    grid, binned = _grid(s_real, s_fake, threshold, max_bins)
    t_idx = None if threshold is None else int(np.searchsorted(grid, threshold, side="right"))
    r, f = _counts(grid, s_real), _counts(grid, s_fake)
    p_r, p_f = r / r.sum(), f / f.sum()
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // grid.size))  # bounds memory to ~100 MB
    stats: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rb = rng.multinomial(s_real.size, p_r, size=b)
        fb = rng.multinomial(s_fake.size, p_f, size=b)
        for k, v in _count_metrics(rb, fb, fprs=fprs, t_index=t_idx).items():
            stats.setdefault(k, []).append(v)
    shift = {k: 0.0 for k in stats}
    if binned:  # centre the binned bootstrap on the exact estimate
        binned_point = _count_metrics(r[None], f[None], fprs=fprs, t_index=t_idx)
        shift = {k: point[k] - float(binned_point[k][0]) for k in stats}
    ci = {}
    for k, parts in stats.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        if v.size == 0:
            ci[k] = (math.nan, math.nan)
            continue
        lo, hi = np.percentile(v, [2.5, 97.5]) + shift[k]
        lo_clip, hi_clip = (0.0, 1.0)
        ci[k] = (float(np.clip(lo, lo_clip, hi_clip)), float(np.clip(hi, lo_clip, hi_clip)))
    return ci, (f"binned:{grid.size}" if binned else "exact")


# ---------------------------------------------------------------- per-engine rates


def proportion_interval(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of ``k`` successes out of ``n``.

    Used for per-engine rates at a fixed threshold: unlike a bootstrap, it stays wide
    for small groups (0 of 5 flagged gives [0, 0.52], not [0, 0]).
    """
    from scipy.stats import beta

    if n == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (lo, hi)


def per_engine_table(
    y: Any,
    scores: Any,
    engines: Any,
    *,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    interval: str = "exact",
) -> list[dict[str, Any]]:
    """Per-engine rates at one fixed threshold: TPR for each AI engine, FPR for reals.

    Which split chose what: ``threshold`` is frozen by the caller (for a head, chosen on
    validation reals); nothing is tuned on these rows.

    Args:
        y: (n,) labels 0/1.
        scores: (n,) scores, higher = AI.
        engines: (n,) engine name per row.
        threshold: flag ``score > threshold``.
        n_boot: resamples when ``interval="bootstrap"``.
        seed: bootstrap seed.
        interval: ``"exact"`` (Clopper-Pearson, default: honest for small engines) or
            ``"bootstrap"`` (percentile, per engine).

    Returns:
        One dict per engine (AI engines sorted, then real engines): ``engine``, ``label``,
        ``n``, ``n_flagged``, ``metric`` (``"tpr"`` or ``"fpr"``), ``rate``, ``ci_low``,
        ``ci_high``, ``mean_score``, ``warning`` (text or ``""``; engines with fewer than
        ``SMALL_GROUP`` images are kept and flagged, with a ``warnings.warn``).
    """
    y, s = _check_scores(y, scores)
    engines = np.asarray(engines, dtype=str).ravel()
    if engines.shape != y.shape:
        raise DataError(f"engines {engines.shape} and labels {y.shape} have different lengths")
    if interval not in ("exact", "bootstrap"):
        raise DataError(f"interval must be 'exact' or 'bootstrap', got {interval!r}")
    rng = np.random.default_rng(seed)
    rows = []
    keys = sorted(
        {(int(lab), str(e)) for lab, e in zip(y.tolist(), engines.tolist(), strict=True)},
        key=lambda t: (-t[0], t[1]),
    )
    for lab, eng in keys:
        sel = (engines == eng) & (y == lab)
        flagged = s[sel] > threshold
        n, k = int(sel.sum()), int(flagged.sum())
        if interval == "exact":
            lo, hi = proportion_interval(k, n)
        else:
            boot = rng.binomial(n, k / n, size=n_boot) / n if n_boot else np.array([k / n])
            lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
        warning = ""
        if n < SMALL_GROUP:
            warning = (
                f"only {n} image{'s' if n != 1 else ''}: the rate moves in steps of "
                f"{1 / n:.0%}; read the interval"
            )
            warnings.warn(f"engine {eng!r} has {warning}", SmallSampleWarning, stacklevel=2)
        rows.append(
            {
                "engine": eng,
                "label": lab,
                "n": n,
                "n_flagged": k,
                "metric": "tpr" if lab == 1 else "fpr",
                "rate": k / n,
                "ci_low": lo,
                "ci_high": hi,
                "mean_score": float(s[sel].mean()),
                "warning": warning,
            }
        )
    return rows
