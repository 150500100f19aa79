"""analysis.leaderboard: several backbones in one experiment, fused rows, the leaderboard.

Runs use the two test-only backbones (seeded random weights) on a small stand-in dataset;
the numbers are not judged, only what was run, keyed, written and refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facebank.analysis.leaderboard import (
    Comparison,
    LeaderboardRow,
    leaderboard_row,
    out_of_engine,
    run_backbone_comparison,
)
from facebank.core.errors import DataError, UnknownNameError
from facebank.embed.bank.bank import FeatureBank, write_bank
from facebank.embed.inputs.standin import make_standin_dataset
from facebank.embed.runner.multi import join_banks
from facebank.heads import train_run

BACKBONES = ["tiny-cnn", "tiny-vit"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Comparison:
    data = make_standin_dataset(tmp_path_factory.mktemp("lb") / "data", n_per_class=24)
    out = tmp_path_factory.mktemp("lb-run") / "run"
    return run_backbone_comparison(
        data, backbones=BACKBONES, out=out, views=(), heads=("linear",), device="cpu",
        progress=False,
    )  # fmt: skip


@pytest.mark.slow
def test_comparison_keys_results_by_backbone_and_head(comparison):
    run = comparison.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    fused = [b for b in metrics["results"] if "+" in b]
    assert set(metrics["results"]) == {*BACKBONES, *fused} and len(fused) == 2
    for heads in metrics["results"].values():
        row = heads["linear"]
        assert 0 <= row["auc"] <= 1 and len(row["auc_ci"]) == 2
        assert row["tpr_ci"] is not None and row["fpr"] is not None  # TPR beside its FPR
    for name in BACKBONES:  # each backbone's full experiment, banks embedded once
        sub = json.loads((run / name / "metrics.json").read_text())
        assert sub["backbone"] == name and sub["embedding"]["original"]["embedded"] == 0
        assert (run / name / "banks" / "original.zarr").is_dir()
    assert metrics["embedding"]["original"]["tiny-cnn"]["embedded"] > 0
    summary = (run / "summary.md").read_text()
    assert summary.startswith("### Leaderboard") and "TPR at val-chosen 0.5% FPR" in summary
    assert (run / "report.html").is_file() and (run / "leaderboard" / "metrics.json").is_file()
    # leave-one-engine-out on every backbone x head row, fused rows included
    assert len(comparison.rows) == 4  # two backbones, joined features, fusion stack
    for r in comparison.rows:
        assert r.out_of_engine_tpr is not None and r.out_of_engine_fpr is not None, r
        lo, hi = r.out_of_engine_tpr_ci
        assert lo <= r.out_of_engine_tpr <= hi
        assert " at FPR " in r.cells()["out-of-engine TPR (LOEO)"]
    assert "out-of-engine stack linear" in comparison.seconds


def test_leaderboard_row_scores_test_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    X = rng.normal(size=(n, 6)) + 1.5 * y[:, None]
    splits = np.array(["train", "train", "val", "test"] * (n // 4))
    bank = write_bank(
        tmp_path / "b.zarr", X, labels=y, engines=np.where(y == 1, "sdxl", "real"),
        splits=splits,
    )  # fmt: skip
    with pytest.warns(Warning):
        train_run([bank], head="linear", out=tmp_path / "run")
    row = leaderboard_row(
        tmp_path / "run", FeatureBank.open(tmp_path / "b.zarr"), backbone="x", head="linear"
    )
    assert row.n_test == (splits == "test").sum() and row.auc > 0.8
    assert row.auc_ci[0] <= row.auc <= row.auc_ci[1] and row.fpr is not None
    cells = row.cells()
    assert "[" in cells["TPR at val-chosen 0.5% FPR [95% CI]"]
    assert cells["out-of-engine TPR (LOEO)"].startswith("n/a")


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(DataError, match="at least two different backbones"):
        run_backbone_comparison(tmp_path, backbones=["tiny-cnn"], out=tmp_path / "o")
    with pytest.raises(UnknownNameError, match="unknown backbone 'nope'"):
        run_backbone_comparison(tmp_path, backbones=["tiny-cnn", "nope"], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert (
        LeaderboardRow("a", "linear", None, None, None, None, None, 0, "").cells()["AUC [95% CI]"]
        == "n/a"
    )


def test_cli_several_backbones_refuse_one_backbone_options(tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    res = CliRunner().invoke(
        app,
        ["experiment", str(tmp_path), "--backbone", "tiny-cnn,tiny-vit", "--weights", str(weights)],
    )
    assert res.exit_code == 1 and "--weights" in res.output
    assert "is not supported by the several-backbones engine" in res.output
    assert not any(tmp_path.glob("runs"))


# Three AI engines: "a" and "b" move feature 0, "c" moves feature 1 only. A head that
# never saw "c" has no reason to look at feature 1, so "c" is missed out of engine.
N_REAL, N_AI = 120, 60
ENGINES = np.array(["real"] * N_REAL + ["a"] * N_AI + ["b"] * N_AI + ["c"] * N_AI)
LABELS = (ENGINES != "real").astype(np.int8)
SHA = np.array([f"{i:064x}" for i in range(ENGINES.size)])
SPLITS = np.array(["train", "train", "val", "test"] * (ENGINES.size // 4))


def _engine_bank(path, *, shift: float, dim: int, name: str):
    rng = np.random.default_rng(dim)
    X = rng.normal(size=(ENGINES.size, dim)).astype(np.float32)
    X[np.isin(ENGINES, ["a", "b"]), 0] += shift
    X[ENGINES == "c", 1] += shift
    spec = {"name": name, "library": "timm", "model": name, "pretrained": "x", "dim": dim}
    return write_bank(
        path, X, labels=LABELS, engines=ENGINES, sha256=SHA, splits=SPLITS, backbone=spec
    )


def test_out_of_engine_misses_the_engine_left_out_of_training(tmp_path):
    bank = _engine_bank(tmp_path / "a.zarr", shift=5.0, dim=6, name="bb-a")
    res = out_of_engine(bank, head="linear", n_boot=200)
    assert set(res.per_engine) == {"a", "b", "c"}
    assert res.per_engine["c"]["n"] == N_AI  # every row of the held-out engine is scored
    assert res.per_engine["a"]["tpr"] > 0.9 and res.per_engine["c"]["tpr"] < 0.3
    assert res.tpr_ci[0] <= res.tpr <= res.tpr_ci[1] and 0.0 <= res.fpr <= 0.1
    # the same head trained on every engine finds "c" (so the miss is the leaving out)
    train_run([bank], head="linear", out=tmp_path / "run")
    row = leaderboard_row(tmp_path / "run", bank, backbone="bb-a", head="linear")
    assert row.tpr > 0.9


def test_out_of_engine_of_a_fused_row_refits_members_and_stacker(tmp_path):
    a = _engine_bank(tmp_path / "a.zarr", shift=5.0, dim=6, name="bb-a")
    b = _engine_bank(tmp_path / "b.zarr", shift=5.0, dim=4, name="bb-b")
    joined = join_banks([a, b])
    res = out_of_engine(joined, head="linear", fused=True, n_boot=100)
    assert set(res.per_engine) == {"a", "b", "c"}
    assert res.per_engine["a"]["tpr"] > 0.9 and res.per_engine["c"]["tpr"] < 0.3
    mlp = out_of_engine(a, head="mlp", n_boot=0)
    assert mlp.tpr_ci == (mlp.tpr, mlp.tpr) and set(mlp.per_engine) == {"a", "b", "c"}


def test_out_of_engine_needs_two_ai_engines(tmp_path):
    one = _engine_bank(tmp_path / "a.zarr", shift=5.0, dim=6, name="bb-a").select(
        rows=np.flatnonzero(np.isin(ENGINES, ["real", "a"]))
    )
    with pytest.raises(DataError, match="at least two AI engines"):
        out_of_engine(one, head="linear")


def test_leaderboard_row_puts_balanced_aucs_beside_the_raw_one(tmp_path):
    """A bank with metadata: the row carries the propensity-stratified and overlap-weighted
    AUCs of its test rows; without metadata they read n/a."""
    from facebank.embed.inputs.metadata import METADATA_SCHEMA, metadata_columns

    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    png = rng.random(n) < np.where(y == 1, 0.8, 0.2)
    X = rng.normal(size=(n, 4)) + 1.0 * y[:, None]
    rows = []
    for p in png.tolist():
        row = {k: None for k in METADATA_SCHEMA}
        row.update(file_format="PNG" if p else "JPEG", width=256, height=256, meta_error="")
        rows.append({k: v for k, v in row.items() if v is not None})
    bank = write_bank(
        tmp_path / "m.zarr", X, labels=y, engines=np.where(y == 1, "sdxl", "real"),
        splits=np.array(["train", "train", "val", "test"] * (n // 4)),
        columns=metadata_columns(rows),
    )  # fmt: skip
    with pytest.warns(Warning):
        train_run([bank], head="linear", out=tmp_path / "run")
    row = leaderboard_row(tmp_path / "run", bank, backbone="x", head="linear")
    assert row.stratified_auc is not None and row.overlap_auc is not None
    assert row.overlap_auc_ci[0] <= row.overlap_auc <= row.overlap_auc_ci[1]
    assert "[" in row.cells()["overlap-weighted AUC"]
    plain = LeaderboardRow("a", "linear", 0.9, None, None, None, None, 0, "")
    assert plain.cells()["stratified AUC"] == "n/a"
