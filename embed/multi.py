"""Several backbones over one dataset: banks joined side by side by image content.

:func:`join_banks` matches the rows of banks embedded by *different* backbones (or layer
taps) from the same images by ``sha256`` of the file bytes, and serves their features
side by side as one bank-like object (:class:`JoinedBank`): a head trained on it is a
feature-level fusion. Rows present in some banks only are left out and reported (a
:class:`~facebank.embed.errors.UnmatchedRowsWarning` and ``JoinedBank.unmatched``); rows
whose label, engine or split disagree between banks are an error. Banks of one backbone
given together are concatenated first (several datasets of one backbone).

The joined identity is a :class:`~facebank.embed.spec.BackboneSpec` with library
``"joined"`` whose model names every member and whose ``weights_sha256`` digests the
member specs, so a head trained on joined banks refuses any other combination.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bank import FeatureBank
from .compat import backbone_id, same_backbone
from .errors import BankError, FacebankError, UnmatchedRowsWarning
from .spec import BackboneSpec, as_spec

__all__ = ["JoinedBank", "join_banks", "joined_spec"]


def joined_spec(specs: Sequence[Any]) -> BackboneSpec:
    """The identity of features made by ``specs`` side by side, in this order."""
    members = [as_spec(s) for s in specs]
    digest = hashlib.sha256(
        json.dumps([m.to_dict() for m in members], sort_keys=True).encode()
    ).hexdigest()
    return BackboneSpec(
        name="+".join(m.name for m in members),
        library="joined",
        model=" + ".join(backbone_id(m) for m in members),
        pretrained=None,
        weights_sha256=digest,
        dim=sum(m.dim for m in members),
        test_only=any(m.test_only for m in members),
    )


@dataclass
class JoinedBank:
    """Banks of different backbones over the same images, rows matched by sha256.

    Attributes:
        members: One bank per backbone, in the order their columns appear.
        rows: ``(n, len(members))`` int64: row ``i`` of the join is ``rows[i, k]`` of
            member ``k``.
        columns: ``(start, stop)`` of each member's features in a joined row.
        unmatched: Per member path, how many of its rows have no partner in every other.
    """

    members: list[Any]
    rows: np.ndarray
    columns: list[tuple[int, int]]
    unmatched: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def member_specs(self) -> list[dict[str, Any]]:
        return [dict(m.backbone) for m in self.members]

    @property
    def backbone(self) -> dict[str, Any]:
        return joined_spec(self.member_specs).to_dict()

    @property
    def dim(self) -> int:
        return self.columns[-1][1]

    @property
    def name(self) -> str:
        return "+".join(str(m.name) for m in self.members)

    @property
    def path(self) -> str:
        return " + ".join(str(m.path) for m in self.members)

    @property
    def view(self) -> str:
        return str(self.members[0].view)

    def _column(self, attr: str) -> np.ndarray:
        return np.asarray(getattr(self.members[0], attr))[self.rows[:, 0]]

    @property
    def labels(self) -> np.ndarray:
        return self._column("labels")

    @property
    def engines(self) -> np.ndarray:
        return self._column("engines")

    @property
    def paths(self) -> np.ndarray:
        return self._column("paths")

    @property
    def splits(self) -> np.ndarray:
        return self._column("splits")

    @property
    def sha256(self) -> np.ndarray:
        return self._column("sha256")

    @property
    def digest(self) -> str:
        """Digest of the member digests and the row matching."""
        h = hashlib.blake2b(digest_size=16)
        for m in self.members:
            h.update(str(m.digest).encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        return h.hexdigest()

    def load_features(
        self, rows: Sequence[int] | np.ndarray | None = None, *, dtype: Any = np.float32
    ) -> np.ndarray:
        """``(n, dim)`` features of joined rows (all when ``rows`` is None), side by side."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        parts = [
            m.load_features(self.rows[idx, k], dtype=dtype) for k, m in enumerate(self.members)
        ]
        return np.concatenate(parts, axis=1)

    def member_features(self, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of member ``k`` alone for joined rows (all when None)."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows)
        return self.members[k].load_features(self.rows[idx, k])


def _group_by_backbone(banks: Sequence[Any]) -> list[Any]:
    groups: list[list[Any]] = []
    for bank in banks:
        for group in groups:
            if same_backbone(group[0].backbone, bank.backbone):
                group.append(bank)
                break
        else:
            groups.append([bank])
    return [g[0] if len(g) == 1 else FeatureBank.concat(g) for g in groups]


def join_banks(banks: Sequence[Any], *, warn: bool = True) -> JoinedBank:
    """Join banks of different backbones over the same images (rows matched by sha256).

    Args:
        banks: Open banks, at least two backbones among them; banks sharing a backbone
            are concatenated first.
        warn: Warn (``UnmatchedRowsWarning``) when some rows have no partner.

    Returns:
        A :class:`JoinedBank` in the order of the first bank's rows.

    Raises:
        FacebankError: Fewer than two backbones, banks of different views, no row shared
            by every bank, or shared rows whose label, engine or split disagree.
    """
    members = _group_by_backbone(list(banks))
    if len(members) < 2:
        raise FacebankError(
            f"join_banks needs banks of at least two backbones; all {len(banks)} share "
            f"{backbone_id(members[0].backbone)} - concatenate them instead"
        )
    views = {str(m.view) for m in members}
    if len(views) > 1:
        raise BankError(
            f"banks to join have views {sorted(views)}; join banks of one view (embed each "
            "backbone with the same --view)"
        )
    keys = [np.asarray(m.sha256).astype(str) for m in members]
    position = [{h: i for i, h in enumerate(k) if h} for k in keys]
    common = [h for h in keys[0] if h and all(h in pos for pos in position[1:])]
    if not common:
        names = ", ".join(repr(str(m.path)) for m in members)
        raise FacebankError(
            f"banks {names} share no rows (no image sha256 is in every one); embed the same "
            "images with each backbone before joining them"
        )
    rows = np.array([[pos[h] for pos in position] for h in common], dtype=np.int64)
    for attr in ("labels", "engines", "splits"):
        first = np.asarray(getattr(members[0], attr))[rows[:, 0]]
        for k, m in enumerate(members[1:], start=1):
            other = np.asarray(getattr(m, attr))[rows[:, k]]
            bad = np.flatnonzero(first.astype(str) != other.astype(str))
            if bad.size:
                i = int(bad[0])
                raise BankError(
                    f"{bad.size} image(s) have another {attr[:-1]} in bank "
                    f"{str(members[0].path)!r} than in bank {str(m.path)!r} (e.g. sha256 "
                    f"{common[i][:12]}: {first[i]!r} vs {other[i]!r}); embed both from the "
                    "same SOURCE"
                )
    unmatched = {str(m.path): int(len(m) - len(common)) for m in members}
    if warn and any(unmatched.values()):
        detail = ", ".join(f"{p!r}: {n}" for p, n in unmatched.items() if n)
        warnings.warn(
            f"joining banks by image sha256 left out rows without a partner in every bank "
            f"({detail}); {len(common)} rows are joined",
            UnmatchedRowsWarning,
            stacklevel=2,
        )
    columns, start = [], 0
    for m in members:
        columns.append((start, start + int(m.dim)))
        start += int(m.dim)
    return JoinedBank(members=members, rows=rows, columns=columns, unmatched=unmatched)
