"""``run_experiment`` / ``facebank experiment``: the whole pipeline, resume, bad input.

Runs use the test-only ``tiny-cnn`` backbone (seeded random weights, seconds on a CPU)
on small stand-in datasets; the numbers are not judged here (tests/test_demo.py judges
them with the real backbone), only what was run, written, reused and refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.experiment import ExperimentResult, run_experiment, view_slug
from facebank.core.errors import DataError, FacebankError, RunFolderError, UnknownNameError
from facebank.embed.inputs.standin import make_standin_dataset

BACKBONE = "tiny-cnn"


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


VIEWS = ("normalise:size=64", "vflip")
HEADS = ("linear", "prototype")
N = 56


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # real 56; AI 56 over four engines (17/17/14/8); enough train rows (> 64) for the
    # prototype head's default 64-d projection even with one engine held out
    return make_standin_dataset(tmp_path_factory.mktemp("exp") / "data", n_per_class=N)


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp-run") / "run"
    # named: no engine of this small set has the 20 images the default new engine needs
    result = run_experiment(
        dataset,
        backbone=BACKBONE,
        out=out,
        views=VIEWS,
        heads=HEADS,
        new_engine="denoise-renoise",
        device="cpu",
        progress=False,
    )
    return result


def _bank_snapshot(path):
    from facebank.embed import FeatureBank

    bank = FeatureBank.open(path)
    return len(bank), bank.load_features(), list(bank.sha256)


@pytest.mark.slow
def test_experiment_writes_every_step(first_run: ExperimentResult):
    r = first_run
    run = r.run_dir
    assert r.report == run / "report.html" and r.report.stat().st_size > 10_000
    assert set(r.banks) == {"original", "normalise:size=64:q=90", "vflip"}
    assert r.banks["vflip"] == run / "banks" / "vflip.zarr"
    assert r.engines["real"] == N and sum(n for e, n in r.engines.items() if e != "real") == N
    assert list(r.heads) == list(HEADS)
    for name, h in r.heads.items():
        assert (run / "train" / name / "head.json").is_file()
        assert (run / "evaluate" / name / "metrics.json").is_file()
        assert 0.0 <= h["auc"] <= 1.0 and h["threshold"] is not None
    assert r.new_engine == "denoise-renoise"
    assert r.ood is not None and 0.0 <= r.ood["auroc"] <= 1.0
    assert (run / "train" / "prototype-without-denoise-renoise" / "head.json").is_file()
    # the OOD head never saw the new engine
    splits = (run / "train" / "prototype-without-denoise-renoise" / "splits.csv").read_text()
    assert "denoise-renoise" not in splits
    assert r.loeo is not None and len(r.loeo["per_engine"]) == 4
    assert set(r.robustness) == set(HEADS)
    assert set(r.robustness["linear"]) == set(r.banks)
    # the confounds audit and the normalised control ran, with the heads trained here
    assert (run / "audit" / "metrics.json").is_file()
    assert r.audit["verdict"] in ("confounded", "partly confounded", "no metadata shortcut found")
    assert set(r.audit["heads"]) == set(HEADS)
    assert set(r.normalised["heads"]) == set(HEADS)
    assert (run / "normalised" / "train" / "linear" / "head.json").is_file()
    assert r.neighbours is not None and (run / "neighbours" / "clusters" / "metrics.json").is_file()
    assert r.skipped == {}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["heads"]["linear"]["auc"] == pytest.approx(r.heads["linear"]["auc"])
    assert metrics["fpr"] == 0.005
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == "experiment"
    assert config["views"] == ["original", "normalise:size=64:q=90", "vflip"]
    assert metrics["audit"]["verdict"] == r.audit["verdict"]
    html = r.report.read_text()
    for text in ("Experiment summary", "linear", "prototype", "denoise-renoise", "Confounds"):
        assert text in html


@pytest.mark.slow
def test_rerun_reuses_the_banks(first_run: ExperimentResult, dataset):
    before = {v: _bank_snapshot(p) for v, p in first_run.banks.items()}
    again = run_experiment(
        dataset,
        backbone=BACKBONE,
        out=first_run.run_dir,
        views=VIEWS,
        heads=HEADS,
        device="cpu",
        progress=False,
    )
    for view, (n, X, sha) in before.items():
        assert again.embedding[view]["embedded"] == 0  # nothing embedded twice
        assert again.embedding[view]["skipped_present"] == n == 2 * N
        n2, X2, sha2 = _bank_snapshot(again.banks[view])
        assert n2 == n and sha2 == sha and np.array_equal(X2, X)
    assert again.heads["linear"]["auc"] == pytest.approx(first_run.heads["linear"]["auc"])
    assert again.report.is_file()


@pytest.mark.slow
def test_one_ai_engine_skips_loeo_and_ood_with_a_reason(dataset, tmp_path):
    src = tmp_path / "one"
    shutil.copytree(dataset / "real", src / "real")
    shutil.copytree(dataset / "upsample-nearest", src / "upsample-nearest")
    r = run_experiment(
        src,
        backbone=BACKBONE,
        out=tmp_path / "run",
        views=(),
        heads=("linear",),
        device="cpu",
        progress=False,
    )
    assert r.loeo is None and r.ood is None and r.robustness is None
    assert "two AI engines" in r.skipped["leave-one-engine-out"]
    assert "two AI engines" in r.skipped["ood"]
    assert "robustness" in r.skipped
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert set(metrics["skipped"]) == {
        "leave-one-engine-out",
        "ood",
        "robustness",
        "normalised control",
    }
    assert "two AI engines" in r.report.read_text()
    assert r.heads["linear"]["auc"] is not None


def test_only_reals_is_refused_before_embedding(dataset, tmp_path):
    src = tmp_path / "reals"
    shutil.copytree(dataset / "real", src / "real")
    with pytest.raises(DataError, match="only real images.*needs real images .*AI-generated"):
        run_experiment(src, backbone=BACKBONE, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing created, no time spent


def test_only_ai_images_is_refused(dataset, tmp_path):
    src = tmp_path / "fakes"
    shutil.copytree(dataset / "upsample-nearest", src / "upsample-nearest")
    with pytest.raises(DataError, match="no real images"):
        run_experiment(src, backbone=BACKBONE, out=tmp_path / "run", progress=False)


def test_no_images_is_refused(tmp_path):
    (tmp_path / "empty" / "real").mkdir(parents=True)
    (tmp_path / "empty" / "real" / "notes.txt").write_text("not an image")
    with pytest.raises(FacebankError, match="no images"):
        run_experiment(tmp_path / "empty", backbone=BACKBONE, out=tmp_path / "run", progress=False)
    with pytest.raises(FacebankError, match="does not exist"):
        run_experiment(
            tmp_path / "missing", backbone=BACKBONE, out=tmp_path / "run", progress=False
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"new_engine": "midjourney"}, "new-engine 'midjourney'.*valid: denoise-renoise"),
        ({"new_engine": "real"}, "not an AI engine"),
        ({"views": ("jpeg:q=500",)}, "jpeg"),
        ({"heads": ("linear", "svm")}, "unknown head 'svm'.*linear"),
        ({"backbone": "resnet-9000"}, "resnet-9000"),
    ],
)
def test_bad_names_fail_before_any_work(dataset, tmp_path, kwargs, match):
    kw = {"backbone": BACKBONE, "progress": False, **kwargs}
    with pytest.raises(UnknownNameError, match=match):
        run_experiment(dataset, out=tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_out_folder_with_other_files_is_never_touched(dataset, tmp_path):
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "precious.jpg").write_bytes(b"user data")
    with pytest.raises(RunFolderError, match="not a facebank run folder"):
        run_experiment(dataset, backbone=BACKBONE, out=out, progress=False)
    assert (out / "train" / "precious.jpg").read_bytes() == b"user data"
    with pytest.raises(DataError, match="contains the dataset"):
        run_experiment(dataset, backbone=BACKBONE, out=dataset.parent, progress=False)


def test_view_slugs_are_file_names():
    assert view_slug("jpeg:q=50") == "jpeg-q50"
    assert view_slug("resize:256+jpeg:q=75") == "resize-256+jpeg-q75"
    assert view_slug("vflip") == "vflip"


def test_cli_experiment_bad_input_is_one_line(dataset, tmp_path):
    from facebank.cli import app

    src = tmp_path / "reals"
    shutil.copytree(dataset / "real", src / "real")
    res = CliRunner().invoke(
        app, ["experiment", str(src), "--backbone", BACKBONE, "--out", str(tmp_path / "run")]
    )
    assert res.exit_code == 1
    err = res.stderr if hasattr(res, "stderr") else res.output
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and "only real images" in lines[0]


def test_a_failed_experiment_leaves_no_folder(dataset, tmp_path):
    with pytest.raises(FacebankError, match="not a file"):
        run_experiment(
            dataset,
            backbone=BACKBONE,
            out=tmp_path / "run",
            weights=tmp_path / "missing.pt",
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch_cuda(), reason="this machine has CUDA")
def test_an_absent_device_is_refused_before_any_work(dataset, tmp_path):
    with pytest.raises(FacebankError, match="device .cuda."):
        run_experiment(dataset, backbone=BACKBONE, out=tmp_path / "run", device="cuda")
    assert not (tmp_path / "run").exists()


def _result(**kw) -> ExperimentResult:
    base = dict(
        run_dir=Path("run"),
        report=None,
        backbone="b",
        source="s",
        engines={"real": 30, "sdxl": 30},
        banks={},
        embedding={},
        heads={
            "linear": {"auc": 0.9, "auc_lo": 0.8, "auc_hi": 0.95, "tpr": 0.467, "fpr": 0.0333},
        },
        robustness={
            "linear": {
                "original": {"auc": 0.91, "tpr": 0.167, "fpr": 0.033},
                "jpeg:q=50": {"auc": 0.62, "tpr": 0.467, "fpr": 0.333},
            }
        },
        loeo={"in_engine_tpr": 0.9, "out_of_engine_tpr": 0.4, "fpr_test_reals": 0.02},
        ood={
            "new_engine": "sdxl",
            "auroc": float("nan"),
            "flag_rate_new": 0.5,
            "flag_rate_known": 0.06,
        },
    )
    base.update(kw)
    return ExperimentResult(**base)


def test_every_headline_tpr_stands_beside_its_realised_fpr():
    r = _result()
    (row,) = r.head_rows()
    cols = list(row)
    assert cols[cols.index("TPR (test)") + 1].startswith("FPR (test; target 0.5%")
    assert row["TPR (test)"] == "46.7%" and row[cols[3]] == "3.33%"
    steps = {k["step"].split(" ")[0]: k["result"] for k in r.key_rows()}
    # the robustness line cannot read as "JPEG helps": AUC and the FPR of each view
    assert "jpeg:q=50: AUC 0.620, TPR 46.7% at FPR 33.3%" in steps["robustness"]
    assert "original: AUC 0.910, TPR 16.7% at FPR 3.3%" in steps["robustness"]
    assert "FPR on test reals 2.00%" in steps["leave-one-engine-out"]
    ood = steps["OOD:"]
    assert "AUROC n/a" in ood and "nan" not in ood and "known-engine test images" in ood
    title = r.rich_tables()[0].title
    assert "validation reals" in title and "realised on the test rows" in title
    assert "nan" not in r.markdown()
