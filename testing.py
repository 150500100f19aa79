"""Test support: builders for tests, benchmarks and examples; not used by the library.

``facebank.testing`` holds what a test needs and a user never does, so that the
library packages carry no test-only code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facebank.embed.bank.bank import FeatureBank, write_bank
from facebank.embed.bank.writing import arrays_backbone

__all__ = ["synthetic_backbone", "synthetic_arrays", "write_synthetic_bank"]


def synthetic_backbone(dim: int) -> dict[str, Any]:
    """The backbone spec that ``write_bank(backbone=None)`` records for arrays of width ``dim``.

    Use it to make a bank with :meth:`FeatureBank.create` that concatenates with banks
    written by :func:`~facebank.embed.write_bank` from arrays.
    """
    return arrays_backbone(dim)


def synthetic_arrays(
    engines: Mapping[str, int],
    *,
    dim: int = 32,
    seed: int = 0,
    signal: float = 2.0,
    spread: float = 2.0,
    offset: float = 0.0,
    sha_prefix: str | None = None,
) -> dict[str, Any]:
    """Features (n, dim) float32, labels, engines, sha256 for ``{engine: n_rows}``.

    Reals (engine ``"real"``, label 0) sit around the origin; every AI engine sits around
    ``signal * u + spread * v_e`` with a direction ``u`` shared by all AI engines (what a
    detector can learn and carry to unseen engines) and an engine-specific direction
    ``v_e`` (what it cannot). ``offset`` moves every row along one common direction, like
    real backbone features that are not centred on the origin (so cosine similarity is
    meaningful). ``sha_prefix`` names rows ``f"{sha_prefix}{i}"`` instead of the seeded
    default, so that banks of one seed can hold different images.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    name_list: list[str] = []
    feats = []
    for e, n in engines.items():
        if e == "real":
            centre = np.zeros(dim)
        else:
            v = rng.normal(size=dim)
            v -= v.dot(u) * u
            v /= np.linalg.norm(v)
            centre = signal * u + spread * v
        feats.append(centre + rng.normal(size=(n, dim)))
        name_list += [e] * n
    w = rng.normal(size=dim)
    X = (np.concatenate(feats) + offset * w / np.linalg.norm(w)).astype(np.float32)
    names = np.array(name_list)
    labels = (names != "real").astype(np.int8)
    if sha_prefix is None:
        sha = np.array([f"{seed:04d}{i:012x}" for i in range(len(names))])
    else:
        sha = np.array([f"{sha_prefix}{i}" for i in range(len(names))])
    return {"X": X, "labels": labels, "engines": names, "sha256": sha, "u": u}


def write_synthetic_bank(
    path: str | Path,
    data: Mapping[str, Any],
    *,
    view: str = "original",
    rows: Any = None,
    signal_scale: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    backbone: dict | None = None,
) -> FeatureBank:
    """Write ``data`` (from ``synthetic_arrays``) as a bank, optionally degraded as a view.

    Views of the same images keep their sha256; ``signal_scale`` weakens the shared AI
    direction and ``noise`` adds Gaussian noise, like a degradation.
    """
    sel = slice(None) if rows is None else rows
    X = np.array(data["X"][sel], dtype=np.float32)
    y = np.asarray(data["labels"])[sel]
    if signal_scale != 1.0 or noise:
        rng = np.random.default_rng(seed + 1)
        u = data["u"].astype(np.float32)
        X = X - (1 - signal_scale) * np.outer(X @ u, u).astype(np.float32)
        X = X + noise * rng.normal(size=X.shape).astype(np.float32)
    engines = np.asarray(data["engines"])[sel]
    sha = np.asarray(data["sha256"])[sel]
    paths = [f"{e}/{h}.png" for e, h in zip(engines, sha, strict=True)]
    return write_bank(
        path, X, labels=y, engines=engines, sha256=sha, paths=paths, view=view, backbone=backbone
    )
