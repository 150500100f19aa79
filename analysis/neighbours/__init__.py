"""FAISS nearest-neighbour analysis of feature banks.

Questions it answers: do generator engines form their own clusters in a backbone's
space, and how cleanly (:mod:`.clusters`); which banked images a verdict rests on
(forensics, :mod:`.query`); whether test images are near-copies of training images
(:mod:`.leaks`); what the space looks like in 2-D (:mod:`.maps`). All are built on
:class:`NeighbourIndex` (:mod:`.index`), a FAISS index described by a factory string over
one or more banks. Each analysis computes a result dataclass whose ``write(out)`` writes
its run folder; the FAISS helpers shared with the ``knn`` head live in
``facebank.heads._faiss``.
"""

from facebank.heads._faiss import METRICS

from ._source import IndexRows, resolve_image_path
from .clusters import ClusterResult, engine_clusters
from .index import DEFAULT_CHUNK_ROWS, NeighbourIndex, NeighbourRecord
from .index_run import IndexRun, write_index
from .leaks import LeakResult, find_leaks, read_run_splits
from .maps import EmbeddingMap, MapResult, embedding_map, embedding_maps, write_maps
from .query import QueryResult, write_query

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "METRICS",
    "ClusterResult",
    "EmbeddingMap",
    "IndexRows",
    "IndexRun",
    "LeakResult",
    "MapResult",
    "NeighbourIndex",
    "NeighbourRecord",
    "QueryResult",
    "embedding_map",
    "embedding_maps",
    "engine_clusters",
    "find_leaks",
    "read_run_splits",
    "resolve_image_path",
    "write_index",
    "write_maps",
    "write_query",
]
