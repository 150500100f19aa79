"""embed.images: every odd-but-valid file decodes to upright RGB; every bad one gives a reason."""

from __future__ import annotations

import hashlib
import io
import os
import time

import numpy as np
import pytest

# tests/ is on sys.path under pytest's default (prepend) import mode
from _imagecorpus import Expected, make_image_corpus
from PIL import Image

from facebank.core.errors import FacebankError, ImageDecodeError
from facebank.embed.inputs.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    is_image_path,
    load_image,
    sha256_file,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple:
    directory = tmp_path_factory.mktemp("corpus")
    return directory, make_image_corpus(directory)


def _names(ok: bool) -> list[str]:
    # The corpus is cheap (~0.1 s); build it once at collection to parametrise by name.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return sorted(n for n, e in make_image_corpus(d).items() if e.ok is ok)


def _close(a: tuple, b: tuple, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", _names(True))
def test_odd_but_valid_file_decodes_to_upright_rgb(corpus, name):
    directory, expected = corpus
    exp: Expected = expected[name]
    img = load_image(directory / name)
    assert img.mode == "RGB"
    assert img.size == exp.size
    for xy, colour in exp.probe:
        assert _close(img.getpixel(xy), colour), (name, xy, img.getpixel(xy), colour)


@pytest.mark.parametrize("name", _names(False))
def test_bad_file_raises_decode_error_with_reason(corpus, name):
    directory, expected = corpus
    with pytest.raises(ImageDecodeError) as info:
        load_image(directory / name)
    message = str(info.value)
    assert expected[name].reason in message.lower()
    assert "\n" not in message and "Traceback" not in message
    assert isinstance(info.value, FacebankError)


def test_corpus_covers_every_extension(corpus):
    directory, expected = corpus
    suffixes = {os.path.splitext(n)[1].lower() for n, e in expected.items() if e.ok}
    assert suffixes >= IMAGE_EXTENSIONS - {".jpeg", ".tif"} | {".jpg", ".tiff"}
    assert all(is_image_path(directory / n) for n in expected)


def test_missing_file_and_directory_give_reasons(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path / "dir.jpg")


def test_max_pixels_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(tmp_path / "a.png", max_pixels=99 * 100)
    assert load_image(tmp_path / "a.png", max_pixels=100 * 100).size == (100, 100)
    assert 48_000_000 < MAX_IMAGE_PIXELS < 100_000_000  # above 48 MP phone photos


def test_result_is_detached_from_the_file(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    img = load_image(path)
    path.unlink()
    assert _close(np.asarray(img)[0, 0], (10, 20, 30), tol=3)


def _jpeg(path, size=512):
    rng = np.random.default_rng(0)
    arr = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).save(
        path, format="JPEG", quality=90
    )


def test_draft_mode_decodes_jpeg_at_reduced_scale(tmp_path):
    _jpeg(tmp_path / "big.jpg", 512)
    full = load_image(tmp_path / "big.jpg")
    small = load_image(tmp_path / "big.jpg", draft_size=224)
    assert full.size == (512, 512)
    assert small.size == (256, 256)  # largest 1/2^k scale whose sides stay >= 224
    assert load_image(tmp_path / "big.jpg", draft_size=100).size == (128, 128)
    # a DCT downscale is close to a proper downscale of the full image
    ref = np.asarray(full.resize((256, 256), Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(small, np.float32) - ref).mean() < 6
    # non-JPEG formats ignore draft_size
    full.save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", draft_size=224).size == (512, 512)


def test_draft_mode_keeps_exif_orientation(corpus):
    directory, expected = corpus
    img = load_image(directory / "exif_rotated.jpg", draft_size=8)
    assert img.size[0] < img.size[1]  # still portrait after the draft downscale


def test_truncated_jpeg_never_returns_a_partial_image(tmp_path):
    buf = io.BytesIO()
    _jpeg(buf, 256)
    for cut in (0.2, 0.5, 0.9):
        data = buf.getvalue()
        (tmp_path / "t.jpg").write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(ImageDecodeError, match="truncated"):
            load_image(tmp_path / "t.jpg")


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several read chunks
    (tmp_path / "x.bin").write_bytes(data)
    assert sha256_file(tmp_path / "x.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "x.bin", chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_decode_and_resize_of_512px_jpegs_is_fast_with_draft(tmp_path):
    """Smoke check of the draft path's speed (the real figure comes from the benchmark)."""
    _jpeg(tmp_path / "a.jpg", 512)
    start = time.perf_counter()
    n = 40
    for _ in range(n):
        load_image(tmp_path / "a.jpg", draft_size=224).resize((224, 224), Image.Resampling.BICUBIC)
    per_s = n / (time.perf_counter() - start)
    assert per_s > 60  # generous floor for a loaded shared CI core; target is >= 250/s
