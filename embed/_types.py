"""Type aliases shared by the public boundaries of every layer (embed, heads, analysis).

They document what a parameter accepts; nothing here is checked at run time (the
functions validate their input and raise ``FacebankError`` with the valid values).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias, Union

if TYPE_CHECKING:
    from .bank import FeatureBank

__all__ = ["PathLike", "BankLike", "BanksLike", "Device", "Metric"]

#: A file or folder path as users give it.
PathLike: TypeAlias = Union[str, "os.PathLike[str]"]

#: An open bank or the path of one (``BANK.zarr``, local or an fsspec URL).
BankLike: TypeAlias = Union["FeatureBank", str, "os.PathLike[str]"]

#: Where torch runs: ``"auto"`` picks CUDA when one is visible, else the CPU; an indexed
#: GPU (``"cuda:1"``) is accepted wherever a device is, hence the ``str`` fallback.
Device: TypeAlias = Literal["auto", "cpu", "cuda", "mps"] | str

#: How feature vectors are compared: cosine similarity (on L2-normalised rows) or
#: squared Euclidean distance.
Metric: TypeAlias = Literal["cosine", "l2"]

#: One bank or several, each open or a path: what the analyses take as ``banks``.
BanksLike: TypeAlias = BankLike | Sequence[BankLike]
