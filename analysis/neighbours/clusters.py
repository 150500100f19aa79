# ruff: noqa: E741  (FAISS convention: results are named D, I)
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
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

from ._scan import NeighbourScan
from ._source import sample_rows
from .index import DEFAULT_CHUNK_ROWS

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
        from ..runfolder import RunContents, write_run

        confusion = io.StringIO()
        w = csv.writer(confusion)
        w.writerow(["engine", *self.engines])
        for name, row in zip(self.engines, self.confusion, strict=False):
            w.writerow([name, *(f"{v:.6f}" for v in row)])
        self.run_dir = write_run(
            out,
            RunContents(
                command="neighbours clusters",
                config={
                    "banks": self.banks,
                    "k": self.k,
                    "factory": self.factory,
                    "metric": self.metric,
                    **config,
                },
                metrics=self.to_dict(),
                pages={"purity.md": self.markdown()},
                files={"confusion.csv": confusion.getvalue()},
                figures={
                    "confusion.png": lambda: plots.confusion_heatmap(
                        self.confusion, self.engines, k=self.k
                    ),
                    "purity.png": lambda: plots.purity_plot(self.purity, k=self.k),
                },
            ),
        )
        return self.run_dir


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
    k_factor: int | None = None,
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
        factory, metric, device, nprobe, ef_search, k_factor, chunk_rows: see
            :class:`NeighbourIndex`.
        out: run folder for config.json, metrics.json, purity.md, confusion.png/csv,
            purity.png (``None``: write nothing).

    Returns:
        A :class:`ClusterResult`.
    """
    scan = NeighbourScan(
        banks,
        columns=["engine"],
        factory=factory,
        metric=metric,
        device=device,
        nprobe=nprobe,
        ef_search=ef_search,
        k_factor=k_factor,
        chunk_rows=chunk_rows,
        seed=seed,
        progress=progress,
    )
    index = scan.index
    rng = np.random.default_rng(seed)
    codes, vocab = scan.codes["engine"], scan.vocab["engine"]
    names = sorted(vocab, key=lambda e: (e != "real", e))  # real first
    remap = np.array([names.index(v) for v in vocab], dtype=np.int64)
    y = remap.astype(codes.dtype)[codes]  # the one per-row array: a byte a row
    del codes
    n, E = len(y), len(names)

    k = index._check_k(k, exclude_self=True)
    per_engine, overall, counts = _purity(scan, y, names, k=k, n_boot=n_boot, rng=rng)
    confusion = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    silhouette, sil_n = _silhouette(index, y, n_classes=E, max_rows=silhouette_max, rng=rng)
    km = _kmeans(
        index,
        y,
        n_classes=E,
        n_clusters=int(n_clusters or E),
        max_rows=kmeans_max,
        seed=seed,
        rng=rng,
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
            k_factor=k_factor,
        )
    return result


def _purity(
    scan: NeighbourScan,
    y: np.ndarray,
    names: list[str],
    *,
    k: int,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], dict[str, float], np.ndarray]:
    """One pass over the self-search: per-engine purity with intervals, the overall
    micro/macro purity, and the ``(E, E)`` neighbour-engine counts."""
    n, E = len(y), len(names)
    purity = _PurityStats(E, keep_values=n <= _BOOTSTRAP_MAX)
    counts = np.zeros((E, E), dtype=np.int64)
    for start, stop, _, I in scan.neighbours(k):
        valid = I >= 0
        nb = np.where(valid, y[np.clip(I, 0, None)], -1)
        own = y[start:stop, None]
        same = (nb == own).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
        purity.add(y[start:stop], same)
        np.add.at(counts, (np.broadcast_to(own, nb.shape)[valid], nb[valid]), 1)
    per_engine = []
    for e, name in enumerate(names):
        lo, hi = purity.interval(e, n_boot=n_boot, rng=rng)
        per_engine.append(
            {
                "engine": name,
                "n": purity.count(e),
                "purity": purity.mean(e),
                "lo": lo,
                "hi": hi,
                "chance": (purity.count(e) - 1) / max(n - 1, 1),
            }
        )
    micro_lo, micro_hi = purity.interval(None, n_boot=n_boot, rng=rng)
    macro = float(np.mean([purity.mean(e) for e in range(E)]))
    macro_lo, macro_hi = purity.macro_interval(macro, n_boot=n_boot, rng=rng)
    overall = {
        "micro": purity.mean(None),
        "micro_lo": micro_lo,
        "micro_hi": micro_hi,
        "macro": macro,
        "macro_lo": macro_lo,
        "macro_hi": macro_hi,
    }
    return per_engine, overall, counts


def _silhouette(
    index: Any, y: np.ndarray, *, n_classes: int, max_rows: int, rng: np.random.Generator
) -> tuple[float | None, int]:
    """Cosine silhouette of the engines on a seeded subsample of ``max_rows`` rows."""
    from sklearn.metrics import silhouette_score

    n = len(y)
    if not 2 <= n_classes < n:
        return None, 0
    sub = sample_rows(n, max_rows, rng)
    if len(np.unique(y[sub])) < 2 or len(sub) <= len(np.unique(y[sub])):
        return None, 0
    Xs = index.load_rows(sub)
    return float(silhouette_score(Xs, y[sub], metric="cosine")), int(len(sub))


def _kmeans(
    index: Any,
    y: np.ndarray,
    *,
    n_classes: int,
    n_clusters: int,
    max_rows: int,
    seed: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """k-means on a seeded sample, every row assigned; NMI and ARI against the engines."""
    import faiss

    n = len(y)
    km: dict[str, Any] = {"n_clusters": n_clusters, "nmi": None, "ari": None, "train_rows": 0}
    if not 2 <= n_clusters <= n:
        return km
    sub = sample_rows(n, max_rows, rng)
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
    # engine x cluster counts, filled chunk by chunk: NMI and ARI are functions of it
    table = np.zeros((n_classes, n_clusters), dtype=np.int64)
    for start, stop, X in index._prepared_chunks("k-means"):
        _, a = kmeans.index.search(X, 1)
        np.add.at(table, (y[start:stop], a[:, 0]), 1)
    km.update(nmi=_nmi(table), ari=_ari(table), train_rows=int(len(sub)))
    return km


class _PurityStats:
    """Per-engine purity values folded in chunk by chunk.

    Up to ``_BOOTSTRAP_MAX`` rows the values are kept (4 bytes a row, 800 KB at most) for
    the bootstrap; above it only each engine's count, sum and sum of squares are, and the
    intervals are the normal intervals of the means - memory independent of the rows.
    """

    def __init__(self, n_engines: int, *, keep_values: bool) -> None:
        self.n = np.zeros(n_engines, dtype=np.int64)
        self.sum = np.zeros(n_engines)
        self.sq = np.zeros(n_engines)
        self.values: list[list[np.ndarray]] | None = (
            [[] for _ in range(n_engines)] if keep_values else None
        )

    def add(self, engines: np.ndarray, values: np.ndarray) -> None:
        E = len(self.n)
        self.n += np.bincount(engines, minlength=E)
        self.sum += np.bincount(engines, weights=values, minlength=E)
        self.sq += np.bincount(engines, weights=values * values, minlength=E)
        if self.values is not None:
            for e in np.unique(engines):
                self.values[int(e)].append(values[engines == e].astype(np.float32))

    def _values(self, e: int | None) -> np.ndarray:
        assert self.values is not None
        parts = [v for vs in self.values for v in vs] if e is None else self.values[e]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def count(self, e: int | None) -> int:
        return int(self.n.sum() if e is None else self.n[e])

    def mean(self, e: int | None) -> float:
        m = self.count(e)
        total = float(self.sum.sum() if e is None else self.sum[e])
        return total / m if m else math.nan

    def _var(self, e: int | None) -> float:
        """Sample variance (ddof=1) from the sums."""
        m = self.count(e)
        if m < 2:
            return 0.0
        sq = float(self.sq.sum() if e is None else self.sq[e])
        return max(sq - m * self.mean(e) ** 2, 0.0) / (m - 1)

    def interval(
        self, e: int | None, *, n_boot: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        """95% interval of the mean purity of engine ``e`` (``None``: all rows)."""
        if self.values is not None:
            return _bootstrap_mean(self._values(e), n_boot=n_boot, rng=rng)
        m = self.count(e)
        if m == 0 or n_boot <= 0:
            return (math.nan, math.nan)
        se = math.sqrt(self._var(e) / m)
        return self.mean(e) - 1.959964 * se, self.mean(e) + 1.959964 * se

    def macro_interval(
        self, macro: float, *, n_boot: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        """95% interval of the mean over engines of each engine's mean purity: images
        resampled within each engine (bootstrap), or the normal interval for large banks."""
        if n_boot <= 0:
            return (math.nan, math.nan)
        E = len(self.n)
        if self.values is None:
            var = sum(self._var(e) / self.count(e) for e in range(E) if self.count(e) > 1)
            se = math.sqrt(var) / E
            return macro - 1.959964 * se, macro + 1.959964 * se
        values = [self._values(e) for e in range(E)]
        boot = np.mean(
            [
                [v[rng.integers(0, len(v), len(v))].mean() for v in values]
                for _ in range(min(n_boot, 200))
            ],
            axis=1,
        )
        return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(table: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies, sklearn's default)
    of the two labelings counted in ``table`` (true x predicted)."""
    from sklearn.metrics import mutual_info_score

    h_true, h_pred = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_true == 0 and h_pred == 0:  # one class and one cluster: identical labelings
        return 1.0
    mi = float(mutual_info_score(None, None, contingency=table))
    return mi / max((h_true + h_pred) / 2, np.finfo(float).eps)


def _ari(table: np.ndarray) -> float:
    """Adjusted Rand index from the contingency table (sklearn's pair-confusion formula,
    in Python integers: at 10^7 rows the products overflow int64)."""
    n = int(table.sum())
    sum_sq = int((table.astype(object) ** 2).sum())
    rows, cols = table.sum(axis=1).astype(object), table.sum(axis=0).astype(object)
    tp = sum_sq - n
    fp = int((table.astype(object) @ cols).sum()) - sum_sq
    fn = int((table.T.astype(object) @ rows).sum()) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
