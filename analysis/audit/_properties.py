"""Each property alone, distributions per class and engine, groups straddling splits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from facebank.embed.inputs.metadata import METADATA_SCHEMA
from facebank.heads.propensity import PROPERTIES, MetadataCodes

from ..metrics import binary_metrics
from ._rule import N_BOOT, both

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def alone_scores(codes: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each row's score from one property: the AI share of its value (bin) among train rows."""
    k = int(codes.max()) + 1 if codes.size else 1
    pos = np.bincount(codes[train], weights=(y[train] == 1).astype(float), minlength=k)
    tot = np.bincount(codes[train], minlength=k).astype(float)
    base = pos.sum() / max(tot.sum(), 1.0)
    share = np.where(tot > 0, pos / np.maximum(tot, 1.0), base)
    return share[codes]


def properties_alone(enc: MetadataCodes, y, train, test, seed) -> list[dict[str, Any]]:
    out = []
    for key in PROPERTIES:
        kind = METADATA_SCHEMA[key]
        distinct = enc.distinct[key]
        row: dict[str, Any] = {
            "name": key,
            "kind": {"str": "category", "bool": "flag"}.get(kind, "number"),
            "values": distinct,
            "constant": distinct <= 1,
            "auc_alone": None,
            "auc_ci": None,
            "carrier": False,
            "missing": enc.n_missing.get(key, 0),
        }
        if not row["constant"] and both(y[test]):
            s = alone_scores(enc.codes[key], y, train)
            bm = binary_metrics(y[test], s[test], n_boot=N_BOOT, seed=seed)
            row["auc_alone"] = float(bm.auc)
            row["auc_ci"] = list(bm.ci.get("auc", (None, None)))
        out.append(row)
    return out


def _quantiles(x: np.ndarray) -> list[int]:
    x = x[np.isfinite(x) & (x >= 0)]
    return [int(round(v)) for v in np.quantile(x, [0.05, 0.5, 0.95])] if x.size else []


def _summary(
    meta: Mapping[str, np.ndarray], rows: np.ndarray, face_found: np.ndarray | None = None
) -> dict[str, Any]:
    fmt = np.asarray(meta["file_format"]).astype(str)[rows]
    names, counts = np.unique(np.where(fmt == "", "unknown", fmt), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    short = np.minimum(
        np.asarray(meta["width"], dtype=np.float64)[rows],
        np.asarray(meta["height"], dtype=np.float64)[rows],
    )
    q = np.asarray(meta["jpeg_quality"], dtype=np.float64)[rows]
    mode = np.asarray(meta["pil_mode"]).astype(str)[rows]
    bpp = np.asarray(meta["bytes_per_pixel"], dtype=np.float64)[rows]
    bpp = bpp[np.isfinite(bpp)]
    return {
        "n": int(rows.size),
        "formats": {str(names[i]): float(counts[i] / rows.size) for i in order},
        "short_side_q": _quantiles(short),
        "jpeg_quality_q": _quantiles(q),
        "grayscale": float(np.isin(mode, list(_GRAYSCALE_MODES)).mean()) if rows.size else None,
        "bytes_per_pixel_median": float(np.median(bpp)) if bpp.size else None,
        "face_found": _face_share(face_found, rows),
    }


def _face_share(face_found: np.ndarray | None, rows: np.ndarray) -> float | None:
    """Share of ``rows`` of a face view where a face was found (None: not a face view)."""
    if face_found is None:
        return None
    f = face_found[rows]
    f = f[f >= 0]
    return float((f == 1).mean()) if f.size else None


def distributions(meta, labels, engines, face_found=None) -> dict[str, dict[str, dict[str, Any]]]:
    by_class = {
        name: _summary(meta, np.flatnonzero(labels == c), face_found)
        for c, name in ((0, "real"), (1, "AI-generated"))
        if (labels == c).any()
    }
    by_engine = {
        str(e): _summary(meta, np.flatnonzero(engines == e), face_found)
        for e in np.unique(engines[labels >= 0]).tolist()
    }
    return {"class": by_class, "engine": by_engine}


def straddling_groups(groups: np.ndarray, splits: np.ndarray) -> list[dict[str, Any]]:
    """Groups (identity, source...) whose rows fall in more than one split.

    Args:
        groups: (n,) group per row ("" = no group, ignored).
        splits: (n,) split per row ("" = unused, ignored).

    Returns:
        One dict per straddling group: ``group``, ``rows``, and rows per split.
    """
    g = np.asarray(groups, dtype=str)
    s = np.asarray(splits, dtype=str)
    keep = (g != "") & (s != "")
    out: list[dict[str, Any]] = []
    if not keep.any():
        return out
    pairs, counts = np.unique(np.stack([g[keep], s[keep]]), axis=1, return_counts=True)
    per: dict[str, dict[str, int]] = {}
    for (grp, sp), c in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        per.setdefault(grp, {})[sp] = c
    for grp, d in sorted(per.items()):
        if len(d) > 1:
            out.append(
                {
                    "group": grp,
                    "rows": sum(d.values()),
                    **{k: d.get(k, 0) for k in ("train", "val", "test")},
                }
            )
    return out
