"""Partitioned score output (``score --engine ray --out DIR``): commit, resume, columns, stores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import DataError
from facebank.embed import FeatureBank, embed_source, encode_images
from facebank.heads.scoring import score_run
from facebank.ray_engine.scoring import read_scores, score_partitioned

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder of 2 x 7 images, one corrupt file, and a linear head trained on them."""
    from facebank.heads import train_run

    root = tmp_path_factory.mktemp("score")
    src = root / "src"
    rng = np.random.default_rng(0)
    for engine in ("real", "sdxl"):
        (src / engine).mkdir(parents=True)
        for i in range(7):
            px = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(px).save(src / engine / f"{i:03d}.jpg", quality=85)
    (src / "sdxl" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_source(src, backbone="tiny-cnn", out=root / "b.zarr", num_workers=0, progress=False)
        run = train_run(
            [FeatureBank.open(root / "b.zarr")], head="linear", params={}, out=root / "run",
            seed=0, fpr=0.05,
        )  # fmt: skip
    return src, run.run_dir


def _score(head, src, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return score_partitioned(head, [src], out=out, encode=encode_images, batch_size=4, **kw)


def test_partitions_hold_the_local_csv_rows_and_a_resume_redoes_only_uncommitted(tmp_path, trained):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    src, run = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = score_run(run, inputs=[src], out=tmp_path / "local.csv", batch_size=4)
    out = tmp_path / "scores"
    res = _score(run, src, out, partition_rows=4)  # 15 images -> 4 partitions
    assert res.files == [f"scores/part-0000{k}.parquet" for k in range(4)]
    assert (res.written, res.skipped, res.n_scored) == (4, 0, 14)
    assert [p for p, _ in res.failures] == [str(src / "sdxl" / "bad.jpg")]
    table = read_scores(out)
    ref = pacsv.read_csv(tmp_path / "local.csv")
    assert table.column_names == ref.column_names  # the local engine's columns
    assert table["path"].to_pylist() == local.paths
    np.testing.assert_allclose(table["score"].to_numpy(), local.scores, rtol=1e-6)
    assert table["decision"].to_pylist() == local.decisions.tolist()
    assert table["verdict"].to_pylist() == local.verdicts.tolist()
    assert str(pq.read_schema(out / res.files[0]).field("decision").type) == "int64"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 14 and sum(summary["verdicts"].values()) == 14
    # a run killed after partition 2's file but before its marker: only 2 and 3 redone
    for k in (2, 3):
        (out / "scores" / "_committed" / f"part-0000{k}.parquet.json").unlink()
    (out / "scores" / "part-00003.parquet").unlink()
    again = _score(run, src, out, partition_rows=4)
    assert (again.written, again.skipped, again.n_scored) == (2, 2, 14)
    assert read_scores(out)["path"].to_pylist() == local.paths
    with pytest.raises(DataError, match="another run"):
        _score(run, src, out, partition_rows=5)


def test_csv_partitions_are_the_local_csv_split_in_slices(tmp_path, trained):
    src, run = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score_run(run, inputs=[src], out=tmp_path / "local.csv", batch_size=4)
    res = _score(run, src, tmp_path / "scores", partition_rows=8, fmt="csv")
    lines = (tmp_path / "local.csv").read_text().splitlines()
    got = [(tmp_path / "scores" / f).read_text().splitlines() for f in res.files]
    assert all(g[0] == lines[0] for g in got)
    assert [row for g in got for row in g[1:]] == lines[1:]
    with pytest.raises(DataError, match="format"):
        _score(run, src, tmp_path / "x", fmt="json")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        _score(run, src, tmp_path / "busy")


@pytest.mark.slow
def test_head_and_partitioned_scores_on_s3(tmp_path, trained, s3_bucket):
    import s3fs

    from facebank.heads import load_head

    src, run = trained
    fs = s3fs.S3FileSystem()
    fs.put(str(run), f"{s3_bucket}/runs/linear", recursive=True)
    head = load_head(f"{s3_bucket}/runs/linear")
    assert head.path_ == f"{s3_bucket}/runs/linear"
    res = _score(f"{s3_bucket}/runs/linear", src, f"{s3_bucket}/scores", partition_rows=8)
    assert res.n_scored == 14 and len(res.files) == 2
    table = read_scores(f"{s3_bucket}/scores")
    _score(run, src, tmp_path / "ref", partition_rows=8)
    assert table["path"].to_pylist() == read_scores(tmp_path / "ref")["path"].to_pylist()
    assert "testing-secret" not in fs.cat_file(f"{s3_bucket}/scores/score.json").decode()
    from facebank.core.errors import HeadError

    with pytest.raises(HeadError, match="does not exist"):
        load_head(f"{s3_bucket}/runs/none")


def test_one_stream_cut_into_partitions_scores_like_one_call_per_partition(tmp_path, trained):
    """The Ray path's stream (batches of 3) served to partitions of 4: same rows."""
    from facebank.heads import load_head
    from facebank.heads.scoring import collect_inputs
    from facebank.ray_engine.scoring import _Stream

    src, run = trained
    files = collect_inputs([src]).images
    spec = load_head(run).backbone_

    def batches():
        for a in range(0, len(files), 3):
            chunk = files[a : a + 3]
            yield list(range(a, a + len(chunk))), encode_images(chunk, backbone=spec)

    ref = _score(run, src, tmp_path / "ref", partition_rows=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = score_partitioned(
            run, [src], out=tmp_path / "got", partition_rows=4, encode=_Stream(batches(), files)
        )
    assert got.files == ref.files and got.failures == ref.failures
    a, b = read_scores(tmp_path / "ref"), read_scores(tmp_path / "got")
    assert a["path"].to_pylist() == b["path"].to_pylist()
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5)


@pytest.mark.slow
def test_score_images_on_s3_equals_scoring_the_local_copy(tmp_path, trained, s3_bucket):
    import s3fs
    from typer.testing import CliRunner

    from facebank.cli import app

    src, run = trained
    s3fs.S3FileSystem().put(str(src), f"{s3_bucket}/photos", recursive=True)
    cli = CliRunner()
    for inp, csv in ((str(src), "a.csv"), (f"{s3_bucket}/photos", "b.csv")):
        res = cli.invoke(app, ["score", inp, "--head", str(run), "--out", str(tmp_path / csv)])
        assert res.exit_code == 0, res.output
        assert "failed: " in res.output and "bad.jpg" in res.output
    a = [ln.split(",") for ln in (tmp_path / "a.csv").read_text().splitlines()]
    b = [ln.split(",") for ln in (tmp_path / "b.csv").read_text().splitlines()]
    assert [r[1:] for r in a] == [r[1:] for r in b] and len(a) == 15  # header + 14
    assert b[1][0] == f"{s3_bucket}/photos/real/000.jpg"
    res = cli.invoke(app, ["score", f"{s3_bucket}/none", "--head", str(run)])
    assert res.exit_code == 1 and "does not exist" in res.output


def _ray_in_this_process(monkeypatch, *, encode: bool = True) -> None:
    """The Ray scorer without a cluster: no Ray import, no cluster, and (``encode``) the
    images embedded here in batches of 5 instead of by Ray's actors."""
    import contextlib

    import facebank.ray_engine.scoring as ray_scoring

    def fake_iter(files, *, backbone, weights, batch_size, ray_options, storage_options):
        for a in range(0, len(files), 5):
            chunk = files[a : a + 5]
            yield list(range(a, a + len(chunk))), encode_images(chunk, backbone=backbone)

    monkeypatch.setattr(ray_scoring, "import_ray", lambda: None)
    monkeypatch.setattr(ray_scoring, "ray_cluster", lambda ray, address: contextlib.nullcontext())
    if encode:
        monkeypatch.setattr(ray_scoring, "iter_encoded_ray", fake_iter)


def test_cli_engine_ray_out_dir_writes_partitions_and_resumes(tmp_path, trained, monkeypatch):
    """The CLI path end to end, with the Ray pipeline replaced by local batches of 5."""
    import sys

    from typer.testing import CliRunner

    from facebank.cli import app

    src, run = trained

    _ray_in_this_process(monkeypatch)
    out = tmp_path / "scores"
    args = ["score", str(src), "--head", str(run), "--engine", "ray", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--partition-rows", "6", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "scored 14:" in res.output and "3 partitions" in res.output
    assert "3 written now, 0 committed before" in res.output
    assert sorted(p.name for p in (out / "scores").glob("part-*")) == [
        f"part-0000{k}.csv" for k in range(3)
    ]
    res = CliRunner().invoke(app, [*args, "--partition-rows", "6", "--format", "csv"])
    assert "0 written now, 3 committed before" in res.output
    # without Ray: one line saying how to install it, before anything is written
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "none")])
    assert res.exit_code == 1 and "pip install 'facebank[ray]'" in res.output
    assert not (tmp_path / "none").exists()


