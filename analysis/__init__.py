"""analysis: metrics, protocols, robustness, OOD, FAISS neighbours, plots, reports."""

from .runs import markdown_table, read_json, start_run, write_json

# [section: evaluation]
# [end section: evaluation]

# [section: neighbours]
# [end section: neighbours]

__all__ = [
    "start_run",
    "write_json",
    "read_json",
    "markdown_table",
    # [section: __all__ evaluation]
    # [end section: __all__ evaluation]
    # [section: __all__ neighbours]
    # [end section: __all__ neighbours]
]
