"""analysis.robustness: one head, a frozen threshold, banks of several views of the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.robustness import robustness, view_family
from facebank.core.errors import DataError
from facebank.testing import synthetic_arrays, write_synthetic_bank

# small synthetic val splits: the heads rightly warn that 0.5% FPR is below one real
pytestmark = pytest.mark.filterwarnings("ignore:calibrating at fpr")

ENGINES = {"real": 500, "sdxl": 250, "stylegan2": 250}
# view -> (signal_scale, noise): degradations weaken the shared AI direction
VIEWS = {
    "original": (1.0, 0.0),
    "jpeg:q=90": (0.9, 0.1),
    "jpeg:q=50": (0.5, 0.3),
    "resize:64": (0.4, 0.3),
    "resize:128": (0.8, 0.1),
    "hflip": (1.0, 0.0),
    "vflip": (0.6, 0.2),
}


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    from facebank.embed.bank.bank import FeatureBank
    from facebank.heads import train_run

    root = tmp_path_factory.mktemp("robustness")
    data = synthetic_arrays(ENGINES, dim=16, seed=7, signal=2.5, spread=1.5)
    paths = {}
    for i, (view, (scale, noise)) in enumerate(VIEWS.items()):
        paths[view] = root / f"{view.replace(':', '_').replace('=', '')}.zarr"
        write_synthetic_bank(paths[view], data, view=view, signal_scale=scale, noise=noise, seed=i)
    run = train_run(
        [FeatureBank.open(paths["original"])], head="linear", params={}, out=root / "run", seed=0
    ).run_dir
    return {"root": root, "paths": paths, "run": run, "data": data}


def test_view_family_parsing():
    assert view_family("original") == ("original", None)
    assert view_family("jpeg:q=75") == ("jpeg", 75)
    assert view_family("resize:128") == ("resize", 128)
    assert view_family("vflip") == ("flip", "vflip")
    assert view_family("resize:256+jpeg:q=75") == ("resize+jpeg", "resize:256+jpeg:q=75")


def test_robustness_per_view_at_the_frozen_threshold(views, tmp_path):
    from facebank.heads import load_head

    res = robustness(views["run"], list(views["paths"].values()), out=tmp_path / "rob", n_boot=100)
    by = {r["view"]: r for r in res.views}
    assert set(by) == set(VIEWS)
    head = load_head(views["run"])
    assert res.threshold == pytest.approx(head.threshold_)
    assert res.n_excluded > 0 and all(v == 0 for v in res.mismatch.values())
    # hflip is the same features here: same numbers; heavy degradations cost TPR
    assert by["hflip"]["tpr"] == by["original"]["tpr"]
    assert by["jpeg:q=50"]["tpr"] < by["jpeg:q=90"]["tpr"] <= by["original"]["tpr"] + 0.02
    assert by["resize:64"]["auc"] < by["original"]["auc"]
    assert by["jpeg:q=50"]["tpr_drop"] == pytest.approx(
        by["original"]["tpr"] - by["jpeg:q=50"]["tpr"]
    )
    for r in res.views:  # the same images in every view
        assert r["n_real"] == by["original"]["n_real"] and r["n_fake"] == by["original"]["n_fake"]
        assert r["tpr_ci_low"] <= r["tpr"] <= r["tpr_ci_high"]
    assert set(res.per_engine) == set(VIEWS)
    md = (res.run_dir / "robustness.md").read_text()
    for v in VIEWS:
        assert v in md  # the view is shown in every table
    assert (res.run_dir / "robustness.png").exists() and (res.run_dir / "per_view.csv").exists()
    assert json.loads((res.run_dir / "metrics.json").read_text())["n_matched"] == res.n_matched


def test_rows_are_matched_by_sha256_not_position(views, tmp_path):
    d = views["data"]
    perm = np.random.default_rng(0).permutation(len(d["labels"]))
    # the original features, rows reshuffled, stored as another view: identical numbers
    write_synthetic_bank(tmp_path / "shuffled.zarr", d, rows=perm, view="hflip")
    res = robustness(
        views["run"], [views["paths"]["original"], tmp_path / "shuffled.zarr"], n_boot=0
    )
    a, b = res.views
    for k in ("n_real", "n_fake", "tpr", "fpr", "auc"):
        assert a[k] == b[k], k


def test_mismatched_image_sets_are_reported(views, tmp_path):
    d = views["data"]
    write_synthetic_bank(
        tmp_path / "partial.zarr",
        d,
        rows=np.arange(0, len(d["labels"]) - 30),
        view="vflip",
        signal_scale=0.6,
        noise=0.2,
    )
    res = robustness(
        views["run"], [views["paths"]["original"], tmp_path / "partial.zarr"], n_boot=0
    )
    assert res.mismatch[str(views["paths"]["original"])] == 30
    assert res.mismatch[str(tmp_path / "partial.zarr")] == 0
    assert any("missing" in n for n in res.notes)
    with pytest.raises(DataError, match="missing from some views"):
        robustness(
            views["run"],
            [views["paths"]["original"], tmp_path / "partial.zarr"],
            n_boot=0,
            allow_mismatch=False,
        )


def test_robustness_bad_input(views, tmp_path):
    p = views["paths"]
    with pytest.raises(DataError, match="same view"):
        robustness(views["run"], [p["original"], p["original"]], n_boot=0)
    d = dict(views["data"])
    d["labels"] = 1 - d["labels"]
    write_synthetic_bank(tmp_path / "relabelled.zarr", d, view="jpeg:q=70")
    with pytest.raises(DataError, match="labels the same images differently"):
        robustness(views["run"], [p["original"], tmp_path / "relabelled.zarr"], n_boot=0)
    other = synthetic_arrays({"real": 10, "sdxl": 10}, dim=16, seed=9)
    other["sha256"] = np.array([f"z{i}" for i in range(20)])
    write_synthetic_bank(tmp_path / "disjoint.zarr", other, view="jpeg:q=20")
    with pytest.raises(DataError, match="no image"):
        robustness(
            views["run"], [p["original"], tmp_path / "disjoint.zarr"], n_boot=0, allow_mismatch=True
        )


def test_robustness_cli(views, tmp_path):
    from facebank.cli import app

    p = views["paths"]
    args = [
        "robustness",
        str(p["original"]),
        str(p["jpeg:q=50"]),
        str(p["vflip"]),
        "--head",
        str(views["run"]),
        "--out",
        str(tmp_path / "r"),
        "--n-boot",
        "0",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "jpeg:q=50" in res.output and "vflip" in res.output
