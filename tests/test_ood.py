"""analysis.ood: new-engine images vs known-engine images (prototype ood_score or kNN distance)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from typer.testing import CliRunner

from facebank.analysis.ood import fpr_at_tpr, ood
from facebank.core.errors import DataError
from facebank.testing import synthetic_arrays, write_synthetic_bank

# small synthetic val splits: the heads rightly warn that 0.5% FPR is below one real
pytestmark = pytest.mark.filterwarnings("ignore:calibrating at fpr")

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from facebank.embed.bank.bank import FeatureBank
    from facebank.heads import list_heads, train_run

    root = tmp_path_factory.mktemp("ood")
    data = synthetic_arrays(
        {"real": 400, "sdxl": 200, "stylegan2": 200, "newgen": 150},
        dim=16,
        seed=11,
        signal=2.0,
        spread=3.0,
        offset=8.0,
    )
    known_rows = np.flatnonzero(data["engines"] != "newgen")
    new_rows = np.flatnonzero(data["engines"] == "newgen")
    away = np.random.default_rng(1).normal(size=16)
    data["X"][new_rows] += (6 * away / np.linalg.norm(away)).astype(
        np.float32
    )  # far from every known cluster
    write_synthetic_bank(root / "known.zarr", data, rows=known_rows)
    write_synthetic_bank(root / "new.zarr", data, rows=new_rows)
    known = [FeatureBank.open(root / "known.zarr")]
    runs = {
        "linear": train_run(known, head="linear", params={}, out=root / "linear", seed=0).run_dir
    }
    for name in ("prototype", "knn"):  # heads with their own ood_score
        if name in list_heads():
            runs[name] = train_run(known, head=name, params={}, out=root / name, seed=0).run_dir
    return {"root": root, "runs": runs, "n_known": len(known_rows), "n_new": len(new_rows)}


@pytest.mark.parametrize("trial", range(20))
def test_fpr_at_tpr_matches_sklearn(trial):
    n = int(RNG.integers(5, 80))
    y = RNG.integers(0, 2, n)
    y[:2] = (0, 1)
    s = RNG.integers(0, 6, n).astype(float) if trial % 2 else RNG.normal(size=n)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    expected = fpr[np.argmax(tpr >= 0.95 - 1e-12)]
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(expected)


@pytest.mark.parametrize("head", ["linear", "prototype", "knn"])
def test_ood_separates_a_far_new_engine(setup, head, tmp_path):
    if head not in setup["runs"]:
        pytest.skip(f"{head} head not available")
    root = setup["root"]
    res = ood(
        setup["runs"][head],
        known=[root / "known.zarr"],
        new=[root / "new.zarr"],
        out=tmp_path / head,
        n_boot=100,
    )
    assert res.method == ("knn:k=10" if head == "linear" else "ood_score")
    (row,) = res.per_engine
    assert row["engine"] == "newgen" and row["n"] == setup["n_new"]
    assert row["auroc"] > 0.9
    assert row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    assert 0 <= row["fpr_at_95tpr"] < 0.5
    assert res.known_flag_rate < 0.2
    # per-image CSV: every row, flags at the threshold set on known *validation* rows
    with open(res.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == setup["n_known"] + setup["n_new"]
    val = [r for r in rows if r["set"] == "known-val"]
    assert len(val) == res.n_known_val > 0
    flagged_val = sum(int(r["flagged"]) for r in val)
    assert flagged_val <= int(np.floor(0.05 * len(val) + 1e-9))  # never above the target
    for r in rows:
        score = float(r["ood_score"])  # 9 significant digits in the CSV
        if abs(score - res.threshold) > 1e-7 * max(1.0, abs(res.threshold)):
            assert int(r["flagged"]) == int(score > res.threshold)
    assert (res.run_dir / "ood_hist.png").exists() and "validation" in (
        res.run_dir / "ood.md"
    ).read_text()


def test_ood_bad_input(setup, synthetic_bank):
    root = setup["root"]
    run = setup["runs"]["linear"]
    with (
        pytest.raises(DataError, match="both the --known and the --new"),
        pytest.warns(UserWarning, match="not new"),
    ):
        ood(run, known=[root / "known.zarr"], new=[root / "known.zarr"], n_boot=0)
    sdxl = synthetic_bank({"sdxl": 20}, name="sdxl.zarr", dim=16, seed=11, sha_prefix="s")
    with pytest.warns(UserWarning, match="not new"):
        ood(run, known=[root / "known.zarr"], new=[sdxl.path], n_boot=0)


def test_ood_cli(setup, tmp_path):
    from facebank.cli import app

    root = setup["root"]
    args = [
        "ood",
        "--head",
        str(setup["runs"]["linear"]),
        "--known",
        str(root / "known.zarr"),
        "--new",
        str(root / "new.zarr"),
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "AUROC" in res.output and (tmp_path / "o" / "ood_scores.csv").exists()


def test_ood_scores_csv_has_one_row_per_image_and_consistent_flags(setup, tmp_path):
    from facebank.embed import FeatureBank

    root = setup["root"]
    known, new = FeatureBank.open(root / "known.zarr"), FeatureBank.open(root / "new.zarr")
    res = ood(setup["runs"]["prototype"], known=[known], new=[new], out=tmp_path / "o")
    with open(tmp_path / "o" / "ood_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(known) + len(new)
    sets = [r["set"] for r in rows]
    assert sets[len(known) :] == ["new"] * len(new)
    assert {s.split("-")[0] for s in sets[: len(known)]} == {"known"}
    assert [r["path"] for r in rows] == list(known.paths) + list(new.paths)
    for r in rows:  # scores are written to 9 digits: a row at the threshold can round above it
        score = float(r["ood_score"])
        if abs(score - res.threshold) > 1e-7 * max(1.0, abs(res.threshold)):
            assert int(r["flagged"]) == int(score > res.threshold)
    assert sum(int(r["flagged"]) for r in rows) > 0


def test_default_new_engine_is_the_smallest_with_enough_images():
    from facebank.analysis.ood import default_new_engine

    counts = {"real": 300, "pggan": 2, "sd15": 3, "dalle3": 10, "sdxl": 18, "flux": 22, "sd21": 100}
    ai = [e for e in counts if e != "real"]
    engine, why = default_new_engine(counts, ai)
    assert engine == "flux" and "22" in why
    # ties go to the first name
    assert default_new_engine({"b": 25, "a": 25}, ["a", "b"])[0] == "a"


def test_default_new_engine_skips_with_a_reason_when_every_engine_is_tiny():
    from facebank.analysis.ood import default_new_engine

    engine, why = default_new_engine({"real": 50, "gan": 2, "sd": 5}, ["gan", "sd"])
    assert engine is None
    assert "gan (2)" in why and "sd (5)" in why and "--new-engine" in why
    assert default_new_engine({"real": 50, "gan": 40}, ["gan"])[0] is None
