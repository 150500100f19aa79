"""The backbone spec: a feature space's identity and preprocessing, as a frozen dataclass.

A :class:`BackboneSpec` travels with everything made from a backbone: a loaded
:class:`~facebank.embed.backbones.registry.Backbone` holds one, a bank stores one in its Zarr
attributes (as the dict :meth:`BackboneSpec.to_dict` writes), a head stores its training
bank's in ``head.json``. Inside facebank it is this dataclass; a dict exists only where it
is written to Zarr attributes or JSON (as open_clip does with its ``PreprocessCfg``).

Layer taps. ``layer`` says which activations became the features:

- ``"final"``: the library's own image embedding (CLIP's projected embedding, timm's
  pooled features);
- ``"penultimate"``: the pooled token *before* the projection (ClipBased's features);
- ``"blocks"``: the CLS token after every transformer block, stored side by side, so
  ``blocks = (first, stop)`` records which blocks (half-open, 0-based), ``dim ==
  n_blocks * block_dim``, and stored block ``i`` is columns ``i*block_dim:(i+1)*block_dim``
  (see :meth:`BackboneSpec.block_columns`; a head may use one block, a range, or all).

The tap is part of the identity: banks of different taps are different feature spaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from facebank.core.errors import FacebankError

__all__ = ["BackboneSpec", "Layer", "LAYERS", "SpecLike", "as_spec"]

Layer = Literal["final", "penultimate", "blocks"]
LAYERS: tuple[str, ...] = get_args(Layer)

# Keys that decide whether two feature spaces are the same. The display name is not one
# of them (the same weights loaded with --weights PATH are the same space).
_IDENTITY = (
    "library",
    "model",
    "pretrained",
    "weights_sha256",
    "dim",
    "input_size",
    "layer",
    "blocks",
)
# Preprocessing: compared only when both sides recorded it (banks written before these
# keys existed leave them None), since a different resize or normalisation shifts features.
_PREPROCESSING = ("resize_mode", "mean", "std", "interpolation")


@dataclass(frozen=True)
class BackboneSpec(Mapping[str, Any]):
    """Identity and preprocessing of one backbone's feature space.

    Read-only mapping access (``spec["dim"]``, ``spec.get("name")``, ``dict(spec)``) gives
    the stored-dict view (lists for tuples), for code that still handles stored dicts.

    Attributes:
        name: Registry name (``--backbone``).
        library: ``"open_clip"``, ``"timm"``, or ``"numpy"`` for banks made from arrays.
        model: The library's architecture name.
        pretrained: The pretrained tag, or ``None`` for random weights.
        weights_sha256: SHA-256 of the weights file loaded, or ``None``.
        dim: Feature width ``D`` of a bank row.
        input_size: ``(3, H, W)`` the model sees.
        resize_mode: ``"shortest"`` (resize the short side, centre-crop) or ``"squash"``.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        interpolation: Resize interpolation (``"bicubic"``, ``"bilinear"``...).
        crop_pct: Fraction of the resized image kept by the centre crop (1.0 = none).
        l2_normalised: Whether rows are L2-normalised (CLIP's convention; final tap only).
        layer: The layer tap (see the module docstring).
        blocks: ``(first, stop)`` block range stored side by side (``layer="blocks"``),
            else ``None``.
        test_only: Random weights: for tests and smoke runs, never for results.
    """

    name: str
    library: str
    model: str
    pretrained: str | None
    dim: int
    input_size: tuple[int, int, int] | None = None
    weights_sha256: str | None = None
    resize_mode: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    l2_normalised: bool = False
    layer: Layer = "final"
    blocks: tuple[int, int] | None = None
    test_only: bool = False

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise FacebankError(
                f"backbone spec layer {self.layer!r} is not valid; valid: {', '.join(LAYERS)}"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise FacebankError(f"backbone spec dim {self.dim!r} must be a positive integer")
        for key in ("input_size", "mean", "std", "blocks"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        if self.layer == "blocks" and (
            self.blocks is None
            or len(self.blocks) != 2
            or self.n_blocks <= 0
            or self.dim % self.n_blocks
        ):
            raise FacebankError(
                f"backbone spec with layer='blocks' needs blocks=(first, stop) whose count "
                f"divides dim={self.dim}, got blocks={self.blocks!r}"
            )

    # ------------------------------------------------------------------ mapping view
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if isinstance(value, tuple) else value

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists), as written to Zarr attributes and head.json."""
        out = dataclasses.asdict(self)
        for key in ("input_size", "mean", "std", "blocks"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """Read a stored spec; keys a bank written by an older facebank lacks take defaults.

        Unknown keys are ignored (a newer facebank may store more).

        Raises:
            FacebankError: ``data`` is not a mapping or lacks ``name``/``dim``.
        """
        if isinstance(data, BackboneSpec):
            return data
        if not isinstance(data, Mapping):
            raise FacebankError(
                f"a backbone spec must be a mapping (a bank's 'backbone' attribute), got "
                f"{type(data).__name__}"
            )
        missing = [k for k in ("name", "dim") if data.get(k) is None]
        if missing:
            raise FacebankError(
                f"backbone spec {dict(data)!r} lacks {', '.join(missing)}; it was not written "
                "by facebank - re-embed with `facebank embed`"
            )
        kwargs = {k: v for k, v in data.items() if k in _FIELDS}
        kwargs.setdefault("library", "?")
        kwargs.setdefault("model", "?")
        kwargs.setdefault("pretrained", None)
        kwargs["dim"] = int(kwargs["dim"])
        if kwargs.get("layer") is None:
            kwargs["layer"] = "final"
        return cls(**kwargs)

    def replace(self, **changes: Any) -> BackboneSpec:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ identity
    def same_space(self, other: BackboneSpec) -> bool:
        """True when ``self`` and ``other`` describe the same feature space.

        Identity keys must be equal; preprocessing keys must be equal where both specs
        recorded them.
        """
        if any(getattr(self, k) != getattr(other, k) for k in _IDENTITY):
            return False
        for key in _PREPROCESSING:
            a, b = getattr(self, key), getattr(other, key)
            if a is not None and b is not None and a != b:
                return False
        return True

    def differences(self, other: BackboneSpec) -> list[str]:
        """``key: a != b`` for each identity or recorded preprocessing key that differs."""
        out = [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}"
            for k in _IDENTITY
            if getattr(self, k) != getattr(other, k)
        ]
        for key in _PREPROCESSING:
            a, b = getattr(self, key), getattr(other, key)
            if a is not None and b is not None and a != b:
                out.append(f"{key}: {a!r} != {b!r}")
        return out

    @property
    def n_blocks(self) -> int:
        """Blocks stored side by side (1 unless ``layer="blocks"``)."""
        return self.blocks[1] - self.blocks[0] if self.blocks else 1

    @property
    def block_dim(self) -> int:
        """Width of one block's features (``dim`` unless ``layer="blocks"``)."""
        return self.dim // self.n_blocks

    def block_columns(self, blocks: int | slice | str | None = None) -> slice:
        """Columns of a bank row holding some blocks of a ``layer="blocks"`` spec.

        Args:
            blocks: ``None``/``"all"`` for every stored block; an int (negative counts
                from the last block); a ``slice`` of blocks; or text ``"7"``, ``"-1"``,
                ``"4:8"`` (a half-open range). Indices count the stored blocks.

        Returns:
            A ``slice`` (contiguous blocks) to index ``X[:, cols]``.

        Raises:
            FacebankError: the spec has no blocks, or the selection is out of range.
        """
        if self.layer != "blocks" or not self.blocks:
            if blocks in (None, "all"):
                return slice(0, self.dim)
            raise FacebankError(
                f"backbone {self.name!r} was tapped at layer {self.layer!r}, which has no "
                f"blocks to select ({blocks!r}); embed with --layer blocks"
            )
        n, w = self.n_blocks, self.block_dim
        sel: int | slice | str | None = blocks
        if isinstance(sel, str):
            text = sel.strip()
            if text in ("", "all"):
                sel = None
            elif ":" in text:
                lo, _, hi = text.partition(":")
                try:
                    sel = slice(int(lo) if lo else None, int(hi) if hi else None)
                except ValueError:
                    sel = text
            else:
                try:
                    sel = int(text)
                except ValueError:
                    sel = text
        if sel is None:
            return slice(0, self.dim)
        if isinstance(sel, int) and not isinstance(sel, bool):
            i = sel + n if sel < 0 else sel
            if 0 <= i < n:
                return slice(i * w, (i + 1) * w)
        elif isinstance(sel, slice) and sel.step in (None, 1):
            lo, hi, _ = sel.indices(n)
            if lo < hi:
                return slice(lo * w, hi * w)
        raise FacebankError(
            f"blocks {blocks!r} is not valid for {self.name!r} with {n} blocks; use an index "
            f"0..{n - 1} (or -1 for the last), a range like '4:{n}', or 'all'"
        )

    def select_blocks(self, blocks: int | slice | str | None) -> BackboneSpec:
        """The spec of the features ``X[:, self.block_columns(blocks)]``."""
        cols = self.block_columns(blocks)
        if self.layer != "blocks" or cols == slice(0, self.dim):
            return self
        first = self.blocks[0] + cols.start // self.block_dim  # type: ignore[index]
        stop = self.blocks[0] + cols.stop // self.block_dim  # type: ignore[index]
        return self.replace(dim=cols.stop - cols.start, blocks=(first, stop))


_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BackboneSpec))

SpecLike = BackboneSpec | Mapping[str, Any]


def as_spec(spec: SpecLike) -> BackboneSpec:
    """A :class:`BackboneSpec` from a spec or a stored dict (a bank's ``backbone`` attribute)."""
    return spec if isinstance(spec, BackboneSpec) else BackboneSpec.from_dict(spec)
