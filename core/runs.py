"""Run folders: every command that produces results writes one.

A run folder holds ``config.json`` (what was asked, with versions), ``metrics.json``
(the numbers), Markdown tables (``*.md``), PNG figures and CSVs. ``facebank report``
turns one or more run folders into a single HTML page, so everything a command wants
shown must land here.

One rule for output folders, for every command (:func:`start_run`):

- no ``--out``: a new folder ``runs/<command>-<YYYYmmdd-HHMMSS>`` (:func:`new_run_dir`);
- ``--out`` that does not exist or is empty: used;
- ``--out`` that holds anything else: refused with the fix, unless ``overwrite`` (then a
  previous *run folder* is replaced - a folder without ``config.json`` never is) or the
  command resumes (``resume=True``, e.g. ``experiment`` reusing its banks) and the folder
  is a run of that same command.

Invariants: a run folder is claimed under an ``flock`` on its directory, so two commands
writing one folder at once cannot both proceed (the second is refused). Inside a
:func:`run_session` (the CLI opens one per command), a command that fails leaves no
files behind: folders it created are removed, a folder it was replacing is put back,
and a resumed folder keeps what it held. Warnings raised during a session are shown
once each, as one line, and recorded under ``"warnings"`` in each run's
``metrics.json``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import fcntl
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import RunFolderError

__all__ = [
    "start_run",
    "new_run_dir",
    "claim_output_file",
    "check_output_file",
    "check_out",
    "run_session",
    "RunSession",
    "write_json",
    "read_json",
    "to_jsonable",
    "markdown_table",
    "fmt_value",
    "run_url",
    "remote_run",
]

CONFIG = "config.json"
METRICS = "metrics.json"


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


def package_versions(*, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the distributions a result depends on (absent ones left out).

    Args:
        extra: further distribution names beyond facebank, torch, open_clip_torch, timm,
            zarr, faiss-cpu and scikit-learn.
    """
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
        *extra,
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------- the session
@dataclasses.dataclass
class RunSession:
    """What one command did to run folders, so a failure can undo it (see module doc).

    Attributes:
        overwrite: the command's ``--overwrite``: replace an existing run folder.
        echo: prints one line (warnings); ``None`` prints nothing.
        verbose: warnings also name the file and line that raised them.
        runs: every run folder started, in order.
        warnings: distinct warning lines, in the order first raised.
    """

    overwrite: bool = False
    echo: Callable[[str], None] | None = None
    verbose: bool = False
    runs: list[Path] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    _created: list[Path] = dataclasses.field(default_factory=list)
    _emptied: list[Path] = dataclasses.field(default_factory=list)
    _resumable: list[Path] = dataclasses.field(default_factory=list)
    _aside: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    _locks: list[int] = dataclasses.field(default_factory=list)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())  # one line, whatever the message holds
        if text in self.warnings:
            return
        self.warnings.append(text)
        if self.echo is not None:
            where = f" ({category.__name__} at {filename}:{lineno})" if self.verbose else ""
            self.echo(f"warning: {text}{where}")

    def _finish(self, ok: bool) -> None:
        if ok:
            for _, old in self._aside:
                shutil.rmtree(old, ignore_errors=True)
            for run in self.runs:
                if self.warnings and run.is_dir():
                    _record_warnings(run, self.warnings)
        else:
            for path in reversed(self._created + self._emptied):
                if path in self._resumable and _holds_work(path):
                    continue  # e.g. an experiment's banks: the next run resumes from them
                if path in self._emptied:
                    _clear(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)
            for path, old in reversed(self._aside):
                shutil.rmtree(path, ignore_errors=True)
                old.rename(path)
        for fd in self._locks:
            os.close(fd)  # closing drops the flock
        self._locks.clear()


_SESSION: contextvars.ContextVar[RunSession | None] = contextvars.ContextVar(
    "facebank_run_session", default=None
)


@contextlib.contextmanager
def run_session(
    *,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> Iterator[RunSession]:
    """One command's lifetime: the overwrite choice, clean-up on failure, warnings.

    Args:
        overwrite: let :func:`start_run` replace existing run folders.
        echo: called with one line per distinct warning (e.g. ``typer.echo`` to stderr).
        verbose: add the warning's category, file and line.

    Yields:
        The ``RunSession`` (its ``warnings`` and ``runs`` are filled as the command goes).
        On an exception the folders this session created are removed (a resumed folder
        is kept), a replaced folder is restored, and the exception propagates.
    """
    session = RunSession(overwrite=overwrite, echo=echo, verbose=verbose)
    token = _SESSION.set(session)
    ok = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)  # we deduplicate by text ourselves
            warnings.showwarning = session._show
            yield session
        ok = True
    finally:
        _SESSION.reset(token)
        session._finish(ok)


def _holds_work(path: Path) -> bool:
    """Any file besides ``config.json`` (empty sub-folders are not work)."""
    if not path.is_dir():
        return False
    return any(p.is_file() and p != path / CONFIG for p in path.rglob("*"))


