"""Layers point one way: cli/commands -> analysis -> ray_engine -> heads -> embed -> core.

Every module of the package is parsed (not imported) and every import statement in it
is checked, including imports inside functions and under ``TYPE_CHECKING``: a lower layer
that reaches up, even lazily, is a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "facebank"

# layer -> the top-level facebank subpackages/modules it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("embed", "heads", "ray_engine", "analysis", "cli", "commands", "testing"),
    "embed": ("heads", "ray_engine", "analysis", "cli", "commands", "testing"),
    "heads": ("ray_engine", "analysis", "cli", "commands", "testing"),
    "ray_engine": ("analysis", "cli", "commands", "testing"),
    "analysis": ("ray_engine", "cli", "commands", "testing"),
}
SKIP_DIRS = {"tests", "examples", "docs", "data", ".venv", "build", "dist", ".git"}


def _package_modules() -> list[Path]:
    """Every ``.py`` file of the package ``facebank`` (the repository root)."""
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP_DIRS or rel.parts[0].startswith(".") or "egg-info" in rel.parts[0]:
            continue
        files.append(path)
    return files


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from facebank import analysis` imports the subpackage analysis
            names = [f"{mod}.{a.name}" for a in node.names] if mod == PACKAGE else [mod]
            found.extend((node.lineno, m) for m in names)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def _violations(path: Path, root: Path = ROOT) -> list[str]:
    layer = _layer(_module_name(path, root))
    banned = FORBIDDEN.get(layer or "", ())
    rel = path.relative_to(root)
    return [
        f"{rel}:{line} ({layer}) imports {mod}"
        for line, mod in _imported(path, root)
        if _layer(mod) in banned
    ]


def test_the_scan_sees_every_layer():
    layers = {_layer(_module_name(p)) for p in _package_modules()}
    assert {"core", "embed", "heads", "ray_engine", "analysis", "cli"} <= layers


def test_relative_imports_resolve_to_absolute_names(tmp_path):
    # a fake module at heads/x.py: `from ..analysis import y` must be seen as facebank.analysis
    (tmp_path / "heads").mkdir()
    src = tmp_path / "heads" / "x.py"
    src.write_text(
        "def f():\n    from ..analysis import y\n    from . import base\n    import facebank.cli\n"
    )
    assert _imported(src, tmp_path) == [
        (2, "facebank.analysis"),
        (3, "facebank.heads"),
        (4, "facebank.cli"),
    ]
    assert len(_violations(src, tmp_path)) == 2


@pytest.mark.parametrize("path", _package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer(path):
    bad = _violations(path)
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def _class_bases(node: ast.ClassDef) -> list[str]:
    return [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]


def test_exception_and_warning_classes_live_in_the_errors_module():
    """One errors module: no other module defines a public exception or warning class."""
    suffixes = ("Error", "Exception", "Warning", "Interrupt", "Interrupted")
    stray = []
    for path in _package_modules():
        if path == ROOT / "core" / "errors.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")  # private control flow never reaches users
                and any(b.endswith(suffixes) for b in _class_bases(node))
            ):
                stray.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name}")
    assert not stray, "define these in core/errors.py and re-export them:\n" + "\n".join(stray)


def test_errors_and_warnings_derive_from_the_two_bases():
    import facebank.core.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    assert set(errors.__all__) == {c.__name__ for c in classes}
    for c in classes:
        if issubclass(c, Warning):
            assert issubclass(c, errors.FacebankWarning), c
        elif issubclass(c, Exception):
            assert issubclass(c, errors.FacebankError), c
        else:  # an interruption (KeyboardInterrupt) must not be swallowed as an error
            assert issubclass(c, KeyboardInterrupt), c


# ------------------------------------------------------------------ size and privacy
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 120


def _is_typer_command(node: ast.FunctionDef) -> bool:
    """A CLI command: its parameters are typer declarations (``Annotated[..., typer.X]``)."""
    return any("typer." in ast.unparse(a.annotation or ast.Constant(None)) for a in node.args.args)


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body (typer commands: without their option declarations)."""
    start = node.body[0].lineno if _is_typer_command(node) else node.lineno
    return node.end_lineno - start + 1  # type: ignore[operator]


@pytest.mark.parametrize("path", _package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_readable(path):
    text = path.read_text(encoding="utf-8")
    n_lines = text.count("\n")
    assert n_lines <= MAX_FILE_LINES, f"{n_lines} lines: split {path.name} by concept"
    long = [
        f"{node.name} ({_body_lines(node)} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and _body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _is_module(package: str, name: str) -> bool:
    rel = Path(*package.split(".")[1:], name)
    return (ROOT / rel).is_dir() or (ROOT / rel).with_suffix(".py").is_file()


@pytest.mark.parametrize("path", _package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path):
    """``from x import _name`` only for private *modules* (``from . import _plots``)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            mod = ".".join(
                base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
            )
        else:
            mod = node.module or ""
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not name.startswith("__") and not _is_module(mod, name):
                bad.append(f"line {node.lineno}: from {mod} import {name}")
    assert not bad, "make these public where they are defined:\n" + "\n".join(bad)
