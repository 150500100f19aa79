"""Trustworthy numbers on confounded data: balanced AUCs, the cross-fitted audit, balanced
training, and missing metadata kept missing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from facebank.analysis.audit import audit
from facebank.analysis.balanced import balanced_auc
from facebank.core.errors import BankError
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.metadata import METADATA_SCHEMA, metadata_columns, read_metadata
from facebank.heads.propensity import (
    encode_metadata,
    group_folds,
    out_of_fold_proba,
    overlap_weights,
    weighted_auc,
)
from facebank.testing import synthetic_backbone

N = 600  # rows of the array banks: enough for 5 strata x 2 classes, fits in a second


def _meta_rows(fmt: np.ndarray, side: np.ndarray) -> dict[str, np.ndarray]:
    """Metadata columns for rows with a container format and a square size."""
    rows = []
    for f, s in zip(fmt.tolist(), side.tolist(), strict=True):
        row = {k: None for k in METADATA_SCHEMA}
        row.update(
            file_format=f, width=s, height=s, file_bytes=s * s, bytes_per_pixel=1.0,
            pil_mode="RGB", bits_per_channel=8, animated=False, has_exif=False,
            has_icc=False, has_png_text=False, jpeg_quality=90 if f == "JPEG" else -1,
            jpeg_subsampling="4:2:0" if f == "JPEG" else "", meta_error="",
        )  # fmt: skip
        rows.append(row)
    return metadata_columns(rows)


def _confounded_arrays(seed: int = 0):
    """Labels that the format predicts 85 % of the time; a 'pixel' feature that carries
    the label weakly everywhere; a 'file' score that is only a function of the format."""
    rng = np.random.default_rng(seed)
    png = rng.random(N) < 0.5
    y = (rng.random(N) < np.where(png, 0.85, 0.15)).astype(np.int64)
    side = np.where(png, 128, 200)
    file_score = png.astype(float) + 0.01 * rng.normal(size=N)
    pixel = y + rng.normal(size=N)
    return y, np.where(png, "PNG", "JPEG"), side, file_score, pixel


def _array_bank(tmp: Path, y, fmt, side, feats, groups=None) -> FeatureBank:
    n = y.size
    bank = FeatureBank.create(tmp / "b.zarr", backbone=synthetic_backbone(feats.shape[1]))
    cols = _meta_rows(fmt, side)
    if groups is not None:
        cols["group"] = np.asarray(groups, dtype=str)
    bank.append(
        feats.astype(np.float32),
        labels=y.tolist(),
        engines=["real" if v == 0 else "gan" for v in y.tolist()],
        paths=[f"r{i}.png" for i in range(n)],
        splits=[""] * n,
        sha256=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        columns=cols,
    )
    bank.close()
    return FeatureBank.open(tmp / "b.zarr")


# ------------------------------------------------------------------ balanced AUCs


def _independent_weighted_auc(y, s, w):
    """Pair by pair: the definition, written out."""
    num = den = 0.0
    for i in np.flatnonzero(y == 1):
        for j in np.flatnonzero(y == 0):
            pair = w[i] * w[j]
            num += pair * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
            den += pair
    return num / den


def test_weighted_auc_matches_sklearn_and_the_pairwise_definition():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.normal(size=80) + y, 1)  # ties included
    w = rng.random(80)
    assert weighted_auc(y, s, np.ones(80)) == pytest.approx(roc_auc_score(y, s))
    assert weighted_auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    assert weighted_auc(y, s, w) == pytest.approx(_independent_weighted_auc(y, s, w))


def test_balanced_aucs_fall_to_chance_when_the_score_is_only_the_metadata():
    """Known answer: the file score's raw AUC is high only through the format; inside a
    format it knows nothing, so both balanced AUCs are ~0.5. The pixel score keeps its own."""
    y, fmt, side, file_score, pixel = _confounded_arrays()
    enc = encode_metadata(_meta_rows(fmt, side), y >= 0, y >= 0)
    rows = np.arange(N)
    e = out_of_fold_proba(enc, y, group_folds(y, rows, k=5, seed=0), 0)
    assert roc_auc_score(y, file_score) > 0.8
    ba = balanced_auc(y, file_score, e, n_boot=50)
    assert abs(ba.stratified_auc - 0.5) < 0.06 and abs(ba.overlap_auc - 0.5) < 0.06
    assert ba.stratified_ci[0] < 0.5 < ba.stratified_ci[1]
    good = balanced_auc(y, pixel, e, n_boot=0)
    assert good.stratified_auc > 0.65 and good.overlap_auc > 0.65


def test_strata_without_both_classes_and_propensities_of_0_or_1_are_counted():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1] * 4)
    e = np.where(np.arange(40) < 12, 0.0, np.linspace(0.2, 1.0, 40))  # 12 rows at exactly 0
    ba = balanced_auc(y, np.arange(40.0), e, strata=5, n_boot=0)
    assert ba.no_overlap == 13  # 12 at 0, one at exactly 1.0
    w, n_clip = overlap_weights(y, e)
    assert n_clip == 13 and np.isfinite(w).all() and (w > 0).all()
    pure = balanced_auc(np.array([0, 0, 1, 1]), np.arange(4.0), np.array([0.1, 0.1, 0.9, 0.9]))
    assert pure.stratified_auc is None and pure.dropped_strata == pure.strata
    assert "dropped" in pure.note()


# ------------------------------------------------------------------ cross-fitted audit


def test_group_folds_keep_groups_whole_and_say_when_a_class_is_too_small():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    groups = np.array([f"g{i // 8}" for i in range(200)])
    groups[::3] = ""  # ungrouped rows are their own groups
    folds = group_folds(y, np.arange(200), k=5, seed=0, groups=groups)
    assert len(folds) == 5
    for fit, held in folds:
        grouped = set(groups[held]) - {""}
        assert not grouped & set(groups[fit])
    assert group_folds(np.array([0] * 10 + [1]), np.arange(11), k=5, seed=0) == []


@pytest.fixture(scope="module")
def confounded_bank(tmp_path_factory):
    y, fmt, side, _, pixel = _confounded_arrays()
    rng = np.random.default_rng(3)
    feats = np.column_stack([pixel, (fmt == "PNG") + 0.1 * rng.normal(size=N), rng.normal(size=N)])
    return _array_bank(tmp_path_factory.mktemp("cf"), y, fmt, side, feats)


def test_cross_fitted_audit_scores_every_row_out_of_fold_with_plain_and_balanced_heads(
    confounded_bank,
):
    split = audit(confounded_bank)
    res = audit(confounded_bank, cv=5, cv_heads=("linear",))
    cf = res.crossfit
    labelled = np.asarray(confounded_bank.labels) >= 0
    assert cf["k"] == 5 and sum(cf["fold_rows"]) == labelled.sum()
    assert np.isfinite(res.propensity[labelled]).all()
    # every row in the band counts, not only the test split's
    assert cf["uncertain"]["n"] > split.uncertain["n"]
    plain, balanced = cf["heads"]["linear"]["plain"], cf["heads"]["linear"]["balanced"]
    for block in (plain, balanced):
        assert block["uncertain_n_real"] + block["uncertain_n_fake"] == cf["uncertain"]["n"]
        assert block["uncertain_auc"] is not None and block["overlap_auc"] is not None
    # the file feature is worth little where the format cannot tell: balanced AUCs stay
    # below the raw one, and the metadata model's own overlap-weighted AUC is ~0.5
    assert plain["overlap_auc"] < plain["auc"]
    assert abs(cf["metadata"]["overlap_auc"] - 0.5) < 0.1
    assert "Cross-fitted" in res.markdown()


def test_auto_cross_fits_only_when_the_test_band_is_thin(confounded_bank):
    res = audit(confounded_bank, cv="auto")
    assert (res.crossfit is not None) == (audit(confounded_bank).uncertain["n"] < 30)


# ------------------------------------------------------------------ balanced training


def test_train_balance_metadata_makes_the_files_uninformative_on_train_rows(
    confounded_bank, tmp_path
):
    from facebank.heads import train_run
    from facebank.heads.training import BALANCE_TOLERANCE

    res = train_run([confounded_bank], head="linear", out=tmp_path / "run", balance="metadata")
    bal = res.metrics["balance"]
    assert bal["mode"] == "metadata"
    assert bal["raw_metadata_auc"] > 0.75
    # out-of-fold probabilities lean slightly against their own fold (a row's class is
    # missing from its model's data), so the weighted AUC sits a little below 0.5
    assert abs(bal["weighted_metadata_auc"] - 0.5) < BALANCE_TOLERANCE
    plain = train_run([confounded_bank], head="linear", out=tmp_path / "plain")
    assert plain.metrics["balance"] == {"mode": "none"}


def test_train_balance_on_a_bank_without_metadata_names_backfill(tmp_path):
    from facebank.heads import train_run

    bank = FeatureBank.create(tmp_path / "v.zarr", backbone=synthetic_backbone(2))
    bank.append(
        np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32),
        labels=[0, 1] * 20,
        engines=["real", "gan"] * 20,
        paths=[f"{i}.png" for i in range(40)],
        splits=[""] * 40,
        sha256=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)],
    )
    bank.close()
    with pytest.raises(BankError, match="backfill"):
        train_run([tmp_path / "v.zarr"], head="linear", out=tmp_path / "r", balance="metadata")


# ------------------------------------------------------------------ missing metadata


def test_deleted_files_are_missing_metadata_and_do_not_move_the_verdict(tmp_path):
    """Embed-time metadata, then files deleted and read again (as a backfill would): the
    unreadable rows get code 0 of their own in every property, never "no EXIF"."""
    rng = np.random.default_rng(0)
    rows, paths, y = [], [], []
    for label in (0, 1):
        for i in range(40):
            p = tmp_path / f"{label}_{i}.{'jpg' if label == 0 else 'png'}"
            img = rng.integers(0, 256, (24 if label else 32, 24 if label else 32, 3), np.uint8)
            Image.fromarray(img).save(p, quality=90)
            rows.append(read_metadata(p))
            paths.append(p)
            y.append(label)
    y = np.asarray(y)
    feats = np.column_stack([y + rng.normal(size=y.size), rng.normal(size=y.size)])
    cols = metadata_columns(rows)
    fmt, side = cols["file_format"], cols["width"]
    bank = _array_bank(tmp_path, y, fmt, side, feats)
    before = audit(bank, metadata=cols)
    gone = np.arange(y.size) % 9 == 0
    for i in np.flatnonzero(gone):
        paths[i].unlink()
    reread = metadata_columns([read_metadata(p) for p in paths])
    assert (reread["meta_error"][gone] != "").all() and not reread["has_exif"][gone].any()
    after = audit(bank, metadata=reread)
    assert after.verdict == before.verdict == "confounded"
    enc = encode_metadata(reread, y >= 0, y >= 0)
    for key in ("has_exif", "has_icc", "file_format", "width", "file_bytes"):
        assert (enc.codes[key][gone] == 0).all() and (enc.codes[key][~gone] != 0).all()
    assert enc.n_missing["has_exif"] == gone.sum()


def test_cli_audit_cv_and_train_balance(confounded_bank, tmp_path):
    import json

    from typer.testing import CliRunner

    from facebank.cli import app

    bank = str(confounded_bank.path)
    out = CliRunner().invoke(
        app,
        ["audit", bank, "--cv", "3", "--cv-head", "linear", "--out", str(tmp_path / "a")],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    assert "cross-fitted, 3 folds" in out.output and "balanced" in out.output
    cf = json.loads((tmp_path / "a" / "metrics.json").read_text())["audit"]["crossfit"]
    assert set(cf["heads"]["linear"]) == {"plain", "balanced"}
    out = CliRunner().invoke(
        app, ["train", bank, "--balance", "metadata", "--out", str(tmp_path / "t")]
    )
    assert out.exit_code == 0, out.output
    assert "balanced by metadata" in out.output


def test_folds_with_fewer_than_two_rows_of_a_class_are_said_and_counted():
    from facebank.analysis.audit._crossfit import cross_fit

    y = np.array([0] * 40 + [1] * 6)
    fmt = np.where(np.arange(46) % 2 == 0, "PNG", "JPEG")
    enc = encode_metadata(_meta_rows(fmt, np.full(46, 128)), y >= 0, y >= 0)
    block, e = cross_fit(
        enc, y, k=5, groups=None, heads={}, load_features=lambda r: np.zeros((r.size, 1)),
        engines=np.full(46, "x"), band=(0.05, 0.95), balance=False, seed=0,
    )  # fmt: skip
    assert block["k"] == 5 and np.isfinite(e).all()
    # 6 AI rows in 5 folds: four folds hold one, and each of them is said
    short = [n for n in block["notes"] if "fewer than 2 rows of a class" in n]
    assert len(short) == 4 and all(n.startswith("fold ") for n in short)
