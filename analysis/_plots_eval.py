"""Evaluation figures (re-exported by ``analysis.plots``): ROC, DET, per-engine bars,
leave-one-engine-out heatmap, robustness curves per view family, OOD histograms.

Each function returns a matplotlib ``Figure``; run folders save it with ``save_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "roc_figure",
    "det_figure",
    "engine_bars_figure",
    "loeo_heatmap",
    "robustness_figure",
    "ood_histograms",
]

_OPERATING_FPRS = (0.001, 0.005, 0.01)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, which="major", alpha=0.25)


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _curves(y, scores, engines) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """('all', fpr, tpr) plus one curve per AI engine (that engine vs every real)."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    out = [("all engines", *_roc(y, scores))]
    if engines is not None:
        engines = np.asarray(engines, dtype=str)
        ai = sorted(set(engines[y == 1].tolist()))
        if len(ai) > 1:
            for e in ai:
                sel = (y == 0) | ((y == 1) & (engines == e))
                out.append((e, *_roc(y[sel], scores[sel])))
    return out


def roc_figure(
    y: Any,
    scores: Any,
    *,
    engines: Any = None,
    threshold: float | None = None,
    title: str = "ROC",
):
    """ROC curves on a linear and a log FPR axis; the fixed threshold's point is marked.

    Args:
        y: (n,) labels 1 = AI, 0 = real.
        scores: (n,) scores, higher = AI.
        engines: (n,) engine names; adds one curve per AI engine (vs all reals).
        threshold: the frozen threshold (flag ``score > threshold``) to mark.
        title: figure title.
    """
    from ._plotstyle import engine_colours

    plt = _plt()
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    curves = _curves(y, s, engines)
    colours = engine_colours([c[0] for c in curves[1:]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    n_real = int((y == 0).sum())
    for ax, log in zip(axes, (False, True), strict=True):
        for name, fpr, tpr in curves:
            main = name == "all engines"
            ax.plot(
                np.maximum(fpr, 0.5 / n_real) if log else fpr,
                tpr,
                color="black" if main else colours.get(name),
                lw=2.2 if main else 1.2,
                alpha=1.0 if main else 0.85,
                label=name,
                drawstyle="steps-post",
            )
        if threshold is not None:
            fp = float((s[y == 0] > threshold).mean())
            tp = float((s[y == 1] > threshold).mean())
            ax.plot(
                [max(fp, 0.5 / n_real) if log else fp],
                [tp],
                "o",
                ms=9,
                mfc="none",
                mec="crimson",
                mew=2,
                label=f"threshold {threshold:.3g}",
            )
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(1e-4, 0.5 / n_real), 1)
            for a in _OPERATING_FPRS:
                ax.axvline(a, color="grey", ls=":", lw=1)
                ax.text(
                    a, 0.02, f" {a * 100:g}%", color="grey", fontsize=8, rotation=90, va="bottom"
                )
            ax.set_title("low-FPR region (log scale)")
        else:
            ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
            ax.set_title(title)
        ax.set_xlabel("false-positive rate (reals flagged)")
        ax.set_ylabel("true-positive rate (AI flagged)")
        ax.set_ylim(0, 1.01)
        _style(ax)
    axes[1].legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def det_figure(
    y: Any, scores: Any, *, engines: Any = None, threshold: float | None = None, title: str = "DET"
):
    """Detection-error trade-off: miss rate vs FPR, both on log axes (0.1%-1% visible).

    Args:
        y: (n,) labels.
        scores: (n,) scores, higher = AI.
        engines: (n,) engine names; adds one curve per AI engine.
        threshold: the frozen threshold to mark.
        title: figure title.
    """
    from ._plotstyle import engine_colours

    plt = _plt()
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    curves = _curves(y, s, engines)
    colours = engine_colours([c[0] for c in curves[1:]])
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    lo_x, lo_y = 0.5 / n_real, 0.5 / n_fake
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for name, fpr, tpr in curves:
        main = name == "all engines"
        ax.plot(
            np.maximum(fpr, lo_x),
            np.maximum(1 - tpr, lo_y),
            color="black" if main else colours.get(name),
            lw=2.2 if main else 1.2,
            label=name,
            drawstyle="steps-post",
        )
    for a in _OPERATING_FPRS:
        ax.axvline(a, color="grey", ls=":", lw=1)
        ax.text(
            a,
            0.01,
            f" {a * 100:g}%",
            color="grey",
            fontsize=8,
            rotation=90,
            va="bottom",
            transform=ax.get_xaxis_transform(),
        )
    if threshold is not None:
        fp = max(float((s[y == 0] > threshold).mean()), lo_x)
        fn = max(float((s[y == 1] <= threshold).mean()), lo_y)
        ax.plot(
            [fp],
            [fn],
            "o",
            ms=9,
            mfc="none",
            mec="crimson",
            mew=2,
            label=f"threshold {threshold:.3g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(min(1e-4, lo_x), 1)
    ax.set_ylim(min(1e-3, lo_y), 1.05)
    ax.set_xlabel("false-positive rate (reals flagged, log)")
    ax.set_ylabel("miss rate = 1 - TPR (log)")
    ax.set_title(title)
    _style(ax)
    ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    fig.tight_layout()
    return fig


def engine_bars_figure(
    rows: Sequence[Mapping[str, Any]], *, title: str = "per-engine rates at the threshold"
):
    """Horizontal bars: TPR per AI engine and FPR of reals, with interval whiskers and counts.

    Args:
        rows: ``analysis.metrics.per_engine_table`` rows (engine, label, n, rate, ci_low, ci_high).
        title: figure title.
    """
    from ._plotstyle import engine_colours

    plt = _plt()
    rows = list(rows)
    colours = engine_colours([r["engine"] for r in rows if r["label"] == 1])
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.4))
    ypos = np.arange(len(rows))[::-1]
    for yp, r in zip(ypos, rows, strict=True):
        c = colours.get(r["engine"], "#4c72b0") if r["label"] == 1 else "#4c72b0"
        ax.barh(yp, r["rate"], color=c, alpha=0.9 if r["label"] == 1 else 0.5, height=0.7)
        ax.errorbar(
            r["rate"],
            yp,
            xerr=[[r["rate"] - r["ci_low"]], [r["ci_high"] - r["rate"]]],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
        warn = " (!)" if r.get("warning") else ""
        ax.text(1.01, yp, f"{r['rate']:.1%}  n={r['n']}{warn}", va="center", fontsize=8)
    ax.set_yticks(ypos, [f"{r['engine']} ({'TPR' if r['label'] == 1 else 'FPR'})" for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction flagged as AI (95% interval)")
    ax.set_title(title)
    _style(ax)
    fig.tight_layout()
    return fig


def loeo_heatmap(
    matrix: Any,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "TPR at FPR 0.5%",
    xlabel: str = "test engine",
    ylabel: str = "held-out engine (trained on all others)",
):
    """A TPR matrix as an annotated heatmap (NaN cells blank).

    Args:
        matrix: (n_rows, n_cols) TPR values in [0, 1].
        row_labels, col_labels: tick labels.
        title, xlabel, ylabel: text.
    """
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(0.75 * len(col_labels) + 3, 0.6 * len(row_labels) + 2))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if m[i, j] < 0.6 else "black",
                    fontweight="bold" if row_labels[i] == col_labels[j] else "normal",
                )
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="TPR")
    fig.tight_layout()
    return fig


