"""`facebank train`, `facebank score`, `facebank heads` and the train_run/score_run entry points."""

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.cli import app
from facebank.core.errors import BackboneMismatchError, DataError
from facebank.embed import write_bank
from facebank.heads import load_head, score_run, train_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RUNNER = CliRunner()
D = 16


def make_bank(path, *, n=600, seed=0, splits=None, backbone=None, labels=None):
    rng = np.random.default_rng(seed)
    engines = rng.choice(["real", "sdxl", "stylegan2"], n, p=[0.5, 0.25, 0.25])
    y = (engines != "real").astype(np.int64) if labels is None else labels
    X = rng.standard_normal((n, D)).astype(np.float32)
    X[engines == "sdxl"] += 0.8
    X[np.ix_(engines == "stylegan2", np.arange(4))] += 2.5
    return write_bank(
        path,
        X,
        labels=y,
        engines=engines,
        splits=splits,
        backbone=backbone,
        sha256=[f"sha{seed}-{i:05d}" for i in range(n)],
    )


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("b") / "bank.zarr")


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def test_train_writes_a_complete_run_folder(bank, tmp_path):
    res = invoke("train", bank.path, "--head", "linear", "--seed", "3", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "AUC" in res.output and "(target 0.50%)" in res.output and "trained on" in res.output
    run = tmp_path / "run"
    for f in (
        "head.json",
        "weights.safetensors",
        "config.json",
        "metrics.json",
        "metrics.md",
        "splits.csv",
    ):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert m["val_auc"] > 0.9 and m["n_train"] + m["n_val"] + m["n_test"] == len(bank)
    assert m["val_fpr"] <= 0.005 and "assign_splits(seed=3)" in m["split_source"]
    rows = list(csv.DictReader(io.StringIO((run / "splits.csv").read_text())))
    header = ["sha256", "path", "engine", "label", "split", "group"]  # group: "" = none
    assert list(rows[0]) == header and len(rows) == len(bank)
    from facebank.embed import assign_splits

    assert [r["split"] for r in rows] == assign_splits(bank.engines, bank.sha256, seed=3).tolist()
    head = load_head(run)
    assert head.bank_digest_ == bank.digest and head.backbone_ == bank.backbone
    assert head.calibration_["split"] == "val" and head.calibration_["fpr"] == 0.005
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "train" and cfg["seed"] == 3 and cfg["params"]["seed"] == 3


def test_train_uses_the_bank_split_column(tmp_path):
    n = 300
    splits = np.array(["train"] * 200 + ["val"] * 60 + ["test"] * 40)
    b = make_bank(tmp_path / "s.zarr", n=n, splits=splits)
    r = train_run([b], head="linear", out=tmp_path / "run", seed=0)
    assert r.split_source == "bank split column"
    assert (r.n_train, r.n_val, r.n_test) == (200, 60, 40)


def test_train_params_and_heads(bank, tmp_path):
    res = invoke(
        "train",
        bank.path,
        "--head",
        "mlp",
        "--param",
        "max_steps=20",
        "--param",
        "hidden=[16,8,8]",
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 0, res.output
    assert load_head(tmp_path / "run").hidden == (16, 8, 8)


def test_unknown_labels_are_left_out_of_training(tmp_path):
    rng = np.random.default_rng(0)
    labels = None
    b0 = make_bank(tmp_path / "a.zarr", n=300)
    labels = np.asarray(b0.labels).astype(np.int64).copy()
    labels[rng.random(300) < 0.1] = -1
    b = make_bank(tmp_path / "u.zarr", n=300, labels=labels)
    with pytest.warns(UserWarning, match="labelled -1"):
        r = train_run([b], head="linear", out=tmp_path / "run")
    assert r.metrics["n_unknown_label"] == int((labels == -1).sum())
    assert r.n_train + r.n_val < 300


def test_train_errors_are_one_line(bank, tmp_path):
    res = invoke("train", bank.path, "--head", "svm", "--out", tmp_path / "x")
    assert res.exit_code == 1 and "unknown head 'svm'" in res.output and "linear" in res.output
    res = invoke("train", bank.path, "--head", "linear", "--param", "C", "--out", tmp_path / "x")
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
    res = invoke(
        "train", bank.path, "--head", "linear", "--param", "nope=1", "--out", tmp_path / "x"
    )
    assert res.exit_code == 1 and "valid parameters" in res.output
    only_ai = make_bank(tmp_path / "ai.zarr", n=100, labels=np.ones(100, np.int64))
    res = invoke("train", only_ai.path, "--out", tmp_path / "x")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "real" in res.output


def test_score_bank_to_csv_and_stdout(bank, tmp_path):
    r = train_run([bank], head="linear", out=tmp_path / "run")
    res = invoke("score", bank.path, "--head", tmp_path / "run", "--out", tmp_path / "s.csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert list(rows[0])[:3] == ["path", "score", "decision"] and len(rows) == len(bank)
    s = np.array([float(x["score"]) for x in rows])
    d = np.array([int(x["decision"]) for x in rows])
    assert np.array_equal(d, (s > r.threshold).astype(int))
    assert np.allclose(s, r.head.decision_function(bank.load_features()), atol=1e-5)
    out = invoke("score", bank.path, "--head", tmp_path / "run")
    assert out.stdout.startswith("path,score,decision")


def test_score_refuses_another_backbone(bank, tmp_path):
    train_run([bank], head="linear", out=tmp_path / "run")
    other_spec = {**bank.backbone, "name": "other", "model": "other-model"}
    other = make_bank(tmp_path / "o.zarr", n=50, backbone=other_spec)
    with pytest.raises(BackboneMismatchError) as e:
        score_run(tmp_path / "run", bank=other, out=tmp_path / "s.csv")
    assert "other-model" in str(e.value) and "synthetic" in str(e.value)
    res = invoke("score", other.path, "--head", tmp_path / "run")
    assert res.exit_code == 1 and "other-model" in res.output


def test_score_missing_head_dir(bank, tmp_path):
    res = invoke("score", bank.path, "--head", tmp_path / "none")
    assert res.exit_code == 1 and "does not exist" in res.output
    with pytest.raises(DataError, match="either a bank or image"):
        score_run(tmp_path, out="-")


def test_heads_lists_every_head_with_parameters():
    res = invoke("heads")
    assert res.exit_code == 0
    for name in ("linear", "mlp", "prototype", "wide-mlp", "knn"):
        assert name in res.output
    assert (
        "C=1.0" in res.output and "preset='paper'" in res.output and "factory='auto'" in res.output
    )


@pytest.mark.slow
def test_score_images_embeds_with_the_heads_backbone(tmp_path):
    """End to end on a test-only backbone: embed a folder, train, score loose files (one broken)."""
    from PIL import Image

    from facebank.embed import embed_source

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for engine, base in (("real", 60), ("sdxl", 190)):
        (src / engine).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(src / engine / f"{i}.png")
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", progress=False, device="cpu")
    train_run([tmp_path / "b.zarr"], head="linear", out=tmp_path / "run", fpr=0.05)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    files = [src / "real" / "0.png", src / "sdxl" / "0.png", tmp_path / "broken.png"]
    res = invoke(
        "score", *files, "--head", tmp_path / "run", "--out", tmp_path / "s.csv", "--device", "cpu"
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert [r["path"] for r in rows] == [str(files[0]), str(files[1])]
    assert float(rows[1]["score"]) > float(rows[0]["score"])
    assert "failed: " in res.output and "broken.png" in res.output
