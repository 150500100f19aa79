"""Per-row acquisition metadata: what the *file* says, as opposed to what the face shows.

These columns are stored in every bank (format version 2) so that an audit can ask
whether a detector's answer could come from the files (container, size, encoding)
rather than from the faces. The schema below is the contract between the code that
reads the properties at decode time and the bank that stores them: one bank array
per key, first dimension ``row``, named exactly as the key.

Reading. Every property comes from the file header and from the one decode the
embedding does anyway (:func:`embed.images.load_image_and_metadata` calls
:func:`header_metadata` on the opened image before its pixels are decoded, and
:func:`finish_metadata` after): nothing is decoded twice. :func:`read_metadata`
reads the same columns for one file on its own (used to backfill banks written
before the columns existed). A property that cannot be read keeps its
:data:`MISSING` value and the reason goes into ``meta_error``; the row is kept.

JPEG quality is estimated the way libjpeg's ``jpeg_quality_scaling`` defines it
(and ImageMagick's ``identify -verbose`` reports it): the file's luminance (and,
when present, chrominance) quantisation tables are compared with the IJG standard
tables scaled to every quality 1..100, and the closest quality wins (exact for files
written by libjpeg with standard tables, such as PIL's ``save(quality=q)``). Files
with custom tables (some cameras, Photoshop) get the nearest IJG quality.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "METADATA_SCHEMA",
    "ROW_SCHEMA",
    "MISSING",
    "empty_metadata",
    "header_metadata",
    "finish_metadata",
    "read_metadata",
    "jpeg_quality",
    "jpeg_subsampling",
    "metadata_columns",
    "missing_mask",
]

#: column name -> numpy dtype (``"str"`` = variable-length string column)
METADATA_SCHEMA: dict[str, str] = {
    "file_format": "str",  # container as decoded by PIL ("JPEG", "PNG", ...), not the extension
    "width": "int32",  # pixels, after EXIF orientation is *not* applied (as stored)
    "height": "int32",
    "file_bytes": "int64",
    "bytes_per_pixel": "float32",  # file_bytes / (width * height)
    "pil_mode": "str",  # PIL mode as decoded ("RGB", "L", "P", "RGBA", "CMYK", "I;16", ...)
    "bits_per_channel": "int16",
    "animated": "bool",
    "has_exif": "bool",
    "has_icc": "bool",
    "has_png_text": "bool",
    "jpeg_quality": "int16",  # estimated from the quantisation tables; -1 when not JPEG
    "jpeg_subsampling": "str",  # "4:4:4", "4:2:2", "4:2:0", ...; "" when not JPEG
    "meta_error": "str",  # "" when every property was read; else why not (row kept)
}

#: per-row columns that are *not* file properties (the audit never uses them as such):
#: column -> dtype. Banks made since they exist store them; a bank without one (format
#: 1, or format 2 from before) reads every row as the MISSING value: no group, and
#: "not a face view".
ROW_SCHEMA: dict[str, str] = {
    "group": "str",  # the manifest's group column (identity, source, camera); "" = none
    "pair": "str",  # the manifest's pair column (the real a fake was made from); "" = none
    "face_found": "int8",  # face view: 1 = face found, 0 = none (kept uncropped); -1 = no face view
}

#: value stored when a property could not be read (per dtype kind)
MISSING: dict[str, object] = {
    "str": "",
    "int8": -1,
    "int16": -1,
    "int32": -1,
    "int64": -1,
    "float32": float("nan"),
    "bool": False,
}

# IJG standard quantisation tables (ITU T.81 Annex K), natural (row-major) order.
_STD_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
_STD_CHROMINANCE = np.full(64, 99, dtype=np.int64)
_STD_CHROMINANCE[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [
    17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66,
]  # fmt: skip


def _scaled_tables() -> np.ndarray:
    """``(100, 2, 64)``: the standard tables as libjpeg scales them for quality 1..100."""
    q = np.arange(1, 101, dtype=np.int64)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)[:, None, None]
    std = np.stack([_STD_LUMINANCE, _STD_CHROMINANCE])[None]
    # jpeg_add_quant_table with force_baseline=TRUE: (std * scale + 50) / 100 in 1..255
    return np.clip((std * scale + 50) // 100, 1, 255)


_TABLES = _scaled_tables()

# bits per channel of PIL modes that are not 8 bits deep
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}


def empty_metadata() -> dict[str, Any]:
    """One row of :data:`METADATA_SCHEMA` with every property at its :data:`MISSING` value."""
    return {key: MISSING[dtype] for key, dtype in METADATA_SCHEMA.items()}


def jpeg_quality(quantization: Mapping[int, Any]) -> int:
    """Estimate the IJG quality (1..100) a JPEG was written at from its quantisation tables.

    Args:
        quantization: table id -> 64 values in natural order (PIL's ``img.quantization``);
            table 0 is luminance, table 1 (if any) chrominance.

    Returns:
        The quality whose scaled standard tables are closest (sum of absolute
        differences over the tables present; ties go to the higher quality).

    Raises:
        ValueError: no 64-entry table 0.
    """
    if 0 not in quantization:
        raise ValueError("no luminance quantisation table")
    tables = (quantization[0], quantization[1]) if 1 in quantization else (quantization[0],)
    # a dataset holds few distinct tables: cache by value (the search costs ~0.3 ms)
    return _nearest_quality(tuple(map(tuple, tables)))


@functools.lru_cache(maxsize=4096)
def _nearest_quality(tables: tuple[tuple[int, ...], ...]) -> int:
    if any(len(t) != 64 for t in tables):
        raise ValueError("quantisation table without 64 entries")
    have = np.asarray(tables, dtype=np.int64)
    dist = np.abs(_TABLES[:, : len(tables)] - have[None]).sum(axis=(1, 2))
    return int(100 - np.argmin(dist[::-1]))


def jpeg_subsampling(layer: list[tuple[Any, int, int, int]]) -> str:
    """Chroma subsampling as ``J:a:b`` from a JPEG's SOF components (PIL's ``img.layer``).

    Returns ``"4:0:0"`` for greyscale; for 3- or 4-component files the luma sampling
    factors relative to the first chroma component's.
    """
    if len(layer) == 1:
        return "4:0:0"
    (_, h0, v0, _), (_, h1, v1, _) = layer[0], layer[1]
    if h1 <= 0 or v1 <= 0 or h0 % h1 or v0 % v1:
        return f"{h0}x{v0},{h1}x{v1}"  # unusual factors: stated, not forced into J:a:b
    horiz, vert = h0 // h1, v0 // v1
    return {
        (1, 1): "4:4:4",
        (2, 1): "4:2:2",
        (2, 2): "4:2:0",
        (1, 2): "4:4:0",
        (4, 1): "4:1:1",
        (4, 2): "4:1:0",
    }.get((horiz, vert), f"{h0}x{v0},{h1}x{v1}")


def _bits_per_channel(img: Image.Image) -> int:
    mode = img.mode
    if mode in _MODE_BITS:
        return _MODE_BITS[mode]
    if img.format == "PNG" and img.tile:
        # PNG's decoder raw mode carries the stored depth ("RGB;16B", "L;4", "P;2")
        raw = str(img.tile[0].args if hasattr(img.tile[0], "args") else img.tile[0][3])
        if ";" in raw:
            digits = "".join(ch for ch in raw.split(";", 1)[1] if ch.isdigit())
            if digits:
                return int(digits)
    return 8


def header_metadata(img: Image.Image, *, file_bytes: int) -> dict[str, Any]:
    """Columns readable from an opened, not yet decoded image (call before ``draft``/``load``).

    Args:
        img: the ``PIL.Image.open`` result, untouched (draft mode changes size and mode).
        file_bytes: size of the file in bytes.

    Returns:
        A row of :data:`METADATA_SCHEMA`; properties that need the decoded image
        (EXIF, ICC, PNG text) are filled by :func:`finish_metadata`.
    """
    meta = empty_metadata()
    errors: list[str] = []
    meta["file_format"] = str(img.format or "")
    width, height = img.size
    meta["width"], meta["height"] = int(width), int(height)
    meta["file_bytes"] = int(file_bytes)
    if width > 0 and height > 0:
        meta["bytes_per_pixel"] = float(file_bytes) / float(width * height)
    meta["pil_mode"] = str(img.mode)
    try:
        meta["bits_per_channel"] = _bits_per_channel(img)
    except Exception as exc:  # one unreadable property, row kept
        errors.append(f"bits_per_channel: {_short(exc)}")
    try:
        # cheap for every format: the frame count is in the header, or one frame
        # header is skipped (GIF); the image is back on frame 0 afterwards
        meta["animated"] = bool(getattr(img, "is_animated", False))
    except Exception as exc:  # a bad file is recorded, never raised
        errors.append(f"animated: {_short(exc)}")
    if img.format == "JPEG":
        try:
            meta["jpeg_quality"] = jpeg_quality(getattr(img, "quantization", None) or {})
        except Exception as exc:
            errors.append(f"jpeg_quality: {_short(exc)}")
        try:
            meta["jpeg_subsampling"] = jpeg_subsampling(list(getattr(img, "layer", [])))
        except Exception as exc:
            errors.append(f"jpeg_subsampling: {_short(exc)}")
    meta["meta_error"] = "; ".join(errors)
    return meta


def finish_metadata(meta: dict[str, Any], img: Image.Image) -> dict[str, Any]:
    """Add the properties known once ``img`` is loaded (EXIF, ICC, PNG text chunks).

    PNG text chunks after the image data are only parsed by the decode, hence the
    second step. ``meta`` is updated in place and returned.
    """
    errors = [meta["meta_error"]] if meta.get("meta_error") else []
    info = img.info or {}
    meta["has_icc"] = bool(info.get("icc_profile"))
    # an EXIF block as JPEG APP1 / PNG eXIf / WebP EXIF chunk (TIFF tags are not EXIF)
    meta["has_exif"] = bool(info.get("exif"))
    if meta.get("file_format") == "PNG":
        try:
            meta["has_png_text"] = bool(getattr(img, "text", None))
        except Exception as exc:
            errors.append(f"has_png_text: {_short(exc)}")
    meta["meta_error"] = "; ".join(errors)
    return meta


def read_metadata(path: str | os.PathLike | bytes) -> dict[str, Any]:
    """Read the :data:`METADATA_SCHEMA` columns of one image file on its own.

    Used where no embedding decode happens (e.g. backfilling a bank written before
    the columns existed). ``path`` may also be the file's bytes (an object read from
    a store, :func:`embed.images.open_input`). Never raises for a bad file: a missing,
    unreadable or undecodable file gives the :data:`MISSING` values with the reason in
    ``meta_error``.

    Returns:
        One row: column name -> Python value.
    """
    import io

    from facebank.embed.inputs.images import MAX_IMAGE_PIXELS

    meta = empty_metadata()
    try:
        file_bytes = len(path) if isinstance(path, bytes) else Path(path).stat().st_size
    except OSError as exc:
        meta["meta_error"] = f"unreadable file ({exc.strerror or exc})"
        return meta
    meta["file_bytes"] = int(file_bytes)
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
            meta = header_metadata(img, file_bytes=file_bytes)
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                meta["meta_error"] = "; ".join(
                    e
                    for e in (meta["meta_error"], "too large to decode: EXIF/ICC/text unread")
                    if e
                )
                return meta
            img.load()
            finish_metadata(meta, img)
    except Exception as exc:
        meta["meta_error"] = "; ".join(e for e in (meta["meta_error"], _short(exc)) if e)
    return meta


def metadata_columns(rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of metadata -> one ``(n,)`` array per :data:`METADATA_SCHEMA` column and
    ``face_found`` (what the decode and the view said about each row), typed.

    String columns are ``<U`` arrays; a missing key takes its :data:`MISSING` value.
    """
    out: dict[str, np.ndarray] = {}
    for key, dtype in (*METADATA_SCHEMA.items(), ("face_found", ROW_SCHEMA["face_found"])):
        values = [row.get(key, MISSING[dtype]) for row in rows]
        out[key] = np.asarray(values, dtype=str if dtype == "str" else dtype)
        if dtype == "str" and not values:
            out[key] = np.zeros(0, dtype="<U1")
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def missing_mask(meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{property: (n_rows,) bool}``: where a property's value could not be read.

    A stored :data:`MISSING` value is ambiguous for flags (``False``) and strings
    (``""``: also "not a JPEG" for ``jpeg_subsampling``); ``meta_error`` says which rows
    were not read: a row whose file could not be opened (``file_format`` empty and an
    error) misses every property, and a property named in the error (``"jpeg_quality:
    ..."``) misses that one. Numbers stored as -1 or NaN are missing as well.
    """
    err = np.asarray(meta.get("meta_error", np.zeros(0, dtype=str)), dtype=str)
    n = len(np.asarray(meta["file_format"]))
    if err.shape != (n,):
        err = np.full(n, "")
    has_err = err != ""
    unread = has_err & (np.asarray(meta["file_format"], dtype=str) == "")
    out: dict[str, np.ndarray] = {}
    for key, kind in METADATA_SCHEMA.items():
        if key == "meta_error":
            continue
        m = unread.copy()
        if has_err.any():
            m |= has_err & (np.char.find(err, f"{key}:") >= 0)
        if kind not in ("str", "bool"):
            v = np.asarray(meta[key], dtype=np.float64)
            m |= ~np.isfinite(v) | (v < 0)
        out[key] = m
    return out
