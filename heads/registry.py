"""The head registry: ``create_head(name, **params)`` / ``list_heads()`` are the ways in.

The registry is open: :func:`register_head` adds a head class under the name a user
types, and the built-ins below register the same way. Heads in other installed packages
are found through the ``facebank.heads`` entry-point group (:mod:`facebank.core.plugins`),
read once on the first look-up, so a plugin head appears in ``facebank heads`` and works
in ``train``, ``evaluate``, ``score`` and ``load_head``. Registering imports nothing: a
``"module:Class"`` target is imported when the head is first built.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, overload

from facebank.core.errors import DataError, FacebankError, HeadError, UnknownNameError
from facebank.core.plugins import HEADS_GROUP, load_plugins, plugin_failures

from .base import BaseHead

__all__ = [
    "HeadInfo",
    "create_head",
    "list_heads",
    "head_info",
    "head_params",
    "register_head",
]

_H = TypeVar("_H", bound=type[BaseHead])
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class HeadInfo:
    """One registry entry.

    Attributes:
        name: The name a user types (``--head``, ``create_head``); also ``cls.name``.
        target: The head class, or ``"module:Class"`` imported on first use.
        description: One line for ``facebank heads``.
        source: Where the method comes from (a paper, ``"baseline"``).
        plugin: The entry point that registered it, or ``None`` for the built-ins and
            heads registered by calling :func:`register_head`.
    """

    name: str
    target: type[BaseHead] | str
    description: str
    source: str = ""
    plugin: str | None = None

    def load(self) -> type[BaseHead]:
        """The head class (imported now when ``target`` is a string).

        Raises:
            HeadError: the target cannot be imported, is not a ``BaseHead`` subclass, or
                its ``name`` attribute is not the registered name.
        """
        cls: Any = self.target
        if isinstance(cls, str):
            module, _, attr = cls.partition(":")
            try:
                cls = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise HeadError(f"head {self.name!r} ({cls!r}) cannot be imported: {exc}") from None
        _check_head_class(self.name, cls)
        return cls


def _check_head_class(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, BaseHead)):
        raise HeadError(f"head {name!r} must be a subclass of facebank.heads.BaseHead, got {cls!r}")
    if cls.name != name:
        raise HeadError(
            f"head class {cls.__name__} has name = {cls.name!r} but is registered as {name!r}; "
            f"set `name = {name!r}` on the class (saved heads are rebuilt from it)"
        )


_REGISTRY: dict[str, HeadInfo] = {}


@overload
def register_head(
    name: str,
    head: None = None,
    *,
    description: str | None = None,
    source: str = "",
    overwrite: bool = False,
) -> Callable[[_H], _H]: ...
@overload
def register_head(
    name: str,
    head: type[BaseHead] | str,
    *,
    description: str | None = None,
    source: str = "",
    overwrite: bool = False,
) -> HeadInfo: ...
def register_head(
    name: str,
    head: type[BaseHead] | str | None = None,
    *,
    description: str | None = None,
    source: str = "",
    overwrite: bool = False,
) -> HeadInfo | Callable[[_H], _H]:
    """Add a head to the registry (or, without ``head``, a class decorator that does).

    Args:
        name: The name users type: lower case, digits, ``-``, ``_``, ``.``. The class's
            ``name`` attribute must equal it (saved heads record it).
        head: A :class:`~facebank.heads.BaseHead` subclass, or ``"module:Class"``
            (imported when the head is first built).
        description: One line for ``facebank heads``; default the class docstring's first line.
        source: Where the method comes from (a paper, ``"baseline"``).
        overwrite: Replace an entry of the same name (refused otherwise).

    Returns:
        The :class:`HeadInfo` registered (the class itself when used as a decorator).

    Raises:
        HeadError: a malformed name, a name already registered, or a class that is not a
            ``BaseHead`` subclass named ``name``.
    """
    if head is None:

        def decorator(cls: _H) -> _H:
            register_head(name, cls, description=description, source=source, overwrite=overwrite)
            return cls

        return decorator
    return _add(_make_info(name, head, description, source), overwrite=overwrite)


def _make_info(
    name: str, head: Any, description: str | None, source: str, plugin: str | None = None
) -> HeadInfo:
    if not isinstance(name, str) or not _NAME.match(name):
        raise HeadError(
            f"head name {name!r} is not valid; use lower-case letters, digits, '-', '_', '.'"
        )
    if not isinstance(head, str):
        _check_head_class(name, head)
        doc = (inspect.getdoc(head) or "").strip().splitlines()
        description = description if description is not None else (doc[0] if doc else "")
    return HeadInfo(name, head, description or "", source, plugin)


def _add(info: HeadInfo, *, overwrite: bool = False) -> HeadInfo:
    if info.name in _REGISTRY and not overwrite:
        raise HeadError(
            f"head {info.name!r} is already registered ({_REGISTRY[info.name].target!r}); "
            "pick another name or pass overwrite=True"
        )
    _REGISTRY[info.name] = info
    return info


def _register_plugin(ep_name: str, obj: Any, origin: str) -> None:
    """Register what a ``facebank.heads`` entry point loaded (see docs/heads.md)."""
    if isinstance(obj, HeadInfo):
        _add(_make_info(obj.name, obj.target, obj.description, obj.source, origin))
    elif isinstance(obj, type):
        _add(_make_info(ep_name, obj, None, "", origin))
    elif isinstance(obj, ModuleType):
        pass  # the module called register_head when it was imported
    elif callable(obj):
        obj()  # a function that calls register_head
    else:
        raise FacebankError(
            f"entry point gave {obj!r}; expected a BaseHead subclass, a HeadInfo, a module "
            "or a function that calls facebank.heads.register_head"
        )


def _registry() -> dict[str, HeadInfo]:
    load_plugins(HEADS_GROUP, _register_plugin)
    return _REGISTRY


def list_heads(pattern: str | None = None) -> list[str]:
    """Registered head names (plugins included), optionally filtered by a shell ``pattern``."""
    names = list(_registry())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def head_info(name: str) -> HeadInfo:
    """The registry entry of ``name``; ``UnknownNameError`` listing the valid names."""
    registry = _registry()
    try:
        return registry[name]
    except (KeyError, TypeError):
        failed = plugin_failures(HEADS_GROUP)
        why = f"; {failed[name]}" if name in failed else ""
        raise UnknownNameError(
            f"unknown head {name!r}; valid heads: {', '.join(registry)} (see `facebank heads`; "
            f"a head from another package needs that package installed){why}"
        ) from None


def head_params(name: str) -> dict[str, Any]:
    """The keyword parameters of head ``name`` with their defaults."""
    cls = head_info(name).load()
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def create_head(name: str, **params: Any) -> BaseHead:
    """Create an unfitted head.

    Args:
        name: a registered name (``list_heads()``).
        **params: the head's keyword parameters (``head_params(name)``).

    Raises:
        UnknownNameError: unknown head name.
        DataError: a parameter the head does not have.
    """
    info = head_info(name)
    valid = head_params(name)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise DataError(
            f"head {name!r} has no parameter(s) {bad}; valid parameters: {', '.join(valid)}"
        )
    return info.load()(**params)


for _name, _target, _description, _source in (
    (
        "linear",
        "facebank.heads.linear:LinearHead",
        "L2-regularised logistic regression, full-batch L-BFGS in torch",
        "baseline",
    ),
    (
        "mlp",
        "facebank.heads.mlp:MLPHead",
        "3-layer MLP with Gaussian feature augmentation, CVaR(VS)+AUC loss, optional SAM",
        "arXiv 2505.02182",
    ),
    (
        "prototype",
        "facebank.heads.prototype:PrototypeHead",
        "learned isotropic Gaussian prototypes per class; log-likelihood classifier + OOD score",
        "TrueFake arXiv 2504.20658",
    ),
    (
        "wide-mlp",
        "facebank.heads.wide_mlp:WideMLPHead",
        "2x2048 FC + ReLU, dropout 0.8, sigmoid; AdaGrad lr 1e-4, batch 32",
        "arXiv 2311.08577",
    ),
    (
        "knn",
        "facebank.heads.knn:KNNHead",
        "FAISS k-nearest-neighbour vote (cosine on L2-normalised features)",
        "baseline",
    ),
    (
        "fusion",
        "facebank.heads.fusion:FusionHead",
        "one head per backbone of joined banks; mean/max logit or a stacker fit on val rows",
        "ClipBased, CO-SPY",
    ),
):
    register_head(_name, _target, description=_description, source=_source)
