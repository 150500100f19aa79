"""One streamed pass over every row's neighbours: what ``clusters`` and ``leaks`` share.

:class:`NeighbourScan` opens (or reuses) the index, reads the row metadata an analysis
needs as small integer codes in one chunked pass over the banks' columns
(``FeatureSource.encode`` over ``FeatureBank.iter_columns``: never a whole string column), and
then yields the self-search chunk by chunk. Besides the index, memory is one chunk of
features and its ``(chunk, k)`` results plus the codes (a byte or two a row); per-row
results are folded into the caller's accumulators chunk by chunk, never an ``(n, k)``
matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .index import DEFAULT_CHUNK_ROWS, NeighbourIndex


class NeighbourScan:
    """An index over ``data`` plus the named row columns as codes (``codes[name][row]``).

    Args:
        data: a bank, bank path, list of them, an ``(n, D)`` array, or a built
            :class:`NeighbourIndex` (reused as it is).
        columns: metadata columns to encode (``"engine"``, ``"split"``, ``"bank_id"``...).
        factory, metric, device, nprobe, ef_search, k_factor, chunk_rows, seed, progress: see
            :class:`NeighbourIndex`.
    """

    def __init__(
        self,
        data: Any,
        *,
        columns: Sequence[str] = (),
        factory: str = "Flat",
        metric: str = "cosine",
        device: str = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.index = (
            data
            if isinstance(data, NeighbourIndex)
            else NeighbourIndex(
                data,
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
        )
        self.source = self.index._source
        self.chunk_rows = self.index.chunk_rows  # metadata is read in chunks of this size too
        self.codes, self.vocab = (
            self.source.encode(list(columns), chunk_rows=self.chunk_rows) if columns else ({}, {})
        )

    def __len__(self) -> int:
        return len(self.source)

    def neighbours(self, k: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(start, stop, D, I)`` of rows ``start:stop``: each row's ``k`` nearest other
        rows (``NeighbourIndex.iter_self_knn``), one chunk at a time."""
        return self.index.iter_self_knn(k, exclude_self=True)

    def columns(self, names: Sequence[str]) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Row columns chunk by chunk (``FeatureSource.iter_columns``), ``chunk_rows`` at a time."""
        return self.source.iter_columns(names, chunk_rows=self.chunk_rows)

    def take(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Metadata of a few rows (pairs to describe): ``{name: (len(rows),)}`` + ``bank``."""
        return self.source.take(rows, names)
