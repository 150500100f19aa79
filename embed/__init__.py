"""embed: backbones, image decoding and views, datasets, the feature bank, the embedding runner."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exceptions are cheap and needed by every command: imported eagerly.
from .errors import (
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
    from .backbones import (
        Backbone,
        BackboneInfo,
        backbone_from_spec,
        backbone_info,
        create_backbone,
        list_backbones,
    )
    from .bank import (
        FeatureBank,
        concat_banks,
        write_bank,
    )
    from .compat import (
        backbone_id,
        require_one_backbone,
        require_same_backbone,
        same_backbone,
    )
    from .datasets import (
        ImageItem,
        Source,
        SourceError,
        scan_source,
    )
    from .images import (
        IMAGE_EXTENSIONS,
        MAX_IMAGE_PIXELS,
        load_image,
        sha256_file,
    )
    from .partitions import (
        committed_partitions,
        consolidate,
        write_partition,
    )
    from .runner import (
        DuplicateImageWarning,
        EmbedSummary,
        EncodedImages,
        embed_source,
        encode_images,
    )
    from .splits import (
        SPLITS,
        assign_splits,
        has_splits,
    )
    from .verify import (
        BankReport,
        verify_bank,
    )
    from .views import (
        View,
        parse_view,
    )

# Everything else (zarr, numpy, torch behind them) loads on first use, so `facebank --help`
# and `import facebank.embed.errors` stay fast. Name -> submodule:
_LAZY = {
    "Backbone": "backbones",
    "BackboneInfo": "backbones",
    "backbone_from_spec": "backbones",
    "backbone_info": "backbones",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "FeatureBank": "bank",
    "concat_banks": "bank",
    "write_bank": "bank",
    "backbone_id": "compat",
    "require_one_backbone": "compat",
    "require_same_backbone": "compat",
    "same_backbone": "compat",
    "ImageItem": "datasets",
    "Source": "datasets",
    "SourceError": "datasets",
    "scan_source": "datasets",
    "IMAGE_EXTENSIONS": "images",
    "MAX_IMAGE_PIXELS": "images",
    "load_image": "images",
    "sha256_file": "images",
    "committed_partitions": "partitions",
    "consolidate": "partitions",
    "write_partition": "partitions",
    "DuplicateImageWarning": "runner",
    "EmbedSummary": "runner",
    "EncodedImages": "runner",
    "embed_source": "runner",
    "encode_images": "runner",
    "SPLITS": "splits",
    "assign_splits": "splits",
    "has_splits": "splits",
    "BankReport": "verify",
    "verify_bank": "verify",
    "View": "views",
    "parse_view": "views",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
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
