"""Option parsing and printing shared by the commands: one parser per kind of option.

- ``--param KEY=VALUE`` (repeatable, JSON values): :func:`parse_params`.
- comma-or-repeat lists (``--heads linear,mlp --heads knn``): :func:`split_list`.
- default output folders: :func:`default_out`, the one rule every command uses -
  ``runs/<command>-<YYYYmmdd-HHMMSS>``, a new folder per run.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from facebank.embed.errors import DataError
from rich.console import Console

__all__ = [
    "Metric",
    "OUT_HELP",
    "OutOption",
    "make_console",
    "default_out",
    "parse_params",
    "show_progress",
    "split_list",
]

OUT_HELP = (
    "Run folder to write (config.json, metrics.json, Markdown tables, PNGs); "
    "default runs/<command>-<date>-<time>, a new folder per run."
)
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)]


class Metric(str, Enum):
    """Neighbour metric choices."""

    cosine = "cosine"
    l2 = "l2"


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that prints text as given (no highlighting, no hard wrapping)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def default_out(command: str, out: Path | None = None) -> Path:
    """``out`` when given, else ``runs/<command>-<YYYYmmdd-HHMMSS>`` (a new folder per run)."""
    if out is not None:
        return out
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command.replace(' ', '-')}-{stamp}"


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``["C=0.5", "hidden=[64,32]"]`` -> ``{"C": 0.5, "hidden": [64, 32]}``.

    Values are parsed as JSON where they are JSON, else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(
                f"--param {item!r} is not KEY=VALUE; e.g. --param C=0.5 --param hidden=[128,64]"
            )
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def split_list(values: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """Repeatable, comma-separable option values; ``None`` -> ``default``, ``none`` -> ``()``."""
    if values is None:
        return tuple(default)
    items = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return () if items == ["none"] else tuple(items)


def show_progress() -> bool:
    """Progress bars on long work when stderr is a terminal."""
    return sys.stderr.isatty()
