"""embed: images in, feature banks out.

Four rooms, one concept each:

- ``embed.backbones``: the registry of frozen backbones, their specs, weights and taps;
- ``embed.inputs``: SOURCEs (folders, manifests, store URLs), decoding, metadata, views;
- ``embed.bank``: the Zarr feature bank, its store, partitions, verification and export;
- ``embed.runner``: the embedding runs (one backbone, or several sharing one decode).

The distributed engine is the package ``facebank.ray_engine``; errors, run folders, stores,
devices and splits shared by every layer are ``facebank.core``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exceptions are cheap and needed by every command: imported eagerly.
from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    BankLockedError,
    DataError,
    FacebankError,
    HeadError,
    ImageDecodeError,
    UnknownNameError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:  # the static view of the lazy names below
    from facebank.core.splits import SPLITS, assign_splits, has_splits
    from facebank.embed.backbones.compat import (
        backbone_id,
        require_one_backbone,
        require_same_backbone,
        same_backbone,
    )
    from facebank.embed.backbones.registry import (
        Backbone,
        BackboneInfo,
        backbone_from_spec,
        backbone_info,
        create_backbone,
        list_backbones,
        register_backbone,
    )
    from facebank.embed.bank.bank import FeatureBank, concat_banks, write_bank
    from facebank.embed.bank.partitions import committed_partitions, consolidate, write_partition
    from facebank.embed.bank.verify import BankReport, verify_bank
    from facebank.embed.inputs.datasets import ImageItem, Source, SourceError, scan_source
    from facebank.embed.inputs.images import (
        IMAGE_EXTENSIONS,
        MAX_IMAGE_PIXELS,
        load_image,
        sha256_file,
    )
    from facebank.embed.inputs.views import View, parse_view
    from facebank.embed.runner.local import (
        DuplicateImageWarning,
        EmbedSummary,
        EncodedImages,
        embed_source,
        encode_images,
    )

# Everything else (zarr, numpy, torch behind them) loads on first use, so `facebank --help`
# and `import facebank.core.errors` stay fast. Name -> submodule:
_LAZY = {
    "Backbone": "facebank.embed.backbones.registry",
    "BackboneInfo": "facebank.embed.backbones.registry",
    "backbone_from_spec": "facebank.embed.backbones.registry",
    "backbone_info": "facebank.embed.backbones.registry",
    "create_backbone": "facebank.embed.backbones.registry",
    "list_backbones": "facebank.embed.backbones.registry",
    "register_backbone": "facebank.embed.backbones.registry",
    "FeatureBank": "facebank.embed.bank.bank",
    "concat_banks": "facebank.embed.bank.bank",
    "write_bank": "facebank.embed.bank.bank",
    "backbone_id": "facebank.embed.backbones.compat",
    "require_one_backbone": "facebank.embed.backbones.compat",
    "require_same_backbone": "facebank.embed.backbones.compat",
    "same_backbone": "facebank.embed.backbones.compat",
    "ImageItem": "facebank.embed.inputs.datasets",
    "Source": "facebank.embed.inputs.datasets",
    "SourceError": "facebank.embed.inputs.datasets",
    "scan_source": "facebank.embed.inputs.datasets",
    "IMAGE_EXTENSIONS": "facebank.embed.inputs.images",
    "MAX_IMAGE_PIXELS": "facebank.embed.inputs.images",
    "load_image": "facebank.embed.inputs.images",
    "sha256_file": "facebank.embed.inputs.images",
    "committed_partitions": "facebank.embed.bank.partitions",
    "consolidate": "facebank.embed.bank.partitions",
    "write_partition": "facebank.embed.bank.partitions",
    "DuplicateImageWarning": "facebank.embed.runner.local",
    "EmbedSummary": "facebank.embed.runner.local",
    "EncodedImages": "facebank.embed.runner.local",
    "embed_source": "facebank.embed.runner.local",
    "encode_images": "facebank.embed.runner.local",
    "SPLITS": "facebank.core.splits",
    "assign_splits": "facebank.core.splits",
    "has_splits": "facebank.core.splits",
    "BankReport": "facebank.embed.bank.verify",
    "verify_bank": "facebank.embed.bank.verify",
    "View": "facebank.embed.inputs.views",
    "parse_view": "facebank.embed.inputs.views",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FacebankError",
    "UnknownNameError",
    "BankError",
    "BankLockedError",
    "BackboneMismatchError",
    "WeightsUnavailableError",
    "ImageDecodeError",
    "HeadError",
    "DataError",
    "backbone_id",
    "same_backbone",
    "require_same_backbone",
    "require_one_backbone",
    "SPLITS",
    "assign_splits",
    "has_splits",
    "Backbone",
    "BackboneInfo",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "backbone_info",
    "backbone_from_spec",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "load_image",
    "sha256_file",
    "View",
    "parse_view",
    "FeatureBank",
    "write_bank",
    "concat_banks",
    "write_partition",
    "committed_partitions",
    "consolidate",
    "verify_bank",
    "BankReport",
    "ImageItem",
    "Source",
    "SourceError",
    "scan_source",
    "DuplicateImageWarning",
    "EmbedSummary",
    "EncodedImages",
    "embed_source",
    "encode_images",
]
