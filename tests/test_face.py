"""embed.face: OpenCV's pretrained Haar cascade finds the face in real photographs shipped
inside installed packages (scikit-image's astronaut, matplotlib's grace_hopper)."""

from __future__ import annotations

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image
from skimage import data

from facebank.embed.inputs.face import crop_face, detect_faces, detector_info, largest_face
from facebank.embed.inputs.views import FACE_FOUND, parse_view


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
    found = dict(zip(bank.paths.tolist(), bank.face_found.tolist(), strict=True))
    assert found == {"gan/texture.png": 0, "real/astronaut.png": 1, "real/grace.jpg": 1}
    assert "face_not_found" not in bank.meta  # a row column now, not an attribute list
    # a plain bank column: zarr and xarray read it without facebank
    import xarray as xr
    import zarr

    z = zarr.open_group(str(tmp_path / "face.zarr"), mode="r")
    assert z["face_found"].metadata.dimension_names == ("row",)
    ds = xr.open_zarr(tmp_path / "face.zarr", consolidated=False)
    assert (
        dict(zip(ds["path"].values.tolist(), ds["face_found"].values.tolist(), strict=True))
        == found
    )
    det = bank.meta["view_provenance"]["face_detector"]
    assert "haarcascade_frontalface_default" in det["detector"] and det["version"].startswith("4.")


@pytest.mark.slow  # embeds three images with the test backbone (~5-10 s with torch import)
def test_face_view_with_missing_skip_records_the_reason_and_keeps_the_faces(tmp_path):
    """``face:missing=skip`` end to end: real photographs are embedded (face_found = 1), a
    noise image becomes a recorded failure naming the detector, not a row."""
    from facebank.embed import FeatureBank, embed_source

    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "gan").mkdir()
    _astronaut().save(src / "real" / "astronaut.png")
    _grace_hopper().save(src / "real" / "grace.jpg")
    rng = np.random.default_rng(1)
    noise = Image.fromarray((rng.random((200, 200, 3)) * 255).astype(np.uint8))
    noise.save(src / "gan" / "noise.png")
    embed_source(
        src, backbone="tiny-cnn", out=tmp_path / "f.zarr", view="face:missing=skip", device="cpu"
    )
    bank = FeatureBank.open(tmp_path / "f.zarr")
    assert sorted(bank.paths.tolist()) == ["real/astronaut.png", "real/grace.jpg"]
    assert bank.face_found.tolist() == [1, 1]
    (fail,) = bank.failures
    assert fail["path"] == "gan/noise.png"
    assert "no face found" in fail["reason"] and "haarcascade_frontalface_default" in fail["reason"]


def test_face_found_of_a_bank_from_before_the_column_comes_from_its_attribute(tmp_path):
    """Banks written before ``face_found`` was a column listed the rows without a face in
    the ``face_not_found`` attribute; they still read as a per-row flag."""
    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone

    bank = FeatureBank.create(tmp_path / "old.zarr", backbone=synthetic_backbone(4), view="face")
    bank.append(
        np.zeros((3, 4), np.float32),
        labels=[0, 1, 1],
        engines=["real", "gan", "gan"],
        paths=["real/a.png", "gan/b.png", "gan/c.png"],
        splits=["", "", ""],
        sha256=["a", "b", "c"],
    )
    # what an older facebank wrote: no face_found column, the attribute list instead
    columns = [c for c in bank.meta["columns"] if c != "face_found"]
    bank.update_attrs({"columns": columns, "face_not_found": ["gan/b.png"]})
    bank.close()
    old = FeatureBank.open(tmp_path / "old.zarr")
    assert old.face_found.tolist() == [1, 0, 1]
    plain = FeatureBank.create(tmp_path / "plain.zarr", backbone=synthetic_backbone(4))
    plain.append(
        np.zeros((1, 4), np.float32), labels=[0], engines=["real"], paths=["a"], splits=[""],
        sha256=["a"],
    )  # fmt: skip
    plain.close()
    assert FeatureBank.open(tmp_path / "plain.zarr").face_found.tolist() == [-1]
