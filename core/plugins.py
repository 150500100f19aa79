"""Plugins: heads and backbones from other installed packages, found by entry points.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."facebank.heads"]
    centroid = "my_package.heads:CentroidHead"

    [project.entry-points."facebank.backbones"]
    my-cnn = "my_package.backbones:MY_CNN"

Each group is read once, on the first look-up of a name in its registry (listing,
creating, loading a saved head), never at import. A plugin that cannot be imported or
registered gives one :class:`~facebank.core.errors.PluginWarning` naming the plugin and
its package; the built-ins and the other plugins keep working, and an unknown-name error
for one of its names says why it is missing.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable
from typing import Any

from facebank.core.errors import PluginWarning

__all__ = ["HEADS_GROUP", "BACKBONES_GROUP", "load_plugins", "plugin_failures"]

HEADS_GROUP = "facebank.heads"
BACKBONES_GROUP = "facebank.backbones"

# group -> {entry point name: why it failed}; a group present here has been read
_FAILED: dict[str, dict[str, str]] = {}


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or getattr(dist, "metadata", {}).get("Name", None)
    return f"{ep.name!r} = {ep.value!r}" + (f" from package {name!r}" if name else "")


def load_plugins(group: str, register: Callable[[str, Any, str], None]) -> None:
    """Load every entry point of ``group`` once and hand each object to ``register``.

    Args:
        group: ``"facebank.heads"`` or ``"facebank.backbones"``.
        register: ``register(entry_point_name, loaded_object, origin)``; it raises
            ``FacebankError`` (or ``TypeError``) for an object it cannot register.

    Warns:
        PluginWarning: one per plugin that fails to import or to register.
    """
    if group in _FAILED:
        return
    failed = _FAILED[group] = {}  # set first: a plugin that looks names up does not recurse
    for ep in importlib.metadata.entry_points(group=group):
        origin = _origin(ep)
        try:
            register(ep.name, ep.load(), origin)
        except Exception as exc:  # a broken plugin must not break the built-ins
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            failed[ep.name] = f"plugin {origin} failed to load ({reason})"
            warnings.warn(
                f"facebank plugin {origin} in group {group!r} failed to load and is skipped "
                f"({reason}); fix or uninstall that package",
                PluginWarning,
                stacklevel=2,
            )


def plugin_failures(group: str) -> dict[str, str]:
    """``{entry point name: reason}`` of the plugins of ``group`` that failed to load."""
    return dict(_FAILED.get(group, {}))


def reset_plugins(group: str | None = None) -> None:
    """Forget which groups were read, so the next look-up reads entry points again (tests)."""
    if group is None:
        _FAILED.clear()
    else:
        _FAILED.pop(group, None)
