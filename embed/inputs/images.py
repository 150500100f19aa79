"""Robust image decoding: any supported file -> a fully loaded RGB ``PIL.Image``, or a reason.

Every input goes through :func:`load_image`, which either returns an RGB image that is
complete, EXIF-upright and detached from its file, or raises
:class:`~embed.errors.ImageDecodeError` whose message is a short reason (never a
traceback, never a partial image). Decisions where the design contract is silent:

- **Alpha** (RGBA, LA, PA, palette with a transparent colour, ...) is composited over
  **white**, which is what a person sees on a web page or in a viewer; plain
  ``convert("RGB")`` would instead expose whatever colour the transparent pixels hide.
- **16-bit and 32-bit integer** greyscale (``I;16*``, ``I``) is scaled to 8 bit by the
  full 16-bit range (``v / 257``), so a 16-bit PNG keeps its brightness; ``I`` images
  whose values all lie in 0..255 are taken as 8-bit data. **Float** (``F``) images with
  values in [0, 1] are scaled by 255, otherwise clipped to 0..255.
- **Animations** (GIF, APNG, animated WebP, multi-page TIFF): the first frame only.
- **Colour**: embedded ICC profiles are not applied (pixels are taken as sRGB, as most
  training pipelines do); CMYK converts with Pillow's plain formula.
- **Decompression bombs**: files declaring more than :data:`MAX_IMAGE_PIXELS` pixels
  (8192 x 8192, about 67 MP: above 48-50 MP phone photos, and at most ~200 MB of RGB
  per decode) are refused before any pixel data is decoded.
- **Draft mode**: ``draft_size=s`` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale
  (the strongest reduction that keeps both sides >= ``s``). It is a DCT-domain downscale,
  several times faster than a full decode; other formats ignore it. Whether a view may
  use it is decided by :meth:`embed.views.View.draft_size`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facebank.core.errors import ImageDecodeError
from facebank.embed.inputs.metadata import finish_metadata, header_metadata

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "load_image",
    "load_image_and_metadata",
    "sha256_file",
    "is_image_path",
    "open_input",
    "read_image",
]

_log = logging.getLogger(__name__)

#: File extensions (lower case, with the dot) that dataset walkers treat as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tiff", ".tif", ".gif"}
)

#: Largest image (width x height, as declared in the file header) that is decoded.
MAX_IMAGE_PIXELS: int = 8192 * 8192

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def is_image_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed, constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def open_input(
    file: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[bytes, str]:
    """Read one input for decoding: a local file, or an object at an fsspec URL.

    The first half of every command's per-image work (the runner's workers, Ray tasks,
    ``explain``, neighbour queries): a local file or an object on a store is read once
    (one ``open``, one GET) and decoded from memory, so the bytes hashed are the bytes
    decoded (a file replaced between a hash and a second read cannot give a row the
    sha256 of other pixels).

    Returns:
        ``(the file's bytes, sha256 hex of them)``; ``load_image_and_metadata`` takes
        the bytes.

    Raises:
        ImageDecodeError: the file is missing, a directory or unreadable; the message
            is the reason every command records (``file not found``...).
    """
    from facebank.core.stores import is_url, local_path
    from facebank.embed.inputs._remote import read_url

    try:
        if is_url(file):
            data = read_url(os.fspath(file), storage_options=storage_options)
            return data, hashlib.sha256(data).hexdigest()
        with open(local_path(file), "rb") as fh:
            data = fh.read()
        return data, hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except OSError as exc:  # (a store's error text may span lines: one line here)
        why = " ".join(str(exc.strerror or exc).split())[:200]
        raise ImageDecodeError(f"unreadable file ({why})") from None


def read_image(
    file: str | os.PathLike,
    *,
    draft_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Image.Image:
    """:func:`open_input` then :func:`load_image`: one input (path or URL) as RGB.

    Raises:
        ImageDecodeError: unreadable or undecodable; the message is the reason.
    """
    data, _sha = open_input(file, storage_options=storage_options)
    return _load(data, draft_size=draft_size, max_pixels=MAX_IMAGE_PIXELS, metadata=None)


def load_image(
    path: str | os.PathLike,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode one image file into an RGB image, upright and fully loaded.

    Args:
        path: The image file.
        draft_size: For JPEGs, let libjpeg decode at a reduced scale whose both sides
            stay >= ``draft_size`` pixels (much faster for large files). ``None`` decodes
            at full resolution. Other formats ignore it.
        max_pixels: Refuse images declaring more pixels than this (decompression-bomb
            guard); the default is :data:`MAX_IMAGE_PIXELS`.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, size (width, height) after
        EXIF orientation; its file is closed.

    Raises:
        ImageDecodeError: The file is missing, empty, not an image, truncated, corrupt,
            too large, or of an unsupported kind; the message is a short reason.
    """
    return _load(path, draft_size=draft_size, max_pixels=max_pixels, metadata=None)


def load_image_and_metadata(
    path: str | os.PathLike | bytes,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[Image.Image, dict[str, Any]]:
    """:func:`load_image` plus the file's acquisition metadata, from the same single decode.

    ``path`` may also be the file's bytes (an object read from a store).

    The metadata (:data:`embed.metadata.METADATA_SCHEMA`) is read from the header
    before draft mode changes the decoded size and mode, and from the loaded image
    (EXIF, ICC, PNG text) after; see :mod:`embed.metadata`.

    Returns:
        ``(image, metadata)``: the RGB image as :func:`load_image` gives it, and one
        metadata row (a property that could not be read is named in ``meta_error``).

    Raises:
        ImageDecodeError: as :func:`load_image`.
    """
    meta: dict[str, Any] = {}
    img = _load(path, draft_size=draft_size, max_pixels=max_pixels, metadata=meta)
    return img, meta


def _load(
    path: str | os.PathLike | bytes,
    *,
    draft_size: int | None,
    max_pixels: int,
    metadata: dict[str, Any] | None,
) -> Image.Image:
    source: Path | io.BytesIO
    if isinstance(path, bytes):  # an object already read from a store
        size = len(path)
        source = io.BytesIO(path)
    else:
        source = Path(path)
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise ImageDecodeError("file not found") from None
        except OSError as exc:
            raise ImageDecodeError(f"unreadable file ({exc.strerror or exc})") from None
        if source.is_dir():
            raise ImageDecodeError("is a directory, not an image file")
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check warns (or raises) with its global limit; ours is explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if metadata is not None:
                    metadata.update(header_metadata(img, file_bytes=size))
                return _decode(img, draft_size=draft_size, max_pixels=max_pixels, meta=metadata)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large, decompression bomb refused ({exc})") from None
    except PermissionError:
        raise ImageDecodeError("unreadable file (permission denied)") from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except Exception as exc:  # any decoder failure is a reason, not a crash
        raise ImageDecodeError(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    return f"corrupt or unsupported image ({type(exc).__name__}: {text[:160]})"


def _decode(
    img: Image.Image,
    *,
    draft_size: int | None,
    max_pixels: int,
    meta: dict[str, Any] | None = None,
) -> Image.Image:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds the "
            f"decompression-bomb limit of {max_pixels:,}"
        )
    if draft_size is not None and img.format == "JPEG":
        # Mode "RGB" only asks libjpeg for YCbCr->RGB; CMYK/greyscale JPEGs keep their mode.
        img.draft("RGB", (int(draft_size), int(draft_size)))
    img.load()  # first frame only; raises on truncated/corrupt data (no partial images)
    if meta is not None:
        finish_metadata(meta, img)  # before exif_transpose, which drops the orientation tag
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a large image
    except Exception as exc:  # a broken EXIF block must not lose the image
        _log.debug("ignoring unreadable EXIF orientation: %s", exc)
    # The pixels are in memory now; leaving Image.open's context closes only the file.
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha over white, high bit depths scaled); RGB passes through."""
    mode = img.mode
    if mode in _ALPHA_MODES:
        return _over_white(img.convert("RGBA"))
    if mode in ("RGB", "L", "P") and "transparency" in img.info:
        # a transparent colour key (palette index, grey level or RGB triple)
        return _over_white(img.convert("RGBA"))
    if mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        return _over_white(img.convert("RGBA"))
    if mode == "RGB":
        return img
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(img), mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r} ({exc})") from None


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel high-bit-depth array to uint8 (see the module docstring)."""
    if mode == "F":
        arr = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    arr = values.astype(np.int64)
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    arr = np.clip(arr, 0, 65535)
    return ((arr + 128) // 257).astype(np.uint8)
