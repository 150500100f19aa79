"""embed.metadata: acquisition metadata read from the header and the one decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from facebank.embed.inputs.images import load_image, load_image_and_metadata
from facebank.embed.inputs.metadata import (
    METADATA_SCHEMA,
    MISSING,
    header_metadata,
    jpeg_quality,
    jpeg_subsampling,
    metadata_columns,
    read_metadata,
)

RNG = np.random.default_rng(0)
PHOTO = np.asarray(
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((96, 64), Image.BICUBIC)
)


def _save(path, array=PHOTO, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95])
@pytest.mark.parametrize(("subsampling", "expected"), [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_jpeg_quality_and_subsampling_match_what_pil_wrote(
    tmp_path, quality, subsampling, expected
):
    path = _save(tmp_path / "a.jpg", quality=quality, subsampling=subsampling)
    meta = read_metadata(path)
    assert meta["jpeg_quality"] == quality
    assert meta["jpeg_subsampling"] == expected
    assert meta["file_format"] == "JPEG" and meta["meta_error"] == ""


def test_jpeg_quality_of_perturbed_tables_is_the_nearest_standard_quality(tmp_path):
    with Image.open(_save(tmp_path / "a.jpg", quality=80)) as img:
        tables = {k: list(v) for k, v in img.quantization.items()}
    tables[0][5] += 2  # a custom table, close to IJG quality 80
    assert jpeg_quality(tables) == 80
    assert jpeg_quality({0: tables[0]}) == 80  # luminance only (greyscale files)
    with pytest.raises(ValueError, match="luminance"):
        jpeg_quality({1: tables[1]})


def test_greyscale_jpeg_is_4_0_0_and_mode_l(tmp_path):
    path = _save(tmp_path / "g.jpg", PHOTO[..., 0], quality=60)
    meta = read_metadata(path)
    assert (meta["pil_mode"], meta["jpeg_subsampling"], meta["jpeg_quality"]) == ("L", "4:0:0", 60)
    assert jpeg_subsampling([(1, 1, 1, 0)]) == "4:0:0"


def test_png_properties_text_icc_exif_and_bit_depth(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt, steps 30")
    exif = Image.Exif()
    exif[0x010F] = "camera"
    img = Image.fromarray(PHOTO)
    img.save(tmp_path / "t.png", pnginfo=info, icc_profile=b"\0" * 128, exif=exif)
    meta = read_metadata(tmp_path / "t.png")
    assert meta["file_format"] == "PNG"
    assert meta["has_png_text"] and meta["has_icc"] and meta["has_exif"]
    assert (meta["jpeg_quality"], meta["jpeg_subsampling"]) == (-1, "")
    assert meta["bits_per_channel"] == 8
    plain = read_metadata(_save(tmp_path / "p.png"))
    assert not (plain["has_png_text"] or plain["has_icc"] or plain["has_exif"])
    deep = Image.fromarray(PHOTO[..., 0].astype(np.uint16) * 257)
    deep.save(tmp_path / "d.png")
    assert read_metadata(tmp_path / "d.png")["bits_per_channel"] == 16
    Image.fromarray(PHOTO[..., 0] > 128).save(tmp_path / "b.png")
    assert read_metadata(tmp_path / "b.png")["bits_per_channel"] == 1


def test_container_is_the_decoded_one_not_the_extension(tmp_path):
    path = _save(tmp_path / "really_a_png.jpg", format="PNG")
    meta = read_metadata(path)
    assert meta["file_format"] == "PNG" and meta["jpeg_quality"] == -1


def test_size_bytes_per_pixel_and_animation(tmp_path):
    path = _save(tmp_path / "a.jpg", quality=90)
    meta = read_metadata(path)
    size = path.stat().st_size
    assert (meta["width"], meta["height"], meta["file_bytes"]) == (96, 64, size)
    assert meta["bytes_per_pixel"] == pytest.approx(size / (96 * 64))
    frames = [Image.fromarray(PHOTO), Image.fromarray(255 - PHOTO)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert read_metadata(tmp_path / "a.gif")["animated"] is True
    assert read_metadata(path)["animated"] is False


def test_the_embedding_decode_gives_the_same_row_and_the_same_pixels(tmp_path):
    big = np.asarray(Image.fromarray(PHOTO).resize((960, 640)))
    path = _save(tmp_path / "big.jpg", big, quality=85)
    img, meta = load_image_and_metadata(path, draft_size=224)
    # draft mode decodes at 1/2 scale, but the stored size is the file's
    assert img.size == (480, 320)
    assert meta == read_metadata(path)
    assert (meta["width"], meta["height"], meta["jpeg_quality"]) == (960, 640, 85)
    assert np.array_equal(np.asarray(img), np.asarray(load_image(path, draft_size=224)))


def test_unreadable_files_and_properties_are_recorded_not_raised(tmp_path):
    missing = read_metadata(tmp_path / "nope.jpg")
    assert missing["meta_error"].startswith("unreadable file")
    assert missing["width"] == MISSING["int32"]
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    junk = read_metadata(tmp_path / "junk.png")
    assert "UnidentifiedImageError" in junk["meta_error"] and junk["file_bytes"] == 19

    class _BrokenJpeg:  # a header whose tables cannot be read: the other columns survive
        format, size, mode, tile, layer = "JPEG", (4, 2), "RGB", [], [(1, 2, 2, 0)]
        quantization = {3: [1] * 64}

    meta = header_metadata(_BrokenJpeg(), file_bytes=80)
    assert meta["jpeg_quality"] == -1 and "jpeg_quality" in meta["meta_error"]
    assert (meta["width"], meta["bytes_per_pixel"]) == (4, 10.0)


def test_metadata_columns_are_typed_per_schema():
    rows = [{"width": 3, "file_format": "PNG", "face_found": 0}, {}]
    cols = metadata_columns(rows)
    assert set(cols) == {*METADATA_SCHEMA, "face_found"}
    # a face view's flag travels with the metadata rows; rows of other views: -1
    assert cols["face_found"].dtype == np.int8 and cols["face_found"].tolist() == [0, -1]
    for key, dtype in METADATA_SCHEMA.items():
        assert cols[key].shape == (2,)
        assert cols[key].dtype.kind == "U" if dtype == "str" else cols[key].dtype == np.dtype(dtype)
    assert cols["width"].tolist() == [3, -1] and cols["file_format"].tolist() == ["PNG", ""]
    assert metadata_columns([])["meta_error"].shape == (0,)
