"""The embedding runner in-process: rows, duplicates, failures, append, refusals, determinism."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from facebank.embed import (
    BackboneMismatchError,
    BankLockedError,
    DuplicateImageWarning,
    FacebankError,
    FeatureBank,
    SourceError,
    embed_source,
    encode_images,
    sha256_file,
)

ENGINES = ("real", "sdxl", "stylegan2")
FAST = dict(batch_size=4, num_workers=0, progress=False)


def _images(root, n=5, engines=ENGINES, seed=0, size=24, prefix=""):
    """n distinct tiny JPEGs per engine under root/<engine>/."""
    rng = np.random.default_rng(seed)
    for engine in engines:
        (root / engine).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / engine / f"{prefix}{i:03d}.jpg", quality=90)
    return root


def test_rows_follow_the_sorted_source_and_match_encode_images(tmp_path):
    src = _images(tmp_path / "src")
    s = embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", **FAST)
    assert (s.embedded, s.skipped_present, s.duplicates, s.failed) == (15, 0, 0, [])
    assert s.rows == 15 and s.device == "cpu" and s.images_per_s > 0
    bank = FeatureBank.open(tmp_path / "b.zarr")
    expected = sorted(f"{e}/{i:03d}.jpg" for e in ENGINES for i in range(5))
    assert bank.paths.tolist() == expected
    assert bank.engines.tolist() == [p.split("/")[0] for p in expected]
    assert bank.labels.tolist() == [0 if p.startswith("real/") else 1 for p in expected]
    assert bank.sha256.tolist() == [sha256_file(src / p) for p in expected]
    assert bank.backbone["name"] == "tiny-cnn" and bank.view == "original"
    assert bank.meta["source"] == str(src.resolve())
    enc = encode_images([src / p for p in expected], backbone=bank.backbone, batch_size=4)
    assert enc.failures == [] and enc.paths == [str(src / p) for p in expected]
    np.testing.assert_allclose(bank.load_features(), enc.features, rtol=2e-3, atol=2e-3)


def test_worker_processes_give_bit_identical_features(tmp_path):
    src = _images(tmp_path / "src", n=4)
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "a.zarr", **FAST)
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", **(FAST | {"num_workers": 2}))
    a, b = FeatureBank.open(tmp_path / "a.zarr"), FeatureBank.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.load_features(), b.load_features())
    assert a.digest == b.digest


def test_identical_files_are_embedded_once_and_cross_engine_ones_warn(tmp_path):
    src = _images(tmp_path / "src", n=3)
    shutil.copy(src / "sdxl/000.jpg", src / "sdxl/copy.jpg")  # same engine: quiet
    shutil.copy(src / "real/001.jpg", src / "stylegan2/leak.jpg")  # across engines
    with pytest.warns(DuplicateImageWarning, match=r"1 identical image.*stylegan2/leak\.jpg"):
        s = embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", **FAST)
    assert (s.embedded, s.duplicates) == (9, 2)
    assert s.cross_duplicates == [
        ("stylegan2/leak.jpg", "real/001.jpg", "engine 'real' vs 'stylegan2'")
    ]
    bank = FeatureBank.open(tmp_path / "b.zarr")
    assert len(bank) == 9 and len(set(bank.sha256)) == 9
    dups = {d["path"]: d["duplicate_of"] for d in bank.duplicates}
    assert dups == {"sdxl/copy.jpg": "sdxl/000.jpg", "stylegan2/leak.jpg": "real/001.jpg"}
    # a rerun neither re-embeds nor re-reports them
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateImageWarning)
        again = embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", **FAST)
    assert (again.embedded, again.duplicates, again.skipped_present) == (0, 0, 11)
    assert len(FeatureBank.open(tmp_path / "b.zarr").duplicates) == 2


def test_duplicate_across_splits_warns(tmp_path):
    src = tmp_path / "src"
    _images(src / "train", n=2, engines=("real",))
    _images(src / "test", n=1, engines=("real",), seed=5)
    shutil.copy(src / "train/real/000.jpg", src / "test/real/leak.jpg")
    with pytest.warns(DuplicateImageWarning, match="split 'test' vs 'train'"):
        s = embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", **FAST)
    bank = FeatureBank.open(tmp_path / "b.zarr")
    # sorted order: test/real/leak.jpg comes first and is kept; the train copy is the duplicate
    assert bank.paths.tolist() == ["test/real/000.jpg", "test/real/leak.jpg", "train/real/001.jpg"]
    assert bank.duplicates[0]["path"] == "train/real/000.jpg" and s.duplicates == 1


def test_failures_are_recorded_then_retried_and_appends_add_only_new(tmp_path):
    src = _images(tmp_path / "src", n=2)
    (src / "sdxl/broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "real/readme.txt").write_text("not an image")
    out = tmp_path / "b.zarr"
    s = embed_source(src, backbone="tiny-cnn", out=out, **FAST)
    assert s.embedded == 6 and [p for p, _ in s.failed] == ["sdxl/broken.jpg"]
    assert s.ignored == [("real/readme.txt", "not an image extension (.txt)")]
    bank = FeatureBank.open(out)
    assert [f["path"] for f in bank.failures] == ["sdxl/broken.jpg"]
    assert bank.meta["ignored"] == [
        {"path": "real/readme.txt", "reason": "not an image extension (.txt)"}
    ]
    before = bank.load_features()
    # fix the broken file, add a new one: only those two are embedded, at the end
    Image.new("RGB", (24, 24), (10, 200, 30)).save(src / "sdxl/broken.jpg")
    Image.new("RGB", (24, 24), (200, 10, 30)).save(src / "real/new.jpg")
    s2 = embed_source(src, backbone="tiny-cnn", out=out, **FAST)
    assert (s2.embedded, s2.skipped_present, s2.failed) == (2, 6, [])
    bank = FeatureBank.open(out)
    assert bank.paths.tolist()[6:] == ["real/new.jpg", "sdxl/broken.jpg"]
    assert bank.failures == []
    np.testing.assert_array_equal(bank.load_features()[:6], before)


def test_another_backbone_or_view_is_refused_naming_both(tmp_path):
    src = _images(tmp_path / "src", n=1)
    out = tmp_path / "b.zarr"
    embed_source(src, backbone="tiny-cnn", out=out, **FAST)
    with pytest.raises(BackboneMismatchError, match=r"b\.zarr.*tiny-cnn.*tiny-vit"):
        embed_source(src, backbone="tiny-vit", out=out, **FAST)
    with pytest.raises(BackboneMismatchError, match=r"view 'original' but --view is 'vflip'"):
        embed_source(src, backbone="tiny-cnn", out=out, view="vflip", **FAST)
    assert len(FeatureBank.open(out)) == 3


def test_views_are_recorded_and_change_features(tmp_path):
    src = _images(tmp_path / "src", n=2, engines=("real",))
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "o.zarr", **FAST)
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "v.zarr", view="VFLIP", **FAST)
    o, v = FeatureBank.open(tmp_path / "o.zarr"), FeatureBank.open(tmp_path / "v.zarr")
    assert v.view == "vflip"
    assert not np.allclose(o.load_features(), v.load_features())


def test_weights_problem_fails_before_the_bank_exists(tmp_path):
    src = _images(tmp_path / "src", n=1, engines=("real",))
    with pytest.raises(FacebankError, match="weights"):
        embed_source(
            src,
            backbone="efficientnet-b1",
            weights=tmp_path / "none.pt",
            out=tmp_path / "b.zarr",
            **FAST,
        )
    assert not (tmp_path / "b.zarr").exists()


def test_bad_inputs_fail_before_the_bank_exists(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        embed_source(tmp_path / "nope", backbone="tiny-cnn", out=tmp_path / "b.zarr", **FAST)
    src = _images(tmp_path / "src", n=1, engines=("real",))
    with pytest.raises(FacebankError, match="unknown operation"):
        embed_source(src, backbone="tiny-cnn", view="blur", out=tmp_path / "b.zarr", **FAST)
    assert not (tmp_path / "b.zarr").exists()


def test_second_writer_is_refused(tmp_path):
    src = _images(tmp_path / "src", n=1, engines=("real",))
    out = tmp_path / "b.zarr"
    embed_source(src, backbone="tiny-cnn", out=out, **FAST)
    holder = FeatureBank.open(out, mode="a")
    try:
        with pytest.raises(BankLockedError, match="another process"):
            embed_source(src, backbone="tiny-cnn", out=out, **FAST)
    finally:
        holder.close()
    assert embed_source(src, backbone="tiny-cnn", out=out, **FAST).skipped_present == 1


def test_encode_images_reports_failures_and_keeps_order(tmp_path):
    src = _images(tmp_path / "src", n=3, engines=("real",))
    (tmp_path / "bad.png").write_text("no")
    files = [
        src / "real/002.jpg",
        tmp_path / "missing.jpg",
        tmp_path / "bad.png",
        src / "real/000.jpg",
    ]
    enc = encode_images(files, backbone="tiny-vit", batch_size=2)
    assert enc.paths == [str(files[0]), str(files[3])]
    assert enc.features.shape == (2, enc.features.shape[1]) and enc.features.dtype == np.float32
    reasons = dict(enc.failures)
    assert reasons[str(files[1])] == "file not found" and "not an image" in reasons[str(files[2])]
    assert enc.sha256 == [sha256_file(files[0]), sha256_file(files[3])]
    assert np.isfinite(enc.features).all()
