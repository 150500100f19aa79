"""Saving and loading heads: ``head.json`` + ``weights.safetensors``, never pickle.

``head.json`` holds the name, the constructor params, the threshold and its
calibration, the training bank's backbone spec and digest, metrics, the learned
scalars, the sha256 of ``weights.safetensors``, and ``json_sha256`` (the digest of the
rest of ``head.json``, canonical JSON). Loading checks both digests before anything is
built, then recreates the head from the registry with the stored params and fills in
the arrays: loading never executes code from the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from facebank.embed._types import PathLike
from facebank.embed.compat import require_same_backbone
from facebank.embed.errors import HeadError, UnknownNameError
from facebank.embed.images import sha256_file
from facebank.embed.runs import to_jsonable

from .base import BaseHead
from .registry import create_head

__all__ = ["save_head", "load_head", "check_backbone", "HEAD_FORMAT"]

HEAD_FORMAT = 1
_JSON = "head.json"
_WEIGHTS = "weights.safetensors"


def _canonical(doc: dict) -> str:
    return hashlib.sha256(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _jsonable(obj: Any) -> Any:
    return to_jsonable(obj)


def save_head(
    head: BaseHead,
    path: PathLike,
    *,
    backbone: dict | None = None,
    bank_digest: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write a fitted head to directory ``path`` (created; existing head files are replaced).

    Returns:
        The directory as a ``Path``.
    """
    head._check_fitted()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, meta = head._get_state()
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, str(path / _WEIGHTS))
    # safetensors writes through a private temp file (mode 0600); give it the umask's mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path / _WEIGHTS, 0o666 & ~umask)
    backbone = backbone if backbone is not None else getattr(head, "backbone_", None)
    bank_digest = bank_digest if bank_digest is not None else getattr(head, "bank_digest_", None)
    doc = _jsonable(
        {
            "facebank_head": HEAD_FORMAT,
            "name": head.name,
            "params": head.get_params(deep=False),
            "n_features_in": head.n_features_in_,
            "n_train": getattr(head, "n_train_", None),
            "threshold": head.threshold_,
            "calibration": head.calibration_,
            "score_calibration": getattr(head, "score_calibration_", None),
            "backbone": backbone,
            "bank_digest": bank_digest,
            "metrics": metrics or {},
            "state": meta,
            "weights_file": _WEIGHTS,
            "weights_sha256": sha256_file(path / _WEIGHTS),
        }
    )
    doc["json_sha256"] = _canonical(doc)
    tmp = path / (_JSON + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path / _JSON)
    head.backbone_ = backbone
    head.bank_digest_ = bank_digest
    return path


def load_head(path: PathLike) -> BaseHead:
    """Load a head saved by :func:`save_head` (or a ``facebank train`` run folder).

    Raises:
        HeadError: missing directory/file, unreadable or modified ``head.json``, weights
            whose sha256 does not match, or arrays that do not fit the head.
    """
    path = Path(path)
    fix = "re-train it with `facebank train` or point --head at a run folder that holds head.json"
    if not path.is_dir():
        raise HeadError(f"head directory {str(path)!r} does not exist; {fix}")
    jpath = path / _JSON
    if not jpath.is_file():
        raise HeadError(f"{str(jpath)!r} is missing, so {str(path)!r} is not a saved head; {fix}")
    try:
        doc = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeadError(
            f"{str(jpath)!r} is not valid JSON ({exc}); the head was damaged - {fix}"
        ) from None
    if not isinstance(doc, dict) or doc.get("facebank_head") != HEAD_FORMAT:
        raise HeadError(f"{str(jpath)!r} is not a facebank head (format {HEAD_FORMAT}); {fix}")
    stored = doc.pop("json_sha256", None)
    if stored != _canonical(doc):
        raise HeadError(
            f"{str(jpath)!r} was modified after it was saved (json_sha256 does not match); "
            f"restore the original or {fix}"
        )
    wpath = path / str(doc.get("weights_file", _WEIGHTS))
    if not wpath.is_file():
        raise HeadError(f"{str(wpath)!r} is missing from the head directory; {fix}")
    if sha256_file(wpath) != doc.get("weights_sha256"):
        raise HeadError(
            f"{str(wpath)!r} does not match the sha256 recorded in head.json (tampered or "
            f"truncated); restore the original or {fix}"
        )
    try:
        tensors = load_file(str(wpath))
        head = create_head(doc["name"], **_params_from_json(doc["params"]))
        head.n_features_in_ = int(doc["n_features_in"])
        head.classes_ = np.array([0, 1])
        head.n_train_ = doc.get("n_train")  # type: ignore[assignment]  # None in old heads
        head._set_state(tensors, doc.get("state") or {})
    except UnknownNameError as exc:
        raise HeadError(f"{str(jpath)!r} names a head this facebank does not have: {exc}") from None
    except (SafetensorError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, HeadError):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadError(f"head in {str(path)!r} cannot be rebuilt ({msg}); {fix}") from None
    head.threshold_ = float(doc["threshold"])
    head.calibration_ = doc.get("calibration")
    head.score_calibration_ = doc.get("score_calibration")
    head.backbone_ = doc.get("backbone")
    head.bank_digest_ = doc.get("bank_digest")
    head.metrics_ = doc.get("metrics") or {}
    head.path_ = str(path)
    return head


def _params_from_json(params: dict) -> dict:
    # JSON turns tuples into lists; heads take tuples for sizes
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def check_backbone(head: BaseHead, spec: dict | None, *, what: str) -> None:
    """Refuse features of another backbone than the head's (``BackboneMismatchError`` naming both).

    A head or input without a recorded backbone is not checked (plain arrays).
    """
    mine = getattr(head, "backbone_", None)
    if mine is None or spec is None:
        return
    where = getattr(head, "path_", None) or f"the {head.name} head"
    require_same_backbone(mine, spec, a_name=f"head {where}", b_name=what)