# ------------------------------------------- the two engines of `score`, side by side
def _invoke_score(engine: str, inputs, run, tmp_path):
    """``score`` on one engine (Ray: partitions of 2 images under a folder ``--out``):
    ``(result, rows' paths, summary, probabilities)``."""
    import csv

    from typer.testing import CliRunner

    from facebank.cli import app

    out = tmp_path / ("s.csv" if engine == "local" else "scores")
    args = ["score", *map(str, inputs), "--head", str(run), "--out", str(out), "--device", "cpu"]
    if engine == "ray":
        args += ["--engine", "ray", "--partition-rows", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    if engine == "local":
        rows = list(csv.DictReader(out.open(encoding="utf-8")))
        paths = [r["path"] for r in rows]
        proba = np.array([float(r["probability"]) for r in rows])
        summary = json.loads((tmp_path / "s.summary.json").read_text())
    else:
        table = read_scores(out)
        paths, proba = table["path"].to_pylist(), table["probability"].to_numpy()
        summary = json.loads((out / "summary.json").read_text())
    return res, paths, summary, proba


@pytest.fixture(scope="module")
def labelled_bank(tmp_path_factory):
    """A labelled bank of 300 rows (no images behind it) and a linear head trained on it."""
    from facebank.embed import write_bank
    from facebank.heads import train_run

    tmp = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    engines = rng.choice(["real", "sdxl"], 300)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    X[engines == "sdxl", 0] += 1.5
    bank = write_bank(
        tmp / "b.zarr", X, labels=(engines != "real").astype(int), engines=engines,
        sha256=[f"s{i}" for i in range(300)],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_run([bank], head="linear", out=tmp / "run")
    return bank, tmp / "run"


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_both_engines_measure_calibration_on_the_banks_labels_and_write_the_summary_once(
    engine, labelled_bank, tmp_path, monkeypatch
):
    """NLL, Cllr, Brier, ECE... on a labelled bank: the same line and summary keys from the
    local CSV and the partitioned output (a bank scores without the Ray pipeline, so
    Ray's cluster is not started), each summary written once; a resume measures again."""

    from sklearn.metrics import brier_score_loss, log_loss

    import facebank.core.stores as stores
    import facebank.heads.scoring as scoring
    from facebank.analysis.calibration_metrics import calibration_metrics

    _ray_in_this_process(monkeypatch, encode=False)
    written: list[str] = []
    local_write, store_write = scoring.write_json, stores.Location.write_json
    monkeypatch.setattr(
        scoring, "write_json", lambda p, doc: (written.append(str(p)), local_write(p, doc))[1]
    )
    monkeypatch.setattr(
        stores.Location, "write_json",
        lambda self, key, doc: (written.append(key), store_write(self, key, doc))[1],
    )  # fmt: skip
    bank, run = labelled_bank
    res, paths, summary, p = _invoke_score(engine, [bank.path], run, tmp_path)
    summaries = (str(tmp_path / "s.summary.json"), "summary.json")  # (local, partitioned)
    assert len([w for w in written if w in summaries]) == 1
    y = np.asarray(bank.labels, dtype=np.int64)
    assert len(paths) == len(y) == 300
    cal = summary["calibration"]
    lines = [ln for ln in res.output.splitlines() if ln.startswith("calibration on the ")]
    assert len(lines) == 1 and lines[0].startswith(
        f"calibration on the 300 labelled rows ({cal['n_real']} real, {cal['n_fake']} AI; "
    )
    assert f"Cllr {cal['cllr_bits']:.3f} bits" in lines[0] and "Pd " in lines[0]
    assert (cal["n_real"], cal["n_fake"]) == (int((y == 0).sum()), int((y == 1).sum()))
    assert cal["nll"] == pytest.approx(log_loss(y, p), rel=1e-5)
    assert cal["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-5)
    ref = calibration_metrics(y, p, prior=cal["prior"], source=cal["probability"]).to_dict()
    assert cal.keys() == ref.keys() and cal["probability"] == ref["probability"]
    for key in ("cllr_bits", "ece", "ece_class_balanced", "eer", "pd_at_false_alarm"):
        assert cal[key] == pytest.approx(ref[key], abs=1e-4), key
    if engine == "ray":  # every partition committed: measured again from what was written
        again, *_, summary2 = _invoke_score(engine, [bank.path], run, tmp_path)[:3]
        assert "0 written now, 1 committed before" in again.output
        assert summary2["calibration"] == cal and lines[0] in again.output


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_both_engines_encode_odd_names_and_warn_once_about_a_test_only_backbone(
    engine, trained, tmp_path, ray_cluster, monkeypatch
):
    """Names that are not UTF-8 or hold a newline, through the local CSV and the session
    cluster's Ray pipeline into partitions: written as ``encode_path`` writes them
    (failures too), the test-only backbone named in one warning (also by a resume that
    scores nothing), and no calibration measured on images (they carry no label)."""
    import os
    import shutil

    from facebank.embed.inputs.datasets import encode_path

    src, run = trained
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(src / "real" / "000.jpg", odd / "plain.jpg")
    raw = os.fsencode(odd)
    for name in (b"bad-\xff\xfe-utf8.jpg", b"new\nline.jpg"):
        shutil.copy(src / "real" / "001.jpg", os.fsdecode(os.path.join(raw, name)))
    broken = os.fsdecode(os.path.join(raw, b"broken-\xfe.jpg"))
    with open(broken, "wb") as fh:
        fh.write(b"\xff\xd8 not a jpeg")
    want = sorted(encode_path(f) for f in os.listdir(odd) if "broken" not in f)
    # names reach the Ray pipeline as text (encoded), never as a pickled fallback column
    ctx = pytest.importorskip("ray.data").DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_fallback_to_arrow_object_ext_type", False)
    res, paths, summary, _ = _invoke_score(engine, [odd], run, tmp_path)
    assert sorted(os.path.basename(p) for p in paths) == want
    assert {"bad-\\xff\\xfe-utf8.jpg", "new\\x0aline.jpg"} <= set(want)
    assert [f["path"] for f in summary["failures"]] == [encode_path(broken)]
    assert f"failed: {encode_path(broken)}: " in res.output
    assert not any(0xDC80 <= ord(c) <= 0xDCFF for c in res.output)
    assert not any(ln.startswith("line.jpg") for ln in res.output.splitlines())
    warned = [ln for ln in res.output.splitlines() if "seeded random weights" in ln]
    assert warned == [
        "warning: the head rests on backbone 'tiny-cnn', which has seeded random weights: "
        "for tests and smoke runs only, its scores mean nothing"
    ]
    assert summary["calibration"] is None and "calibration on the" not in res.output
    if engine == "ray":  # a resume scores no partition and still names the backbone
        again = _invoke_score(engine, [odd], run, tmp_path)[0]
        assert "0 written now, 2 committed before" in again.output
        assert [ln for ln in again.output.splitlines() if "seeded random weights" in ln] == warned


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_both_engines_print_the_operating_points_and_what_the_precisions_rest_on(
    tmp_path, trained, monkeypatch, engine
):
    """One report for every engine: the thresholds at each FPR and, with --prevalence,
    what the precisions rest on, before the verdict line."""

    from typer.testing import CliRunner

    from facebank.cli import app

    src, run = trained

    _ray_in_this_process(monkeypatch)
    out = tmp_path / ("scores" if engine == "ray" else "scores.csv")
    args = ["score", str(src), "--head", str(run), "--out", str(out), "--prevalence", "0.01"]
    res = CliRunner().invoke(app, [*args, "--engine", engine])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith("scored 14"))
    points = [i for i, line in enumerate(lines) if line.startswith("threshold at FPR 0.5%")]
    rests = [i for i, line in enumerate(lines) if line.startswith("each precision rests on")]
    assert points and rests and max(points + rests) < verdict, res.output
    assert "if 1.00% are AI" in lines[points[0]]
