"""Per-row acquisition metadata: what the *file* says, as opposed to what the face shows.

These columns are stored in every bank (format version 2) so that an audit can ask
whether a detector's answer could come from the files (container, size, encoding)
rather than from the faces. The schema below is the contract between the code that
reads the properties at decode time and the bank that stores them: one bank array
per key, first dimension ``row``, named exactly as the key.
"""

from __future__ import annotations

__all__ = ["METADATA_SCHEMA", "MISSING"]

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

#: value stored when a property could not be read (per dtype kind)
MISSING: dict[str, object] = {
    "str": "",
    "int16": -1,
    "int32": -1,
    "int64": -1,
    "float32": float("nan"),
    "bool": False,
}
