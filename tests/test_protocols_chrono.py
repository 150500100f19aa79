"""Chronological protocol on generated banks whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facebank.analysis.chrono import SHIPPED_ENGINE_DATES, chronological, read_engine_dates
from facebank.core.errors import DataError
from facebank.embed import write_bank

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATES = {"old": "2018-12-12", "mid": "2022-08-22", "new": "2024-08-01"}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """old and mid share a direction (feature 0); new is along feature 5 only."""
    rng = np.random.default_rng(0)
    counts = {"real": 1000, "old": 300, "mid": 300, "new": 300}
    engines = np.concatenate([[e] * n for e, n in counts.items()])
    X = rng.standard_normal((len(engines), 8)).astype(np.float32)
    X[np.isin(engines, ["old", "mid"]), 0] += 7.0
    X[engines == "new", 5] += 7.0
    return write_bank(
        tmp_path_factory.mktemp("chrono") / "b.zarr",
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        sha256=[f"s{i}" for i in range(len(engines))],
    )


@pytest.mark.slow
def test_trained_on_the_past_catches_a_similar_successor_not_a_new_kind(bank, tmp_path):
    dates = tmp_path / "dates.csv"
    dates.write_text("engine,date\n" + "".join(f"{e},{d}\n" for e, d in DATES.items()))
    res = chronological(bank, engine_dates=dates, shipped_dates=False, out=tmp_path / "run")
    assert res.engines == ["old", "mid", "new"]
    assert [r["cutoff"] for r in res.table] == ["2018-12-12", "2022-08-22"]
    first, second = res.table
    assert first["trained"] == ["old"] and first["next"] == ["mid"]
    assert first["tpr_next"] > 0.9  # mid looks like old
    assert second["tpr_next"] < 0.2  # new is a new kind
    assert res.trained_mask.tolist() == [[True, False, False], [True, True, False]]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocol"] == "chrono" and len(m["cells"]) == 6
    assert "Per cut-off" in (tmp_path / "run" / "chrono.md").read_text()
    assert (tmp_path / "run" / "chrono.png").stat().st_size > 1000
    from facebank.analysis.report import write_report

    page = write_report([tmp_path / "run"], out=tmp_path / "r.html").read_text()
    assert "Protocols" in page and "<figcaption>chrono.png</figcaption>" in page


def test_engines_without_a_date_are_named(bank, tmp_path):
    dates = tmp_path / "d.csv"
    dates.write_text("engine,date\nold,2018-12-12\n")
    with pytest.raises(DataError, match=r"engines \['mid', 'new'\] have no release date"):
        chronological(bank, engine_dates=dates, shipped_dates=False)
    with pytest.raises(DataError, match="at least two release dates"):
        chronological(bank, engine_dates={e: "2020-01-01" for e in DATES}, shipped_dates=False)


def test_reading_dates(tmp_path):
    shipped = read_engine_dates(SHIPPED_ENGINE_DATES)
    assert shipped["stylegan2"].isoformat() == "2019-12-03" and shipped["sdxl"].year == 2023
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,engine,date\na.png,1,SDXL,2023-07\nb.png,1,sdxl,2023-07-01\n")
    assert read_engine_dates(manifest)["sdxl"].isoformat() == "2023-07-01"
    bad = tmp_path / "bad.csv"
    bad.write_text("engine,date\nsdxl,July 2023\n")
    with pytest.raises(DataError, match="not an ISO date"):
        read_engine_dates(bad)
    clash = tmp_path / "clash.csv"
    clash.write_text("engine,date\nsdxl,2023-07-26\nsdxl,2022-01-01\n")
    with pytest.raises(DataError, match="two dates"):
        read_engine_dates(clash)
    (tmp_path / "nodate.csv").write_text("engine,when\nsdxl,2023\n")
    with pytest.raises(DataError, match="needs engine and date"):
        read_engine_dates(tmp_path / "nodate.csv")


@pytest.mark.slow
def test_cli_uses_the_shipped_dates_and_writes_a_run(tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app

    rng = np.random.default_rng(1)
    counts = {"real": 600, "stylegan2": 120, "sdxl": 120}
    engines = np.concatenate([[e] * n for e, n in counts.items()])
    X = rng.standard_normal((len(engines), 8)).astype(np.float32)
    X[engines != "real", 0] += 6.0
    bank = write_bank(
        tmp_path / "b.zarr",
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        sha256=[f"s{i}" for i in range(len(engines))],
    )
    res = CliRunner().invoke(
        app, ["protocol", "chrono", str(bank.path), "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "2019-12-03" in res.output and "next window" in res.output
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["engine_dates"] == {"stylegan2": "2019-12-03", "sdxl": "2023-07-26"}
    res = CliRunner().invoke(
        app,
        [
            "protocol",
            "few-shot",
            str(bank.path),
            "--shots",
            "0,10",
            "--draws",
            "1",
            "--out",
            str(tmp_path / "f"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "range over draws" in res.output and (tmp_path / "f" / "few_shot.png").is_file()


def test_experiment_rejects_an_unknown_protocol_before_any_work(tmp_path):
    from facebank.analysis.experiment import run_experiment
    from facebank.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="valid: few-shot, chrono"):
        run_experiment(
            tmp_path / "none", backbone="tiny-cnn", out=tmp_path / "x", protocols=["nope"]
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_experiment_step_runs_both_protocols_or_says_why_not(bank, tmp_path):
    from types import SimpleNamespace

    from facebank.analysis.experiment_steps import Steps, run_protocols
    from facebank.analysis.report import write_report

    result = SimpleNamespace(run_dir=tmp_path, skipped={}, protocols=None)
    steps = Steps(2, progress=False)
    run_protocols(result, bank, ["old", "mid", "new"], ("few-shot", "chrono"), seed=0, steps=steps)
    # old/mid/new have no shipped release date: chrono is skipped with the engines named
    assert "few-shot" in result.protocols and (tmp_path / "few-shot" / "few_shot.png").is_file()
    assert "have no release date" in result.skipped["chrono"]
    page = write_report([tmp_path / "few-shot"], out=tmp_path / "r.html").read_text()
    assert "Protocols: few-shot curves" in page and "few_shot" in page