def robustness_figure(
    rows: Sequence[Mapping[str, Any]], *, title: str = "robustness at the fixed threshold"
):
    """One panel per view family (JPEG quality, resize N, flips, others), like Fig. 2 of 2311.08577.

    Args:
        rows: one dict per view with ``view``, ``family``, ``x`` (number or label),
            ``tpr``, ``tpr_ci_low``, ``tpr_ci_high``, ``fpr`` and ``auc``; the
            ``original`` view (family ``"original"``) is drawn as a reference line.
        title: figure title.
    """
    plt = _plt()
    rows = list(rows)
    base = next((r for r in rows if r["family"] == "original"), None)
    families = [f for f in ("jpeg", "resize", "flip") if any(r["family"] == f for r in rows)]
    families += sorted({r["family"] for r in rows} - {"jpeg", "resize", "flip", "original"})
    if not families:
        families = ["original"]
    fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families), 4.2), squeeze=False)
    xlabels = {"jpeg": "JPEG quality", "resize": "resized to N x N px", "flip": "", "original": ""}
    for ax, fam in zip(axes[0], families, strict=True):
        sub = [r for r in rows if r["family"] == fam]
        numeric = fam in ("jpeg", "resize")
        if numeric:
            sub.sort(key=lambda r: r["x"])
            x = np.array([r["x"] for r in sub], dtype=float)
            for key, colour, label in (
                ("tpr", "#1f77b4", "TPR (AI flagged)"),
                ("fpr", "#d62728", "FPR (reals flagged)"),
            ):
                v = np.array([r[key] for r in sub], dtype=float)
                ax.plot(x, v, "o-", color=colour, label=label)
                if key == "tpr":
                    lo = np.array([r["tpr_ci_low"] for r in sub], dtype=float)
                    hi = np.array([r["tpr_ci_high"] for r in sub], dtype=float)
                    ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
                    ax.errorbar(
                        x, v, yerr=[v - lo, hi - v], fmt="none", ecolor=colour, capsize=3, lw=1
                    )
            if base is not None:
                ax.axhline(base["tpr"], color="#1f77b4", ls="--", lw=1, label="TPR original")
                ax.axhline(base["fpr"], color="#d62728", ls="--", lw=1, label="FPR original")
            if fam == "jpeg":
                ax.set_xlim(min(10, x.min() - 5), 102)
            if fam == "resize":
                ax.set_xscale("log", base=2)
                ax.set_xlim(x.min() / 1.5, x.max() * 1.5)
                ax.set_xticks(x, [f"{int(v)}" for v in x])
                ax.minorticks_off()
        else:
            labels = (["original"] if base is not None else []) + [str(r["x"]) for r in sub]
            items = ([base] if base is not None else []) + sub
            pos = np.arange(len(items))
            tpr = np.array([r["tpr"] for r in items])
            ax.bar(pos - 0.2, tpr, width=0.4, color="#1f77b4", label="TPR")
            ax.errorbar(
                pos - 0.2,
                tpr,
                yerr=[
                    tpr - np.array([r["tpr_ci_low"] for r in items]),
                    np.array([r["tpr_ci_high"] for r in items]) - tpr,
                ],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
            ax.bar(pos + 0.2, [r["fpr"] for r in items], width=0.4, color="#d62728", label="FPR")
            for p, t, r in zip(pos, tpr, items, strict=True):
                ax.text(p - 0.2, r["tpr_ci_high"] + 0.02, f"{t:.0%}", ha="center", fontsize=8)
            ax.set_xticks(pos, labels, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(fam)
        ax.set_xlabel(xlabels.get(fam, "view"))
        ax.set_ylabel("rate at the fixed threshold")
        _style(ax)
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def ood_histograms(
    known_scores: Any,
    new_scores: Mapping[str, Any],
    *,
    threshold: float | None = None,
    title: str = "OOD scores: known vs new engines",
):
    """Overlaid density histograms of OOD scores: known-engine test rows vs each new engine.

    Args:
        known_scores: (n_known,) OOD scores of known-engine images (higher = more unusual).
        new_scores: ``{engine: (n_e,) scores}`` of new-engine images.
        threshold: the flag threshold (set on known-engine validation rows) to draw.
        title: figure title.
    """
    from ._plotstyle import engine_colours

    plt = _plt()
    known = np.asarray(known_scores, dtype=np.float64)
    allv = np.concatenate([known, *[np.asarray(v, dtype=np.float64) for v in new_scores.values()]])
    bins = np.linspace(np.percentile(allv, 0.5), np.percentile(allv, 99.5), 50)
    colours = engine_colours(list(new_scores))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.hist(
        known,
        bins=bins,
        density=True,
        color="grey",
        alpha=0.5,
        label=f"known engines (n={known.size})",
    )
    for e, v in new_scores.items():
        v = np.asarray(v)
        ax.hist(
            v,
            bins=bins,
            density=True,
            histtype="step",
            lw=2,
            color=colours.get(e),
            label=f"new: {e} (n={v.size})",
        )
    if threshold is not None:
        ax.axvline(threshold, color="crimson", ls="--", lw=1.5, label="flag threshold (known val)")
    ax.set_xlabel("OOD score (higher = further from the training data)")
    ax.set_ylabel("density")
    ax.set_title(title)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
