"""analysis: metrics, protocols, robustness, OOD, FAISS neighbours, plots, reports."""

from .runs import markdown_table, read_json, start_run, write_json

# [section: evaluation]
# [end section: evaluation]

# [section: neighbours]
# isort: split
from .neighbours import (
    ClusterResult,
    EmbeddingMap,
    IndexRows,
    LeakResult,
    NeighbourIndex,
    NeighbourRecord,
    embedding_map,
    engine_clusters,
    find_leaks,
)

# [end section: neighbours]

__all__ = [
    "start_run",
    "write_json",
    "read_json",
    "markdown_table",
    # [section: __all__ evaluation]
    # [end section: __all__ evaluation]
    # [section: __all__ neighbours]
    "NeighbourIndex",
    "NeighbourRecord",
    "IndexRows",
    "ClusterResult",
    "LeakResult",
    "EmbeddingMap",
    "engine_clusters",
    "find_leaks",
    "embedding_map",
    # [end section: __all__ neighbours]
]
