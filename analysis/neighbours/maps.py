"""What does the space look like in 2-D? PCA or t-SNE maps of banks, coloured by engine.

``embedding_map`` computes one map on a seeded subsample above ``max_points`` rows (only
those rows' features are read, so it works whatever the bank size); ``embedding_maps``
computes several into a :class:`MapResult`, whose ``write`` draws ``map_<method>.png``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError, UnknownNameError
from facebank.embed.bank.types import BanksLike

from ._source import FeatureSource, sample_rows
from .index import NeighbourIndex

__all__ = ["EmbeddingMap", "MapResult", "embedding_map", "embedding_maps", "write_maps"]


@dataclass
class EmbeddingMap:
    """A 2-D picture of the space (``embedding_map``).

    Attributes:
        coords: ``(m, 2)`` float32 coordinates. rows: ``(m,)`` index rows shown.
        engines, labels: ``(m,)`` of the shown rows. method: "pca" or "tsne".
        n_total: rows in the banks; subsampled: whether a seeded subsample is shown.
        explained_variance: PCA's explained variance ratio of the 2 axes (PCA only).
    """

    coords: np.ndarray
    rows: np.ndarray
    engines: np.ndarray
    labels: np.ndarray
    method: str
    n_total: int
    seed: int
    max_points: int
    explained_variance: list[float] | None = None

    @property
    def subsampled(self) -> bool:
        return len(self.rows) < self.n_total


_MAP_METHODS = ("pca", "tsne")


def embedding_map(
    banks: BanksLike,
    *,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    normalise: bool = True,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> EmbeddingMap:
    """2-D PCA or t-SNE (sklearn) of the banks' rows, on a seeded subsample above a limit.

    Args:
        banks: a bank, bank path, list of them, or a :class:`NeighbourIndex`.
        method: ``"pca"`` or ``"tsne"`` (t-SNE runs on the first 50 PCA components).
        max_points: above this many rows a seeded uniform subsample is drawn (the figure
            says so); t-SNE is quadratic-ish in the number of points.
        seed: seeds the subsample, PCA's solver and t-SNE.
        normalise: L2-normalise rows first (the cosine geometry the index uses).
        perplexity: t-SNE perplexity (clipped below the number of points).
        max_iter: t-SNE optimisation steps (sklearn's default 1000; at least 250).

    Returns:
        An :class:`EmbeddingMap`.
    """
    from sklearn.decomposition import PCA

    if method not in _MAP_METHODS:
        raise UnknownNameError(f"unknown map method {method!r}; valid: {', '.join(_MAP_METHODS)}")
    source = banks._source if isinstance(banks, NeighbourIndex) else FeatureSource(banks)
    n = len(source)
    if n < 3:
        raise DataError(f"a 2-D map needs at least 3 rows, the banks hold {n}")
    rng = np.random.default_rng(seed)
    rows = sample_rows(n, max_points, rng)
    X = source.load_rows(rows).astype(np.float64)
    if normalise:
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    explained = None
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(X)
        explained = [float(v) for v in pca.explained_variance_ratio_]
    else:
        from sklearn.manifold import TSNE

        n_comp = min(50, X.shape[1], len(X))
        Xp = PCA(n_components=n_comp, random_state=seed).fit_transform(X) if X.shape[1] > 50 else X
        coords = TSNE(
            n_components=2,
            perplexity=min(perplexity, (len(X) - 1) / 3),
            init="pca",
            random_state=seed,
            max_iter=int(max_iter),
        ).fit_transform(Xp)
    return EmbeddingMap(
        coords=coords.astype(np.float32),
        rows=rows,
        engines=source.rows.engine[rows].astype(str),
        labels=source.rows.label[rows].astype(np.int8),
        method=method,
        n_total=n,
        seed=seed,
        max_points=int(max_points),
        explained_variance=explained,
    )


@dataclass
class MapResult:
    """Maps of one set of banks by several methods (``embedding_maps``)."""

    maps: list[EmbeddingMap]
    banks: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            m.method: {
                "points": int(len(m.rows)),
                "n_total": m.n_total,
                "subsampled": m.subsampled,
                "explained_variance": m.explained_variance,
                "engines": dict(Counter(m.engines.tolist())),
            }
            for m in self.maps
        }

    def write(self, out: str | Path) -> Path:
        """Write config.json, metrics.json and one ``map_<method>.png`` per map."""
        from .. import _plots_neighbours as plots
        from ..runfolder import RunContents, write_run

        def figure(m: EmbeddingMap) -> Any:
            return lambda: plots.embedding_scatter(m)

        self.run_dir = write_run(
            out,
            RunContents(
                command="neighbours map",
                config={"banks": self.banks, **self.config},
                metrics=self.to_dict(),
                figures={f"map_{m.method}.png": figure(m) for m in self.maps},
            ),
        )
        return self.run_dir


def embedding_maps(
    banks: BanksLike,
    *,
    methods: Sequence[str] = ("pca", "tsne"),
    max_points: int = 5000,
    seed: int = 0,
) -> MapResult:
    """:func:`embedding_map` for each method, on the same seeded subsample."""
    source = banks._source if isinstance(banks, NeighbourIndex) else FeatureSource(banks)
    maps = [embedding_map(source.data, method=m, max_points=max_points, seed=seed) for m in methods]
    return MapResult(
        maps=maps,
        banks=source.bank_paths,
        config={"methods": list(methods), "max_points": max_points, "seed": seed},
    )


def write_maps(
    banks: BanksLike,
    *,
    out: str | Path,
    methods: Sequence[str] = ("pca", "tsne"),
    max_points: int = 5000,
    seed: int = 0,
) -> tuple[Path, list[EmbeddingMap]]:
    """``embedding_maps`` written as ``map_<method>.png`` + metrics.json.

    Returns:
        ``(run_dir, maps)``.
    """
    result = embedding_maps(banks, methods=methods, max_points=max_points, seed=seed)
    return result.write(out), result.maps
