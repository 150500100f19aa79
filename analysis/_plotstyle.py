"""One look for every figure: engine colours, font sizes by role, legends outside the data.

``save_figure`` applies the style when a figure is written, so a figure drawn anywhere
(evaluation, neighbours, a notebook) reads the same in a report: every PNG is saved at
``DPI`` and the report shows it at its physical size, so a 10-point label is 10 points
in every figure whatever the figure's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DPI", "FONT_SIZES", "apply_style", "engine_colours", "save_figure"]

DPI = 150
# Points, by role: a title reads above its labels, ticks and legends below them, and
# annotations (bar values, matrix cells) stay legible without crowding a cell.
FONT_SIZES = {"suptitle": 12, "title": 11, "label": 10, "tick": 9, "legend": 9, "text": (7, 9)}

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


def _legend_outside(ax: Any) -> None:
    leg = ax.get_legend()
    if leg is None or not leg.get_texts():
        return
    handles = list(getattr(leg, "legend_handles", None) or leg.legendHandles)
    labels = [t.get_text() for t in leg.get_texts()]
    title = leg.get_title().get_text()
    ax.legend(
        handles,
        labels,
        title=title or None,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        frameon=False,
        fontsize=FONT_SIZES["legend"],
        title_fontsize=FONT_SIZES["legend"],
    )


def apply_style(fig: Any) -> Any:
    """Font sizes by role (``FONT_SIZES``) and every axes legend moved outside its data."""
    lo, hi = FONT_SIZES["text"]
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_fontsize(FONT_SIZES["suptitle"])
    for ax in fig.get_axes():
        ax.title.set_fontsize(FONT_SIZES["title"])
        for side in (ax._left_title, ax._right_title):
            side.set_fontsize(FONT_SIZES["title"])
        ax.xaxis.label.set_fontsize(FONT_SIZES["label"])
        ax.yaxis.label.set_fontsize(FONT_SIZES["label"])
        ax.tick_params(labelsize=FONT_SIZES["tick"])
        for t in ax.texts:
            t.set_fontsize(min(hi, max(lo, t.get_fontsize())))
        _legend_outside(ax)
    for leg in fig.legends:
        for t in leg.get_texts():
            t.set_fontsize(FONT_SIZES["legend"])
    return fig


def save_figure(fig: Any, path: Any) -> None:
    """Apply the shared style, save as PNG at ``DPI`` with a tight bounding box, close."""
    import matplotlib.pyplot as plt

    apply_style(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
