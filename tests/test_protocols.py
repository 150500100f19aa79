"""analysis.protocols: in-engine split and leave-one-engine-out (2311.08577)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.protocols import in_engine, leave_one_engine_out
from facebank.core.errors import BackboneMismatchError, DataError
from facebank.core.splits import assign_splits
from facebank.testing import synthetic_arrays, write_synthetic_bank

# small synthetic val splits: the heads rightly warn that 0.5% FPR is below one real
pytestmark = pytest.mark.filterwarnings("ignore:calibrating at fpr")

ENGINES = {"real": 600, "sdxl": 160, "stylegan2": 160, "midjourney": 160, "dalle": 160}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    data = synthetic_arrays(ENGINES, dim=16, seed=2, signal=2.0, spread=2.5)
    write_synthetic_bank(root / "bank.zarr", data)
    return root / "bank.zarr", data


@pytest.mark.slow
def test_in_engine_threshold_comes_from_validation_reals(bank, tmp_path):
    from facebank.embed.bank.bank import FeatureBank
    from facebank.heads import create_head

    path, d = bank
    res = in_engine([path], head="linear", seed=0, out=tmp_path / "in", n_boot=100)
    splits = assign_splits(d["engines"], d["sha256"], seed=0)
    tr, va = splits == "train", (splits == "val") & (d["labels"] == 0)
    X = FeatureBank.open(path).load_features()  # the bank stores float16
    ref = create_head("linear").fit(X[tr], d["labels"][tr]).calibrate(X[va], fpr=0.005)
    assert res.threshold == pytest.approx(ref.threshold_, rel=1e-4, abs=1e-5)
    assert (
        res.n_train == tr.sum()
        and res.n_val_reals == va.sum()
        and res.n_test == (splits == "test").sum()
    )
    s = ref.decision_function(X[splits == "test"])
    y = d["labels"][splits == "test"]
    assert res.metrics.recall == pytest.approx(
        np.mean(s[y == 1] > ref.threshold_), abs=2 / (y == 1).sum()
    )
    assert (res.run_dir / "metrics.md").read_text().count("|") > 10
    assert (res.run_dir / "roc.png").exists()


@pytest.mark.slow
def test_loeo_table_matrix_and_generalisation_gap(bank, tmp_path):
    path, d = bank
    res = leave_one_engine_out([path], head="linear", seed=0, out=tmp_path / "loeo")
    ai = ["dalle", "midjourney", "sdxl", "stylegan2"]
    assert res.engines == ai and [r["engine"] for r in res.table] == ai
    assert res.matrix.shape == (5, 4)
    splits = assign_splits(d["engines"], d["sha256"], seed=0)
    for i, r in enumerate(res.table, start=1):
        e = r["engine"]
        assert r["n_out"] == (d["engines"] == e).sum()  # every image of the held-out engine
        assert r["n_in"] == ((d["engines"] == e) & (splits == "test")).sum()
        assert res.matrix[i, i - 1] == pytest.approx(r["tpr_out"])
        assert res.matrix[0, i - 1] == pytest.approx(r["tpr_in"])
        assert r["tpr_in_ci"][0] <= r["tpr_in"] <= r["tpr_in_ci"][1]
        assert 0 <= r["fpr_test_reals"] <= 0.05
    # engine-specific directions: held-out engines are harder than seen ones
    assert res.average["tpr_out"] < res.average["tpr_in"]
    assert res.average["tpr_in"] == pytest.approx(np.mean([r["tpr_in"] for r in res.table]))
    text = (res.run_dir / "loeo.md").read_text()
    assert "average" in text and "out-of-engine TPR" in text and "original" in text
    assert (res.run_dir / "loeo_matrix.png").exists() and (res.run_dir / "loeo_bars.png").exists()
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert len(m["matrix"]) == 5


def test_loeo_held_out_engine_is_not_trained_on(bank, monkeypatch):
    """Spy on fit: the head trained for engine E never sees a row of E."""
    import facebank.heads as heads

    seen = []
    real_create = heads.create_head

    def spy(name, **params):
        est = real_create(name, **params)
        fit = est.fit

        def fit_spy(X, y, *, engines=None):
            seen.append(set(np.unique(engines).tolist()))
            return fit(X, y, engines=engines)

        est.fit = fit_spy
        return est

    monkeypatch.setattr(heads, "create_head", spy)
    path, _ = bank
    leave_one_engine_out([path], head="linear", engines=["sdxl", "dalle"])
    assert seen[0] == {"real", "sdxl", "stylegan2", "midjourney", "dalle"}  # the in-engine head
    assert seen[1] == {"real", "stylegan2", "midjourney", "dalle"}
    assert seen[2] == {"real", "sdxl", "stylegan2", "midjourney"}


def test_protocol_bad_input(bank, tmp_path):
    path, _ = bank
    one = synthetic_arrays({"real": 60, "sdxl": 60}, dim=16, seed=3)
    write_synthetic_bank(tmp_path / "one.zarr", one)
    with pytest.raises(DataError, match="at least 2 AI engines"):
        leave_one_engine_out([tmp_path / "one.zarr"])
    with pytest.raises(DataError, match="not AI engines"):
        leave_one_engine_out([path], engines=["real"])
    other = synthetic_arrays({"real": 60, "sdxl": 60}, dim=16, seed=3)
    other["sha256"] = np.array([f"o{i}" for i in range(120)])
    write_synthetic_bank(tmp_path / "jpeg.zarr", other, view="jpeg:q=50")
    with pytest.raises(DataError, match="different views"):
        in_engine([path, tmp_path / "jpeg.zarr"])
    spec = {
        "name": "x",
        "library": "numpy",
        "model": "x",
        "pretrained": None,
        "weights_sha256": None,
        "dim": 16,
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }
    write_synthetic_bank(tmp_path / "x.zarr", other, backbone=spec)
    with pytest.raises(BackboneMismatchError):
        in_engine([path, tmp_path / "x.zarr"])
    fakes = synthetic_arrays({"sdxl": 50, "dalle": 50}, dim=16, seed=3)
    write_synthetic_bank(tmp_path / "fakes.zarr", fakes)
    with pytest.raises(DataError, match="reals"):
        leave_one_engine_out([tmp_path / "fakes.zarr"])


@pytest.mark.slow
def test_protocol_cli(bank, tmp_path):
    from facebank.cli import app

    path, _ = bank
    res = CliRunner().invoke(
        app,
        [
            "protocol",
            "loeo",
            str(path),
            "--head",
            "linear",
            "--param",
            "C=0.5",
            "--out",
            str(tmp_path / "l"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "average" in res.output and (tmp_path / "l" / "loeo.md").exists()
    assert json.loads((tmp_path / "l" / "config.json").read_text())["params"] == {"C": 0.5}
    res = CliRunner().invoke(
        app, ["protocol", "in-engine", str(path), "--out", str(tmp_path / "i"), "--n-boot", "20"]
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["protocol", "loeo", str(path), "--param", "C"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
