"""`facebank neighbours clusters|query|leaks|map` through typer's CliRunner."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.cli import app
from facebank.embed import write_bank

runner = CliRunner()
ENGINES = ("real", "sdxl", "stylegan2")


def make_bank(path, *, seed=0, n_per=30, dim=12, splits=None, backbone=None, leak=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 4
    X = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    engines = np.repeat(ENGINES, n_per)
    n = len(X)
    splits = np.array(["train", "test"] * (n // 2)) if splits is None else splits
    if leak:
        X[1] = X[0]  # row 0 is train, row 1 is test: a train/test near-duplicate
    return write_bank(
        path,
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        splits=splits,
        sha256=[hashlib.sha256(f"{path}{i}".encode()).hexdigest() for i in range(n)],
        paths=[f"{e}/{i}.png" for i, e in enumerate(engines)],
        backbone=backbone,
    )


def run(*args):
    return runner.invoke(app, ["neighbours", *map(str, args)])


def test_clusters_writes_a_run_folder(tmp_path):
    bank = make_bank(tmp_path / "faces.zarr")
    out = tmp_path / "run"
    res = run("clusters", bank.path, "--out", out, "-k", 5, "--n-boot", 100)
    assert res.exit_code == 0, res.output
    assert "| real | 30 | 1.000 |" in res.output and "k-means NMI" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["k"] == 5 and metrics["engines"] == list(ENGINES)
    assert metrics["kmeans"]["nmi"] == pytest.approx(1.0)
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "neighbours clusters" and config["factory"] == "Flat"
    assert {"confusion.png", "purity.png", "purity.md"} <= {p.name for p in out.iterdir()}


def test_query_by_rows_prints_a_table_and_writes_csv_and_grid(tmp_path):
    bank = make_bank(tmp_path / "faces.zarr")
    out = tmp_path / "q"
    res = run("query", "--bank", bank.path, "--rows", "3,40", "-k", 4, "--out", out)
    assert res.exit_code == 0, res.output
    assert "query: row 3 (real" in res.output and "similarity" in res.output
    rows = list(csv.DictReader((out / "neighbours.csv").open()))
    assert len(rows) == 8
    assert {r["engine"] for r in rows[:4]} == {"real"} and {r["engine"] for r in rows[4:]} == {
        "sdxl"
    }
    assert [int(r["rank"]) for r in rows[:4]] == [1, 2, 3, 4]
    assert float(rows[0]["similarity"]) >= float(rows[1]["similarity"])
    assert "3" not in [r["row"] for r in rows[:4]]
    assert (out / "grid.png").stat().st_size > 1000


def test_query_errors_are_one_line(tmp_path):
    bank = make_bank(tmp_path / "faces.zarr")
    res = run("query", "--bank", bank.path, "--out", tmp_path / "q")
    assert res.exit_code == 1 and "exactly one of the two" in res.output
    res = run("query", "--bank", bank.path, "--rows", "3,x", "--out", tmp_path / "q")
    assert res.exit_code == 1 and "--rows '3,x' is not a list of row numbers" in res.output
    res = run("query", "--bank", bank.path, "--rows", "3", "-k", 500, "--out", tmp_path / "q")
    assert res.exit_code == 1 and "error: k=500 is larger than the index" in res.output
    assert "Traceback" not in res.output
    # a missing image is a failure of its own (tests/test_input_faults.py); a synthetic
    # bank cannot embed any image, which is said first, in one line
    res = run("query", "--bank", bank.path, tmp_path / "nope.jpg", "--out", tmp_path / "q")
    assert res.exit_code == 1 and "cannot embed images" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = run("query", "--bank", bank.path, tmp_path / "nope", "--out", tmp_path / "q")
    assert res.exit_code == 1 and "nope' does not exist" in res.output
    res = run("query", "--bank", tmp_path / "missing.zarr", "--rows", "1", "--out", tmp_path / "q")
    assert (
        res.exit_code == 1
        and "missing.zarr" in res.output
        and len(res.output.strip().splitlines()) == 1
    )


def test_leaks_exit_code_gates_on_train_test_pairs(tmp_path):
    clean = make_bank(tmp_path / "clean.zarr")
    res = run("leaks", clean.path, "--threshold", 0.99, "--out", tmp_path / "l0")
    assert res.exit_code == 0, res.output
    assert "0 pairs" in res.output
    leaky = make_bank(tmp_path / "leaky.zarr", leak=True)
    res = run("leaks", leaky.path, "--threshold", 0.99, "--out", tmp_path / "l1")
    assert res.exit_code == 2, res.output
    assert "| test | train | 1 | 0 | 1 |" in res.output
    assert "leak: 1 train/test pair" in res.output
    pairs = list(csv.DictReader((tmp_path / "l1" / "pairs.csv").open()))
    assert [(p["row_a"], p["row_b"], p["kind"]) for p in pairs] == [("0", "1", "near")]


def test_leaks_on_one_bank_without_splits_says_nothing_was_checked(tmp_path):
    b = make_bank(tmp_path / "nosplit.zarr", splits=np.array([""] * 90), leak=True)
    res = run("leaks", b.path, "--threshold", 0.99, "--out", tmp_path / "l")
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()
    assert not any(ln.startswith("0 pairs") for ln in last), res.output
    assert any(
        ln.startswith("nothing checked: 90 rows of one bank with no split") for ln in last
    ), res.output


def test_leaks_within_one_split_only_do_not_gate(tmp_path):
    n = 90
    b = make_bank(tmp_path / "v.zarr", splits=np.array(["train"] * 45 + ["val"] * 45), leak=True)
    assert len(b) == n
    res = run("leaks", b.path, "--threshold", 0.99, "--out", tmp_path / "l")
    assert res.exit_code == 0, res.output  # rows 0 and 1 are both train: not a leak


def test_leaks_refuse_mismatched_backbones(tmp_path):
    a = make_bank(tmp_path / "a.zarr")
    other = {
        "name": "other",
        "library": "numpy",
        "model": "other",
        "pretrained": None,
        "weights_sha256": None,
        "dim": 12,
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }
    b = make_bank(tmp_path / "b.zarr", backbone=other)
    res = run("leaks", a.path, b.path, "--out", tmp_path / "l")
    assert res.exit_code == 1
    assert "a.zarr" in res.output and "b.zarr" in res.output and "backbone" in res.output


def test_map_pca_with_subsample(tmp_path):
    bank = make_bank(tmp_path / "faces.zarr")
    out = tmp_path / "m"
    res = run("map", bank.path, "--method", "pca", "--max-points", 50, "--seed", 1, "--out", out)
    assert res.exit_code == 0, res.output
    assert "pca: 50 of 90 rows (seed 1)" in res.output
    assert (out / "map_pca.png").is_file() and not (out / "map_tsne.png").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pca"]["points"] == 50 and metrics["pca"]["subsampled"] is True
    res = run("map", bank.path, "--method", "umap", "--out", out)
    assert res.exit_code == 2 and "umap" in res.output  # typer rejects the choice


def test_query_table_fits_80_columns_and_flags_self_matches(tmp_path):
    bank = make_bank(tmp_path / "faces.zarr", leak=True)  # rows 0 and 1: identical features
    long = [
        f"datasets/faces-in-the-wild/{e}/subfolder/img_{i:04d}_name.png"
        for i, e in enumerate(np.repeat(ENGINES, 30))
    ]
    bank = write_bank(
        tmp_path / "long.zarr",
        bank.load_features(),
        labels=bank.labels,
        engines=bank.engines,
        splits=bank.splits,
        sha256=bank.sha256,
        paths=long,
    )
    res = run("query", "--bank", bank.path, "--rows", "0", "-k", 3, "--out", tmp_path / "q")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80, res.output
    table = "\n".join(lines)
    for word in ("similarity", "engine", "img_0001_name.png", "the query itself (same features)"):
        assert word in table, word  # whole words: nothing wrapped mid-word
    row1 = next(line for line in lines if "img_0001_name.png" in line)
    assert "1*" in row1 and "1.0000" in row1  # the self-match is marked
    others = [ln for ln in lines if ln.startswith("│") and "img_0001" not in ln]
    assert len(others) == 2 and not any("*" in line for line in others)
    csv_rows = list(csv.DictReader((tmp_path / "q" / "neighbours.csv").open()))
    assert csv_rows[0]["path"] == long[1]  # full paths in the CSV
