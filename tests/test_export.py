"""Export to clip-retrieval's layout and back; metadata backfill of format-1 banks."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from facebank.core.stores import Location
from facebank.embed import BankError, FeatureBank, verify_bank, write_bank
from facebank.embed.bank._store import Store, write_group_json
from facebank.embed.bank.export import backfill_metadata, export_bank, import_bank
from facebank.embed.inputs.metadata import METADATA_SCHEMA

RNG = np.random.default_rng(11)
N, D = 25, 6


@pytest.fixture
def bank(tmp_path):
    X = RNG.normal(size=(N, D)).astype(np.float32)
    b = write_bank(
        tmp_path / "b.zarr",
        X,
        labels=np.arange(N) % 2,
        engines=np.where(np.arange(N) % 2, "sdxl", "real"),
        splits="train",
    )
    with FeatureBank.open(tmp_path / "b.zarr", mode="a") as w:
        w.update_attrs({"failures": [{"path": "x.png", "reason": "truncated"}]})
    return FeatureBank.open(b.path)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_writes_clip_retrieval_layout_and_imports_back(bank, tmp_path, fmt):
    out = tmp_path / "export"
    files = export_bank(bank, out, format=fmt, rows_per_file=10)
    assert (out / "img_emb" / f"img_emb_2.{fmt}").is_file()
    assert not (out / "img_emb" / f"img_emb_3.{fmt}").exists()
    meta = pq.read_table(out / "metadata" / "metadata_1.parquet").to_pydict()
    assert meta["image_path"] == bank.paths[10:20].tolist()
    assert meta["label"] == bank.labels[10:20].tolist() and "jpeg_quality" in meta
    if fmt == "npy":
        X1 = np.load(out / "img_emb" / "img_emb_1.npy")
        np.testing.assert_array_equal(X1, bank.load_features(range(10, 20), dtype=np.float16))
    assert len(files) == 7
    back = import_bank(out, tmp_path / "back.zarr")
    assert len(back) == N and back.backbone == bank.backbone and back.view == bank.view
    np.testing.assert_array_equal(back.load_features(), bank.load_features())
    for col in ("label", "engine", "path", "split", "sha256"):
        np.testing.assert_array_equal(back.column(col), bank.column(col))
    assert back.failures == bank.failures and verify_bank(back.path).ok
    with pytest.raises(BankError, match="not empty"):
        export_bank(bank, out, format=fmt)


def test_import_of_a_plain_clip_retrieval_folder(tmp_path):
    import pyarrow as pa

    (tmp_path / "cr" / "img_emb").mkdir(parents=True)
    (tmp_path / "cr" / "metadata").mkdir()
    X = RNG.normal(size=(4, 3)).astype(np.float16)
    np.save(tmp_path / "cr" / "img_emb" / "img_emb_0.npy", X)
    pq.write_table(
        pa.table({"image_path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "caption": ["x"] * 4}),
        tmp_path / "cr" / "metadata" / "metadata_0.parquet",
    )
    b = import_bank(tmp_path / "cr", tmp_path / "i.zarr", engine="laion")
    assert b.backbone["name"] == "imported" and b.dim == 3 and b.storage_dtype == np.float16
    assert b.engines.tolist() == ["laion"] * 4 and b.labels.tolist() == [-1] * 4
    with pytest.raises(BankError, match="no img_emb"):
        import_bank(tmp_path / "nothing", tmp_path / "j.zarr")


def _as_format_1(path):
    """Strip a bank down to what format 1 held (no metadata arrays, format 1)."""
    store = Store.open(Location(path))
    attrs = dict(store.attrs)
    attrs["facebank_format"] = 1
    attrs.pop("columns")
    children = {k: v for k, v in store.children().items() if k not in METADATA_SCHEMA}
    for k in METADATA_SCHEMA:
        shutil.rmtree(path / k)
    write_group_json(Location(path), attrs, children)


def test_backfill_reads_source_files_and_lists_the_unreachable(tmp_path):
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    files = []
    for i in range(4):
        f = src / "real" / f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (20 + i, 10), (i * 40, 0, 0)).save(f, quality=80)
        files.append(f)
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    write_bank(
        tmp_path / "b.zarr",
        RNG.normal(size=(4, D)),
        labels=[0] * 4,
        engines="real",
        paths=[str(f.relative_to(src)) for f in files],
        sha256=shas,
        source=str(src),
    )
    _as_format_1(tmp_path / "b.zarr")
    old = FeatureBank.open(tmp_path / "b.zarr")
    assert old.format == 1
    with pytest.raises(BankError, match="facebank bank backfill"):
        old.column("width")
    files[1].unlink()
    files[2].write_bytes(files[2].read_bytes() + b"changed")
    rep = backfill_metadata(tmp_path / "b.zarr")
    assert rep.rows == 4 and rep.read == 2
    assert dict(rep.unreachable) == {
        "real/1.png": "file not found",
        "real/2.jpg": "file changed since it was embedded (sha256 differs)",
    }
    b = FeatureBank.open(tmp_path / "b.zarr")
    assert b.format == 2 and b.has_metadata and verify_bank(b.path).ok
    meta = b.metadata()
    assert meta["width"].tolist() == [20, -1, -1, 23]
    assert meta["file_format"].tolist() == ["JPEG", "", "", "PNG"]
    assert meta["meta_error"][1].startswith("source file unreachable at backfill: file not found")
    assert 0 < meta["jpeg_quality"][0] <= 100
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert g["width"][:].tolist() == [20, -1, -1, 23]
    # a second backfill re-reads only the rows that failed (here: still unreachable)
    assert backfill_metadata(tmp_path / "b.zarr").read == 0


def test_group_and_face_found_survive_export_and_import(tmp_path):
    write_bank(
        tmp_path / "f.zarr",
        np.ones((3, 4), np.float32),
        labels=[0, 1, 1],
        engines=["real", "gan", "gan"],
        view="face",
        columns={"group": ["bush", "", "x"], "face_found": [1, 0, 1]},
    )
    export_bank(tmp_path / "f.zarr", tmp_path / "e")
    back = import_bank(tmp_path / "e", tmp_path / "i.zarr")
    assert back.groups.tolist() == ["bush", "", "x"]
    assert back.face_found.tolist() == [1, 0, 1]
