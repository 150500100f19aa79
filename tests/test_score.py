"""`facebank score`: banks, images, folders and manifests; probabilities; views and verdicts."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facebank.cli import app
from facebank.core.errors import DataError
from facebank.embed import embed_source, write_bank
from facebank.heads import load_head, score_run, train_run
from facebank.heads.scoring import collect_inputs, verdicts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUNNER = CliRunner()


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bank")
    rng = np.random.default_rng(0)
    n = 600
    engines = rng.choice(["real", "sdxl"], n)
    X = rng.standard_normal((n, 16)).astype(np.float32)
    X[engines == "sdxl", 0] += 1.5
    bank = write_bank(
        tmp / "b.zarr",
        X,
        labels=(engines != "real").astype(int),
        engines=engines,
        sha256=[f"s{i}" for i in range(n)],
    )
    train_run([bank], head="linear", out=tmp / "run")
    return bank, tmp / "run"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A folder of tiny synthetic faces, a tiny-cnn bank of it and a linear head."""
    tmp = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    src = tmp / "src"
    for engine, base in (("real", 60), ("sdxl", 190)):
        (src / engine).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(src / engine / f"{i}.png")
    embed_source(src, backbone="tiny-cnn", out=tmp / "b.zarr", progress=False, device="cpu")
    train_run([tmp / "b.zarr"], head="linear", out=tmp / "run", fpr=0.05)
    return src, tmp / "run"


def test_verdicts_need_every_view_to_agree():
    d = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]])
    assert verdicts(d).tolist() == ["ai", "real", "unsure", "unsure"]
    assert verdicts(np.array([[1], [0]])).tolist() == ["ai", "real"]


