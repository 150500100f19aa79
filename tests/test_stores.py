"""Banks on fsspec stores: a real S3-compatible server on 127.0.0.1 (moto), and memory://."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import xarray as xr

from facebank.embed import (
    BankError,
    BankLockedError,
    FeatureBank,
    committed_partitions,
    consolidate,
    verify_bank,
    write_partition,
)
from facebank.testing import synthetic_arrays, synthetic_backbone, write_synthetic_bank

D = 8


def _cols(i: int, n: int) -> dict:
    return {
        "label": np.full(n, 1),
        "engine": np.full(n, "sdxl"),
        "path": np.array([f"p{i}/{j}.png" for j in range(n)]),
        "sha256": np.array([f"{i:032x}{j:032x}" for j in range(n)]),
        "width": np.full(n, 32),
    }


@pytest.mark.slow
def test_partitioned_bank_on_s3_with_lease_lock_and_no_credentials_recorded(s3_bucket):
    url = f"{s3_bucket}/faces.zarr"
    secret = "testing-secret"  # the fixture's AWS_SECRET_ACCESS_KEY
    driver = FeatureBank.create(url, backbone=synthetic_backbone(D), chunk_rows=16)
    try:
        with pytest.raises(BankLockedError, match="lease"):
            FeatureBank.open(url, mode="a")  # a second writer on the object store
        rng = np.random.default_rng(0)
        parts = {i: rng.normal(size=(5 + i, D)).astype(np.float32) for i in (1, 0)}
        for i, X in parts.items():
            write_partition(url, i, features=X, columns=_cols(i, len(X)))
        assert committed_partitions(url) == {0, 1}
        bank = consolidate(driver)
    finally:
        driver.close()
    np.testing.assert_allclose(
        bank.load_features(), np.concatenate([parts[0], parts[1]]), atol=2e-3, rtol=1e-3
    )
    assert bank.url == url and bank.paths[5] == "p1/0.png"
    ds = xr.open_zarr(url)  # endpoint and credentials from the AWS_* environment
    assert ds.sizes["row"] == 11 and ds["width"].values.tolist() == [32] * 11
    assert verify_bank(url).ok
    assert secret not in json.dumps(bank.meta)


def test_unreachable_store_is_one_clear_line_before_any_work(s3_endpoint):
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    opts = {
        "client_kwargs": {"endpoint_url": closed},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(BankError) as err:
        FeatureBank.create(
            "s3://nowhere/b.zarr", backbone=synthetic_backbone(D), storage_options=opts
        )
    msg = str(err.value)
    assert "unreachable" in msg and "AWS_ENDPOINT_URL" in msg and "\n" not in msg
    assert "testing-secret" not in msg


def test_memory_store_round_trip_and_credentials_stripped_from_urls():
    url = f"memory://facebank-{uuid.uuid4().hex[:8]}/b.zarr"
    with FeatureBank.create(
        url, backbone=synthetic_backbone(D), source="s3://user:hunter2@bucket/faces"
    ) as b:
        b.append(
            np.ones((3, D)),
            labels=[0, 1, 1],
            engines=["real", "sdxl", "sdxl"],
            paths=["a", "b", "c"],
            splits=["", "", ""],
            sha256=["1", "2", "3"],
        )
    r = FeatureBank.open(url)
    assert len(r) == 3 and r.meta["source"] == "s3://bucket/faces"
    assert "hunter2" not in json.dumps(r.meta)
    with pytest.raises(BankError, match="does not exist"):
        FeatureBank.open(f"memory://facebank-{uuid.uuid4().hex[:8]}/none.zarr")


# ---------------------------------------------------------------- SOURCE on a store
def _face_folder(root, *, n=3):
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for engine in ("real", "sdxl"):
            d = root / split / engine
            d.mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(px).save(d / f"{i}.jpg", quality=90)
    (root / "train" / "sdxl" / "caption.txt").write_text("a face")
    (root / "train" / "sdxl" / "bad.png").write_bytes(b"not a png")


def _embed_cli(*args):
    from typer.testing import CliRunner

    from facebank.cli import app

    return CliRunner().invoke(
        app, ["embed", *map(str, args), "--workers", "0", "--no-progress"], catch_exceptions=False
    )


@pytest.mark.slow
def test_embed_a_source_folder_and_manifest_on_s3_equals_the_local_source(tmp_path, s3_bucket):
    import s3fs

    local = tmp_path / "faces"
    _face_folder(local)
    (local / "faces.csv").write_text(
        "path,label,engine,split\ntrain/real/0.jpg,0,real,train\ntest/sdxl/1.jpg,1,sdxl,test\n"
        "train/real/missing.jpg,0,real,train\n"
    )
    fs = s3fs.S3FileSystem()
    fs.put(str(local), f"{s3_bucket}/faces", recursive=True)
    ref, got = tmp_path / "ref.zarr", tmp_path / "got.zarr"
    assert _embed_cli(local, "--backbone", "tiny-cnn", "--out", ref).exit_code == 0
    res = _embed_cli(f"{s3_bucket}/faces", "--backbone", "tiny-cnn", "--out", got)
    assert res.exit_code == 0, res.output
    a, b = FeatureBank.open(ref), FeatureBank.open(got)
    assert len(b) == len(a) == 12
    assert b.paths.tolist() == a.paths.tolist() and b.sha256.tolist() == a.sha256.tolist()
    assert b.splits.tolist() == a.splits.tolist() and b.labels.tolist() == a.labels.tolist()
    np.testing.assert_array_equal(b.load_features(), a.load_features())
    assert b.column("width").tolist() == a.column("width").tolist()
    assert [f["path"] for f in b.failures] == ["train/sdxl/bad.png"]
    assert b.meta["source"] == f"{s3_bucket}/faces"
    assert "testing-secret" not in json.dumps(b.meta)
    # a manifest on the store: paths relative to its folder there; a missing one fails
    man = tmp_path / "man.zarr"
    res = _embed_cli(f"{s3_bucket}/faces/faces.csv", "--backbone", "tiny-cnn", "--out", man)
    assert res.exit_code == 0, res.output
    m = FeatureBank.open(man)
    assert m.paths.tolist() == ["train/real/0.jpg", "test/sdxl/1.jpg"]
    assert [f["reason"] for f in m.failures] == ["file not found"]
    assert m.sha256[0] == a.sha256[a.paths.tolist().index("train/real/0.jpg")]


def test_unreachable_source_store_is_one_line_before_any_work(tmp_path, s3_endpoint):
    opts = json.dumps(
        {
            "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
    )
    out = tmp_path / "b.zarr"
    res = _embed_cli(
        "s3://nowhere/faces", "--backbone", "tiny-cnn", "--out", out, "--storage-options", opts
    )
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unreachable" in lines[0] and "source store" in lines[0]
    assert "testing-secret" not in res.output and not out.exists()


def test_source_on_a_memory_store_follows_the_folder_rules():
    import fsspec

    from facebank.embed import SourceError, scan_source

    root = f"memory://src-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for key in ("train/real/a.png", "train/SDXL/b.jpg", "val/real/c.png", "train/real/n.txt",
                "train/.cache/x.png", "val/loose.png"):  # fmt: skip
        fs.pipe(f"{root}/{key}", b"x")
    src = scan_source(root)
    assert [(it.path, it.engine, it.label, it.split) for it in src.items] == [
        ("train/SDXL/b.jpg", "sdxl", 1, "train"),
        ("train/real/a.png", "real", 0, "train"),
        ("val/real/c.png", "real", 0, "val"),
    ]
    assert src.items[0].file == f"{root}/train/SDXL/b.jpg" and src.root == root
    assert dict(src.ignored) == {
        "train/real/n.txt": "not an image extension (.txt)",
        "val/loose.png": "not inside an engine folder (SOURCE/<engine>/...)",
    }
    fs.pipe(f"{root}/sdxl/d.png", b"x")
    with pytest.raises(SourceError, match="mixes split folders"):
        scan_source(root)
    with pytest.raises(SourceError, match="does not exist"):
        scan_source(f"{root}-none")


# ---------------------------------------------------------------- run folders on a store
@pytest.mark.slow
def test_train_writes_its_run_folder_to_s3_and_score_reads_the_head_from_there(tmp_path, s3_bucket):
    import s3fs
    from typer.testing import CliRunner

    from facebank.cli import app

    bank = write_synthetic_bank(
        tmp_path / "b.zarr", synthetic_arrays({"real": 100, "sdxl": 100}, dim=D)
    )
    url = f"{s3_bucket}/runs/linear"
    cli = CliRunner()
    res = cli.invoke(app, ["train", str(bank.path), "--head", "linear", "--out", url])
    assert res.exit_code == 0, res.output
    fs = s3fs.S3FileSystem()
    held = {p.rsplit("/", 1)[-1] for p in fs.find(url)}
    assert {"config.json", "metrics.json", "head.json", "weights.safetensors"} <= held
    assert "testing-secret" not in fs.cat_file(f"{url}/config.json").decode()
    # the run folder rule holds on the store: a second train is refused before any work
    res = cli.invoke(app, ["train", str(bank.path), "--head", "linear", "--out", url])
    assert res.exit_code == 1 and "already holds a `train` run" in res.output
    res = cli.invoke(app, ["train", str(bank.path), "--head", "mlp", "--out", url, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(fs.cat_file(f"{url}/head.json"))["name"] == "mlp"
    # score with the head on the store; the CSV matches a local copy's
    fs.get(url, str(tmp_path / "local-run"), recursive=True)
    for head, csv in ((url, "a.csv"), (tmp_path / "local-run", "b.csv")):
        res = cli.invoke(
            app, ["score", str(bank.path), "--head", str(head), "--out", str(tmp_path / csv)]
        )
        assert res.exit_code == 0, res.output
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
