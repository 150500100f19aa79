"""The head registry: the only way in is ``create_head(name, **params)`` / ``list_heads()``."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from facebank.core.errors import DataError, UnknownNameError

from .base import BaseHead

__all__ = ["HeadInfo", "create_head", "list_heads", "head_info", "head_params"]


@dataclass(frozen=True)
class HeadInfo:
    """One registry entry: the name a user types, its class path and a one-line description."""

    name: str
    module: str
    cls: str
    description: str
    source: str

    def load(self) -> type[BaseHead]:
        return getattr(importlib.import_module(self.module), self.cls)


_REGISTRY: dict[str, HeadInfo] = {
    h.name: h
    for h in (
        HeadInfo(
            "linear",
            "facebank.heads.linear",
            "LinearHead",
            "L2-regularised logistic regression, full-batch L-BFGS in torch",
            "baseline",
        ),
        HeadInfo(
            "mlp",
            "facebank.heads.mlp",
            "MLPHead",
            "3-layer MLP with Gaussian feature augmentation, CVaR(VS)+AUC loss, optional SAM",
            "arXiv 2505.02182",
        ),
        HeadInfo(
            "prototype",
            "facebank.heads.prototype",
            "PrototypeHead",
            "learned isotropic Gaussian prototypes per class; log-likelihood classifier "
            "+ OOD score",
            "TrueFake arXiv 2504.20658",
        ),
        HeadInfo(
            "wide-mlp",
            "facebank.heads.wide_mlp",
            "WideMLPHead",
            "2x2048 FC + ReLU, dropout 0.8, sigmoid; AdaGrad lr 1e-4, batch 32",
            "arXiv 2311.08577",
        ),
        HeadInfo(
            "knn",
            "facebank.heads.knn",
            "KNNHead",
            "FAISS k-nearest-neighbour vote (cosine on L2-normalised features)",
            "baseline",
        ),
        HeadInfo(
            "fusion",
            "facebank.heads.fusion",
            "FusionHead",
            "one head per backbone of joined banks; mean/max logit or a stacker fit on val rows",
            "ClipBased, CO-SPY",
        ),
    )
}


def list_heads(pattern: str | None = None) -> list[str]:
    """Registered head names, optionally filtered by a shell-style ``pattern`` (``"*mlp"``)."""
    names = list(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def head_info(name: str) -> HeadInfo:
    """The registry entry of ``name``; ``UnknownNameError`` listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown head {name!r}; valid heads: {', '.join(_REGISTRY)} (see `facebank heads`)"
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
