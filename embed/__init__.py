"""embed: backbones, image decoding and views, datasets, the feature bank, the embedding runner."""

from .backbones import (
    Backbone,
    BackboneInfo,
    backbone_from_spec,
    backbone_info,
    create_backbone,
    list_backbones,
)
from .bank import FeatureBank, concat_banks, write_bank
from .compat import backbone_id, require_one_backbone, require_same_backbone, same_backbone
from .datasets import ImageItem, Source, SourceError, scan_source
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
from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image, sha256_file
from .partitions import committed_partitions, consolidate, write_partition
from .runner import (
    DuplicateImageWarning,
    EmbedSummary,
    EncodedImages,
    embed_source,
    encode_images,
)
from .splits import SPLITS, assign_splits, has_splits
from .verify import BankReport, verify_bank
from .views import View, parse_view

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
