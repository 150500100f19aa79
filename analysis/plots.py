"""Figures, as matplotlib ``Figure`` objects (notebook-friendly) and PNGs in run folders.

Shared look: white background, no top/right spines, engine colours that stay the same
for the same engine across every figure of a report.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "engine_colours",
    "save_figure",
    "roc_figure",
    "det_figure",
    "engine_bars_figure",
    "loeo_heatmap",
    "robustness_figure",
    "ood_histograms",
    "neighbour_grid",
    "confusion_heatmap",
    "purity_plot",
    "embedding_scatter",
]

# "real" is always grey-blue; AI engines take tab20 colours in sorted order.
_REAL_COLOUR = "#4c72b0"


def engine_colours(engines: Sequence[str]) -> dict[str, str]:
    """A stable colour per engine name: ``real`` is blue, the others follow tab20."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    others = sorted({str(e) for e in engines} - {"real"})
    out = {"real": _REAL_COLOUR}
    for i, e in enumerate(others):
        out[e] = matplotlib.colors.to_hex(cmap((2 * i + 2) % 20 / 20 + 0.025))
    return out


def save_figure(fig, path) -> None:
    """Save a figure as PNG at 150 dpi with a tight bounding box, then close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)


# Implemented in analysis/_plots_eval.py (ROC, DET, per-engine bars, LOEO heatmap,
# robustness curves per view family, OOD histograms); re-exported here.
from ._plots_eval import (  # noqa: E402
    det_figure,
    engine_bars_figure,
    loeo_heatmap,
    ood_histograms,
    robustness_figure,
    roc_figure,
)

# isort: split
# Implemented in analysis/_plots_neighbours.py (query grid, neighbour-engine confusion
# heatmap, kNN purity bars, 2-D map scatter); re-exported here.
from ._plots_neighbours import (  # noqa: E402
    confusion_heatmap,
    embedding_scatter,
    neighbour_grid,
    purity_plot,
)
