"""The demo's stand-in dataset: layout, determinism, disjoint crops, speed, bad input."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import DataError
from facebank.embed.inputs.standin import (
    _GRID,
    IMAGE_SIZE,
    STANDIN_ENGINES,
    _crop_box,
    _tconv_upsample,
    make_standin_dataset,
    standin_sources,
)

N = 40  # per class: real 40, AI 40 over four engines (12/12/10/6)


def _digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_standin_dataset(tmp_path_factory.mktemp("standin") / "ds", n_per_class=N)


def test_sources_are_real_photographs_shipped_in_packages():
    sources = standin_sources()
    assert "grace_hopper" in sources and "astronaut" in sources
    for path in sources.values():
        with Image.open(path) as im:
            assert min(im.size) >= 300  # photographs, not icons


def test_layout_counts_and_image_format(dataset):
    folders = sorted(p.name for p in dataset.iterdir())
    assert folders == sorted(["real", *STANDIN_ENGINES])
    counts = {f: len(list((dataset / f).glob("*.png"))) for f in folders}
    assert counts["real"] == N
    assert sum(counts[e] for e in STANDIN_ENGINES) == N
    assert counts == {
        "real": 40,
        "upsample-nearest": 12,
        "upsample-bilinear": 12,
        "transposed-conv": 10,
        "denoise-renoise": 6,
    }
    # the smallest engine is the one without up-sampling (the default "new" engine)
    assert min(STANDIN_ENGINES, key=lambda e: counts[e]) == "denoise-renoise"
    for path in dataset.rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    again = make_standin_dataset(tmp_path / "again", n_per_class=N, seed=0)
    assert _digests(again) == _digests(dataset)
    other = _digests(make_standin_dataset(tmp_path / "other", n_per_class=N, seed=1))
    assert set(other) == set(_digests(dataset))  # same names...
    assert sum(other[k] != v for k, v in _digests(dataset).items()) == 2 * N  # ...new pixels


def test_no_image_is_repeated_across_or_within_classes(dataset):
    digests = list(_digests(dataset).values())
    assert len(set(digests)) == len(digests)


def test_real_and_simulated_crop_positions_are_disjoint():
    rng = np.random.default_rng(0)
    for shape in [(512, 512), (300, 451), (427, 640)]:
        for parity in (0, 1):
            for _ in range(300):
                left, top, right, bottom = _crop_box(rng, shape, parity)
                side = right - left
                assert bottom - top == side and 0 <= top and bottom <= shape[0]
                assert 0 <= left and right <= shape[1]
                cell_y = int(_GRID * top / (shape[0] - side))
                cell_x = int(_GRID * left / (shape[1] - side))
                assert (cell_y + cell_x) % 2 == parity


def test_engines_leave_their_artifacts(dataset):
    def load(engine, i=0):
        return np.asarray(Image.open(dataset / engine / f"{engine}-{i:04d}.png"), dtype=np.int16)

    nearest = load("upsample-nearest")
    assert np.array_equal(nearest[0::2, 0::2], nearest[1::2, 1::2])  # 2x2 pixel blocks
    real = load("real")
    assert not np.array_equal(real[0::2, 0::2], real[1::2, 1::2])
    # transposed conv: a flat input comes out as a checkerboard of two gains (1.0 vs 0.95)
    flat = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    out = np.asarray(_tconv_upsample(flat), dtype=float)[..., 0]
    assert out.shape == (16, 16)
    assert set(np.unique(out[::2, ::2])) == {200.0}
    assert set(np.unique(out[1::2, 1::2])) == {round(200 * 0.95 * 0.95)}


@pytest.mark.slow
def test_default_size_is_a_few_hundred_per_class_and_fast(tmp_path):
    start = time.perf_counter()
    root = make_standin_dataset(tmp_path / "full")
    seconds = time.perf_counter() - start
    assert len(list((root / "real").glob("*.png"))) == 300
    assert sum(len(list((root / e).glob("*.png"))) for e in STANDIN_ENGINES) == 300
    assert seconds < 20  # a few seconds on 2 shared cores; generous against CI noise


@pytest.mark.parametrize("n", [0, 3, 7, 2.5, -10])
def test_too_few_images_is_a_clear_error(tmp_path, n):
    with pytest.raises(DataError, match="n_per_class"):
        make_standin_dataset(tmp_path / "x", n_per_class=n)
