"""Views: deterministic image transforms applied before a backbone (robustness banks).

A view string is one operation or several joined by ``+`` and applied left to right:

=================  ==========================================================================
``original``       identity (also what an empty composition means)
``jpeg:q=Q``       re-encode in memory as JPEG at quality Q (1..100), 4:2:0 chroma
                   subsampling, baseline, no optimisation: the same bytes every time
``resize:N``       downscale so the **shorter** side is N pixels, aspect ratio kept (a square
                   image becomes exactly NxN); bicubic with antialiasing (Pillow's
                   ``BICUBIC`` reduces with a widened kernel); images already that small
                   are left unchanged (a view degrades, it never upsamples)
``hflip``          mirror left-right
``vflip``          mirror top-bottom
=================  ==========================================================================

Views act on the full decoded image (after EXIF orientation, before the backbone's own
resize/crop/normalise). :meth:`View.draft_size` says whether a JPEG may be decoded in
draft mode (reduced scale) for this view without changing what the view means.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

from .errors import UnknownNameError

__all__ = ["View", "parse_view", "VIEW_FORMS"]

#: The accepted forms, as shown in error messages.
VIEW_FORMS = ("original", "jpeg:q=Q (Q in 1..100)", "resize:N (N >= 8)", "hflip", "vflip")

# Below 8 px a "face" has no content left; the floor catches typos like resize:2.
_MIN_RESIZE = 8
_JPEG_RE = re.compile(r"^jpeg:q=(\d+)$")
_RESIZE_RE = re.compile(r"^resize:(\d+)$")


@dataclass(frozen=True)
class _Op:
    kind: str  # "jpeg" | "resize" | "hflip" | "vflip"
    value: int = 0

    @property
    def name(self) -> str:
        if self.kind == "jpeg":
            return f"jpeg:q={self.value}"
        if self.kind == "resize":
            return f"resize:{self.value}"
        return self.kind

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.kind == "hflip":
            return ImageOps.mirror(img)
        if self.kind == "vflip":
            return ImageOps.flip(img)
        if self.kind == "resize":
            return _resize_shorter(img, self.value)
        return _jpeg_roundtrip(img, self.value)


@dataclass(frozen=True)
class View:
    """A parsed, deterministic view; build it with :func:`parse_view`.

    Attributes:
        ops: The operations, applied left to right (empty for ``original``).
    """

    ops: tuple[_Op, ...] = ()

    @property
    def name(self) -> str:
        """Canonical string, e.g. ``"resize:256+jpeg:q=75"`` (``"original"`` when empty)."""
        return "+".join(op.name for op in self.ops) or "original"

    @property
    def is_identity(self) -> bool:
        """True for ``original``."""
        return not self.ops

    def __str__(self) -> str:
        return self.name

    def __call__(self, img: Image.Image) -> Image.Image:
        """Apply the view to an RGB image.

        The input is never modified; an operation with nothing to do (``original``, a
        ``resize:N`` of an image already that small) passes the same object through
        rather than copying it.
        """
        out = img
        for op in self.ops:
            out = op(out)
        return out

    def draft_size(self, input_size: int) -> int | None:
        """The JPEG draft size a decoder may use for this view, or ``None`` for a full decode.

        Draft decoding (a DCT-domain downscale inside libjpeg) is only allowed when the
        view's result does not depend on the full-resolution pixels in a way the view is
        meant to measure:

        - ``jpeg:q=Q`` anywhere: ``None`` - the re-encode must compress the original pixels.
        - containing ``resize:N`` (no JPEG): draft to the first ``N`` (it downsizes anyway).
        - otherwise (``original``, flips): draft to the backbone's ``input_size``.

        Args:
            input_size: The backbone's input side in pixels (e.g. 224).
        """
        if any(op.kind == "jpeg" for op in self.ops):
            return None
        for op in self.ops:
            if op.kind == "resize":
                # the first resize decides how many pixels survive (flips commute with it)
                return op.value
        return int(input_size)


def parse_view(text: str | View) -> View:
    """Parse a view string such as ``"original"`` or ``"resize:256+jpeg:q=75"``.

    Args:
        text: The view string (whitespace around ``+`` is ignored) or a ``View``.

    Returns:
        A frozen :class:`View`; ``parse_view(v.name) == v``.

    Raises:
        UnknownNameError: An operation that is not one of :data:`VIEW_FORMS`, or a
            parameter out of range.
    """
    if isinstance(text, View):
        return text
    if not isinstance(text, str) or not text.strip():
        raise UnknownNameError(_bad(text, "empty view"))
    ops: list[_Op] = []
    for raw in text.split("+"):
        part = raw.strip().lower()
        if part == "original":
            continue
        if part in ("hflip", "vflip"):
            ops.append(_Op(part))
            continue
        if m := _JPEG_RE.match(part):
            q = int(m.group(1))
            if not 1 <= q <= 100:
                raise UnknownNameError(_bad(text, f"JPEG quality {q} is outside 1..100"))
            ops.append(_Op("jpeg", q))
            continue
        if m := _RESIZE_RE.match(part):
            n = int(m.group(1))
            if n < _MIN_RESIZE:
                raise UnknownNameError(_bad(text, f"resize:{n} is below {_MIN_RESIZE} px"))
            ops.append(_Op("resize", n))
            continue
        raise UnknownNameError(_bad(text, f"unknown operation {raw.strip()!r}"))
    return View(tuple(ops))


def _bad(text: object, why: str) -> str:
    return (
        f"invalid view {text!r}: {why}; valid views are {', '.join(VIEW_FORMS)}, "
        "or several joined by '+', e.g. 'resize:256+jpeg:q=75'"
    )


def _resize_shorter(img: Image.Image, n: int) -> Image.Image:
    w, h = img.size
    short = min(w, h)
    if short <= n:
        return img
    size = (n, max(1, round(h * n / w))) if w <= h else (max(1, round(w * n / h)), n)
    return img.resize(size, Image.Resampling.BICUBIC)


def _jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(
        buf, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False
    )
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")
