"""Forensics: which banked images is a verdict resting on? Writing a query's neighbours.

``NeighbourIndex.query`` / ``query_rows`` return the records; :class:`QueryResult` holds
them with the run's configuration and writes ``neighbours.csv``, ``neighbours.md``,
``metrics.json`` and ``grid.png``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facebank.core.runs import markdown_table
from facebank.embed.inputs.datasets import encode_path

from .index import NeighbourRecord

__all__ = ["QueryResult", "write_query"]

_CSV_COLUMNS = [
    "query",
    "rank",
    "similarity",
    "distance",
    "engine",
    "label",
    "split",
    "bank",
    "row",
    "path",
    "sha256",
    "self_match",
    "image_path",
    "query_image",
    "query_file",
]


# record fields that hold a file name as the OS gives it (the rest are stored or built
# from stored paths, already encoded)
_OS_NAMES = ("query_image", "query_file", "image_path")


@dataclass
class QueryResult:
    """Each query's neighbours (one list of :class:`NeighbourRecord` per query, nearest
    first) and the configuration recorded with them."""

    records: list[list[NeighbourRecord]]
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per neighbour; file names as ``encode_path`` writes them (one
        printable line each; the query label and the bank's stored paths already are)."""
        out = []
        for recs in self.records:
            for r in recs:
                row = r.to_dict()
                for key in _OS_NAMES:
                    if row.get(key) is not None:
                        row[key] = encode_path(row[key])
                out.append(row)
        return out

    def write(self, out: str | Path) -> Path:
        """Write config.json, metrics.json, neighbours.csv, neighbours.md and grid.png."""
        from .. import _plots_neighbours as plots
        from ..runfolder import RunContents, csv_text, write_run

        flat = self.rows()
        page = markdown_table(
            flat,
            ["query", "rank", "similarity", "engine", "label", "split", "self_match", "path"],
            digits=4,
        )
        self.run_dir = write_run(
            out,
            RunContents(
                command="neighbours query",
                config=dict(self.config),
                metrics={"queries": len(self.records), "neighbours": flat},
                pages={"neighbours.md": page},
                files={"neighbours.csv": csv_text(_CSV_COLUMNS, flat)},
                figures={"grid.png": lambda: plots.neighbour_grid(self.records)},
            ),
        )
        return self.run_dir


def write_query(
    records: list[list[NeighbourRecord]],
    *,
    out: str | Path,
    config: Mapping[str, Any],
) -> Path:
    """Write forensics results: neighbours.csv, neighbours.md and grid.png in a run folder."""
    return QueryResult(records=records, config=dict(config)).write(out)
