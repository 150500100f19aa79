# ruff: noqa: E741  (FAISS convention: results are named D, I - STYLE.md 7)
"""Do generator engines form their own clusters in a backbone's space, and how cleanly?

``engine_clusters`` computes per-engine kNN purity with bootstrap intervals, the
neighbour-engine confusion matrix, a silhouette on a seeded subsample and FAISS k-means
NMI/ARI; :meth:`ClusterResult.write` writes the run folder. The self-search is consumed
chunk by chunk (``NeighbourIndex.iter_self_knn``): besides the index, memory per row is the
engine code (1 byte), its purity (4 bytes) and its k-means cluster (8 bytes), so it runs
at 10^7 rows with an IVF-PQ index. No hyperparameter or threshold is chosen from the data.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.embed._types import BanksLike
from facebank.embed.runs import markdown_table, start_run, write_json

from ._source import sample_rows
from .index import DEFAULT_CHUNK_ROWS, NeighbourIndex

__all__ = ["ClusterResult", "engine_clusters"]

# Above this many values a bootstrap of the mean (n_boot x m draws) costs more than the
# search; the normal interval of the mean (CLT) is then used - at m > 200,000 the two
# agree to the third decimal.
_BOOTSTRAP_MAX = 200_000


@dataclass
class ClusterResult:
    """How cleanly engines cluster in a backbone's space (``engine_clusters``).

    Attributes:
        engines: engine names (``real`` first, then sorted), the order of ``confusion``'s
            rows and columns.
        purity: one dict per engine: engine, n, purity (mean fraction of an image's k
            neighbours of its own engine), lo/hi (bootstrap 95% interval over images),
            chance (the purity random neighbours would give).
        overall: purity over all images (micro) and the mean over engines (macro), with
            bootstrap intervals.
        confusion: ``(E, E)`` row-normalised: fraction of engine-e images' neighbours of
            engine f. confusion_counts: the raw neighbour counts.
        silhouette: silhouette of the engine labels on cosine distance (None for one
            engine); silhouette_n rows used (a seeded subsample above the limit).
        kmeans: FAISS k-means with as many clusters as engines: nmi, ari, n_clusters.
    """

    engines: list[str]
    k: int
    purity: list[dict[str, Any]]
    overall: dict[str, Any]
    confusion: np.ndarray
    confusion_counts: np.ndarray
    silhouette: float | None
    silhouette_n: int
    kmeans: dict[str, Any]
    n_rows: int
    factory: str
    metric: str
    banks: list[str] = field(default_factory=list)
    run_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["confusion"] = self.confusion.tolist()
        d["confusion_counts"] = self.confusion_counts.tolist()
        d["run_dir"] = str(self.run_dir) if self.run_dir else None
        return d

    def markdown(self) -> str:
        """Per-engine purity table plus the clustering summary, as Markdown."""
        lines = [
            f"### kNN engine purity (k={self.k}, {self.factory}, {self.metric}, {self.n_rows} "
            "rows)\n",
            markdown_table(self.purity, ["engine", "n", "purity", "lo", "hi", "chance"]),
            "",
            markdown_table(
                [
                    {
                        "measure": "purity (micro)",
                        "value": self.overall["micro"],
                        "lo": self.overall["micro_lo"],
                        "hi": self.overall["micro_hi"],
                    },
                    {
                        "measure": "purity (macro)",
                        "value": self.overall["macro"],
                        "lo": self.overall["macro_lo"],
                        "hi": self.overall["macro_hi"],
                    },
                    {
                        "measure": f"silhouette (cosine, n={self.silhouette_n})",
                        "value": self.silhouette,
                    },
                    {
                        "measure": f"k-means NMI ({self.kmeans['n_clusters']} clusters)",
                        "value": self.kmeans["nmi"],
                    },
                    {
                        "measure": f"k-means ARI ({self.kmeans['n_clusters']} clusters)",
                        "value": self.kmeans["ari"],
                    },
                ],
                ["measure", "value", "lo", "hi"],
            ),
        ]
        return "\n".join(lines)

    def write(self, out: str | Path, **config: Any) -> Path:
        """Write config.json, metrics.json, purity.md, confusion.csv/png and purity.png."""
        from .. import _plots_neighbours as plots
        from ..plots import save_figure

        run = start_run(
            out,
            command="neighbours clusters",
            config={
                "banks": self.banks,
                "k": self.k,
                "factory": self.factory,
                "metric": self.metric,
                **config,
            },
        )
        write_json(run / "metrics.json", self.to_dict())
        (run / "purity.md").write_text(self.markdown())
        with open(run / "confusion.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["engine", *self.engines])
            for name, row in zip(self.engines, self.confusion, strict=False):
                w.writerow([name, *(f"{v:.6f}" for v in row)])
        save_figure(
            plots.confusion_heatmap(self.confusion, self.engines, k=self.k), run / "confusion.png"
        )
        save_figure(plots.purity_plot(self.purity, k=self.k), run / "purity.png")
        self.run_dir = run
        return run


def _bootstrap_mean(
    values: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% interval of the mean of ``values``: percentile bootstrap (resampling items), or
    the normal interval above ``_BOOTSTRAP_MAX`` values."""
    m = len(values)
    if m == 0 or n_boot <= 0:
        return (math.nan, math.nan)
    if m > _BOOTSTRAP_MAX:
        mean, se = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(m)
        return mean - 1.959964 * se, mean + 1.959964 * se
    means = np.empty(n_boot)
    batch = max(1, 2_000_000 // m)  # bound the (batch, m) index matrix to ~16 MB
    for s in range(0, n_boot, batch):
        b = min(batch, n_boot - s)
        means[s : s + b] = values[rng.integers(0, m, size=(b, m))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def engine_clusters(
    banks: BanksLike,
    *,
    k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    n_clusters: int | None = None,
    silhouette_max: int = 5000,
    kmeans_max: int = 100_000,
    factory: str = "Flat",
    metric: str = "cosine",
    device: str = "auto",
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: str | Path | None = None,
    progress: bool = False,
) -> ClusterResult:
    """Per-engine kNN purity, neighbour-engine confusion, silhouette and k-means NMI/ARI.

    No hyperparameter or threshold is chosen from the data (all splits are pooled: this
    describes the space, it does not evaluate a detector).

    Args:
        banks: a bank, bank path, list of them (same backbone), or an index already built.
        k: neighbours per image (the image itself excluded).
        n_boot: bootstrap resamples (over images) for the purity intervals.
        seed: seeds the bootstrap, the silhouette subsample and k-means.
        n_clusters: k-means clusters (default: the number of engines).
        silhouette_max: silhouette on a seeded subsample of this many rows above it
            (its cost is quadratic).
        kmeans_max: k-means trains on at most this many rows (seeded), then every row is
            assigned to its nearest centroid.
        factory, metric, device, nprobe, ef_search, chunk_rows: see :class:`NeighbourIndex`.
        out: run folder for config.json, metrics.json, purity.md, confusion.png/csv,
            purity.png (``None``: write nothing).

    Returns:
        A :class:`ClusterResult`.
    """
    import faiss
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    index = (
        banks
        if isinstance(banks, NeighbourIndex)
        else NeighbourIndex(
            banks,
            factory=factory,
            metric=metric,
            device=device,
            nprobe=nprobe,
            ef_search=ef_search,
            chunk_rows=chunk_rows,
            seed=seed,
            progress=progress,
        )
    )
    rng = np.random.default_rng(seed)
    codes, vocab = index._source.codes("engine")
    names = sorted(vocab, key=lambda e: (e != "real", e))  # real first
    remap = np.array([names.index(v) for v in vocab], dtype=np.int64)
    y = remap[codes].astype(codes.dtype)
    del codes
    n, E = len(y), len(names)

    # one pass over the self-search: purity per row and the confusion counts
    same = np.empty(n, dtype=np.float32)
    counts = np.zeros((E, E), dtype=np.int64)
    k = index._check_k(k, exclude_self=True)
    for start, stop, _, I in index.iter_self_knn(k):
        valid = I >= 0
        nb = np.where(valid, y[np.clip(I, 0, None)], -1)
        own = y[start:stop, None]
        same[start:stop] = (nb == own).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
        np.add.at(counts, (np.broadcast_to(own, nb.shape)[valid], nb[valid]), 1)
    confusion = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    per_engine = []
    engine_values = []
    for e, name in enumerate(names):
        vals = same[y == e]
        lo, hi = _bootstrap_mean(vals, n_boot=n_boot, rng=rng)
        per_engine.append(
            {
                "engine": name,
                "n": int(len(vals)),
                "purity": float(vals.mean()),
                "lo": lo,
                "hi": hi,
                "chance": (len(vals) - 1) / max(n - 1, 1),
            }
        )
        engine_values.append(vals)
    micro_lo, micro_hi = _bootstrap_mean(same, n_boot=n_boot, rng=rng)
    macro = float(np.mean([v.mean() for v in engine_values]))
    macro_lo, macro_hi = _macro_interval(engine_values, macro, n_boot=n_boot, rng=rng)
    overall = {
        "micro": float(same.mean()),
        "micro_lo": micro_lo,
        "micro_hi": micro_hi,
        "macro": macro,
        "macro_lo": macro_lo,
        "macro_hi": macro_hi,
    }
    del engine_values

    silhouette, sil_n = None, 0
    if 2 <= E < n:
        sub = sample_rows(n, silhouette_max, rng)
        if len(np.unique(y[sub])) >= 2 and len(sub) > len(np.unique(y[sub])):
            Xs = index.load_rows(sub)
            silhouette = float(silhouette_score(Xs, y[sub], metric="cosine"))
            sil_n = int(len(sub))

    n_clusters = int(n_clusters or E)
    km: dict[str, Any] = {"n_clusters": n_clusters, "nmi": None, "ari": None, "train_rows": 0}
    if 2 <= n_clusters <= n:
        sub = sample_rows(n, kmeans_max, rng)
        Xk = index._prepare(index.load_rows(sub))
        kmeans = faiss.Kmeans(
            index.dim,
            n_clusters,
            niter=25,
            seed=seed,
            spherical=index.metric == "cosine",
            max_points_per_centroid=max(256, len(sub) // n_clusters + 1),
            verbose=False,
            min_points_per_centroid=1,  # small banks are fine; FAISS would only warn
        )
        kmeans.train(Xk)
        del Xk
        assign = np.empty(n, dtype=np.int64)
        for start, stop, X in index._prepared_chunks("k-means"):
            _, a = kmeans.index.search(X, 1)
            assign[start:stop] = a[:, 0]
        km.update(
            nmi=float(normalized_mutual_info_score(y, assign)),
            ari=float(adjusted_rand_score(y, assign)),
            train_rows=int(len(sub)),
        )

    result = ClusterResult(
        engines=names,
        k=k,
        purity=per_engine,
        overall=overall,
        confusion=confusion,
        confusion_counts=counts,
        silhouette=silhouette,
        silhouette_n=sil_n,
        kmeans=km,
        n_rows=n,
        factory=index.factory,
        metric=index.metric,
        banks=index._source.bank_paths,
    )
    if out is not None:
        result.write(
            out,
            seed=seed,
            n_boot=n_boot,
            silhouette_max=silhouette_max,
            kmeans_max=kmeans_max,
            nprobe=nprobe,
            ef_search=ef_search,
        )
    return result


def _macro_interval(
    values: list[np.ndarray], macro: float, *, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% interval of the mean over engines of each engine's mean purity: images resampled
    within each engine (bootstrap), or the normal interval for large engines."""
    if n_boot <= 0:
        return (math.nan, math.nan)
    if sum(len(v) for v in values) > _BOOTSTRAP_MAX:
        var = sum(float(v.var(ddof=1)) / len(v) if len(v) > 1 else 0.0 for v in values)
        se = math.sqrt(var) / len(values)
        return macro - 1.959964 * se, macro + 1.959964 * se
    boot = np.mean(
        [
            [v[rng.integers(0, len(v), len(v))].mean() for v in values]
            for _ in range(min(n_boot, 200))
        ],
        axis=1,
    )
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
