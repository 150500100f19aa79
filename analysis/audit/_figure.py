"""The audit's figure: property AUCs, format mix, short side, metadata probability."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._rule import CARRIER_AUC

if TYPE_CHECKING:
    from ._result import AuditResult


def audit_figure(result: AuditResult) -> Any:
    """Four panels: AUC of each property alone; format mix per engine; short side per class;
    cross-validated metadata probability per class with the uncertain band."""
    import matplotlib.pyplot as plt

    from ..plots import engine_colours

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
