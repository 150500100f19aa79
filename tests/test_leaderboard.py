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
    run_backbone_comparison,
)
from facebank.embed.bank import FeatureBank, write_bank
from facebank.embed.errors import DataError, UnknownNameError
from facebank.embed.standin import make_standin_dataset
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
    linear = next(r for r in comparison.rows if r.backbone == "tiny-cnn")
    assert linear.out_of_engine_tpr is not None  # leave-one-engine-out ran with linear


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
    assert res.exit_code != 0 and "apply to one backbone" in res.output
    assert not any(tmp_path.glob("runs"))
