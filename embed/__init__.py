"""embed: backbones, image decoding and views, datasets, the feature bank, the embedding runner."""

from .compat import backbone_id, require_same_backbone, same_backbone
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
from .splits import SPLITS, assign_splits, has_splits

# [section: backbones-images-views]
# [end section: backbones-images-views]

# [section: bank-datasets-runner]
from .bank import FeatureBank, concat_banks, synthetic_backbone, write_bank

# [end section: bank-datasets-runner]

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
    "SPLITS",
    "assign_splits",
    "has_splits",
    # [section: __all__ backbones-images-views]
    # [end section: __all__ backbones-images-views]
    # [section: __all__ bank-datasets-runner]
    "FeatureBank",
    "write_bank",
    "concat_banks",
    "synthetic_backbone",
    # [end section: __all__ bank-datasets-runner]
]