def test_bank_scores_carry_a_calibrated_probability(bank_run, tmp_path):
    bank, run = bank_run
    res = invoke(
        "score", bank.path, "--head", run, "--out", tmp_path / "s.csv", "--prevalence", "0.01"
    )
    assert res.exit_code == 0, res.output
    rows = rows_of((tmp_path / "s.csv").read_text())
    assert list(rows[0])[:5] == ["path", "score", "decision", "probability", "verdict"]
    assert len(rows) == len(bank)
    s = np.array([float(r["score"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    q = np.array([float(r["probability_at_prevalence"]) for r in rows])
    order = np.argsort(s)
    assert np.all(np.diff(p[order]) >= -1e-12) and 0 < p.min() < p.max() < 1
    assert np.all(q < p)  # 1% AI is rarer than the val split's ~50%
    assert {r["verdict"] for r in rows} == {"ai", "real"}
    for fpr in ("0.1%", "0.5%", "1.0%"):
        assert f"threshold at FPR {fpr} (val reals)" in res.output
    assert "precision" in res.output and "if 1.00% are AI" in res.output
    import json

    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert [p["fpr"] for p in summary["operating_points"]] == [0.001, 0.005, 0.01]
    assert all(0 <= p["precision_at_prevalence"] <= 1 for p in summary["operating_points"])
    assert summary["n_scored"] == len(bank) and summary["prevalence"] == 0.01


def test_score_summary_measures_calibration_on_the_banks_labels(bank_run, tmp_path):
    """Scoring a labelled bank: NLL, Cllr, Brier, ECE, EER and Pd on its labelled rows,
    printed and in the summary JSON, equal to the measures computed from the CSV."""
    import json

    from sklearn.metrics import brier_score_loss, log_loss

    bank, run = bank_run
    res = invoke("score", bank.path, "--head", run, "--out", tmp_path / "s.csv")
    assert res.exit_code == 0, res.output
    assert "calibration on the" in res.output and "Cllr" in res.output
    cal = json.loads((tmp_path / "s.summary.json").read_text())["calibration"]
    p = np.array([float(r["probability"]) for r in rows_of((tmp_path / "s.csv").read_text())])
    y = np.asarray(bank.labels, dtype=np.int64)
    known = y >= 0
    assert cal["n_real"] + cal["n_fake"] == int(known.sum())
    assert cal["nll"] == pytest.approx(log_loss(y[known], p[known]), rel=1e-6)
    assert cal["brier"] == pytest.approx(brier_score_loss(y[known], p[known]), rel=1e-6)


def test_few_validation_rows_warn_in_score(bank_run, tmp_path):
    bank, run = bank_run
    head = load_head(run)
    head.score_calibration_ = {**head.score_calibration_, "few_rows": True, "n_rows": 12}
    with pytest.warns(UserWarning, match="only 12 validation rows"):
        res = score_run(head, bank=bank, out=tmp_path / "s.csv")
    assert res.warnings and res.n_scored == len(bank)


def test_views_on_a_bank_are_refused(bank_run):
    bank, run = bank_run
    with pytest.raises(DataError, match="--views re-embeds images"):
        score_run(run, inputs=[bank.path], views=["jpeg:q=75"])


def test_folder_manifest_and_files_are_scored(image_run, tmp_path):
    src, run = image_run
    (src / "real" / "notes.txt").write_text("not an image")
    res = invoke("score", src, "--head", run, "--out", tmp_path / "f.csv", "--device", "cpu")
    assert res.exit_code == 0, res.output
    rows = rows_of((tmp_path / "f.csv").read_text())
    assert len(rows) == 60 and "ignored 1 non-image" in res.output
    real = [float(r["score"]) for r in rows if "/real/" in r["path"]]
    fake = [float(r["score"]) for r in rows if "/sdxl/" in r["path"]]
    assert np.mean(fake) > np.mean(real)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,engine\n"
        + "".join(f"{src}/real/{i}.png,0,real\n" for i in range(3))
        + f"{src}/sdxl/0.png,1,sdxl\n"
    )
    found = collect_inputs([manifest, src / "sdxl" / "1.png"])
    assert len(found.images) == 5 and not found.banks
    by_manifest = score_run(run, inputs=[manifest], out=tmp_path / "m_out.csv", device="cpu")
    assert by_manifest.paths == [f"{src}/real/{i}.png" for i in range(3)] + [f"{src}/sdxl/0.png"]


def test_partial_failure_exits_0_total_failure_exits_1(image_run, tmp_path):
    src, run = image_run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "also.jpg").write_bytes(b"")
    res = invoke(
        "score", src / "real" / "0.png", tmp_path / "broken.png", "--head", run, "--device", "cpu"
    )
    assert res.exit_code == 0, res.output
    assert "failed: " in res.output and "scored 1" in res.output and "1 failed" in res.output
    res = invoke(
        "score", tmp_path / "broken.png", tmp_path / "also.jpg", "--head", run, "--device", "cpu"
    )
    assert res.exit_code == 1 and "nothing could be scored (2 input(s) failed)" in res.output
    res = invoke("score", tmp_path / "missing.png", "--head", run)
    assert res.exit_code == 1, res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke("score", empty, "--head", run)
    assert res.exit_code == 1 and "holds no image files and is not a feature bank" in res.output


def test_a_view_that_flips_the_decision_is_unsure(image_run, tmp_path):
    src, run = image_run
    files = [src / "real" / "3.png", src / "sdxl" / "3.png"]
    head = load_head(run)
    first = score_run(head, images=files, views=["vflip"], out=tmp_path / "a.csv", device="cpu")
    assert first.views == ["original", "vflip"] and first.view_scores.shape == (2, 2)
    s_orig, s_flip = first.view_scores[0]
    assert s_orig != s_flip
    # a threshold between the two views' scores of the first image: one view says AI, one real
    head.threshold_ = (s_orig + s_flip) / 2
    res = score_run(head, images=files, views=["vflip"], out=tmp_path / "v.csv", device="cpu")
    assert res.verdicts[0] == "unsure"
    rows = rows_of((tmp_path / "v.csv").read_text())
    assert rows[0]["verdict"] == "unsure"
    assert {rows[0]["decision[original]"], rows[0]["decision[vflip]"]} == {"0", "1"}
    assert float(rows[0]["score[vflip]"]) == pytest.approx(s_flip)


def test_engine_ray_goes_through_the_ray_scorer(bank_run, tmp_path, monkeypatch):
    import sys

    bank, run = bank_run
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray: one line saying how to install it
    res = invoke("score", bank.path, "--head", run, "--engine", "ray", "--out", tmp_path / "s.csv")
    assert res.exit_code == 1 and "pip install 'facebank[ray]'" in res.output
    assert not (tmp_path / "s.csv").exists()


def test_long_work_is_embedded_in_blocks_behind_a_progress_bar(bank_run, tmp_path):
    """With a progress bar, images go through the encoder in blocks (the bar advances per block)."""
    from types import SimpleNamespace

    from facebank.heads import scoring

    _, run = bank_run
    head = load_head(run)
    head.backbone_ = {"name": "fake"}
    files = [str(tmp_path / f"{i}.png") for i in range(600)]
    calls = []

    def fake_encode(paths, *, backbone, view, device, weights, batch_size):
        calls.append((view, len(paths)))
        X = np.zeros((len(paths), head.n_features_in_), np.float32)
        X[:, 0] = [int(p.rsplit("/", 1)[1].split(".")[0]) % 7 - 3 for p in paths]
        if view == "hflip":
            X[:, 0] *= -1  # this view flips the synthetic score's sign
        return SimpleNamespace(features=X, paths=list(paths), failures=[])

    res = scoring.score_run(
        head,
        images=files,
        views=["hflip"],
        progress=True,
        encode=fake_encode,
        out=tmp_path / "s.csv",
    )
    assert calls == [("original", 256), ("original", 256), ("original", 88)] + [
        ("hflip", 256),
        ("hflip", 256),
        ("hflip", 88),
    ]
    assert res.n_scored == 600 and res.paths == files
    # where the sign flip crosses the threshold the verdict is unsure, never ai or real
    crosses = (res.view_scores[:, 0] > res.threshold) != (res.view_scores[:, 1] > res.threshold)
    assert crosses.any() and (res.verdicts[crosses] == "unsure").all()
    assert (res.verdicts[~crosses] != "unsure").all()


def test_scoring_images_without_labels_measures_no_calibration(image_run, tmp_path):
    src, run = image_run
    res = invoke("score", src / "real", "--head", run, "--out", tmp_path / "s.csv")
    assert res.exit_code == 0, res.output
    assert "calibration on the" not in res.output
    import json

    assert json.loads((tmp_path / "s.summary.json").read_text())["calibration"] is None
