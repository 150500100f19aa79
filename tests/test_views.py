"""embed.views: parsing, canonical names, determinism and the effect of each operation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import FacebankError, UnknownNameError
from facebank.embed.inputs.views import VIEW_FORMS, View, parse_view


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (JPEG-like content, so quality changes are visible)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8))
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((_arr(a) - _arr(b)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


VALID = [
    ("original", "original"),
    ("hflip", "hflip"),
    ("vflip", "vflip"),
    ("jpeg:q=75", "jpeg:q=75"),
    ("JPEG:q=50", "jpeg:q=50"),
    ("resize:128", "resize:128"),
    ("resize:256+jpeg:q=75", "resize:256+jpeg:q=75"),
    (" resize:256 + jpeg:q=75 ", "resize:256+jpeg:q=75"),
    ("original+hflip", "hflip"),
    ("hflip+vflip+jpeg:q=90", "hflip+vflip+jpeg:q=90"),
    ("normalise", "normalise:size=256:q=90"),
    ("normalize:q=80", "normalise:size=256:q=80"),
    ("normalise:q=75,size=128", "normalise:size=128:q=75"),
    ("face", "face:margin=0.25"),
    ("face:margin=0.1:missing=skip", "face:margin=0.1:missing=skip"),
    ("face+normalise:size=64", "face:margin=0.25+normalise:size=64:q=90"),
]


@pytest.mark.parametrize(("text", "canonical"), VALID)
def test_parse_gives_canonical_name_that_round_trips(text, canonical):
    view = parse_view(text)
    assert isinstance(view, View)
    assert view.name == canonical == str(view)
    assert parse_view(view.name) == view
    assert parse_view(view) is view
    hash(view)  # frozen: usable as a dict key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "blur",
        "jpeg",
        "jpeg:q=0",
        "jpeg:q=101",
        "jpeg:75",
        "resize:",
        "resize:4",
        "resize:x",
        "hflip+",
        "rotate:90",
        "resize:256+sharpen",
        "normalise:size=4",
        "normalise:q=0",
        "normalise:size",
        "normalise:quality=90",
        "face:margin=-1",
        "face:missing=drop",
        "face:margin=0.1,margin=0.2",
    ],
)
def test_bad_view_strings_list_the_valid_forms(text):
    with pytest.raises(UnknownNameError) as info:
        parse_view(text)
    message = str(info.value)
    assert isinstance(info.value, FacebankError)
    assert repr(text) in message
    for form in ("original", "jpeg:q=", "resize:", "hflip", "vflip", "normalise", "face"):
        assert form in message
    assert len(VIEW_FORMS) == 7


# (missing=skip refuses a photo without a face: covered in the face tests)
@pytest.mark.parametrize("text", [t for t, _ in VALID if "skip" not in t])
def test_views_are_deterministic_and_do_not_modify_the_input(text):
    img = _photo()
    before = _arr(img).copy()
    a, b = parse_view(text)(img), parse_view(text)(img)
    assert a.mode == "RGB"
    assert np.array_equal(_arr(a), _arr(b))
    assert np.array_equal(_arr(img), before)


def test_original_is_identity():
    img = _photo()
    assert parse_view("original")(img) is img  # passed through, not copied
    assert parse_view("resize:512")(img) is img  # nothing to shrink
    assert parse_view("original").is_identity


def test_flips_mirror_and_twice_is_identity():
    img = _photo()
    h, v = parse_view("hflip"), parse_view("vflip")
    assert np.array_equal(_arr(h(img)), _arr(img)[:, ::-1])
    assert np.array_equal(_arr(v(img)), _arr(img)[::-1])
    assert np.array_equal(_arr(h(h(img))), _arr(img))
    assert np.array_equal(_arr(parse_view("hflip+hflip")(img)), _arr(img))
    assert not np.array_equal(_arr(h(img)), _arr(img))


def test_jpeg_quality_lowers_psnr_monotonically():
    img = _photo(256, 256)
    psnrs = [_psnr(img, parse_view(f"jpeg:q={q}")(img)) for q in (95, 75, 50, 20, 5)]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
    assert psnrs[0] > 35 and psnrs[-1] < psnrs[0] - 8


def test_jpeg_view_output_is_a_real_jpeg_roundtrip():
    img = _photo(64, 64)
    out = parse_view("jpeg:q=30")(img)
    assert out.size == img.size
    # re-encoding the result at the same settings is (near) a fixed point, unlike the input
    again = parse_view("jpeg:q=30")(out)
    assert _psnr(out, again) > _psnr(img, out)


@pytest.mark.parametrize(
    ("size", "n", "expected"),
    [
        ((256, 256), 128, (128, 128)),
        ((300, 200), 100, (150, 100)),
        ((200, 300), 100, (100, 150)),
        ((64, 64), 128, (64, 64)),
        ((64, 64), 64, (64, 64)),
    ],
)
def test_resize_shrinks_shorter_side_keeps_aspect_never_upsamples(size, n, expected):
    img = _photo(*size)
    out = parse_view(f"resize:{n}")(img)
    assert out.size == expected


def test_resize_is_antialiased():
    # a one-pixel checkerboard must average to grey, not alias into stripes
    board = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    img = Image.fromarray(np.stack([board] * 3, -1))
    out = _arr(parse_view("resize:32")(img))
    assert abs(out.mean() - 127.5) < 3 and out.std() < 10


def test_composition_applies_left_to_right():
    img = _photo(256, 256)
    a = parse_view("resize:64+jpeg:q=40")(img)
    b = parse_view("jpeg:q=40")(parse_view("resize:64")(img))
    assert np.array_equal(_arr(a), _arr(b))
    assert a.size == (64, 64)
    assert not np.array_equal(_arr(a), _arr(parse_view("jpeg:q=40+resize:64")(img)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("original", 224),
        ("hflip", 224),
        ("vflip+hflip", 224),
        ("resize:128", 128),
        ("hflip+resize:96", 96),
        ("jpeg:q=50", None),
        ("resize:128+jpeg:q=75", None),
        ("normalise", None),
        ("face", None),
    ],
)
def test_draft_size_policy(text, expected):
    assert parse_view(text).draft_size(224) == expected


def test_normalise_makes_format_size_and_mode_identical():
    """Whatever arrives (PNG grayscale 100x300, JPEG 640x480, RGBA PNG 40x40, palette GIF),
    every image leaves as the same JPEG encoding of an NxN RGB image."""
    import io

    rng = np.random.default_rng(0)
    inputs = []
    for fmt, mode, size in (
        ("PNG", "L", (100, 300)),
        ("JPEG", "RGB", (640, 480)),
        ("PNG", "RGBA", (40, 40)),
        ("GIF", "P", (200, 150)),
        ("WEBP", "RGB", (333, 222)),
    ):
        buf = io.BytesIO()
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).convert(mode).save(buf, format=fmt)
        buf.seek(0)
        inputs.append(Image.open(buf))
    view = parse_view("normalise:size=64:q=85")
    outs = [view(img) for img in inputs]
    decoded = []
    for out in outs:
        # re-encode each output losslessly and decode: what a backbone would see
        assert (out.mode, out.size) == ("RGB", (64, 64))
        decoded.append((out.mode, out.size, type(out).__name__))
    assert len(set(decoded)) == 1
    # the output *is* a q=85 JPEG round trip: one more round trip barely changes it
    again = parse_view("jpeg:q=85")(outs[1])
    assert _psnr(again, outs[1]) > 40


def test_normalise_upsamples_small_images_and_centre_crops():
    img = _photo(32, 64)
    out = parse_view("normalise:size=48:q=95")(img)
    assert out.size == (48, 48)
    # centre crop: the middle row of the output matches the middle of the upscaled input
    up = img.resize((48, 96), Image.Resampling.BICUBIC).crop((0, 24, 48, 72))
    assert _psnr(out, up) > 30


def test_face_view_flags_images_without_a_face_and_skip_records_a_reason():
    from facebank.core.errors import ImageDecodeError
    from facebank.embed.inputs.views import FACE_FOUND

    blank = _photo(120, 120)
    kept = parse_view("face")(blank)
    assert kept.info[FACE_FOUND] is False
    assert kept.size == blank.size  # uncropped
    with pytest.raises(ImageDecodeError, match="no face found"):
        parse_view("face:missing=skip")(blank)
    # the flag survives later operations that make fresh images
    assert parse_view("face+normalise:size=32")(blank).info[FACE_FOUND] is False
    prov = parse_view("face").provenance()
    assert prov["face_detector"]["library"] == "opencv-python-headless"
    assert prov["face_detector"]["version"].startswith("4.")
    assert parse_view("normalise").provenance() is None
