"""embed.face: OpenCV's pretrained Haar cascade finds the face in real photographs shipped
inside installed packages (scikit-image's astronaut, matplotlib's grace_hopper)."""

from __future__ import annotations

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image
from skimage import data

from facebank.embed.face import crop_face, detect_faces, detector_info, largest_face
from facebank.embed.views import FACE_FOUND, parse_view


def _astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def _grace_hopper() -> Image.Image:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(fh)
        img.load()
    return img.convert("RGB")


# Face boxes drawn by hand on the two photos (x0, y0, x1, y1): Eileen Collins' face in
# the astronaut image, Grace Hopper's face in hers.
TRUTH = {
    "astronaut": (_astronaut, (180, 70, 265, 170)),
    "grace_hopper": (_grace_hopper, (170, 110, 360, 340)),
}


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_largest_face_is_the_face_in_a_real_photograph(name):
    load, truth = TRUTH[name]
    box = largest_face(load())
    assert box is not None
    found = (box.x, box.y, box.x + box.w, box.y + box.h)
    assert _iou(found, truth) > 0.4, found


def test_face_view_crops_to_the_face_with_margin_and_flags_it():
    img = _astronaut()
    box = largest_face(img)
    out = parse_view("face:margin=0.25")(img)
    assert out.info[FACE_FOUND] is True
    assert out.size == crop_face(img, box, margin=0.25).size
    assert box.w < out.size[0] <= box.w * 1.5 + 1
    # deterministic
    assert np.array_equal(np.asarray(out), np.asarray(parse_view("face")(img)))


def test_detection_is_scale_independent_on_a_large_copy():
    """A large photo is detected on a downscaled copy; boxes come back in full-size pixels."""
    img = _astronaut()
    big = img.resize((1536, 1536), Image.Resampling.BICUBIC)
    small_box, big_box = largest_face(img), largest_face(big)
    assert big_box is not None
    assert abs(big_box.x / 3 - small_box.x) < 12 and abs(big_box.w / 3 - small_box.w) < 12


def test_no_face_in_a_texture():
    rng = np.random.default_rng(0)
    tex = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((256, 256))
    assert detect_faces(tex) == []


def test_detector_info_names_the_cascade_and_version():
    info = detector_info()
    assert "haarcascade_frontalface_default" in info["detector"]
    assert info["version"].split(".")[0] == "4"


@pytest.mark.slow  # embeds three images with the test backbone (~5-10 s with torch import)
def test_embedding_with_the_face_view_records_detector_and_rows_without_a_face(tmp_path):
    from facebank.embed import FeatureBank, embed_source

    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "gan").mkdir()
    _astronaut().save(src / "real" / "astronaut.png")
    _grace_hopper().save(src / "real" / "grace.jpg")
    rng = np.random.default_rng(0)
    tex = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((256, 256))
    tex.save(src / "gan" / "texture.png")
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "face.zarr", view="face", device="cpu")
    bank = FeatureBank.open(tmp_path / "face.zarr")
    assert len(bank) == 3  # kept uncropped, not dropped
    assert bank.meta["face_not_found"] == ["gan/texture.png"]
    det = bank.meta["view_provenance"]["face_detector"]
    assert "haarcascade_frontalface_default" in det["detector"] and det["version"].startswith("4.")
