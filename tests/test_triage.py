"""analysis.triage and `facebank triage`: known answers on generated banks and run folders.

The run folders are built as ``facebank experiment`` lays them out (banks/original.zarr,
train/<head>/ with splits.csv, config.json) from synthetic Gaussian features per engine,
so every answer is known in advance:

- NEW drawn from engine ``a``'s distribution (rows held out of the run) -> placed on ``a``,
  low OOD scores, not called new;
- NEW far from every engine and on the real side of the shared AI direction -> new,
  missed by the frozen heads, a few-shot curve that rises with k;
- NEW with the reals' features but another file format -> the shortcut warning.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.triage import TriageConfig, triage
from facebank.core.errors import BackboneMismatchError, DataError
from facebank.embed.inputs.metadata import METADATA_SCHEMA
from facebank.testing import synthetic_arrays, synthetic_backbone

# small synthetic val splits: the heads rightly warn that 0.5% FPR is below one real
pytestmark = pytest.mark.filterwarnings("ignore:calibrating at fpr")

DIM = 48
COUNTS = {"real": 300, "a": 160, "b": 100, "c": 100}
N_NEW = 60
FAST = TriageConfig(shots=(0, 10, 40), draws=1, k=10, few_shot_heads=None)
NO_CURVE = TriageConfig(shots=())  # for tests about the other answers


def _meta(n: int, fmt: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Acquisition metadata drawn alike for every set of rows, except the file format."""
    rng = np.random.default_rng(seed)
    side = rng.integers(200, 1000, n)
    cols: dict[str, np.ndarray] = {
        "file_format": np.full(n, fmt),
        "width": side,
        "height": side,
        "file_bytes": side * side // 4,
        "bytes_per_pixel": np.full(n, 0.25),
        "pil_mode": np.full(n, "RGB"),
        "bits_per_channel": np.full(n, 8),
        "jpeg_quality": np.full(n, -1),
    }
    for key, kind in METADATA_SCHEMA.items():
        if key not in cols:
            cols[key] = np.zeros(n, dtype=bool) if kind == "bool" else np.full(n, "")
    return cols


