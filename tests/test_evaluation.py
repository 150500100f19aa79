"""analysis.evaluation: a trained run scored on banks at its frozen validation threshold."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.evaluation import evaluate
from facebank.core.errors import BackboneMismatchError, DataError
from facebank.testing import synthetic_arrays, write_synthetic_bank

# small synthetic val splits: the heads rightly warn that 0.5% FPR is below one real
pytestmark = pytest.mark.filterwarnings("ignore:calibrating at fpr")

ENGINES = {"real": 500, "sdxl": 200, "stylegan2": 200, "midjourney": 150}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bank, a linear run trained on it by heads.train_run, and a bank of extra images."""
    from facebank.embed.bank.bank import FeatureBank
    from facebank.heads import train_run

    root = tmp_path_factory.mktemp("evaluation")
    data = synthetic_arrays(ENGINES, dim=24, seed=1)
    bank = write_synthetic_bank(root / "main.zarr", data)
    res = train_run(
        [FeatureBank.open(root / "main.zarr")],
        head="linear",
        params={},
        out=root / "run",
        seed=0,
        fpr=0.005,
    )
    extra = synthetic_arrays({"real": 40, "sdxl": 30, "tiny": 5}, dim=24, seed=1)
    extra["sha256"] = np.array([f"extra-{i}" for i in range(len(extra["labels"]))])
    write_synthetic_bank(root / "extra.zarr", extra)
    return {"root": root, "bank": bank, "run": res.run_dir, "data": data}


def _split_counts(run_dir):
    with open(run_dir / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}, {
        r["sha256"]: r["split"] for r in rows
    }


@pytest.mark.slow
def test_evaluate_excludes_train_val_rows_and_uses_the_frozen_threshold(trained, tmp_path):
    from facebank.heads import load_head

    counts, split_of = _split_counts(trained["run"])
    ev = evaluate(trained["run"], [trained["root"] / "main.zarr"], out=tmp_path / "ev", n_boot=200)
    assert ev.n_excluded == {"train": counts["train"], "val": counts["val"]}
    assert ev.n_rows == counts["test"]
    head = load_head(trained["run"])
    assert ev.threshold == pytest.approx(head.threshold_)
    assert "val" in ev.threshold_source

    # recompute independently from the test rows of splits.csv
    d = trained["data"]
    test = np.array([split_of[s] == "test" for s in d["sha256"]])
    s = head.decision_function(d["X"][test])
    y, eng = d["labels"][test], d["engines"][test]
    assert ev.metrics.recall == pytest.approx(np.mean(s[y == 1] > head.threshold_))
    assert ev.metrics.fpr == pytest.approx(np.mean(s[y == 0] > head.threshold_))
    by = {r["engine"]: r for r in ev.per_engine}
    for e in ("sdxl", "stylegan2", "midjourney"):
        sel = eng == e
        assert by[e]["n"] == sel.sum()
        assert by[e]["n_flagged"] == int((s[sel] > head.threshold_).sum())
        assert by[e]["ci_low"] <= by[e]["rate"] <= by[e]["ci_high"]
    assert by["real"]["metric"] == "fpr" and by["real"]["n"] == (y == 0).sum()


