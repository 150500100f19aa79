"""score and evaluate with heads of several backbones and heads of some blocks.

A feature-level head (``facebank train BANK_A BANK_B``), a score-level ``fusion`` head and
a head trained on the last block of a ``--layer blocks`` bank are scored on image files
(embedded with every backbone the head needs, each image decoded once) and on banks, and
evaluated; the two paths must give the same scores. Both test-only backbones (seeded
random weights) run on a small stand-in dataset: the numbers are not judged.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.evaluation import evaluate
from facebank.cli import app
from facebank.core.errors import BackboneMismatchError, FacebankError
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.standin import make_standin_dataset
from facebank.embed.runner.local import embed_source
from facebank.embed.runner.multi import (
    banks_for_spec,
    embed_source_multi,
    encode_images_for,
    select_blocks,
)
from facebank.heads import load_head, score_run, train_run

pytestmark = [
    pytest.mark.slow,  # the module's fixture embeds 32 images three times and trains 3 heads
    pytest.mark.filterwarnings("ignore::facebank.core.errors.SmallSampleWarning"),
]
KW = {"device": "cpu", "progress": False, "batch_size": 8, "num_workers": 0}
# float16 banks against float32 features embedded at score time
TOL = {"rtol": 2e-2, "atol": 2e-2}


@dataclass
class Setup:
    data: Path
    cnn: Path
    vit: Path
    vit_blocks: Path
    joined_run: Path
    fusion_run: Path
    block_run: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("fusion-score")
    data = make_standin_dataset(root / "data", n_per_class=16)
    cnn, vit, blocks = root / "cnn.zarr", root / "vit.zarr", root / "vit-blocks.zarr"
    embed_source_multi(data, backbones=["tiny-cnn", "tiny-vit"], outs=[cnn, vit], **KW)
    embed_source(data, backbone="tiny-vit", out=blocks, layer="blocks", **KW)
    a, b = FeatureBank.open(cnn), FeatureBank.open(vit)
    joined = train_run([a, b], head="linear", out=root / "joined")
    fused = train_run([a, b], head="fusion", params={"rule": "stack"}, out=root / "fusion")
    last = train_run([select_blocks(FeatureBank.open(blocks), "-1")], head="linear",
                     out=root / "block")  # fmt: skip
    return Setup(data, cnn, vit, blocks, joined.run_dir, fused.run_dir, last.run_dir)


def _by_path(res) -> dict[str, float]:
    return {
        Path(p).name + Path(p).parent.name: s for p, s in zip(res.paths, res.scores, strict=True)
    }


@pytest.mark.parametrize("run", ["joined_run", "fusion_run"])
def test_a_head_of_two_backbones_scores_images_as_it_scores_their_banks(setup, run, tmp_path):
    head = getattr(setup, run)
    spec = load_head(head).backbone_
    assert spec["library"] == "joined" and [m["name"] for m in spec["members"]] == [
        "tiny-cnn",
        "tiny-vit",
    ]
    from_images = score_run(head, inputs=[setup.data], out=tmp_path / "img.csv", device="cpu")
    # banks in either order, or the bank of the second backbone first: same join
    from_banks = score_run(head, inputs=[setup.vit, setup.cnn], out=tmp_path / "bank.csv")
    assert from_images.n_scored == from_banks.n_scored == 32 and not from_images.failures
    a, b = _by_path(from_images), _by_path(from_banks)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], **TOL)
    assert np.std(list(a.values())) > 0  # not a constant score


def test_images_of_a_joined_head_are_decoded_once_and_side_by_side(setup):
    spec = load_head(setup.joined_run).backbone_
    files = sorted(str(p) for p in (setup.data / "real").glob("*.png"))[:3]
    both = encode_images_for(files, backbone=spec, device="cpu")
    cnn = encode_images_for(files, backbone=spec["members"][0], device="cpu")
    vit = encode_images_for(files, backbone=spec["members"][1], device="cpu")
    assert both.features.shape == (3, spec["dim"]) and both.paths == files
    np.testing.assert_allclose(both.features, np.hstack([cnn.features, vit.features]), atol=1e-5)
    with pytest.raises(FacebankError, match="needs 2 backbones"):
        encode_images_for(files, backbone=spec, device="cpu", weights="w.safetensors")


def test_a_head_of_one_block_scores_the_blocks_bank_and_images(setup, tmp_path):
    head = load_head(setup.block_run)
    assert head.backbone_["layer"] == "blocks" and head.backbone_["blocks"] == [1, 2]
    from_bank = score_run(setup.block_run, inputs=[setup.vit_blocks], out=tmp_path / "b.csv")
    from_images = score_run(
        setup.block_run, inputs=[setup.data], out=tmp_path / "i.csv", device="cpu"
    )
    a, b = _by_path(from_images), _by_path(from_bank)
    assert a.keys() == b.keys() and len(a) == 32
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], **TOL)
    with pytest.raises(BackboneMismatchError):  # final-layer features are another space
        score_run(setup.block_run, inputs=[setup.vit], out=tmp_path / "x.csv")


def test_evaluate_joins_or_selects_the_banks_the_head_needs(setup, tmp_path):
    for run, banks in (
        (setup.joined_run, [setup.cnn, setup.vit]),
        (setup.fusion_run, [setup.vit, setup.cnn]),
        (setup.block_run, [setup.vit_blocks]),
    ):
        res = evaluate(run, banks, n_boot=0)
        with open(run / "splits.csv", newline="") as fh:
            n_test = sum(1 for r in csv.DictReader(fh) if r["split"] == "test")
        assert res.n_rows == n_test and sum(res.n_excluded.values()) == 32 - n_test
        assert 0.0 <= res.metrics.auc <= 1.0


def test_a_fusion_head_refuses_banks_of_other_backbones(setup, tmp_path):
    with pytest.raises(BackboneMismatchError, match="no bank given uses tiny-vit"):
        score_run(setup.fusion_run, inputs=[setup.cnn], out=tmp_path / "x.csv")
    with pytest.raises(BackboneMismatchError, match="layer blocks"):
        score_run(setup.fusion_run, inputs=[setup.cnn, setup.vit_blocks], out=tmp_path / "y.csv")
    with pytest.raises(BackboneMismatchError, match="trained on the backbones"):
        evaluate(setup.joined_run, [setup.cnn, setup.vit_blocks], n_boot=0)


def test_one_backbone_of_two_taps_is_refused_naming_both_banks(setup, tmp_path):
    with pytest.raises(BackboneMismatchError) as e:
        train_run([setup.vit, setup.vit_blocks], head="linear", out=tmp_path / "run")
    msg = str(e.value)
    assert str(setup.vit) in msg and str(setup.vit_blocks) in msg and "layer" in msg
    assert not (tmp_path / "run").exists()


def test_banks_for_spec_leaves_single_backbone_heads_alone(setup):
    bank = FeatureBank.open(setup.cnn)
    assert banks_for_spec(bank.backbone, [bank], what="h") == [bank]
    assert banks_for_spec(None, [bank], what="h") == [bank]
    doc = dict(load_head(setup.joined_run).backbone_)
    from facebank.embed.backbones.registry import backbone_from_spec

    with pytest.raises(FacebankError, match="several backbones joined"):  # e.g. the Ray engine
        backbone_from_spec(doc, device="cpu")
    doc.pop("members")  # a joined spec written before the members were kept
    with pytest.raises(FacebankError, match="without its member specs"):
        banks_for_spec(doc, [bank], what="h")


def test_cli_score_and_evaluate_with_a_fusion_head(setup, tmp_path):
    runner = CliRunner()
    out = tmp_path / "scores.csv"
    res = runner.invoke(
        app, ["score", str(setup.data / "real"), "--head", str(setup.fusion_run), "--out",
              str(out), "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 1 + 16
    res = runner.invoke(
        app, ["evaluate", str(setup.cnn), str(setup.vit), "--head", str(setup.fusion_run),
              "--out", str(tmp_path / "ev"), "--n-boot", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_rows"] > 0
    res = runner.invoke(
        app, ["score", str(setup.cnn), "--head", str(setup.fusion_run), "--out", str(out)]
    )
    assert res.exit_code == 1 and "tiny-vit" in res.output
