"""What the analyses accept where they take banks: an open bank or the path of one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias, Union

if TYPE_CHECKING:
    from facebank.embed.bank.bank import FeatureBank

__all__ = ["BankLike", "BanksLike"]

#: An open bank or the path of one (``BANK.zarr``, local or an fsspec URL).
BankLike: TypeAlias = Union["FeatureBank", str, "os.PathLike[str]"]

#: One bank or several, each open or a path: what the analyses take as ``banks``.
BanksLike: TypeAlias = BankLike | Sequence[BankLike]
