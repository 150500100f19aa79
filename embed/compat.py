"""Backbone identity: which feature banks, heads and queries may be mixed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import BackboneMismatchError

__all__ = ["backbone_id", "same_backbone", "require_same_backbone", "require_one_backbone"]

# The keys that decide whether two feature spaces are the same space. Input size
# matters (EfficientNet at 240 vs 512 px gives different features); the display
# name alone does not (a user may load the same weights under --weights PATH).
_IDENTITY_KEYS = ("library", "model", "pretrained", "weights_sha256", "dim", "input_size")


def backbone_id(spec: Mapping[str, Any]) -> str:
    """A short human-readable identity, e.g. ``clip-vit-l-14 (open_clip ViT-L-14/openai, 768-d)``."""
    name = spec.get("name", "?")
    lib = spec.get("library", "?")
    model = spec.get("model", "?")
    tag = spec.get("pretrained") or "random"
    size = spec.get("input_size")
    size_s = f", {size[-1]}px" if isinstance(size, (list, tuple)) and size else ""
    sha = spec.get("weights_sha256")
    sha_s = f", weights {sha[:8]}" if sha else ""
    return f"{name} ({lib} {model}/{tag}, {spec.get('dim', '?')}-d{size_s}{sha_s})"


def same_backbone(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two backbone specs describe the same feature space."""

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return all(norm(a.get(k)) == norm(b.get(k)) for k in _IDENTITY_KEYS)


def require_same_backbone(
    a: Mapping[str, Any], b: Mapping[str, Any], *, a_name: str, b_name: str
) -> None:
    """Raise ``BackboneMismatchError`` naming both sides unless ``a`` and ``b`` match."""
    if not same_backbone(a, b):
        raise BackboneMismatchError(
            f"{a_name} uses backbone {backbone_id(a)} but {b_name} uses {backbone_id(b)}; "
            "features of different backbones cannot be mixed - embed both with the same "
            "--backbone (and --image-size / --weights)"
        )


def _path_label(bank: Any) -> str:
    return f"bank {str(bank.path)!r}"


def require_one_backbone(
    banks: Sequence[Any], *, label: Callable[[Any], str] = _path_label
) -> dict[str, Any]:
    """Check that every bank shares the first bank's backbone; return that spec.

    Args:
        banks: objects with a ``.backbone`` spec (FeatureBank), at least one.
        label: how a bank is named in the error (default ``bank '<path>'``).

    Raises:
        BackboneMismatchError: naming the first bank and the first one that differs.
    """
    first = banks[0]
    for other in banks[1:]:
        require_same_backbone(
            first.backbone, other.backbone, a_name=label(first), b_name=label(other)
        )
    return first.backbone
