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


def test_cli_engine_ray_out_dir_writes_partitions_and_resumes(tmp_path, trained, monkeypatch):
    """The CLI path end to end, with the Ray pipeline replaced by local batches of 5."""
    import contextlib
    import sys

    from typer.testing import CliRunner

    import facebank.ray_engine.scoring as ray_scoring
    from facebank.cli import app

    src, run = trained

    def fake_iter(files, *, backbone, weights, batch_size, ray_options, storage_options):
        for a in range(0, len(files), 5):
            chunk = files[a : a + 5]
            yield list(range(a, a + len(chunk))), encode_images(chunk, backbone=backbone)

    monkeypatch.setattr(ray_scoring, "import_ray", lambda: None)
    monkeypatch.setattr(ray_scoring, "ray_cluster", lambda ray, address: contextlib.nullcontext())
    monkeypatch.setattr(ray_scoring, "iter_encoded_ray", fake_iter)
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
