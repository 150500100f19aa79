"""Run folders: every command that produces results writes one.

A run folder holds ``config.json`` (what was asked, with versions), ``metrics.json``
(the numbers), Markdown tables (``*.md``), PNG figures and CSVs. ``facebank report``
turns one or more run folders into a single HTML page, so everything a command wants
shown must land here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["start_run", "write_json", "read_json", "to_jsonable", "markdown_table"]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, dataclasses, paths and NaN into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN/inf become null); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "facebank",
        "torch",
        "open_clip_torch",
        "timm",
        "zarr",
        "faiss-cpu",
        "scikit-learn",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def start_run(out: str | Path, *, command: str, config: Mapping[str, Any]) -> Path:
    """Create (or reuse) a run folder and write its ``config.json``.

    Args:
        out: the run folder; created with parents.
        command: the CLI command or function that made the run, e.g. ``"evaluate"``.
        config: every option that decides the result (seeds, thresholds' source split...).

    Returns:
        The run folder as a ``Path``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "config.json",
        {
            "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            **dict(config),
        },
    )
    return out


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 3
) -> str:
    """Render rows (dicts) as a GitHub Markdown table; floats get ``digits`` decimals."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"