@pytest.mark.slow
def test_evaluate_writes_a_complete_run_folder(trained, tmp_path):
    ev = evaluate(trained["run"], [trained["root"] / "main.zarr"], out=tmp_path / "ev", n_boot=100)
    run = ev.run_dir
    for name in (
        "config.json",
        "metrics.json",
        "metrics.md",
        "per_engine.csv",
        "scores.csv",
        "roc.png",
        "det.png",
        "per_engine.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["auc"] == pytest.approx(ev.metrics.auc)
    assert metrics["n_excluded"]["train"] > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "evaluate" and "val" in cfg["threshold_source"]
    md = (run / "metrics.md").read_text()
    assert "Per engine" in md and "original" in md  # the view is in the tables
    with open(run / "scores.csv", newline="") as fh:
        assert sum(1 for _ in fh) == ev.n_rows + 1
    assert (run / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_reports_calibration_of_the_heads_validation_fitted_probability(trained):
    """NLL, Cllr, Brier, ECEs, EER and Pd of the head's own probability, on the rows scored."""
    from facebank.heads import load_head

    ev = evaluate(trained["run"], [trained["root"] / "main.zarr"], n_boot=0)
    head = load_head(trained["run"])
    assert head.score_calibration_ is not None
    c = ev.calibration
    assert "validation rows" in c.probability
    assert c.prior == head.score_calibration_["val_prevalence"]
    assert c.n_real + c.n_fake == ev.n_rows and c.bins == 15 and c.false_alarm == 0.005
    assert c.eer == pytest.approx(ev.metrics.eer)  # a monotone map keeps the ROC
    assert 0 <= c.ece <= 1 and c.nll > 0 and 0 <= c.brier <= 1
    assert ev.to_dict()["calibration"]["cllr_bits"] == c.cllr_bits


def test_small_engine_is_reported_with_a_warning_and_a_wide_interval(trained):
    with pytest.warns(UserWarning, match="'tiny' has only 5 images"):
        ev = evaluate(trained["run"], [trained["root"] / "extra.zarr"], n_boot=50)
    tiny = next(r for r in ev.per_engine if r["engine"] == "tiny")
    assert tiny["n"] == 5 and tiny["warning"]
    assert tiny["ci_high"] - tiny["ci_low"] > 0.4
    assert any("tiny" in n for n in ev.notes)
    assert ev.n_excluded == {"train": 0, "val": 0}


def test_bank_without_reals_is_an_error_not_a_number(trained, synthetic_bank):
    fakes = synthetic_bank({"sdxl": 30}, name="fakes.zarr", dim=24, seed=3, sha_prefix="f-")
    with pytest.raises(DataError, match="no real images"):
        evaluate(trained["run"], [fakes.path], n_boot=0)
    reals = synthetic_bank({"real": 30}, name="reals.zarr", dim=24, seed=3, sha_prefix="r-")
    with pytest.raises(DataError, match="no AI images"):
        evaluate(trained["run"], [reals.path], n_boot=0)


def test_only_train_rows_left_is_an_error_that_counts_exclusions(trained, tmp_path):
    from facebank.embed.bank.bank import FeatureBank

    _, split_of = _split_counts(trained["run"])
    bank = FeatureBank.open(trained["root"] / "main.zarr")
    rows = np.flatnonzero([split_of[s] == "train" for s in bank.sha256])
    d = trained["data"]
    write_synthetic_bank(tmp_path / "train_only.zarr", d, rows=rows)
    with pytest.raises(DataError, match=r"after leaving out \d+ train/val rows"):
        evaluate(trained["run"], [tmp_path / "train_only.zarr"], n_boot=0)


def test_bank_of_another_backbone_is_refused(trained, tmp_path):
    d = synthetic_arrays({"real": 20, "sdxl": 20}, dim=24, seed=4)
    other = {
        "name": "other",
        "library": "numpy",
        "model": "other",
        "pretrained": None,
        "weights_sha256": None,
        "dim": 24,
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }
    write_synthetic_bank(tmp_path / "other.zarr", d, backbone=other)
    with pytest.raises(BackboneMismatchError, match="other"):
        evaluate(trained["run"], [tmp_path / "other.zarr"], n_boot=0)
    # two banks of different backbones together
    with pytest.raises(BackboneMismatchError):
        evaluate(
            trained["run"], [trained["root"] / "extra.zarr", tmp_path / "other.zarr"], n_boot=0
        )


def test_repeated_images_are_counted_once(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = evaluate(trained["run"], [trained["root"] / "extra.zarr"], n_boot=0)
        two = evaluate(
            trained["run"],
            [trained["root"] / "extra.zarr", trained["root"] / "extra.zarr"],
            n_boot=0,
        )
    assert two.n_rows == one.n_rows and two.n_duplicates == one.n_rows
    assert two.metrics.auc == one.metrics.auc


@pytest.mark.slow
def test_evaluate_cli(trained, tmp_path):
    from facebank.cli import app

    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(trained["root"] / "main.zarr"),
            "--head",
            str(trained["run"]),
            "--out",
            str(tmp_path / "cli"),
            "--n-boot",
            "50",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "TPR" in res.output and "excluded" in res.output and (tmp_path / "cli" / "det.png").exists()
    )
    d = synthetic_arrays({"sdxl": 10}, dim=24, seed=5)
    d["sha256"] = np.array([f"c-{i}" for i in range(10)])
    write_synthetic_bank(tmp_path / "f.zarr", d)
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "f.zarr"),
            "--head",
            str(trained["run"]),
            "--out",
            str(tmp_path / "cli2"),
        ],
    )
    assert res.exit_code == 1 and "no real images" in res.output


def test_metrics_md_puts_every_tpr_beside_an_fpr_and_never_prints_nan(trained, tmp_path):
    evaluate(trained["run"], [trained["root"] / "extra.zarr"], out=tmp_path / "ev", n_boot=0)
    md = (tmp_path / "ev" / "metrics.md").read_text()
    assert "realised FPR" in md and "on the same rows" in md
    assert "nan" not in md.replace("n/a", "")


def test_the_ood_score_is_explained_in_words():
    from facebank.analysis.ood import score_meaning

    assert "higher = less likely" in score_meaning("ood_score") and "nats" in score_meaning(
        "ood_score"
    )
    assert "cosine" in score_meaning("knn:k=10") and "higher = further" in score_meaning("knn:k=10")
