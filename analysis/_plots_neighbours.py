"""Neighbour figures (re-exported by ``analysis.plots``): all return matplotlib Figures."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.embed.inputs.datasets import encode_path
from facebank.embed.inputs.images import read_image

__all__ = ["neighbour_grid", "confusion_heatmap", "purity_plot", "embedding_scatter"]

_LABEL_NAMES = {1: "AI", 0: "real", -1: "?"}


def _figure(w: float, h: float):
    # Figure() directly (not pyplot): no global state, safe in notebooks and threads,
    # and no GUI backend is needed to draw it.
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), facecolor="white")


def _tile(path: str | None, size: int) -> np.ndarray | None:
    """The image at ``path`` as an RGB array (thumbnail), or ``None`` when unavailable."""
    if not path:
        return None
    try:
        img = read_image(path)
        img.thumbnail((size, size))
        return np.asarray(img)
    except Exception:  # any undecodable file becomes a placeholder tile
        return None


def _draw_tile(ax, arr: np.ndarray | None, caption: str, *, edge: str | None = None) -> None:
    if arr is None:
        ax.set_facecolor("#e6e6e6")
        ax.text(
            0.5,
            0.5,
            "no image\nfile",
            ha="center",
            va="center",
            fontsize=7,
            color="#666666",
            transform=ax.transAxes,
        )
    else:
        ax.imshow(arr)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(edge is not None)
        if edge is not None:
            s.set_edgecolor(edge)
            s.set_linewidth(3)
    ax.set_title(caption, fontsize=7)


def _short(text: str, width: int = 22) -> str:
    text = str(text)
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _query_caption(r: Any) -> str:
    """ "query", the query's file name (never cut: the end of the name is kept), and what
    the query is (a banked row's number and engine)."""
    file = getattr(r, "query_file", None) or r.query_image
    if not file:
        return "query\n" + "\n".join(textwrap.wrap(_short(r.query, 44), 22)[:2])
    lines = ["query", _short(Path(encode_path(str(file))).name)]  # printable: matplotlib
    if str(r.query).startswith("row "):  # "row 17 (sdxl: sdxl/17.png)": keep "row 17 (sdxl)"
        lines.append(_short(str(r.query).split(":")[0] + ")"))
    return "\n".join(lines)


def neighbour_grid(
    records_or_result: Any,
    *,
    max_queries: int = 8,
    max_neighbours: int | None = None,
    tile_size: int = 160,
    title: str | None = None,
):
    """Query images and their nearest banked images, one query per row, captioned.

    Args:
        records_or_result: what ``NeighbourIndex.query`` / ``query_rows`` returns (a list
            per query of ``NeighbourRecord``), or a flat list of records.
        max_queries: rows drawn (the first queries).
        max_neighbours: neighbours drawn per query (default: all returned).
        tile_size: thumbnail size in pixels.
        title: figure title.

    Returns:
        A matplotlib ``Figure``: column 0 is the query, then neighbours captioned with
        rank, similarity (or distance), engine, label and path. Images are read from the
        bank's recorded source when the files exist; a grey placeholder tile otherwise.
        Frames are coloured by engine (``engine_colours``).
    """
    from .plots import engine_colours

    groups = list(records_or_result)
    if groups and not isinstance(groups[0], (list, tuple)):
        by_q: dict[int, list] = {}
        for r in groups:
            by_q.setdefault(r.query_index, []).append(r)
        groups = [by_q[q] for q in sorted(by_q)]
    groups = [g for g in groups if g][:max_queries]
    if not groups:
        fig = _figure(4, 1.5)
        fig.text(0.5, 0.5, "no neighbours to show", ha="center", va="center")
        return fig
    ncols = 1 + max(
        len(g) if max_neighbours is None else min(len(g), max_neighbours) for g in groups
    )
    colours = engine_colours([r.engine for g in groups for r in g])
    fig = _figure(1.55 * ncols, 1.95 * len(groups) + (0.4 if title else 0))
    axes = fig.subplots(len(groups), ncols, squeeze=False)
    for qi, g in enumerate(groups):
        shown = g if max_neighbours is None else g[:max_neighbours]
        first = shown[0]
        _draw_tile(
            axes[qi, 0],
            _tile(first.query_image, tile_size),
            _query_caption(first),
            edge="black",
        )
        for j in range(1, ncols):
            ax = axes[qi, j]
            if j - 1 >= len(shown):
                ax.axis("off")
                continue
            r = shown[j - 1]
            score = (
                f"sim {r.similarity:.3f}" if r.similarity is not None else f"d2 {r.distance:.3g}"
            )
            caption = (
                f"#{r.rank} {score}\n{r.engine or '-'} ({_LABEL_NAMES.get(r.label, r.label)})"
                f"\n{_short(r.path)}"
            )
            if getattr(r, "self_match", ""):
                caption = f"{r.self_match.upper()}\n{caption}"
            _draw_tile(ax, _tile(r.image_path, tile_size), caption, edge=colours.get(r.engine))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmap(
    confusion: np.ndarray, engines: Sequence[str], *, k: int | None = None, title: str | None = None
):
    """Neighbour-engine confusion: row = an image's engine, column = its neighbours' engine.

    Args:
        confusion: ``(E, E)`` row-normalised fractions.
        engines: the ``E`` engine names.

    Returns:
        A matplotlib ``Figure`` (heatmap with the fraction written in every cell).
    """
    C = np.asarray(confusion, dtype=float)
    E = len(engines)
    size = max(3.5, 0.6 * E + 2)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(C, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(E), engines, rotation=45, ha="right")
    ax.set_yticks(range(E), engines)
    ax.set_xlabel("neighbour's engine")
    ax.set_ylabel("image's engine")
    for i in range(E):
        for j in range(E):
            ax.text(
                j,
                i,
                f"{C[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if C[i, j] > 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of neighbours")
    ax.set_title(title or f"Neighbour-engine confusion{f' (k={k})' if k else ''}")
    fig.tight_layout()
    return fig


def purity_plot(purity: Sequence[Mapping[str, Any]], *, k: int | None = None):
    """Per-engine kNN purity with bootstrap 95% intervals and the chance level.

    Args:
        purity: ``ClusterResult.purity`` rows (engine, purity, lo, hi, chance).

    Returns:
        A matplotlib ``Figure`` (horizontal bars).
    """
    from .plots import engine_colours

    names = [p["engine"] for p in purity]
    colours = engine_colours(names)
    vals = np.array([p["purity"] for p in purity], dtype=float)
    lo = np.array([p["lo"] for p in purity], dtype=float)
    hi = np.array([p["hi"] for p in purity], dtype=float)
    fig = _figure(5.5, 0.45 * len(names) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(names))
    err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
    ax.barh(y, vals, color=[colours[n] for n in names], xerr=np.nan_to_num(err), capsize=3)
    ax.scatter(
        [p["chance"] for p in purity], y, marker="|", s=200, color="black", label="chance", zorder=3
    )
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(f"kNN purity (fraction of {k or 'k'} neighbours of the same engine)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def embedding_scatter(emap: Any, *, title: str | None = None, point_size: float | None = None):
    """2-D map coloured by engine (``engine_colours``), with a legend.

    Args:
        emap: an ``EmbeddingMap``.

    Returns:
        A matplotlib ``Figure``; when a subsample is shown the title says how many of how
        many rows, and the seed.
    """
    from .plots import engine_colours

    engines = np.asarray(emap.engines).astype(str)
    names = sorted(set(engines.tolist()), key=lambda e: (e != "real", e))
    colours = engine_colours(names)
    fig = _figure(6.5, 5.5)
    ax = fig.subplots()
    s = point_size or (12 if len(engines) < 2000 else 4)
    for name in names:
        m = engines == name
        ax.scatter(
            emap.coords[m, 0],
            emap.coords[m, 1],
            s=s,
            c=colours[name],
            label=f"{name} ({m.sum()})",
            alpha=0.8,
            linewidths=0,
        )
    method = {"pca": "PCA", "tsne": "t-SNE"}.get(emap.method, emap.method)
    head = title or f"{method} of the embedding, coloured by engine"
    if emap.subsampled:
        note = f"random subsample of {len(emap.rows)} of {emap.n_total} rows (seed {emap.seed})"
    else:
        note = f"all {emap.n_total} rows"
    ax.set_title(f"{head}\n{note}", fontsize=10)
    if emap.method == "pca" and emap.explained_variance:
        ev = emap.explained_variance
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% var.)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% var.)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(title="engine", fontsize=8, markerscale=2, loc="best", frameon=False)
    fig.tight_layout()
    return fig
