"""timm backbones: a global-pooled feature extractor, its preprocessing and feature size.

Models are created with ``num_classes=0`` (timm's pooled features, e.g. 1280-d for
EfficientNet-B1, 1024-d for DINOv2 ViT-L) and weights are loaded strictly from a resolved
file; a classifier in the file is dropped. Preprocessing comes from
``timm.data.resolve_model_data_config`` on the model (the pretrained config of the pinned
``arch.tag``); ``image_size`` replaces only the input size (timm's crop fraction and
interpolation stay).

Taps: ``final`` (the pooled features) for every model; ``blocks`` for transformers (the
class token after each block, or the token mean where there is none, e.g. SigLIP). timm's
ViTs here have no projection after the pooled token, so there is no ``penultimate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch

import facebank.embed.backbones._lite1 as _lite1
from facebank.embed.backbones._taps import BlockTap
from facebank.embed.backbones._weights import load_strict, read_state_dict

if TYPE_CHECKING:
    from facebank.embed.backbones.registry import BackboneInfo

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's own order


def timm_name(info: BackboneInfo) -> str:
    """``arch.tag`` when the entry names a timm pretrained tag, else the bare architecture."""
    return f"{info.model}.{info.pretrained}" if info.pretrained else info.model


def hub_files(info: BackboneInfo) -> tuple[str, list[str]]:
    """(repo_id, candidate filenames) timm would download for ``info``."""
    cfg = timm.models.get_pretrained_cfg(timm_name(info))
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(_HUB_FILES)
    return cfg.hf_hub_id, names


def _new_model(info: BackboneInfo, *, num_classes: int = 0) -> torch.nn.Module:
    return timm.create_model(
        timm_name(info), pretrained=False, num_classes=num_classes, **dict(info.model_kwargs)
    )


def _taps(model: torch.nn.Module) -> list[str]:
    blocks = getattr(model, "blocks", None)
    is_transformer = hasattr(model, "embed_dim") and hasattr(model, "patch_embed")
    return ["final", "blocks"] if is_transformer and blocks is not None else ["final"]


def _data_config(model: torch.nn.Module, image_size: int | None) -> dict[str, Any]:
    cfg = dict(timm.data.resolve_model_data_config(model))
    native = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if native is not None:  # a ViT's own size (it differs from the tag's only in tests)
        cfg["input_size"] = (3, int(native[0]), int(native[1]))
    if image_size is not None:
        cfg["input_size"] = (3, int(image_size), int(image_size))
    return cfg


def _preprocessing(cfg: dict[str, Any]) -> dict[str, Any]:
    crop = float(cfg.get("crop_pct", 1.0))
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        # timm's eval transform: resize the short side to size/crop_pct, centre-crop
        "resize_mode": "shortest",
        "crop_pct": crop,
    }


def describe(info: BackboneInfo, *, image_size: int | None = None) -> dict[str, Any]:
    """Feature size, taps and preprocessing without weights (model built on the meta device)."""
    with torch.device("meta"):
        model = _new_model(info)
    return {
        "dim": int(model.num_features),
        "layers": _taps(model),
        **_preprocessing(_data_config(model, image_size)),
    }


def create_model(
    info: BackboneInfo, *, weights_path: Path | None, num_classes: int = 0
) -> torch.nn.Module:
    """Create the timm model and load ``weights_path`` strictly (seeded init when None).

    Args:
        info: The registry entry.
        weights_path: A timm state dict file (EfficientNet-PyTorch layout accepted for
            the ``tf_efficientnet_liteN`` models), or ``None`` for a seeded random model.
        num_classes: 0 for pooled features; 1000 keeps the ImageNet classifier (tests).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(info.seed)
        model = _new_model(info, num_classes=num_classes)
    if weights_path is not None:
        sd = read_state_dict(weights_path)
        if info.model in _lite1.PACKAGES and _lite1.is_package_layout(sd):
            sd = _lite1.map_package_state_dict(sd, _lite1.stage_depths(model))
        classifier = model.pretrained_cfg.get("classifier") or "classifier"
        load_strict(
            model,
            sd,
            source=f"{str(weights_path)!r}",
            what=f"timm {info.model}",
            ignore_prefixes=(f"{classifier}.",) if num_classes == 0 else (),
        )
    return model.eval()


def build(
    info: BackboneInfo, *, weights_path: Path | None, image_size: int | None, layer: str = "final"
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Create the feature model at tap ``layer`` and its evaluation transform.

    Returns:
        ``(model, transform, meta)``: ``model(x)`` maps ``(n, 3, H, W)`` to ``(n, dim)``;
        ``meta`` holds ``dim``, ``layers`` (valid taps), ``blocks`` (for the blocks tap)
        and the preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``,
        ``resize_mode``, ``crop_pct``).
    """
    model = create_model(info, weights_path=weights_path)
    cfg = _data_config(model, image_size)
    transform = timm.data.create_transform(**cfg, is_training=False)
    meta: dict[str, Any] = {
        "dim": int(model.num_features),
        "layers": _taps(model),
        **_preprocessing(cfg),
    }
    if layer == "blocks" and "blocks" in meta["layers"]:
        n = len(model.blocks)
        tap = BlockTap(
            model,
            list(model.blocks),
            class_token=getattr(model, "cls_token", None) is not None,
            batch_first=True,
        )
        meta.update(dim=n * int(model.embed_dim), blocks=[0, n])
        return tap, transform, meta
    return model, transform, meta
