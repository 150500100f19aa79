"""timm backbones: a global-pooled feature extractor, its preprocessing and feature size.

Models are created with ``num_classes=0`` (timm's pooled features, e.g. 1280-d for
EfficientNet-B1) and weights are loaded strictly from a resolved file; a classifier in
the file is dropped. Preprocessing comes from ``timm.data.resolve_model_data_config``
on the model (the pretrained config of the pinned ``arch.tag``); ``image_size``
replaces only the input size (timm's crop fraction and interpolation stay).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import _lite1
from ._weights import load_strict, read_state_dict

if TYPE_CHECKING:
    from .backbones import BackboneInfo

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's own order


def timm_name(info: BackboneInfo) -> str:
    """``arch.tag`` when the entry pins a timm pretrained tag, else the bare architecture."""
    return f"{info.model}.{info.pretrained}" if info.hub else info.model


def hub_files(info: BackboneInfo) -> tuple[str, list[str]]:
    """(repo_id, candidate filenames) timm would download for ``info``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name(info))
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(_HUB_FILES)
    return cfg.hf_hub_id, names


def describe(info: BackboneInfo, *, image_size: int | None = None) -> dict[str, Any]:
    """Feature size and input size without weights (the model is built on the meta device)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name(info), pretrained=False, num_classes=0)
    cfg = timm.data.resolve_model_data_config(model)
    size = list(cfg["input_size"])
    if image_size:
        size = [3, int(image_size), int(image_size)]
    return {"dim": int(model.num_features), "input_size": size}


def create_model(
    info: BackboneInfo, *, weights_path: Path | None, num_classes: int = 0
) -> torch.nn.Module:
    """Create the timm model and load ``weights_path`` strictly (seeded init when None).

    Args:
        info: The registry entry.
        weights_path: A timm state dict file (EfficientNet-PyTorch layout accepted for
            ``tf_efficientnet_lite1``), or ``None`` for a seeded random test model.
        num_classes: 0 for pooled features; 1000 keeps the ImageNet classifier (tests).
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(info.seed)
        model = timm.create_model(timm_name(info), pretrained=False, num_classes=num_classes)
    if weights_path is not None:
        sd = read_state_dict(weights_path)
        if info.model == _lite1.TIMM_ARCH and _lite1.is_package_layout(sd):
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
    info: BackboneInfo, *, weights_path: Path | None, image_size: int | None
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Create the pooled-feature model and its evaluation transform.

    Returns:
        ``(model, transform, meta)``: ``model(x)`` maps ``(n, 3, H, W)`` to
        ``(n, num_features)``; ``meta`` holds ``dim``, ``input_size``, ``mean``, ``std``.
    """
    import timm

    model = create_model(info, weights_path=weights_path)
    cfg = timm.data.resolve_model_data_config(model)
    if image_size is not None:
        cfg["input_size"] = (3, int(image_size), int(image_size))
    transform = timm.data.create_transform(**cfg, is_training=False)
    meta = {
        "dim": int(model.num_features),
        "input_size": [int(v) for v in cfg["input_size"]],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
    }
    return model, transform, meta