def _clear(path: Path) -> None:
    for p in path.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _record_warnings(run: Path, lines: Sequence[str]) -> None:
    path = run / METRICS
    try:
        doc = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        return  # a metrics file we cannot read is not ours to rewrite
    if not isinstance(doc, dict):
        return
    doc["warnings"] = list(dict.fromkeys([*doc.get("warnings", []), *lines]))
    write_json(path, doc)


# ---------------------------------------------------------------- the rule
def new_run_dir(command: str, *, root: str | Path = "runs") -> Path:
    """``root/<command>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... when that name is taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{command.replace(' ', '-')}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderError(
            f"run folder {str(path)!r} is being written by another facebank command right now; "
            "wait for it to finish, or give another --out (leave --out away for a new "
            "timestamped folder)"
        ) from None
    return fd


def _command_of(path: Path) -> str | None:
    try:
        doc = read_json(path / CONFIG)
    except (OSError, ValueError):
        return None
    return doc.get("command") if isinstance(doc, dict) else None


def _unwritable(out: Path, exc: OSError) -> RunFolderError:
    return RunFolderError(
        f"cannot write the run folder {str(out)!r}: {exc.strerror or exc} "
        f"({exc.filename or out}); give an --out on a writable disk with free space "
        "(leave --out away for runs/ under the current folder)"
    )


def check_out(
    out: str | Path, *, command: str, overwrite: bool | None = None, resume: bool = False
) -> None:
    """Refuse ``out`` now, before any work, where :func:`start_run` would refuse it later.

    ``overwrite=None`` takes the session's ``--overwrite`` (False outside a session).

    Raises:
        RunFolderError: as :func:`start_run` would (nothing is created or changed).
    """
    out = Path(out)
    if overwrite is None:
        session = _SESSION.get()
        overwrite = session.overwrite if session is not None else False
    if not out.exists() or out.is_dir() and not any(out.iterdir()):
        return
    previous = _command_of(out) if out.is_dir() else None
    if previous is not None and (overwrite or resume and previous == command):
        return
    _claim(out, command=command, overwrite=False, resume=resume)  # raises


def _claim(out: Path, *, command: str, overwrite: bool, resume: bool) -> tuple[str, Path | None]:
    """Check ``out`` against the rule; returns (``"empty"`` | ``"resumed"`` | ``"replaced"``,
    the previous folder moved aside or None)."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(
            f"--out {str(out)!r} is a file, not a folder; give a folder path for the run "
            "(leave --out away for a new timestamped folder under runs/)"
        )
    if not any(out.iterdir()):
        return "empty", None
    previous = _command_of(out)
    if resume and previous == command and not overwrite:
        return "resumed", None
    if previous is None:
        raise RunFolderError(
            f"--out {str(out)!r} is not empty and is not a facebank run folder (no {CONFIG}); "
            "facebank never replaces it, even with --overwrite: give a new or empty folder, "
            "or leave --out away for a new timestamped folder under runs/"
        )
    if not overwrite:
        raise RunFolderError(
            f"--out {str(out)!r} already holds a `{previous}` run; nothing was written. Give a "
            "new --out, leave --out away for a new timestamped folder under runs/, or add "
            "--overwrite to replace that run"
        )
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    out.rename(aside)
    out.mkdir()
    return "replaced", aside


def start_run(
    out: str | Path,
    *,
    command: str,
    config: Mapping[str, Any],
    overwrite: bool | None = None,
    resume: bool = False,
) -> Path:
    """Claim a run folder under the one output rule (module doc) and write its ``config.json``.

    Args:
        out: the run folder; created with parents.
        command: the CLI command or function that made the run, e.g. ``"evaluate"``.
        config: every option that decides the result (seeds, thresholds' source split...).
        overwrite: replace an existing run folder; ``None`` takes the session's choice
            (``--overwrite``), ``False`` outside a session.
        resume: the command continues a run of the same ``command`` in ``out`` (its
            files are kept; ``config.json`` is rewritten); ``overwrite`` starts afresh.

    Returns:
        The run folder as a ``Path``.

    Raises:
        RunFolderError: ``out`` holds something else (see the rule), is a file, or is
            being written by another command.
    """
    out = Path(out)
    session = _SESSION.get()
    if overwrite is None:
        overwrite = session.overwrite if session is not None else False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            out.mkdir()
            created = True
        except FileExistsError:
            created = False
    except OSError as exc:
        raise _unwritable(out, exc) from None
    fd = _lock(out) if out.is_dir() else None
    try:
        state, aside = _claim(out, command=command, overwrite=overwrite, resume=resume)
        if aside is not None:
            os.close(fd)
            fd = _lock(out)  # the new, empty folder
        write_json(
            out / CONFIG,
            {
                "command": command,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": package_versions(),
                **dict(config),
            },
        )
    except BaseException as exc:
        if fd is not None:
            os.close(fd)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _unwritable(out, exc) from None
        raise
    if session is None:
        os.close(fd)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return out
    session._locks.append(fd)
    session.runs.append(out)
    if resume:
        session._resumable.append(out)
    if state == "replaced":
        session._aside.append((out, aside))
    elif created:
        session._created.append(out)
    elif state == "empty":
        session._emptied.append(out)
    return out