def _write(path, X, engines, sha, labels, fmt="JPEG", backbone=None):
    from facebank.embed import write_bank

    return write_bank(
        path,
        X,
        labels=labels,
        engines=engines,
        sha256=sha,
        paths=[f"{e}/{s}.png" for e, s in zip(engines, sha, strict=True)],
        backbone=backbone,
        columns=_meta(len(X), fmt),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A run on real/a/b/c, and the arrays NEW banks are cut from."""
    from facebank.core.runs import start_run
    from facebank.heads import train_run

    root = tmp_path_factory.mktemp("triage")
    d = synthetic_arrays(
        {**COUNTS, "a": COUNTS["a"] + N_NEW, "real": COUNTS["real"] + N_NEW},
        dim=DIM,
        seed=3,
        signal=3.0,
        spread=3.0,
        offset=6.0,
    )
    e = d["engines"]
    held_a = np.flatnonzero(e == "a")[-N_NEW:]
    held_real = np.flatnonzero(e == "real")[-N_NEW:]
    run_rows = np.setdiff1d(np.arange(len(e)), np.r_[held_a, held_real])
    run = root / "run"
    start_run(
        run,
        command="experiment",
        config={"backbone": "synthetic", "views": ["original"], "heads": ["linear", "prototype"]},
    )
    bank = _write(
        run / "banks" / "original.zarr",
        d["X"][run_rows],
        e[run_rows],
        d["sha256"][run_rows],
        d["labels"][run_rows],
    )
    for head in ("linear", "prototype"):
        train_run([bank], head=head, params={}, out=run / "train" / head, seed=0)
    # far from every engine, and on the real side of the AI direction u
    rng = np.random.default_rng(7)
    away = rng.normal(size=DIM)
    away -= away.dot(d["u"]) * d["u"]
    away /= np.linalg.norm(away)
    centre = d["X"][e == "real"].mean(axis=0)
    far = (centre + 14.0 * away - 2.0 * d["u"] + rng.normal(size=(N_NEW, DIM))).astype(np.float32)
    return {"root": root, "run": run, "d": d, "a": held_a, "real": held_real, "far": far}


def _new_bank(world, name, X, fmt="JPEG", sha=None, backbone=None):
    n = len(X)
    sha = sha if sha is not None else np.array([f"{name}-{i:04d}" for i in range(n)])
    return _write(
        world["root"] / f"{name}.zarr",
        X,
        np.full(n, "new"),
        sha,
        np.full(n, -1),
        fmt=fmt,
        backbone=backbone,
    ).path


def _run_triage(world, new, name, config=FAST, **kw):
    return triage(new, run=world["run"], out=world["root"] / f"out-{name}", config=config, **kw)


@pytest.fixture(scope="module")
def like_a(world):
    d = world["d"]
    new = _new_bank(world, "like-a", d["X"][world["a"]])
    return _run_triage(world, new, "like-a")


@pytest.fixture(scope="module")
def far(world):
    return _run_triage(world, _new_bank(world, "far", world["far"]), "far")


def test_new_from_a_known_engine_is_placed_on_it_with_low_ood_scores(like_a, far):
    st = like_a.backbones[0].sources[0]
    assert st.n == N_NEW
    assert st.resemble["nearest_engine"] == "a"
    for rule in ("centroid", "knn", "gaussian"):
        shares = st.resemble["shares"][rule]
        assert shares["a"] > 0.6 and shares["a"] == max(shares.values()), (rule, shares)
    # as usual as the known test rows: AUROC near chance, far below the far source's
    for key in ("prototype", "knn"):
        assert st.new[key]["auroc"] < 0.7
        assert st.new[key]["auroc"] < far.backbones[0].sources[0].new[key]["auroc"] - 0.25
    assert st.resemble["silhouette"] < 0.05
    assert st.verdict[0].startswith("NOT CLEARLY NEW")
    # caught like engine a's own test rows
    assert "CAUGHT" in st.verdict[1] and not st.verdict[1].startswith("MISSED")


def test_new_far_from_everything_is_new_missed_and_learnable(far):
    st = far.backbones[0].sources[0]
    for key in ("prototype", "knn"):
        assert st.new[key]["auroc"] > 0.95
        assert st.new[key]["flag"]["rate"] > 0.9
    assert st.new["real_only"]["flag"]["rate"] > 0.9
    assert st.resemble["silhouette"] > 0
    assert st.verdict[0].startswith("NEW:")
    for row in st.detect:
        assert row["tpr"]["rate"] < 0.2, row
    assert st.verdict[1].startswith("MISSED")
    for head, c in st.few_shot.items():
        tpr = [p["tpr_mean"] for p in c["curve"]]
        assert [p["k"] for p in c["curve"]] == [0, 10, 40]
        assert tpr[-1] > tpr[0] + 0.5, (head, tpr)
    assert far.backbones[0].sources[0].few_shot["linear"]["k_reached"] in (10, 40)


def test_new_told_from_reals_only_by_file_format_raises_the_shortcut_warning(world, like_a):
    d = world["d"]
    new = _new_bank(world, "png-reals", d["X"][world["real"]], fmt="PNG")
    st = _run_triage(world, new, "png-reals", NO_CURVE).backbones[0].sources[0]
    assert st.metadata["shortcut"] is True
    assert st.metadata["carriers"] == ["file_format"]
    assert st.verdict[3].startswith("SHORTCUT RISK")
    # the same features with the reals' format: no warning
    assert like_a.backbones[0].sources[0].metadata["shortcut"] is False


def test_run_folder_holds_the_page_metrics_csv_and_figures(like_a):
    out = like_a.run_dir
    m = json.loads((out / "metrics.json").read_text())["triage"]
    assert m["verdict"] == like_a.verdict and len(m["verdict"]) == 4
    src = m["backbones"]["synthetic"]["sources"]["new"]
    assert {"new", "resemble", "detect", "few_shot", "metadata", "is_new"} <= set(src)
    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_NEW
    assert {"path", "ood_prototype", "knn_distance", "real_only", "nearest_centroid"} <= set(
        rows[0]
    )
    assert {"linear_score", "linear_flag", "prototype_score", "prototype_flag"} <= set(rows[0])
    page = (out / "triage.html").read_text()
    assert like_a.verdict[0].split(":")[0] in page and page.count("<html") == 1
    assert (out / "map-synthetic.png").is_file() and (out / "few-shot-synthetic-new.png").is_file()


def test_no_shots_skip_the_curve_with_its_reason(world, far):
    st = _run_triage(world, world["root"] / "far.zarr", "no-shots", NO_CURVE)
    st = st.backbones[0].sources[0]
    assert all(c["skipped"] == "no shot count given" for c in st.few_shot.values())
    assert "skipped: no shot count given" in st.verdict[2]


def test_fewer_than_20_images_are_answered_with_every_rate_too_few(world):
    d = world["d"]
    st = _run_triage(world, _new_bank(world, "twelve", d["X"][world["a"][:12]]), "twelve")
    st = st.backbones[0].sources[0]
    assert st.n == 12
    assert all(r["tpr"]["too_few"] for r in st.detect)
    assert st.new["real_only"]["flag"]["too_few"] and st.new["knn"]["too_few"]
    assert all("too few for a rate" in c["skipped"] for c in st.few_shot.values())
    assert "too few for a rate" in st.verdict[0] and "too few for a rate" in st.verdict[1]
    assert "skipped: too few for a rate" in st.verdict[2]


def test_new_images_already_in_the_run_are_reported_and_excluded(world):
    d = world["d"]
    from facebank.embed import FeatureBank

    run_bank = FeatureBank.open(world["run"] / "banks" / "original.zarr")
    dup = np.flatnonzero(np.asarray(run_bank.engines) == "b")[:5]
    X = np.r_[d["X"][world["a"][:25]], run_bank.load_features(dup)]
    sha = np.r_[[f"ov-{i}" for i in range(25)], np.asarray(run_bank.sha256)[dup]]
    res = _run_triage(world, _new_bank(world, "overlap", X, sha=sha), "overlap", NO_CURVE)
    assert len(res.overlap) == 5
    assert {o["run_engine"] for o in res.overlap} == {"b"}
    assert res.backbones[0].sources[0].n == 25


def test_a_run_without_prototype_head_still_answers_with_knn_and_real_only(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    shutil.rmtree(run / "train" / "prototype")
    new = _new_bank(world, "noproto", world["far"])
    res = triage(new, run=run, out=tmp_path / "out", config=NO_CURVE)
    st = res.backbones[0].sources[0]
    assert st.new["prototype"] is None
    assert st.new["knn"]["auroc"] > 0.95 and st.new["real_only"]["flag"]["rate"] > 0.9
    assert [r["head"] for r in st.detect] == ["linear"]


def test_a_new_bank_of_another_backbone_is_refused_naming_both(world, tmp_path):
    other = {**synthetic_backbone(DIM), "name": "other-net", "model": "other"}
    new = _new_bank(world, "other", world["far"], backbone=other)
    with pytest.raises(BackboneMismatchError, match="other"):
        triage(new, run=world["run"], out=tmp_path / "out", config=FAST)


def test_append_adds_new_as_a_named_engine_resumably(world, tmp_path, far):
    from facebank.embed import FeatureBank

    target = tmp_path / "bank.zarr"
    shutil.copytree(world["run"] / "banks" / "original.zarr", target)
    n0 = len(FeatureBank.open(target))
    cfg = TriageConfig(shots=(), engine_name="farnet")
    new = world["root"] / "far.zarr"
    res = triage(new, run=world["run"], out=tmp_path / "out", config=cfg, append_to=[target])
    assert res.appended[0]["added"] == N_NEW
    bank = FeatureBank.open(target)
    assert len(bank) == n0 + N_NEW
    assert (np.asarray(bank.engines)[n0:] == "farnet").all()
    assert (np.asarray(bank.labels)[n0:] == 1).all()
    assert bank.meta["appended_engines"][0]["engine"] == "farnet"
    again = triage(new, run=world["run"], out=tmp_path / "out2", config=cfg, append_to=[target])
    assert again.appended[0] == {**res.appended[0], "added": 0, "already_present": N_NEW}
    assert len(FeatureBank.open(target)) == n0 + N_NEW


def test_not_an_experiment_run_is_one_line_error(world, tmp_path):
    with pytest.raises(DataError, match="experiment"):
        triage(world["root"] / "far.zarr", run=tmp_path, out=tmp_path / "o", config=FAST)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A one-view run of tiny-cnn on a small stand-in dataset, and 25 other images + 1 bad."""
    from facebank.core.runs import start_run
    from facebank.embed import embed_source
    from facebank.embed.inputs.standin import make_standin_dataset
    from facebank.heads import train_run

    root = tmp_path_factory.mktemp("triage-cli")
    ds = make_standin_dataset(root / "ds", n_per_class=40, seed=0)
    run = root / "run"
    start_run(
        run,
        command="experiment",
        config={"backbone": "tiny-cnn", "views": ["original"], "heads": ["linear"]},
    )
    embed_source(ds, backbone="tiny-cnn", out=run / "banks" / "original.zarr", progress=False)
    train_run([run / "banks" / "original.zarr"], head="linear", out=run / "train" / "linear")
    other = make_standin_dataset(root / "other", n_per_class=25, seed=1)
    new = other / "real"
    (new / "broken.png").write_bytes(b"not a png at all")
    return {"root": root, "run": run, "new": new}


def test_cli_triages_a_folder_of_images_and_appends(image_run):
    from facebank.cli import app
    from facebank.embed import FeatureBank

    out = image_run["root"] / "out"
    bank = image_run["root"] / "copy.zarr"
    shutil.copytree(image_run["run"] / "banks" / "original.zarr", bank)
    args = ["triage", str(image_run["new"]), "--run", str(image_run["run"]), "--out", str(out)]
    args += ["--shots", "0,5", "--draws", "1", "--append", str(bank), "--engine-name", "Cam2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "verdict" in r.output and "1 image(s) of NEW could not be read" in r.output
    m = json.loads((out / "metrics.json").read_text())["triage"]
    assert m["failed"][0]["path"].endswith("broken.png")
    assert m["backbones"]["tiny-cnn"]["sources"]["cam2"]["n"] == 25
    assert (np.asarray(FeatureBank.open(bank).engines) == "cam2").sum() == 25
    # a re-run resumes: nothing embedded again
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())["triage"]
    assert m["backbones"]["tiny-cnn"]["embedding"]["original"]["embedded"] == 0


def test_cli_bad_run_is_one_line_and_exit_1(image_run, tmp_path):
    from facebank.cli import app

    r = CliRunner().invoke(app, ["triage", str(image_run["new"]), "--run", str(tmp_path)])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and "experiment" in r.output


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.slow  # builds a tiny-cnn run of 60 images, then triages 25 more
def test_bench_triage_tiny_smoke(run_benchmark):
    """A smoke test: the script runs end to end and reports what it timed (not the targets,
    which need the demo-sized run and efficientnet-lite1)."""
    lines = [ln for ln in run_benchmark("bench_triage.py", "--tiny").splitlines() if ln.strip()]
    assert len(lines) == 1
    fig = json.loads(lines[0])
    assert fig["benchmark"] == "triage" and fig["tiny"] is True and fig["backbone"] == "tiny-cnn"
    assert fig["n_new"] == 25 and fig["views"] == ["original"]
    assert fig["heads"] == ["linear", "prototype"]
    assert fig["embed_s"] > 0 and fig["rest_s"] > 0 and len(fig["verdict"]) == 4


@pytest.mark.slow  # a two-backbone experiment of 64 tiny images, then triage of 25 more
def test_a_run_of_several_backbones_is_triaged_with_each_leading_with_the_best_row(tmp_path):
    """``experiment --backbone a,b`` then ``triage``: every backbone answers, and the page
    and the terminal lead with the leaderboard's best single-backbone row."""
    from facebank.analysis.triage._run import best_leaderboard_row
    from facebank.cli import app
    from facebank.embed.inputs.standin import make_standin_dataset

    data = make_standin_dataset(tmp_path / "data", n_per_class=16)
    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "experiment", str(data), "--backbone", "tiny-cnn,tiny-vit", "--out", str(run),
            "--views", "none", "--heads", "linear", "--device", "cpu", "--group-by", "none",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lead = best_leaderboard_row(run)
    assert lead is not None and lead["backbone"] in ("tiny-cnn", "tiny-vit")
    new = make_standin_dataset(tmp_path / "other", n_per_class=25, seed=1) / "real"
    out = tmp_path / "out"
    args = [
        "triage",
        str(new),
        "--run",
        str(run),
        "--out",
        str(out),
        "--shots",
        "0",
        "--draws",
        "1",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())["triage"]
    assert set(m["backbones"]) == {"tiny-cnn", "tiny-vit"}
    for b in ("tiny-cnn", "tiny-vit"):
        assert m["backbones"][b]["embedding"]["original"]["embedded"] == 25
    page = (out / "triage.html").read_text()
    assert lead["backbone"] in page
    # the lead backbone is named before the other one on the page
    other = ({"tiny-cnn", "tiny-vit"} - {lead["backbone"]}).pop()
    assert page.index(lead["backbone"]) < page.index(other)


def test_group_by_splits_new_into_sources_answered_each(world):
    """NEW holding two unknown sources, told apart by ``--group-by engine``: each source
    gets its own answers - the one drawn like engine a is placed on a and is not new, the
    far one is called new."""
    import dataclasses

    d = world["d"]
    X = np.concatenate([d["X"][world["a"]], world["far"]])
    n_a, n_far = len(world["a"]), len(world["far"])
    engines = np.array(["cam-x"] * n_a + ["cam-y"] * n_far)
    sha = np.array([f"mixed-{i:04d}" for i in range(len(X))])
    path = world["root"] / "mixed.zarr"
    _write(path, X, engines, sha, np.full(len(X), -1))
    res = _run_triage(world, path, "mixed", config=dataclasses.replace(NO_CURVE, group_by="engine"))
    sources = {s.name: s for s in res.backbones[0].sources}
    assert set(sources) == {"cam-x", "cam-y"}
    assert sources["cam-x"].n == n_a and sources["cam-y"].n == n_far
    assert sources["cam-x"].resemble["nearest_engine"] == "a"
    assert sources["cam-x"].verdict[0].startswith("NOT CLEARLY NEW")
    assert sources["cam-y"].verdict[0].startswith("NEW")


def test_cli_triages_new_images_on_a_store_like_the_same_local_folder(image_run, s3_bucket):
    """NEW as an ``s3://`` URL (the loopback server) gives the answers of the same images
    read from the local folder; the per-image CSV keeps their URLs."""
    import csv

    import s3fs

    from facebank.cli import app

    fs = s3fs.S3FileSystem(anon=False)
    url = f"{s3_bucket}/new"
    fs.put(str(image_run["new"]), url, recursive=True)
    outs = {}
    for name, new in (("local", image_run["new"]), ("store", url)):
        out = image_run["root"] / f"out-{name}"
        args = ["triage", str(new), "--run", str(image_run["run"]), "--out", str(out)]
        r = CliRunner().invoke(app, [*args, "--shots", "0", "--draws", "1"])
        assert r.exit_code == 0, r.output
        outs[name] = json.loads((out / "metrics.json").read_text())["triage"]
        with open(next(out.glob("*.csv")), encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if name == "store":
            assert rows and all(row["path"].startswith(url) for row in rows), rows[:2]
    local, store = (outs[k]["backbones"]["tiny-cnn"]["sources"] for k in ("local", "store"))
    assert local.keys() == store.keys()
    for src in local:
        assert local[src]["n"] == store[src]["n"] == 25
        assert local[src]["resemble"]["nearest_engine"] == store[src]["resemble"]["nearest_engine"]
