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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save_file

from facebank.core.errors import FacebankError, HeadError, UnknownNameError
from facebank.core.runs import to_jsonable
from facebank.core.stores import redact
from facebank.core.types import PathLike
from facebank.embed.backbones.compat import require_same_backbone
from facebank.embed.inputs.images import sha256_file

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


def load_head(path: PathLike, *, storage_options: Mapping[str, Any] | None = None) -> BaseHead:
    """Load a head saved by :func:`save_head` (or a ``facebank train`` run folder).

    Args:
        path: the head directory or run folder; local, or an fsspec URL
            (``s3://bucket/runs/linear``), read with ``storage_options`` (never recorded).

    Raises:
        HeadError: missing directory/file, unreadable or modified ``head.json``, weights
            whose sha256 does not match, or arrays that do not fit the head; an
            unreachable store (one line, before anything is read).
    """
    fix = "re-train it with `facebank train` or point --head at a run folder that holds head.json"
    files = _HeadFiles(path, storage_options=storage_options, fix=fix)
    jpath = files.show(_JSON)
    try:
        raw = files.read(_JSON)
    except FileNotFoundError:
        raise HeadError(
            f"{jpath!r} is missing, so {files.shown!r} is not a saved head; {fix}"
        ) from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeadError(
            f"{jpath!r} is not valid JSON ({exc}); the head was damaged - {fix}"
        ) from None
    if not isinstance(doc, dict) or doc.get("facebank_head") != HEAD_FORMAT:
        raise HeadError(f"{jpath!r} is not a facebank head (format {HEAD_FORMAT}); {fix}")
    stored = doc.pop("json_sha256", None)
    if stored != _canonical(doc):
        raise HeadError(
            f"{jpath!r} was modified after it was saved (json_sha256 does not match); "
            f"restore the original or {fix}"
        )
    wname = str(doc.get("weights_file", _WEIGHTS))
    wpath = files.show(wname)
    try:
        wbytes = files.read(wname)
    except FileNotFoundError:
        raise HeadError(f"{wpath!r} is missing from the head directory; {fix}") from None
    if hashlib.sha256(wbytes).hexdigest() != doc.get("weights_sha256"):
        raise HeadError(
            f"{wpath!r} does not match the sha256 recorded in head.json (tampered or "
            f"truncated); restore the original or {fix}"
        )
    try:
        tensors = load_safetensors(wbytes)
        head = create_head(doc["name"], **_params_from_json(doc["params"]))
        head.n_features_in_ = int(doc["n_features_in"])
        head.classes_ = np.array([0, 1])
        head.n_train_ = doc.get("n_train")  # type: ignore[assignment]  # None in old heads
        head._set_state(tensors, doc.get("state") or {})
    except UnknownNameError as exc:
        raise HeadError(f"{jpath!r} names a head this facebank does not have: {exc}") from None
    except (SafetensorError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, HeadError):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadError(f"head in {files.shown!r} cannot be rebuilt ({msg}); {fix}") from None
    head.threshold_ = float(doc["threshold"])
    head.calibration_ = doc.get("calibration")
    head.score_calibration_ = doc.get("score_calibration")
    head.backbone_ = doc.get("backbone")
    head.bank_digest_ = doc.get("bank_digest")
    head.metrics_ = doc.get("metrics") or {}
    head.path_ = files.shown
    return head


class _HeadFiles:
    """The files of a head directory, local or at an fsspec URL (read whole: a few MB)."""

    def __init__(self, path: PathLike, *, storage_options: Mapping[str, Any] | None, fix: str):
        from facebank.core.stores import Location, is_url

        self.url = is_url(path)
        if self.url:
            try:
                self.loc = Location(os.fspath(path), storage_options=storage_options)
                self.loc.check_reachable()
            except FacebankError as exc:  # the store's own one-line reason
                raise HeadError(f"head {redact(os.fspath(path))!r}: {exc}") from None
            self.shown = self.loc.url
            if not self.loc.exists():
                raise HeadError(f"head directory {self.shown!r} does not exist; {fix}")
        else:
            self.local = Path(path)
            self.shown = str(self.local)
            if not self.local.is_dir():
                raise HeadError(f"head directory {self.shown!r} does not exist; {fix}")

    def show(self, name: str) -> str:
        return f"{self.shown}/{name}" if self.url else str(self.local / name)

    def read(self, name: str) -> bytes:
        """Raises FileNotFoundError when the file is absent."""
        if self.url:
            return self.loc.read_bytes(name)
        p = self.local / name
        if not p.is_file():
            raise FileNotFoundError(str(p))
        return p.read_bytes()


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
