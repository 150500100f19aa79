"""Option parsing and printing shared by the commands: one parser per kind of option.

- ``--param KEY=VALUE`` (repeatable, JSON values): :func:`parse_params`.
- comma-or-repeat lists (``--heads linear,mlp --heads knn``): :func:`split_list`.
- ``--storage-options JSON`` for URLs on fsspec stores: :func:`parse_storage_options`. The
  session wrapper parses it once and makes it fsspec's default for the protocols of the
  command's URL arguments while the command runs (``core.stores.store_defaults``), so
  it reaches a run folder, scoring inputs and a head on a store as well as a bank or a
  SOURCE; every command with ``--out`` gets the option.
- default output folders: :func:`default_out`, the one rule every command uses -
  ``runs/<command>-<YYYYmmdd-HHMMSS>``, a new folder per run; an existing ``--out`` is
  refused unless ``--overwrite`` (``embed.runs.start_run`` states the whole rule).
- :func:`install_run_sessions`: every command runs inside ``embed.runs.run_session``
  (a failed command leaves no run folder behind; each warning is shown once as one
  line and kept in the run's ``metrics.json``) and every command with ``--out`` gets
  ``--overwrite``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from facebank.core.errors import DataError
from facebank.core.runs import (
    check_out,
    check_output_file,
    new_run_dir,
    remote_run,
    run_session,
    run_url,
)
from facebank.core.stores import store_defaults

__all__ = [
    "Metric",
    "OUT_HELP",
    "OutOption",
    "make_console",
    "default_out",
    "install_run_sessions",
    "parse_params",
    "parse_storage_options",
    "StorageOptionsOption",
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
    return new_run_dir(command)


OVERWRITE_HELP = (
    "Replace the run folder --out if it already holds a run (never a folder that is not "
    "a facebank run). Without it an existing --out is refused."
)


def _built_param(probe: Any, name: str) -> Any:
    """Parameter ``name`` of the function ``probe`` as typer builds it, to add to a command
    that does not declare it (listed by ``--help`` like the others)."""
    app = typer.Typer(add_completion=False)
    app.command()(probe)
    return next(p for p in typer.main.get_command(app).params if p.name == name)


@functools.cache
def _overwrite_option() -> Any:
    """``--overwrite`` as typer builds it."""

    def probe(
        overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    ) -> None: ...

    return _built_param(probe, "overwrite")


def _with_session(callback: Any, *, name: str, has_out: bool, own_options: bool = True) -> Any:
    @functools.wraps(callback)
    def outer(*args: Any, **kwargs: Any) -> Any:
        overwrite = bool(kwargs.get("overwrite", False)) if has_out else False
        raw = kwargs.get("storage_options") if own_options else kwargs.pop("storage_options", None)
        options = parse_storage_options(raw)
        url = run_url(kwargs.get("out")) if has_out and name not in _FILE_OUTPUT else None
        # the options reach every URL the command touches, not only the ones it is handed
        with store_defaults(options, _urls_in([*args, *kwargs.values()])):
            if url is not None:  # a run folder on a store: staged here, uploaded on success
                with remote_run(
                    url, command=name, overwrite=overwrite, storage_options=options
                ) as staging:
                    status = session({**kwargs, "out": staging}, args)
            else:
                status = session(kwargs, args)
        # a command that completed its run but reports a finding through its exit code
        # (neighbours leaks: 2) returns the code, so the session keeps the run folder
        if isinstance(status, int) and not isinstance(status, bool) and status:
            raise typer.Exit(status)
        return status

    def session(kwargs: dict[str, Any], args: tuple[Any, ...]) -> Any:
        overwrite = bool(kwargs.pop("overwrite", False)) if has_out else False
        ctx = _current_context()
        verbose = bool(ctx is not None and ctx.find_root().params.get("verbose"))
        echo = functools.partial(typer.echo, err=True)
        with run_session(overwrite=overwrite, echo=echo, verbose=verbose):
            out = kwargs.get("out") if has_out else None
            if out is not None and name in _FILE_OUTPUT:
                check_output_file(out, overwrite=overwrite)
            elif out is not None:  # refuse before any work, not after it
                check_out(out, command=name, overwrite=overwrite, resume=name in _RESUMES)
            return callback(*args, **kwargs)

    return outer


def _urls_in(values: Sequence[Any]) -> list[str]:
    """The fsspec URLs among a command's arguments (lists searched; ``s3:/x`` Paths too)."""
    urls: list[str] = []
    for value in values:
        for v in value if isinstance(value, list | tuple) else (value,):
            if isinstance(v, str | Path) and (u := run_url(v)) is not None:
                urls.append(u)
    return urls


@functools.cache
def _storage_options_option() -> Any:
    """``--storage-options`` as typer builds it, for commands that do not declare it."""

    def probe(storage_options: StorageOptionsOption = None) -> None: ...

    return _built_param(probe, "storage_options")


def _current_context() -> Any:
    try:  # typer >= 0.22 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import get_current_context
    return get_current_context(silent=True)


# Commands whose --out is not a run folder with its own rule: embed appends to (resumes)
# the bank it is given; score writes a CSV or stdout; demo's folder holds its data and
# an experiment run that resumes.
_OWN_OUTPUT_RULE = frozenset({"embed", "score", "demo"})
_RESUMES = frozenset({"experiment", "triage"})  # a re-run on its own folder reuses the banks
_FILE_OUTPUT = frozenset({"report"})  # --out is one file


def install_run_sessions(group: Any) -> None:
    """Wrap every command of ``group`` (and its sub-groups) in a run session; add
    ``--overwrite`` to each command that has an ``--out`` option."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (bank, neighbours)
            install_run_sessions(cmd)
            continue
        if cmd.callback is None or getattr(cmd.callback, "_facebank_session", False):
            continue
        names = {p.name for p in cmd.params}
        has_out = "out" in names and "overwrite" not in names and name not in _OWN_OUTPUT_RULE
        own_options = "storage_options" in names
        if has_out:
            cmd.params.append(_overwrite_option())
        if not own_options and "out" in names:  # a run folder may be on a store
            cmd.params.append(_storage_options_option())
        cmd.callback = _with_session(
            cmd.callback, name=name, has_out=has_out, own_options=own_options
        )
        cmd.callback._facebank_session = True


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


STORAGE_OPTIONS_HELP = (
    "fsspec options for s3:// gs:// ... URLs as JSON, e.g. "
    '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'; by default the '
    "store's own mechanisms apply (AWS_ENDPOINT_URL, AWS_* variables, config files). "
    "Never recorded or printed."
)
StorageOptionsOption = Annotated[
    str | None, typer.Option("--storage-options", help=STORAGE_OPTIONS_HELP, show_default=False)
]


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """``--storage-options '{"anon": false}'`` -> a dict (None when not given)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # the text may hold credentials: say where it fails, not what it says
        raise DataError(
            f"--storage-options is not valid JSON ({exc.msg} at character {exc.pos}); give a "
            'JSON object, e.g. \'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\''
        ) from None
    if not isinstance(value, dict):
        raise DataError(
            f"--storage-options must be a JSON object, not {type(value).__name__}; e.g. "
            "'{\"anon\": true}'"
        )
    return value


def split_list(values: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """Repeatable, comma-separable option values; ``None`` -> ``default``, ``none`` -> ``()``."""
    if values is None:
        return tuple(default)
    items = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return () if items == ["none"] else tuple(items)


def show_progress() -> bool:
    """Progress bars on long work when stderr is a terminal."""
    return sys.stderr.isatty()
