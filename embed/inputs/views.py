"""Views: deterministic image transforms applied before a backbone (robustness banks).

A view string is one operation or several joined by ``+`` and applied left to right:

=============================  ==========================================================
``original``                   identity (also what an empty composition means)
``jpeg:q=Q``                   re-encode in memory as JPEG at quality Q (1..100), 4:2:0
                               chroma subsampling, baseline, no optimisation: the same
                               bytes every time
``resize:N``                   downscale so the **shorter** side is N pixels, aspect ratio
                               kept (a square image becomes exactly NxN); bicubic with
                               antialiasing (Pillow's ``BICUBIC`` reduces with a widened
                               kernel); images already that small are left unchanged (a
                               view degrades, it never upsamples)
``hflip``                      mirror left-right
``vflip``                      mirror top-bottom
``normalise[:size=N:q=Q]``     the laundering control: RGB, shorter side scaled to N (up
                               *or* down, one resampler: bicubic), centre-cropped to NxN,
                               re-encoded as JPEG quality Q (4:2:0) in memory. Every image
                               of both classes leaves with the same format, size, mode and
                               encoder, whatever it arrived as. Defaults N=256, Q=90.
``face[:margin=M:missing=X]``  crop to the largest face found by OpenCV's pretrained
                               frontal-face Haar cascade (:mod:`embed.face`), grown by M of
                               the face's size on every side (default 0.25). An image
                               without a face is kept uncropped and flagged
                               (``missing=keep``, the default) or becomes a recorded
                               failure (``missing=skip``).
=============================  ==========================================================

Parameters are joined by ``:`` (``normalise:size=128:q=75``); ``,`` is accepted too, but
command lines split lists of views on commas, so names use ``:``.

Views act on the full decoded image (after EXIF orientation, before the backbone's own
resize/crop/normalise). :meth:`View.draft_size` says whether a JPEG may be decoded in
draft mode (reduced scale) for this view without changing what the view means.

A ``face`` view marks each output image: ``img.info[FACE_FOUND]`` is True or False, so
the embedding can record per row whether a face was found; :meth:`View.provenance`
gives the detector and its version for the bank.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

from facebank.core.errors import ImageDecodeError, UnknownNameError

__all__ = ["View", "parse_view", "VIEW_FORMS", "FACE_FOUND"]

#: The accepted forms, as shown in error messages.
VIEW_FORMS = (
    "original",
    "jpeg:q=Q (Q in 1..100)",
    "resize:N (N >= 8)",
    "hflip",
    "vflip",
    "normalise[:size=N:q=Q] (N >= 8, Q in 1..100)",
    "face[:margin=M:missing=keep|skip] (M in 0..2)",
)
#: key of ``Image.info`` where a ``face`` view records whether it found a face
FACE_FOUND = "facebank_face_found"
# 256: above every registered backbone's input side (224-260), so the backbone's own
# resize still decides the last step; 90: the quality most web photos carry.
NORMALISE_SIZE = 256
NORMALISE_QUALITY = 90
FACE_MARGIN = 0.25  # a quarter of the face box on each side keeps chin, hair line and ears

# Below 8 px a "face" has no content left; the floor catches typos like resize:2.
_MIN_RESIZE = 8
_JPEG_RE = re.compile(r"^jpeg:q=(\d+)$")
_RESIZE_RE = re.compile(r"^resize:(\d+)$")
_PARAM_OPS = ("normalise", "normalize", "face")


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
class _Normalise:
    size: int = NORMALISE_SIZE
    quality: int = NORMALISE_QUALITY
    kind: str = "normalise"

    @property
    def name(self) -> str:
        return f"normalise:size={self.size}:q={self.quality}"

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB")
        w, h = img.size
        scale = self.size / min(w, h)
        rw, rh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (rw, rh) != (w, h):
            img = img.resize((rw, rh), Image.Resampling.BICUBIC)
        left, top = (rw - self.size) // 2, (rh - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return _jpeg_roundtrip(img, self.quality)


@dataclass(frozen=True)
class _Face:
    margin: float = FACE_MARGIN
    skip_missing: bool = False
    kind: str = "face"

    @property
    def name(self) -> str:
        return f"face:margin={self.margin:g}" + (":missing=skip" if self.skip_missing else "")

    def __call__(self, img: Image.Image) -> Image.Image:
        from facebank.embed.inputs.face import crop_face, detector_info, largest_face

        box = largest_face(img)
        if box is None:
            if self.skip_missing:
                info = detector_info()
                raise ImageDecodeError(
                    f"no face found by {info['detector']} (OpenCV {info['version']}); the view "
                    f"{self.name!r} skips such images (missing=keep keeps them uncropped)"
                )
            out = img.copy()
            out.info[FACE_FOUND] = False
            return out
        out = crop_face(img, box, margin=self.margin)
        out.info[FACE_FOUND] = True
        return out


@dataclass(frozen=True)
class View:
    """A parsed, deterministic view; build it with :func:`parse_view`.

    Attributes:
        ops: The operations, applied left to right (empty for ``original``).
    """

    ops: tuple[_Op | _Normalise | _Face, ...] = ()

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
        found = None
        for op in self.ops:
            out = op(out)
            if op.kind == "face":
                found = out.info.get(FACE_FOUND)
        if found is not None:  # later ops (a JPEG round trip) start a fresh info dict
            out.info[FACE_FOUND] = found
        return out

    @property
    def has_face(self) -> bool:
        """True when the view crops to faces (rows then carry a face-found flag)."""
        return any(op.kind == "face" for op in self.ops)

    def provenance(self) -> dict[str, object] | None:
        """What a bank records besides the view's name: the face detector and its version.

        Returns:
            ``{"face_detector": {...}}`` for a view with ``face``, else ``None``.
        """
        if not self.has_face:
            return None
        from facebank.embed.inputs.face import detector_info

        return {"face_detector": detector_info()}

    def draft_size(self, input_size: int) -> int | None:
        """The JPEG draft size a decoder may use for this view, or ``None`` for a full decode.

        Draft decoding (a DCT-domain downscale inside libjpeg) is only allowed when the
        view's result does not depend on the full-resolution pixels in a way the view is
        meant to measure:

        - ``jpeg:q=Q`` anywhere: ``None`` - the re-encode must compress the original pixels.
        - ``normalise`` or ``face`` anywhere: ``None`` - normalise must send every image
          through one resampler (a DCT-domain draft would give JPEG inputs a different
          downscale path than PNG ones: a format trace), and face detection sees the
          full image.
        - containing ``resize:N`` (no JPEG): draft to the first ``N`` (it downsizes anyway).
        - otherwise (``original``, flips): draft to the backbone's ``input_size``.

        Args:
            input_size: The backbone's input side in pixels (e.g. 224).
        """
        if any(op.kind in ("jpeg", "normalise", "face") for op in self.ops):
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
        kind, _, args = part.partition(":")
        if kind in _PARAM_OPS:
            ops.append(_parse_param_op(text, kind, args))
            continue
        raise UnknownNameError(_bad(text, f"unknown operation {raw.strip()!r}"))
    return View(tuple(ops))


def _params(text: object, kind: str, args: str, valid: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (a.strip() for a in re.split(r"[:,]", args))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in valid or key.strip() in out:
            raise UnknownNameError(
                _bad(text, f"{kind} takes {', '.join(k + '=...' for k in valid)}, got {item!r}")
            )
        out[key.strip()] = value.strip()
    return out


def _number(text: object, what: str, value: str, cast: type, lo: float, hi: float) -> float:
    try:
        v = cast(value)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise UnknownNameError(_bad(text, f"{what} {value!r} is outside {lo:g}..{hi:g}"))
    return v


def _parse_param_op(text: object, kind: str, args: str) -> _Normalise | _Face:
    if kind in ("normalise", "normalize"):
        p = _params(text, "normalise", args, ("size", "q"))
        size = _number(text, "normalise size", p.get("size", str(NORMALISE_SIZE)), int, 8, 4096)
        q = _number(text, "normalise quality", p.get("q", str(NORMALISE_QUALITY)), int, 1, 100)
        return _Normalise(int(size), int(q))
    p = _params(text, "face", args, ("margin", "missing"))
    margin = _number(text, "face margin", p.get("margin", str(FACE_MARGIN)), float, 0.0, 2.0)
    missing = p.get("missing", "keep")
    if missing not in ("keep", "skip"):
        raise UnknownNameError(_bad(text, f"face missing={missing!r} is not keep or skip"))
    return _Face(float(margin), missing == "skip")


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
