"""Backbone identity: which feature banks, heads and queries may be mixed.

Two specs are the same feature space when library, model, pretrained tag, weights hash,
width, input size and layer tap (and block range) are equal, and the preprocessing
(resize mode, mean, std, interpolation) is equal wherever both recorded it. Any
difference is an error that names both sides and what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from facebank.core.errors import BackboneMismatchError
from facebank.embed.backbones.spec import SpecLike, as_spec

__all__ = ["backbone_id", "same_backbone", "require_same_backbone", "require_one_backbone"]


def backbone_id(spec: SpecLike) -> str:
    """A short human-readable identity, e.g. ``clip-vit-l-14 (open_clip ViT-L-14/openai, 768-d)``.

    The layer tap is named unless it is ``final``; a test-only backbone says so.
    """
    try:
        s = as_spec(spec)
    except ValueError:  # a malformed stored spec must still be nameable in an error
        return repr(dict(spec)) if hasattr(spec, "keys") else repr(spec)
    tag = s.pretrained or "random"
    size_s = f", {s.input_size[-1]}px" if s.input_size else ""
    sha_s = f", weights {s.weights_sha256[:8]}" if s.weights_sha256 else ""
    layer_s = ""
    if s.layer == "blocks" and s.blocks:
        layer_s = f", layer blocks {s.blocks[0]}:{s.blocks[1]}"
    elif s.layer != "final":
        layer_s = f", layer {s.layer}"
    test_s = ", TEST-ONLY random weights" if s.test_only else ""
    return f"{s.name} ({s.library} {s.model}/{tag}, {s.dim}-d{size_s}{layer_s}{sha_s}{test_s})"


def same_backbone(a: SpecLike, b: SpecLike) -> bool:
    """True when two backbone specs describe the same feature space."""
    return as_spec(a).same_space(as_spec(b))


def require_same_backbone(a: SpecLike, b: SpecLike, *, a_name: str, b_name: str) -> None:
    """Raise ``BackboneMismatchError`` naming both sides unless ``a`` and ``b`` match."""
    sa, sb = as_spec(a), as_spec(b)
    if not sa.same_space(sb):
        raise BackboneMismatchError(
            f"{a_name} uses backbone {backbone_id(sa)} but {b_name} uses {backbone_id(sb)} "
            f"({'; '.join(sa.differences(sb))}); features of different backbones, layer taps "
            "or preprocessing cannot be mixed - embed both with the same --backbone "
            "(and --layer / --image-size / --weights)"
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
