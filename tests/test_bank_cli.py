"""``facebank bank consolidate|backfill|export|import`` and URLs/--storage-options on the CLI."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from facebank.cli import app
from facebank.embed import FeatureBank, write_bank, write_partition
from facebank.testing import synthetic_backbone

runner = CliRunner()
RNG = np.random.default_rng(2)


def test_export_import_round_trip_on_the_command_line(tmp_path):
    write_bank(tmp_path / "b.zarr", RNG.normal(size=(12, 4)), labels=[1] * 12, engines="sdxl")
    res = runner.invoke(
        app,
        [
            "bank",
            "export",
            str(tmp_path / "b.zarr"),
            "--out",
            str(tmp_path / "e"),
            "--rows-per-file",
            "5",
        ],
    )
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "e" / "metadata" / "metadata_2.parquet").num_rows == 2
    again = runner.invoke(
        app, ["bank", "export", str(tmp_path / "b.zarr"), "-o", str(tmp_path / "e")]
    )
    assert again.exit_code == 1 and "not empty" in again.output
    res = runner.invoke(
        app, ["bank", "import", str(tmp_path / "e"), "--out", str(tmp_path / "i.zarr")]
    )
    assert res.exit_code == 0, res.output
    assert "12 rows" in res.output and len(FeatureBank.open(tmp_path / "i.zarr")) == 12
    info = runner.invoke(app, ["bank", "info", str(tmp_path / "i.zarr")])
    assert info.exit_code == 0 and "format" in info.output


def test_consolidate_command_and_memory_url(tmp_path):
    import uuid

    url = f"memory://cli-{uuid.uuid4().hex[:8]}/p.zarr"
    FeatureBank.create(url, backbone=synthetic_backbone(3)).close()
    for i in (1, 0):
        write_partition(
            url,
            i,
            features=RNG.normal(size=(2, 3)),
            columns={
                "label": [0, 1],
                "engine": ["real", "sdxl"],
                "path": [f"{i}a", f"{i}b"],
                "sha256": ["", ""],
            },
        )
    res = runner.invoke(app, ["bank", "consolidate", url])
    assert res.exit_code == 0, res.output
    assert "4 rows (2 partition(s) committed)" in res.output
    ok = runner.invoke(app, ["bank", "verify", url])
    assert ok.exit_code == 0 and "4 rows" in ok.output


def test_bad_storage_options_are_one_line_without_their_text(tmp_path):
    res = runner.invoke(
        app, ["bank", "info", "s3://bucket/b.zarr", "--storage-options", '{"secret": "hunter2"']
    )
    assert res.exit_code == 1 and "not valid JSON" in res.output and "hunter2" not in res.output


def test_backfill_command_lists_unreachable_files(tmp_path):
    from PIL import Image

    (tmp_path / "src" / "real").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "real" / "a.png")
    write_bank(
        tmp_path / "b.zarr",
        RNG.normal(size=(2, 4)),
        labels=[0, 0],
        engines="real",
        paths=["real/a.png", "real/gone.png"],
        source=str(tmp_path / "src"),
    )
    res = runner.invoke(app, ["bank", "backfill", str(tmp_path / "b.zarr")])
    assert res.exit_code == 0, res.output
    assert "1 of 2 rows" in res.output and "real/gone.png: file not found" in res.output
    assert FeatureBank.open(tmp_path / "b.zarr").column("width").tolist() == [8, -1]


def test_info_counts_groups_and_rows_without_a_face(tmp_path):
    write_bank(
        tmp_path / "f.zarr",
        np.zeros((4, 4), np.float32),
        labels=[0, 0, 1, 1],
        engines=["real", "real", "gan", "gan"],
        view="face",
        columns={"group": ["bush", "bush", "blair", ""], "face_found": [1, 0, 1, 1]},
    )
    out = runner.invoke(app, ["bank", "info", str(tmp_path / "f.zarr")], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "2 over 3 rows" in out.output
    assert "3 of 4 rows (1 without a face, kept uncropped)" in out.output


def test_verify_checks_the_group_and_face_found_columns(tmp_path):
    """The row columns are checked like the core ones: a lost chunk, a value out of range."""
    import zarr

    def make(name):
        return write_bank(
            tmp_path / name,
            np.zeros((3, 4), np.float32),
            labels=[0, 1, 1],
            engines=["real", "gan", "gan"],
            view="face",
            columns={"group": ["x", "y", ""], "face_found": [1, 0, 1]},
        ).path

    def verify(path):
        return runner.invoke(app, ["bank", "verify", str(path)], env={"COLUMNS": "200"})

    good = make("good.zarr")
    assert verify(good).exit_code == 0

    lost = make("lost.zarr")
    (lost / "group" / "c" / "0").unlink()
    res = verify(lost)
    assert res.exit_code == 1 and "group/c/0" in res.output, res.output

    odd = make("odd.zarr")
    zarr.open_array(str(odd / "face_found"), mode="r+")[1] = 7
    res = verify(odd)
    assert res.exit_code == 1 and "face_found value(s) outside" in res.output, res.output
