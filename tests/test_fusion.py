"""Fusion across backbones: banks joined by sha256, feature-level training, the fusion head.

Two synthetic "backbones" see the same 240 images: each carries a different part of the
signal (backbone A separates engine sdxl, B separates engine flux), so only a fusion
of both finds every AI engine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    DataError,
    FacebankError,
    UnmatchedRowsWarning,
)
from facebank.embed.bank.bank import write_bank
from facebank.embed.runner.multi import join_banks, joined_spec
from facebank.heads import create_head, load_head
from facebank.heads.fusion import FusionHead
from facebank.heads.training import train_run

N = 240
RNG = np.random.default_rng(0)
ENGINES = np.array(["real"] * 120 + ["sdxl"] * 60 + ["flux"] * 60)
LABELS = (ENGINES != "real").astype(np.int8)
SHA = np.array([f"{i:064x}" for i in range(N)])
SPLITS = np.array((["train"] * 3 + ["val", "test"]) * (N // 5))


def _spec(name: str, dim: int) -> dict:
    return {"name": name, "library": "timm", "model": name, "pretrained": "x", "dim": dim}


def _features(signal_engine: str, dim: int = 8) -> np.ndarray:
    X = RNG.normal(size=(N, dim)).astype(np.float32)
    X[ENGINES == signal_engine, 0] += 4.0
    return X


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    a = write_bank(
        root / "a.zarr", _features("sdxl"), labels=LABELS, engines=ENGINES, sha256=SHA,
        splits=SPLITS, backbone=_spec("bb-a", 8),
    )  # fmt: skip
    order = RNG.permutation(N)  # the second bank lists the images in another order
    b = write_bank(
        root / "b.zarr", _features("flux", 6)[order], labels=LABELS[order],
        engines=ENGINES[order], sha256=SHA[order], splits=SPLITS[order],
        backbone=_spec("bb-b", 6),
    )  # fmt: skip
    return a, b, order


def test_join_matches_rows_by_sha256(banks):
    a, b, order = banks
    joined = join_banks([a, b])
    assert len(joined) == N and joined.dim == 14 and joined.columns == [(0, 8), (8, 14)]
    X = joined.load_features(np.arange(5))
    inverse = np.argsort(order)
    np.testing.assert_allclose(X[:, :8], a.load_features(np.arange(5)))
    np.testing.assert_allclose(X[:, 8:], b.load_features(inverse[:5]))
    assert (joined.labels == LABELS).all() and (joined.sha256 == SHA).all()
    spec = joined.backbone
    assert spec["library"] == "joined" and spec["dim"] == 14 and "bb-a" in spec["model"]
    assert joined_spec([b.backbone, a.backbone]).to_dict() != spec  # order is identity


def test_join_reports_unmatched_rows_and_refuses_disjoint_banks(banks, tmp_path):
    a, _, _ = banks
    part = write_bank(
        tmp_path / "part.zarr", RNG.normal(size=(100, 4)), labels=LABELS[:100],
        engines=ENGINES[:100], sha256=SHA[:100], splits=SPLITS[:100], backbone=_spec("bb-c", 4),
    )  # fmt: skip
    with pytest.warns(UnmatchedRowsWarning, match="140"):
        joined = join_banks([a, part])
    assert len(joined) == 100 and joined.unmatched[str(a.path)] == 140
    other = write_bank(
        tmp_path / "other.zarr", RNG.normal(size=(10, 4)), labels=[0] * 10, engines="real",
        sha256=[f"{i:064x}" for i in range(1000, 1010)], backbone=_spec("bb-d", 4),
    )  # fmt: skip
    with pytest.raises(FacebankError, match="share no rows"):
        join_banks([a, other])
    relabelled = write_bank(
        tmp_path / "relabel.zarr", RNG.normal(size=(N, 4)), labels=LABELS,
        engines=np.where(ENGINES == "flux", "midjourney", ENGINES), sha256=SHA,
        splits=SPLITS, backbone=_spec("bb-e", 4),
    )  # fmt: skip
    with pytest.raises(BankError, match="another engine"):
        join_banks([a, relabelled])
    with pytest.raises(FacebankError, match="at least two backbones"):
        join_banks([a, a])
    # one backbone, two preprocessings: not two backbones to fuse - both banks named
    squash = write_bank(
        tmp_path / "squash.zarr", RNG.normal(size=(N, 8)), labels=LABELS, engines=ENGINES,
        sha256=SHA, splits=SPLITS, backbone={**_spec("bb-a", 8), "resize_mode": "squash"},
    )  # fmt: skip
    crop = write_bank(
        tmp_path / "crop.zarr", RNG.normal(size=(N, 8)), labels=LABELS, engines=ENGINES,
        sha256=SHA, splits=SPLITS, backbone={**_spec("bb-a", 8), "resize_mode": "shortest"},
    )  # fmt: skip
    with pytest.raises(BackboneMismatchError, match="resize_mode: 'squash' != 'shortest'") as e:
        join_banks([squash, crop])
    assert "squash.zarr" in str(e.value) and "crop.zarr" in str(e.value)


@pytest.mark.parametrize("rule", ["mean", "max", "stack"])
def test_fusion_head_beats_each_backbone_alone(banks, rule):
    a, b, _ = banks
    joined = join_banks([a, b])
    tr, va, te = (np.flatnonzero(joined.splits == s) for s in ("train", "val", "test"))
    X, y = joined.load_features(), joined.labels.astype(int)
    head = FusionHead(rule=rule, columns=joined.columns, head="linear")
    head.fit(X[tr], y[tr], X_val=X[va], y_val=y[va])
    assert len(head.members_) == 2
    from sklearn.metrics import roc_auc_score

    fused = roc_auc_score(y[te], head.decision_function(X[te]))
    singles = [roc_auc_score(y[te], s) for s in head.member_scores(X[te]).T]
    assert fused > max(singles) + 0.05, (fused, singles)
    if rule == "stack":
        assert head.n_stack_rows_ == va.size  # the stacker saw the validation rows only


def test_stack_without_val_holds_rows_out_and_refuses_one_class():
    X = RNG.normal(size=(80, 6))
    y = np.r_[np.zeros(40), np.ones(40)].astype(int)
    head = FusionHead(rule="stack", columns=((0, 3), (3, 6))).fit(X, y)
    assert head.n_stack_rows_ == 20 and head.members_[0].n_train_ == 60
    with pytest.raises(DataError, match="both classes"):
        FusionHead(rule="stack", columns=((0, 3), (3, 6))).fit(X, y, X_val=X[:5], y_val=y[:5])
    with pytest.raises(DataError, match="rule='vote' is not valid"):
        FusionHead(rule="vote").fit(X, y)
    with pytest.raises(DataError, match="do not split 6 features"):
        FusionHead(columns=((0, 4), (3, 6))).fit(X, y)


def test_train_on_two_backbones_feature_and_score_level(banks, tmp_path):
    a, b, _ = banks
    with pytest.warns(Warning):  # small validation sets: threshold and calibration warnings
        feat = train_run([a.path, b.path], head="linear", out=tmp_path / "feat")
        fused = train_run([a.path, b.path], head="fusion", out=tmp_path / "fused")
    assert feat.head.n_features_in_ == 14
    head = load_head(tmp_path / "fused")
    assert isinstance(head, FusionHead) and head.rule == "stack"
    assert head.n_stack_rows_ == int((SPLITS == "val").sum())
    joined = join_banks([a, b])
    X = joined.load_features()
    np.testing.assert_allclose(head.decision_function(X), fused.head.decision_function(X))
    doc = json.loads((tmp_path / "fused" / "head.json").read_text())
    assert doc["backbone"]["library"] == "joined"
    # a head trained on A+B refuses B+A and A alone
    from facebank.heads.persistence import check_backbone

    with pytest.raises(BackboneMismatchError):
        check_backbone(head, join_banks([b, a]).backbone, what="banks B+A")
    with pytest.raises(BackboneMismatchError):
        check_backbone(head, a.backbone, what="bank A")


def test_fusion_is_a_registered_head():
    head = create_head("fusion", rule="mean", head="linear")
    assert isinstance(head, FusionHead) and head.get_params()["rule"] == "mean"
