"""Test support: builders for tests, benchmarks and examples; not used by the library.

``facebank.testing`` holds what a test needs and a user never does, so that the
library packages carry no test-only code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["synthetic_backbone"]


def synthetic_backbone(dim: int) -> dict[str, Any]:
    """The backbone spec that ``write_bank(backbone=None)`` records for arrays of width ``dim``.

    Use it to make a bank with :meth:`FeatureBank.create` that concatenates with banks
    written by :func:`~facebank.embed.write_bank` from arrays.
    """
    from facebank.embed.bank import _arrays_backbone  # the one definition

    return _arrays_backbone(dim)
