"""Type aliases shared by the public boundaries of every layer (embed, heads, analysis).

They document what a parameter accepts; nothing here is checked at run time (the
functions validate their input and raise ``FacebankError`` with the valid values).
The bank's own aliases (``BankLike``, ``BanksLike``) live with the bank
(:mod:`facebank.embed.bank.types`).
"""

from __future__ import annotations

import os
from typing import Literal, TypeAlias, Union

__all__ = ["PathLike", "Device", "Metric"]

#: A file or folder path as users give it.
PathLike: TypeAlias = Union[str, "os.PathLike[str]"]

#: Where torch runs: ``"auto"`` picks CUDA when one is visible, else the CPU; an indexed
#: GPU (``"cuda:1"``) is accepted wherever a device is, hence the ``str`` fallback.
Device: TypeAlias = Literal["auto", "cpu", "cuda", "mps"] | str

#: How feature vectors are compared: cosine similarity (on L2-normalised rows) or
#: squared Euclidean distance.
Metric: TypeAlias = Literal["cosine", "l2"]
