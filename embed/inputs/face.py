"""Face detection for the ``face`` view: OpenCV's pretrained frontal-face Haar cascade.

The detector is ``haarcascade_frontalface_default.xml`` as shipped inside the PyPI
package ``opencv-python-headless`` 4.x (5.x no longer ships the cascade files): real,
pretrained, offline, and the same on every machine with the same OpenCV version. The
detector's name and version are what :func:`detector_info` returns; banks of a ``face``
view record them.

Decisions (reasons, not restatements):

- Detection runs on a grayscale, histogram-equalised copy no larger than
  ``DETECT_SIDE`` on its longer side: the cascade's 24 px window finds faces of a
  portrait at that size, and a 4000 px photo would otherwise take seconds. Boxes are
  scaled back to the full image.
- ``min_size``: a face smaller than ``MIN_FACE_FRACTION`` of the shorter side is not
  "the face" of a face photo (most such hits are textures in the background).
- ``minNeighbors=5``, ``scaleFactor=1.1``: OpenCV's documented defaults for this cascade.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from facebank.core.errors import ImageDecodeError

__all__ = [
    "DETECT_SIDE",
    "MIN_FACE_FRACTION",
    "FaceBox",
    "crop_face",
    "detect_faces",
    "detector_info",
    "largest_face",
]

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIDE = 640
MIN_FACE_FRACTION = 0.15
_SCALE_FACTOR = 1.1
_MIN_NEIGHBOURS = 5


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the image it was found in."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a dependency of facebank
        raise ImageDecodeError(
            "the face view needs OpenCV's Haar cascade: pip install 'opencv-python-headless<5'"
        ) from exc
    return cv2


@functools.lru_cache(maxsize=1)
def _cascade() -> Any:
    cv2 = _cv2()
    path = cv2.data.haarcascades + CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ImageDecodeError(
            f"OpenCV {cv2.__version__} did not load {path!r}; the face view needs "
            "opencv-python-headless 4.x, which ships the cascade files (5.x does not)"
        )
    return cascade


def detector_info() -> dict[str, Any]:
    """Name, library, version and settings of the detector (recorded in ``face`` banks)."""
    cv2 = _cv2()
    return {
        "detector": f"opencv {CASCADE.removesuffix('.xml')}",
        "library": "opencv-python-headless",
        "version": cv2.__version__,
        "detect_side": DETECT_SIDE,
        "min_face_fraction": MIN_FACE_FRACTION,
        "scale_factor": _SCALE_FACTOR,
        "min_neighbours": _MIN_NEIGHBOURS,
    }


def detect_faces(img: Image.Image) -> list[FaceBox]:
    """Faces found by the Haar cascade, largest first.

    Args:
        img: any PIL image (converted to grayscale for detection).

    Returns:
        Boxes in ``img``'s pixel coordinates (empty when no face was found).
    """
    cv2 = _cv2()
    w, h = img.size
    scale = min(1.0, DETECT_SIDE / max(w, h))
    gray = img.convert("L")
    if scale < 1.0:
        gray = gray.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
        )
    a = cv2.equalizeHist(np.asarray(gray, dtype=np.uint8))
    side = max(1, int(MIN_FACE_FRACTION * min(a.shape)))
    found = _cascade().detectMultiScale(
        a, scaleFactor=_SCALE_FACTOR, minNeighbors=_MIN_NEIGHBOURS, minSize=(side, side)
    )
    boxes = [
        FaceBox(
            int(round(x / scale)),
            int(round(y / scale)),
            int(round(bw / scale)),
            int(round(bh / scale)),
        )
        for x, y, bw, bh in (found if len(found) else [])
    ]
    return sorted(boxes, key=lambda b: (-b.area, b.x, b.y))


def largest_face(img: Image.Image) -> FaceBox | None:
    """The largest face of :func:`detect_faces`, or ``None``."""
    boxes = detect_faces(img)
    return boxes[0] if boxes else None


def crop_face(img: Image.Image, box: FaceBox, *, margin: float) -> Image.Image:
    """Crop ``box`` grown by ``margin`` of its size on every side, clipped to the image."""
    w, h = img.size
    dx, dy = round(box.w * margin), round(box.h * margin)
    left, top = max(0, box.x - dx), max(0, box.y - dy)
    right, bottom = min(w, box.x + box.w + dx), min(h, box.y + box.h + dy)
    return img.crop((left, top, right, bottom))
