"""Explanations: integrated gradients through a (test-only) backbone and feature attributions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from facebank.analysis.explain import explain_features, explain_images, head_forward
from facebank.core.errors import DataError, HeadError
from facebank.embed import create_backbone, write_bank
from facebank.heads import create_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test-only backbone says so
        bb = create_backbone("tiny-cnn", device="cpu")
    rng = np.random.default_rng(0)
    files, labels = [], []
    for i in range(24):
        base = 60 if i % 2 else 180
        arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        f = tmp / f"{i}.png"
        Image.fromarray(arr).save(f)
        files.append(f)
        labels.append(int(base == 180))
    import torch

    with torch.no_grad():
        X = torch.cat([bb.encode(bb.transform(Image.open(f).convert("RGB"))[None]) for f in files])
    head = create_head("linear").fit(X.numpy(), np.array(labels))
    return bb, head, files, tmp


@pytest.mark.slow
def test_ig_attributions_sum_to_the_score_difference(setup, tmp_path):
    bb, head, files, _ = setup
    res, failures = explain_images(
        files[:1], head, backbone=bb, n_steps=64, out=tmp_path / "run", baselines=("black", "blur")
    )
    assert not failures and [r.baseline for r in res] == ["black", "blur"]
    for r in res:
        diff = r.score - r.baseline_score
        # completeness: sum = f(x) - f(baseline) + delta, delta is Captum's own figure
        assert r.attribution_sum == pytest.approx(diff + r.delta, abs=1e-3 * max(1, abs(diff)))
        assert abs(r.delta) <= 0.05 * abs(diff) + 1e-3
        assert r.heatmap.shape == r.image.shape[:2] and r.attributions.shape[0] == 3
        assert r.png is not None and r.png.stat().st_size > 1000
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["explanations"]) == 2 and "delta" in m["explanations"][0]
    assert "convergence delta" in (tmp_path / "run" / "explain.md").read_text()
    from facebank.analysis.report import write_report

    page = write_report([tmp_path / "run"], out=tmp_path / "r.html").read_text()
    assert "Explanations (integrated gradients)" in page


def test_undecodable_image_is_a_failure_not_a_crash(setup, tmp_path):
    bb, head, files, _ = setup
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    res, failures = explain_images(
        [broken, files[0]], head, backbone=bb, n_steps=4, baselines=("black",)
    )
    assert len(res) == 1 and failures[0][0] == str(broken)
    with pytest.raises(DataError, match="valid ones"):
        explain_images(files[:1], head, backbone=bb, baselines=("grey",))


def test_feature_attribution_of_bank_rows(setup, tmp_path):
    _, head, _, _ = setup
    rng = np.random.default_rng(1)
    D = head.n_features_in_
    X = rng.standard_normal((50, D)).astype(np.float32)
    y = np.r_[np.zeros(25), np.ones(25)].astype(int)
    bank = write_bank(tmp_path / "b.zarr", X, labels=y, engines=np.where(y, "sdxl", "real"))
    fx = explain_features(bank.load_features([30, 31]), head, bank=bank)
    assert fx.attributions.shape == (2, D)
    np.testing.assert_allclose(fx.delta, 0, atol=1e-3)  # exact for the linear head
    mean_real = bank.load_features(np.arange(25)).astype(np.float64).mean(0)
    np.testing.assert_allclose(fx.baseline, mean_real, atol=1e-5)
    assert "25 real rows" in fx.baseline_source and len(fx.top(0, 5)) == 5
    # a non-linear head goes through Captum in feature space; completeness holds too
    mlp = create_head("mlp", epochs=2).fit(X, y)
    fm = explain_features(X[:3], mlp, baseline=mean_real, n_steps=128)
    assert np.abs(fm.delta).max() < 0.05 * np.abs(fm.scores - fm.baseline_score).max() + 1e-3


def test_knn_cannot_be_explained():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    knn = create_head("knn").fit(X, np.r_[np.zeros(20), np.ones(20)].astype(int))
    with pytest.raises(HeadError, match="not a differentiable"):
        head_forward(knn)


@pytest.mark.slow
def test_cli_explains_images_and_bank_rows(tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app
    from facebank.embed import embed_source
    from facebank.heads import train_run

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for engine, base in (("real", 60), ("sdxl", 190)):
        (src / engine).mkdir(parents=True)
        for i in range(20):
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(src / engine / f"{i}.png")
    embed_source(src, backbone="tiny-cnn", out=tmp_path / "b.zarr", progress=False, device="cpu")
    train_run([tmp_path / "b.zarr"], head="linear", out=tmp_path / "run", fpr=0.05)
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(src / "sdxl" / "0.png"),
            "--head",
            str(tmp_path / "run"),
            "--steps",
            "8",
            "--bank",
            str(tmp_path / "b.zarr"),
            "--row",
            "3",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "convergence delta" in res.output and "[blur]" in res.output and "row 3" in res.output
    pngs = sorted(p.name for p in (tmp_path / "x").glob("*.png"))
    assert len(pngs) == 3 and "features-row3.png" in pngs
    res = CliRunner().invoke(app, ["explain", "--head", str(tmp_path / "run")])
    assert res.exit_code == 1 and "nothing to explain" in res.output


@pytest.mark.slow
def test_benchmark_tiny_prints_one_json_line(run_benchmark):
    stdout = run_benchmark("bench_explain.py", "--tiny", "--steps", "8")
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert len(lines) == 1, stdout
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "explain" and fig["backbone"] == "tiny-cnn"
    assert fig["ig_s"] > 0 and fig["ig_both_s"] > 0


def test_too_few_steps_warn_that_the_map_did_not_converge(setup):
    from facebank.core.errors import FacebankWarning

    bb, head, files, _ = setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res, _ = explain_images(files[:1], head, backbone=bb, n_steps=2, baselines=("black",))
    r = res[0]
    converged = abs(r.delta) <= 0.1 * abs(r.score - r.baseline_score) + 1e-6
    warned = [w for w in caught if issubclass(w.category, FacebankWarning)]
    assert bool(warned) == (not converged)
    if warned:
        assert "did not converge" in str(warned[0].message)
