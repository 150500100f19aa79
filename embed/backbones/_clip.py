"""open_clip backbones: build the image tower, its preprocessing and its feature size.

Weights are never loaded by open_clip's own ``pretrained=`` download: the registry
resolves a file first (``weights=PATH``, hub cache, hub download; see ``_weights``), the
model is created empty and the file is loaded strictly, so the loaded bytes are known
(their SHA-256 goes into the spec) and a missing file can fail with our message.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from facebank.core.errors import FacebankError
from facebank.embed.backbones._taps import BlockTap
from facebank.embed.backbones._weights import load_strict, read_state_dict

if TYPE_CHECKING:
    from facebank.embed.backbones.registry import BackboneInfo

# Custom architecture configs shipped next to this module (open_clip JSON format).
_CONFIG_DIR = Path(__file__).resolve().parent
_CUSTOM = {"facebank-tiny-vit": _CONFIG_DIR / "facebank-tiny-vit.json"}


def _ensure_config(model: str) -> None:
    import open_clip

    if model in _CUSTOM and open_clip.get_model_config(model) is None:
        open_clip.add_model_config(str(_CUSTOM[model]))


class _DropRandomInitWarning(logging.Filter):
    # open_clip logs "initialized randomly" for pretrained=None; we load weights right after.
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    filt = _DropRandomInitWarning()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


def hub_files(info: BackboneInfo) -> tuple[str, list[str]]:
    """(repo_id, candidate filenames) open_clip would download for ``info``'s pretrained tag."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(info.model, info.pretrained or "")
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise FacebankError(
            f"open_clip has no hub file for {info.model}/{info.pretrained}; pass --weights PATH"
        )
    # open_clip's convention: "org/repo/" (default filename) or "org/repo/filename"
    repo_id, filename = posixpath.split(hub)
    if not filename:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def image_tower_state_dict(
    state_dict: dict[str, torch.Tensor], *, source: Path | str
) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an open_clip checkpoint, with the prefix removed.

    Only the image tower makes features, so only it is loaded (strictly); a full CLIP
    checkpoint and an image-tower-only one (e.g. ``{k: v for k, v in sd.items() if
    k.startswith("visual.")}``, a third of the size to copy) give the same features.

    Raises:
        FacebankError: The file holds no ``visual.*`` tensors (e.g. a timm-format ViT).
    """
    tower = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not tower:
        raise FacebankError(
            f"weights file {str(source)!r} holds no open_clip image tower (no 'visual.*' "
            f"tensors; found e.g. {', '.join(list(state_dict)[:3])}); pass an open_clip "
            "checkpoint such as open_clip_model.safetensors, not a timm model.safetensors"
        )
    return tower


def _preprocess_kwargs(info: BackboneInfo) -> dict[str, Any]:
    """The pretrained tag's own preprocessing, as open_clip applies it for ``pretrained=TAG``."""
    import open_clip

    if not info.pretrained:
        return {}
    pcfg = open_clip.get_pretrained_cfg(info.model, info.pretrained)
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(pcfg.get("quick_gelu", False))}
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        if key in pcfg:
            kwargs[arg] = pcfg[key]
    return kwargs


def _taps(vision_cfg: dict[str, Any]) -> list[str]:
    if vision_cfg.get("timm_model_name"):
        return ["final"]  # a timm trunk inside open_clip: use the timm entry for more taps
    return ["final", "penultimate", "blocks"]


def describe(info: BackboneInfo) -> dict[str, Any]:
    """Feature size, taps and preprocessing from open_clip's configs, without any weights."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    _ensure_config(info.model)
    cfg = {**open_clip.get_model_config(info.model), **dict(info.model_kwargs)}
    vision = cfg["vision_cfg"]
    size = vision["image_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = _preprocess_kwargs(info)
    default = PreprocessCfg()
    return {
        "dim": int(cfg["embed_dim"]),
        "layers": _taps(vision),
        "input_size": [3, int(h), int(w)],
        "mean": [float(v) for v in kwargs.get("image_mean", default.mean)],
        "std": [float(v) for v in kwargs.get("image_std", default.std)],
        "interpolation": str(kwargs.get("image_interpolation", default.interpolation)),
        "resize_mode": str(kwargs.get("image_resize_mode", default.resize_mode)),
        "crop_pct": 1.0,
    }


def build(
    info: BackboneInfo,
    *,
    weights_path: Path | None,
    image_size: int | None,
    layer: str = "final",
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Create the image tower of an open_clip model.

    Args:
        info: The registry entry (``model`` is the open_clip config name).
        weights_path: A state-dict file for the whole CLIP model, or ``None`` for the
            seeded random initialisation of a test-only entry.
        image_size: Must be ``None`` or the model's native size (positional embeddings
            of a ViT are fixed; open_clip does not re-train them).
        layer: ``final`` (the projected embedding), ``penultimate`` (the pooled token
            before the projection) or ``blocks`` (the class token after every block).

    Returns:
        ``(visual, transform, meta)`` where ``visual(x)`` maps ``(n, 3, H, W)`` to
        ``(n, dim)``, ``transform`` is open_clip's evaluation preprocessing (PIL -> tensor)
        and ``meta`` holds ``dim``, ``layers`` (valid taps), ``blocks`` (blocks tap) and
        the preprocessing read from the model.
    """
    import open_clip

    _ensure_config(info.model)
    kwargs = _preprocess_kwargs(info)
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(info.seed)
        model, _, transform = open_clip.create_model_and_transforms(
            info.model, pretrained=None, **kwargs, **dict(info.model_kwargs)
        )
    visual = model.visual
    if weights_path is not None:
        load_strict(
            visual,
            image_tower_state_dict(read_state_dict(weights_path), source=weights_path),
            source=f"{str(weights_path)!r}",
            what=f"the image tower of open_clip {info.model}",
        )
    native = visual.image_size
    h, w = (native, native) if isinstance(native, int) else tuple(native)
    if image_size is not None and (int(image_size), int(image_size)) != (h, w):
        raise FacebankError(
            f"backbone {info.name!r} takes {h}x{w} px inputs only (a ViT's positional "
            f"embeddings are fixed), got image_size={image_size}; drop --image-size"
        )
    pcfg = visual.preprocess_cfg
    meta: dict[str, Any] = {
        "dim": int(visual.output_dim),
        "layers": _taps(
            {**open_clip.get_model_config(info.model), **dict(info.model_kwargs)}["vision_cfg"]
        ),
        "input_size": [3, int(h), int(w)],
        "mean": [float(v) for v in pcfg["mean"]],
        "std": [float(v) for v in pcfg["std"]],
        "interpolation": str(pcfg.get("interpolation", "bicubic")),
        "resize_mode": str(pcfg.get("resize_mode", "shortest")),
        "crop_pct": 1.0,  # open_clip resizes to the input size and crops nothing more
    }
    del model  # the text tower is never used; keep only the image tower alive
    if layer in ("penultimate", "blocks") and layer in meta["layers"]:
        width = int(visual.transformer.width)
        if layer == "penultimate":
            visual.proj = None  # open_clip returns the pooled token as is without it
            meta["dim"] = width
        else:
            blocks = list(visual.transformer.resblocks)
            visual = BlockTap(
                visual,
                blocks,
                class_token=getattr(visual, "class_embedding", None) is not None,
                batch_first=bool(getattr(visual.transformer, "batch_first", True)),
            )
            meta.update(dim=len(blocks) * width, blocks=[0, len(blocks)])
    return visual, transform, meta