def claim_output_file(path: str | Path, *, overwrite: bool | None = None) -> Path:
    """The same rule for a single output file (a report page): an existing file is
    refused unless ``overwrite`` (``None``: the session's ``--overwrite``, else False).

    Raises:
        RunFolderError: ``path`` exists (or is a folder) and may not be replaced.
    """
    path = Path(path)
    check_output_file(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(path: str | Path, *, overwrite: bool | None = None) -> None:
    """:func:`claim_output_file`'s refusal, creating nothing."""
    path = Path(path)
    session = _SESSION.get()
    if overwrite is None:
        overwrite = session.overwrite if session is not None else False
    if path.is_dir():
        raise RunFolderError(f"--out {str(path)!r} is a folder; give a file name, e.g. report.html")
    if path.exists() and not overwrite:
        raise RunFolderError(
            f"--out {str(path)!r} already exists; nothing was written. Give another --out, or "
            "add --overwrite to replace it"
        )


# ---------------------------------------------------------------- numbers
def fmt_value(v: Any, *, digits: int = 3, pct: bool = False, na: str = "n/a") -> str:
    """The one number formatter: ``None``/NaN -> ``na``; floats with ``digits`` decimals
    (``pct=True``: as a percentage with ``digits`` decimals, ``0.1234`` -> ``12.3%`` at 1);
    everything else ``str``.
    """
    if v is None:
        return na
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return na
        return f"{v:.{digits}%}" if pct else f"{v:.{digits}f}"
    return str(v)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 3
) -> str:
    """Render rows (dicts) as a GitHub Markdown table; floats get ``digits`` decimals,
    missing values and NaN read ``n/a``."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = (
            fmt_value(r.get(c), digits=digits, na="-" if r.get(c) is None else "n/a")
            for c in columns
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- run folders on stores
_COLLAPSED_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/([^/].*)$")


def run_url(out: Any) -> str | None:
    """The fsspec URL an ``--out`` names, or ``None`` for a local folder.

    typer/click turn ``s3://bucket/run`` given to a ``Path`` option into
    ``s3:/bucket/run``; that form is read back as the URL when its protocol is one
    fsspec knows (a local folder literally named ``s3:`` is not supported).
    """
    from facebank.core.stores import is_url

    if out is None:
        return None
    text = os.fspath(out)
    if is_url(text):
        return text
    m = _COLLAPSED_URL.match(text)
    if m and isinstance(out, Path):
        import fsspec

        if m.group(1).lower() in fsspec.available_protocols() and m.group(1) not in (
            "file",
            "local",
        ):
            return f"{m.group(1)}://{m.group(2)}"
    return None


@contextlib.contextmanager
def remote_run(
    url: str,
    *,
    command: str,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """A run folder at an fsspec URL: written in a local staging folder, uploaded on success.

    Before any work the store must answer, and ``url`` must hold nothing, or (with
    ``overwrite``) a facebank run folder. The command writes into the yielded local
    folder; when it succeeds every file is uploaded (one object each) with
    ``config.json`` last, so a folder that holds ``config.json`` is complete; the old
    run's objects are removed first when overwriting. A failed command uploads nothing.
    Resuming a run on a store is not supported (the staging folder starts empty).

    Raises:
        RunFolderError: unreachable store, or ``url`` holds something that may not be
            replaced.
    """
    import tempfile

    from facebank.core.errors import BankError
    from facebank.core.stores import Location

    try:
        loc = Location(url, storage_options=storage_options)
        loc.check_reachable()
    except BankError as exc:
        raise RunFolderError(f"run folder: {exc}") from None
    held = loc.list()
    if held:
        try:
            previous = loc.read_json(CONFIG).get("command")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous is None:
            raise RunFolderError(
                f"--out {loc.url!r} is not empty and is not a facebank run folder (no {CONFIG}); "
                "facebank never replaces it, even with --overwrite: give a new or empty prefix"
            )
        if not overwrite:
            raise RunFolderError(
                f"--out {loc.url!r} already holds a `{previous}` run; nothing was written. Give "
                "a new --out, or add --overwrite to replace that run"
            )
    with tempfile.TemporaryDirectory(prefix="facebank-run-") as tmp:
        staging = Path(tmp) / loc.name
        yield staging
        files = sorted(
            (p for p in staging.rglob("*") if p.is_file()),
            key=lambda p: (p.relative_to(staging).as_posix() == CONFIG, str(p)),
        )
        if held:
            loc.remove()
        for p in files:
            loc.write_bytes(p.relative_to(staging).as_posix(), p.read_bytes())
