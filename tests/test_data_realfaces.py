"""data/realfaces: the source manifest is complete, and matches the set where it exists."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "data" / "realfaces"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "realfaces"


def _rows() -> list[dict[str, str]]:
    with open(HERE / "sources.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_image_has_its_source_commit_processing_and_sha256():
    rows = _rows()
    assert len(rows) == 762 and {r["class"] for r in rows} == {"real", "fake"}
    assert sum(r["class"] == "real" for r in rows) == 302
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"]), r["path"]
        assert r["processing"] in ("original", "crop:png", "resize-lanczos:jpeg-q95")
        assert (r["processing"] == "crop:png") == bool(r["crop_box"])
        if not r["repository"].startswith("package:"):
            assert "/" in r["repository"] and re.fullmatch(r"[0-9a-f]{7,40}", r["commit"])
    assert not list(HERE.rglob("*.jpg")) and not list(HERE.rglob("*.png"))  # never the images


@pytest.mark.skipif(not (SHARED / "MANIFEST.csv").is_file(), reason="realfaces not present")
def test_the_manifest_sha256_are_the_files_as_used():
    for r in _rows():
        assert hashlib.sha256((SHARED / r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_rebuild_applies_crop_and_resize_as_stated(tmp_path):
    import io
    import sys

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(HERE))
    try:
        import rebuild
    finally:
        sys.path.remove(str(HERE))
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    crop = rebuild.build(
        {"processing": "crop:png", "crop_box": "10,5,40,35", "path": "x"}, buf.getvalue()
    )
    assert (np.asarray(Image.open(io.BytesIO(crop))) == arr[5:35, 10:40]).all()
    small = rebuild.build(
        {"processing": "resize-lanczos:jpeg-q95", "width": "40", "height": "30", "path": "y"},
        buf.getvalue(),
    )
    assert Image.open(io.BytesIO(small)).size == (40, 30)
    assert rebuild.build({"processing": "original", "path": "z"}, b"bytes") == b"bytes"
