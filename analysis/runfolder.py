"""The one writer of an analysis' run folder.

Every analysis computes a result dataclass first and writes it second (STYLE: compute,
then write). What a run folder holds is described by :class:`RunContents` -
``config.json`` (every option that decides the result, with the split that chose each
threshold), ``metrics.json``, Markdown pages and figures - and :func:`write_run` writes
it under the one output rule of :func:`facebank.core.runs.start_run`. Figures are
given as builders, so a figure is drawn only when its folder is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from facebank.core.runs import start_run, write_json

from ._plotstyle import save_figure

__all__ = ["RunContents", "csv_text", "write_run"]


@dataclass(frozen=True)
class RunContents:
    """What one analysis writes into its run folder.

    Attributes:
        command: the command that made the run (``"protocol few-shot"``), in ``config.json``.
        config: the options that decide the result (``config.json``).
        metrics: the figures a user or a later command reads (``metrics.json``).
        pages: Markdown pages, ``{file name: text}``.
        figures: ``{file name: callable returning a matplotlib figure}``.
        files: other text files, ``{file name: text}`` (CSV tables: :func:`csv_text`), or
            ``{file name: callable writing into the open text file}`` for large ones.
    """

    command: str
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    pages: Mapping[str, str] = field(default_factory=dict)
    figures: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    files: Mapping[str, str | Callable[[TextIO], None]] = field(default_factory=dict)


def csv_text(
    fields: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    extrasaction: Literal["raise", "ignore"] = "ignore",
) -> str:
    """``rows`` as CSV text with header ``fields`` (keys outside ``fields`` dropped)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction=extrasaction)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_run(out: str | Path, contents: RunContents) -> Path:
    """Claim ``out`` (``start_run``), then write ``metrics.json``, the pages and figures.

    Returns:
        The run folder.
    """
    run = start_run(out, command=contents.command, config=contents.config)
    write_json(run / "metrics.json", contents.metrics)
    for name, text in contents.pages.items():
        (run / name).write_text(text, encoding="utf-8")
    for name, body in contents.files.items():
        with open(run / name, "w", newline="", encoding="utf-8") as fh:
            if callable(body):
                body(fh)
            else:
                fh.write(body)
    for name, make in contents.figures.items():
        save_figure(make(), run / name)
    return run
