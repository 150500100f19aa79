"""Few-shot curves on generated banks whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facebank.analysis.fewshot import few_shot
from facebank.core.errors import DataError
from facebank.embed import write_bank

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 8


def make_bank(path, *, n_odd=300, seed=0):
    """Reals N(0, I); engines a, b, c shifted along feature 0 (each one separable from the
    start by a head trained on the other two); ``odd`` shifted only along feature 5, which
    no other engine uses (learnable only from its own images)."""
    rng = np.random.default_rng(seed)
    counts = {"real": 1200, "a": 300, "b": 300, "c": 300, "odd": n_odd}
    engines = np.concatenate([[e] * n for e, n in counts.items()])
    X = rng.standard_normal((len(engines), D)).astype(np.float32)
    X[np.isin(engines, ["a", "b", "c"]), 0] += 7.0
    X[engines == "odd", 5] += 5.0
    return write_bank(
        path,
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        sha256=[f"s{i}" for i in range(len(engines))],
    )


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fs")
    bank = make_bank(tmp / "b.zarr")
    return few_shot(
        bank, head="linear", shots=(0, 5, 50, 200), draws=2, engines=["a", "odd"], out=tmp / "run"
    )


@pytest.mark.slow
def test_separable_engine_is_flat_and_own_images_engine_rises(result):
    k, a = result.curve_of("a")
    assert k.tolist() == [0, 5, 50, 200]
    assert a.min() > 0.95 and a.max() - a.min() < 0.05  # flat: detected with no shots
    k, odd = result.curve_of("odd")
    assert odd[0] < 0.1  # nothing like it in training
    assert odd[-1] > odd[0] + 0.7 and np.all(np.diff(odd) > -0.05)  # learnt from its own


@pytest.mark.slow
def test_every_point_and_draw_is_recorded(result):
    pts = result.points
    # k=0 is one fit; every other k has `draws` fits
    assert len(pts) == 2 * (1 + 3 * 2)
    assert all(p["fpr_test_reals"] <= 0.05 for p in pts)
    run = result.run_dir
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["points"]) == len(pts) and m["protocol"] == "few-shot"
    assert [r["k"] for r in m["average"]] == [0, 5, 50, 200]
    assert (run / "few_shot.png").stat().st_size > 1000
    text = (run / "few_shot.md").read_text()
    assert "range over draws" in text and "TPR @ FPR 0.5%" in text
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "protocol few-shot" and cfg["threshold_split"] == "val (reals only)"


def test_an_engine_with_few_images_stops_and_says_so(tmp_path):
    bank = make_bank(tmp_path / "b.zarr", n_odd=40)  # 28 train images of odd
    res = few_shot(bank, shots=(0, 10, 50), draws=1, engines=["odd"])
    k, _ = res.curve_of("odd")
    assert k.tolist() == [0, 10]
    assert (
        "odd has 28 train images: its curve stops at k=10 (asked up to k=50)" == res.stopped["odd"]
    )
    assert res.average[-1]["k"] == 10


def test_balanced_shot_weight_lifts_the_curve_of_an_engine_learnable_only_from_its_images(
    tmp_path,
):
    bank = make_bank(tmp_path / "b.zarr")
    kw = {"shots": (0, 5), "draws": 2, "engines": ["odd"]}
    plain = few_shot(bank, shot_weight="none", **kw)
    weighted = few_shot(bank, shot_weight="balanced", **kw)
    # k = 0 has no image to weigh: the same fit
    assert plain.curve_of("odd")[1][0] == weighted.curve_of("odd")[1][0] < 0.1
    # 5 images weighed as one engine's ~210 train rows teach the head far more than 5 rows
    assert weighted.curve_of("odd")[1][1] > plain.curve_of("odd")[1][1] + 0.2
    at5 = [p for p in weighted.points if p["k"] == 5]
    others = [int(0.7 * 300)] * 3  # a, b, c: ~70% of 300 rows in train
    assert all(p["shot_weight"] == pytest.approx(np.mean(others) / 5, rel=0.1) for p in at5)
    assert {p["shot_weight"] for p in plain.points} == {1.0} and weighted.shot_weight == "balanced"


def test_bad_input(tmp_path):
    bank = make_bank(tmp_path / "b.zarr")
    with pytest.raises(DataError, match="not AI engines"):
        few_shot(bank, engines=["nope"])
    with pytest.raises(DataError, match="must be >= 0"):
        few_shot(bank, shots=(-1, 5))
    with pytest.raises(DataError, match="draws"):
        few_shot(bank, draws=0)
    with pytest.raises(DataError, match="valid: 'none', 'balanced'"):
        few_shot(bank, shot_weight="heavy")
    with pytest.raises(DataError, match="needs a head with an engine_weight parameter"):
        few_shot(bank, head="mlp", shot_weight="balanced")


@pytest.mark.slow
def test_benchmark_tiny_prints_one_json_line(run_benchmark):
    stdout = run_benchmark("bench_protocols.py", "--tiny")
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "protocols" and fig["tiny"] is True
    assert fig["few_shot_s"] > 0 and fig["fits"] == 3 * (1 + 2 * 2)


def test_cli_shot_weight_and_the_stop_note(tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app

    bank = make_bank(tmp_path / "b.zarr", n_odd=40)  # 28 train images of odd
    args = ["protocol", "few-shot", str(bank.path), "--shots", "0,5,50", "--draws", "1"]
    res = CliRunner().invoke(
        app, [*args, "--shot-weight", "balanced", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "shot weight balanced" in res.output
    assert "note: odd has 28 train images: its curve stops at k=5 (asked up to k=50)" in res.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {p["shot_weight"] > 1 for p in metrics["points"] if p["k"] == 5} == {True}
    assert json.loads((tmp_path / "r" / "config.json").read_text())["shot_weight"] == "balanced"
    assert (
        "weigh as much as an average other engine" in (tmp_path / "r" / "few_shot.md").read_text()
    )
    bad = CliRunner().invoke(app, [*args, "--shot-weight", "heavy"])
    assert bad.exit_code != 0 and "heavy" in bad.output


def test_warm_started_fits_give_the_cold_fits_curve(tmp_path, monkeypatch):
    import facebank.analysis._protocol_core as core

    bank = make_bank(tmp_path / "b.zarr")
    kw = {"shots": (0, 5, 50), "draws": 2, "engines": ["odd", "a"]}
    params = {"dtype": "float64", "tol": 1e-8}
    warm = few_shot(bank, params=params, **kw)
    cold_fit = core.fit_head
    monkeypatch.setattr(
        core, "fit_head", lambda *a, warm_from=None, **k: cold_fit(*a, warm_from=None, **k)
    )
    cold = few_shot(bank, params=params, **kw)
    assert len(warm.points) == len(cold.points) == 2 * (1 + 2 * 2)
    for w, c in zip(warm.points, cold.points, strict=True):
        assert (w["engine"], w["k"], w["draw"]) == (c["engine"], c["k"], c["draw"])
        assert abs(w["threshold"] - c["threshold"]) < 1e-4
        assert abs(w["n_detected"] - c["n_detected"]) <= 1
