"""heads: sklearn-style estimators on bank features, losses, SAM, persistence, registry.

``create_head(name, **params)``, ``list_heads()``, ``register_head(name, cls)`` (heads of
other packages arrive through the ``facebank.heads`` entry points), ``load_head(path)``;
training runs (``train_run``) and scoring (``score_run``) for the CLI and the experiment.
Nothing is imported from torch or faiss until a head is created.
"""

from .base import BaseHead, threshold_at_fpr
from .persistence import check_backbone, load_head, save_head
from .registry import HeadInfo, create_head, head_info, head_params, list_heads, register_head
from .scoring import ScoreResult, score_run
from .training import TrainResult, train_run

__all__ = [
    "BaseHead",
    "HeadInfo",
    "create_head",
    "list_heads",
    "register_head",
    "head_info",
    "head_params",
    "load_head",
    "save_head",
    "check_backbone",
    "threshold_at_fpr",
    "train_run",
    "score_run",
    "TrainResult",
    "ScoreResult",
]
