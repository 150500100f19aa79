"""embed.multi.embed_source_multi: one decode per image, one bank per backbone.

Banks written together must hold exactly what separate ``embed_source`` runs write
(same rows, same order, bit-identical features), and each bank resumes on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import FacebankError
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.runner.local import embed_source
from facebank.embed.runner.multi import embed_source_multi, join_banks

KW = {"device": "cpu", "progress": False, "batch_size": 4, "num_workers": 0}


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    for engine in ("real", "sdxl"):
        (tmp_path / "src" / engine).mkdir(parents=True)
        for i in range(5):
            px = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path / "src" / engine / f"{i}.png")
    (tmp_path / "src" / "sdxl" / "broken.png").write_bytes(b"not an image")
    return tmp_path / "src"


def test_one_decode_gives_the_banks_separate_runs_give(source, tmp_path):
    multi = embed_source_multi(
        source, backbones=["tiny-cnn", "tiny-vit"], outs=[tmp_path / "a", tmp_path / "b"], **KW
    )
    assert [s.embedded for s in multi] == [10, 10]
    assert all(len(s.failed) == 1 and "broken.png" in s.failed[0][0] for s in multi)
    for name, out in (("tiny-cnn", "a"), ("tiny-vit", "b")):
        embed_source(source, backbone=name, out=tmp_path / f"{out}-alone", **KW)
        together = FeatureBank.open(tmp_path / out)
        alone = FeatureBank.open(tmp_path / f"{out}-alone")
        assert together.backbone == alone.backbone
        assert (together.paths == alone.paths).all() and (together.sha256 == alone.sha256).all()
        assert np.array_equal(together.load_features(), alone.load_features())
    joined = join_banks([FeatureBank.open(tmp_path / "a"), FeatureBank.open(tmp_path / "b")])
    assert len(joined) == 10


def test_each_bank_resumes_on_its_own(source, tmp_path):
    embed_source(source, backbone="tiny-cnn", out=tmp_path / "a", **KW)  # a is complete
    before = FeatureBank.open(tmp_path / "a").load_features()
    multi = embed_source_multi(
        source, backbones=["tiny-cnn", "tiny-vit"], outs=[tmp_path / "a", tmp_path / "b"], **KW
    )
    assert [s.embedded for s in multi] == [0, 10]
    a = FeatureBank.open(tmp_path / "a")
    assert len(a) == 10 and np.array_equal(a.load_features(), before)  # nothing appended twice
    again = embed_source_multi(
        source, backbones=["tiny-cnn", "tiny-vit"], outs=[tmp_path / "a", tmp_path / "b"], **KW
    )
    assert [s.embedded for s in again] == [0, 0]


def test_bad_arguments(source, tmp_path):
    with pytest.raises(FacebankError, match="one --out per backbone"):
        embed_source_multi(source, backbones=["tiny-cnn"], outs=[], **KW)
    with pytest.raises(FacebankError, match="must not repeat"):
        embed_source_multi(
            source, backbones=["tiny-cnn", "tiny-cnn"], outs=[tmp_path / "a", tmp_path / "b"], **KW
        )


def test_block_views_train_on_some_blocks_and_keep_their_identity(source, tmp_path):
    from facebank.core.errors import BackboneMismatchError
    from facebank.embed.runner.multi import select_blocks
    from facebank.heads import train_run
    from facebank.heads.persistence import check_backbone

    embed_source(source, backbone="tiny-vit", out=tmp_path / "b", layer="blocks", **KW)
    bank = FeatureBank.open(tmp_path / "b")
    assert bank.backbone["layer"] == "blocks" and bank.backbone["blocks"] == [0, 2]
    last = select_blocks(bank, "-1")
    width = bank.dim // 2
    assert last.dim == width and last.backbone["blocks"] == [1, 2]
    assert np.array_equal(last.load_features([0, 3]), bank.load_features([0, 3])[:, width:])
    assert select_blocks(bank, "all") is bank
    with pytest.raises(FacebankError, match="blocks '5' is not valid"):
        select_blocks(bank, "5")
    res = train_run([last], head="linear", out=tmp_path / "run")
    assert res.head.n_features_in_ == width
    with pytest.raises(BackboneMismatchError, match="blocks"):
        check_backbone(res.head, bank.backbone, what="the full bank")
    with pytest.raises(BackboneMismatchError):
        check_backbone(res.head, select_blocks(bank, 0).backbone, what="block 0")
    check_backbone(res.head, last.backbone, what="block 1")
