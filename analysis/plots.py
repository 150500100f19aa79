"""Figures, as matplotlib ``Figure`` objects (notebook-friendly) and PNGs in run folders.

Shared look (``_plotstyle``): white background, no top/right spines, font sizes by role,
legends outside the data, engine colours that stay the same for the same engine across
every figure of a report.
"""

from __future__ import annotations

# ROC, DET, per-engine bars, LOEO heatmap, robustness curves, OOD histograms
from ._plots_eval import (
    det_figure,
    engine_bars_figure,
    loeo_heatmap,
    ood_histograms,
    robustness_figure,
    roc_figure,
)

# query grid, neighbour-engine confusion heatmap, kNN purity bars, 2-D map scatter
from ._plots_neighbours import (
    confusion_heatmap,
    embedding_scatter,
    neighbour_grid,
    purity_plot,
)
from ._plotstyle import apply_style, engine_colours, save_figure

__all__ = [
    "apply_style",
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
