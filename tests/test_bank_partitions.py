"""Partitioned banks: independent commits in any order, resume, consolidation, plain readers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from facebank.embed import (
    BankError,
    FeatureBank,
    committed_partitions,
    consolidate,
    verify_bank,
    write_partition,
)
from facebank.embed.inputs.metadata import METADATA_SCHEMA
from facebank.testing import synthetic_backbone

D = 8
RNG = np.random.default_rng(3)


def _part(i: int, n: int = 20) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    X = RNG.normal(size=(n, D)).astype(np.float32)
    cols = {
        "label": np.full(n, i % 2),
        "engine": np.full(n, "sdxl" if i % 2 else "real"),
        "path": np.array([f"part{i}/img{j}.png" for j in range(n)]),
        "sha256": np.array([f"{i:032x}{j:032x}" for j in range(n)]),
        "width": np.full(n, 64 + i),
        "file_format": np.full(n, "PNG"),
    }
    return X, cols


@pytest.fixture
def bank(tmp_path):
    b = FeatureBank.create(
        tmp_path / "p.zarr", backbone=synthetic_backbone(D), chunk_rows=16, shard_rows=64
    )
    yield b
    b.close()


def test_partitions_commit_in_any_order_and_read_as_one_table(bank, tmp_path):
    parts = {i: _part(i, n=10 + i) for i in (3, 0, 2, 1)}
    for i, (X, cols) in parts.items():
        write_partition(tmp_path / "p.zarr", i, features=X, columns=cols)
    assert committed_partitions(tmp_path / "p.zarr") == {0, 1, 2, 3}
    # FeatureBank reads committed partitions before consolidation, in index order
    r = FeatureBank.open(tmp_path / "p.zarr")
    assert len(r) == sum(10 + i for i in range(4))
    assert r.paths[0] == "part0/img0.png" and r.paths[10] == "part1/img0.png"
    np.testing.assert_array_equal(r.column("width")[:11], [64] * 10 + [65])
    done = consolidate(bank)
    expect = np.concatenate([parts[i][0] for i in range(4)])
    np.testing.assert_allclose(done.load_features(), expect, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(done.column("file_format"), "PNG")
    assert done.column("jpeg_quality").tolist() == [-1] * len(done)  # MISSING fill
    assert done.meta["partitions"] == {str(i): 10 + i for i in range(4)}
    # the partitions' files are gone; plain zarr and xarray see every row
    assert [n for n in (tmp_path / "p.zarr" / "_partitions").iterdir()] == [
        tmp_path / "p.zarr" / "_partitions" / "zarr.json"
    ]
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert g["features"].shape == (len(expect), D) and g["features"].shards == (64, D)
    ds = xr.open_zarr(tmp_path / "p.zarr")
    assert ds.sizes["row"] == len(expect) and set(METADATA_SCHEMA) <= set(ds.data_vars)
    assert committed_partitions(tmp_path / "p.zarr") == {0, 1, 2, 3}
    assert verify_bank(tmp_path / "p.zarr").ok


def test_a_partition_without_marker_is_never_read_and_is_redone(bank, tmp_path):
    X, cols = _part(0)
    write_partition(tmp_path / "p.zarr", 0, features=X, columns=cols)
    X1, cols1 = _part(1)
    write_partition(tmp_path / "p.zarr", 1, features=X1, columns=cols1)
    # a worker killed after writing its data but before the marker: no marker
    (tmp_path / "p.zarr" / "_partitions" / "000001.json").unlink()
    assert committed_partitions(tmp_path / "p.zarr") == {0}
    assert len(FeatureBank.open(tmp_path / "p.zarr")) == 20
    rep = verify_bank(tmp_path / "p.zarr")
    assert rep.ok and any("without a commit marker" in n for n in rep.notes)
    write_partition(tmp_path / "p.zarr", 1, features=X1, columns=cols1)  # the resumed run
    assert len(consolidate(bank)) == 40
    # the orphaned attempt of partition 1 is cleaned with the committed one
    assert not [p for p in (tmp_path / "p.zarr" / "_partitions").iterdir() if p.is_dir()]


def test_write_partition_is_idempotent(bank, tmp_path):
    X, cols = _part(0)
    write_partition(tmp_path / "p.zarr", 0, features=X, columns=cols)
    write_partition(
        tmp_path / "p.zarr", 0, features=X[:5], columns={k: v[:5] for k, v in cols.items()}
    )
    assert len(FeatureBank.open(tmp_path / "p.zarr")) == 20
    consolidate(bank)
    write_partition(tmp_path / "p.zarr", 0, features=X, columns=cols)  # already consolidated
    assert len(consolidate(bank)) == 20


def test_consolidation_killed_after_its_commit_resumes_without_double_rows(bank, tmp_path):
    for i in range(3):
        X, cols = _part(i)
        write_partition(tmp_path / "p.zarr", i, features=X, columns=cols)
    # absorb partition 0, then "die" before deleting its files: put them back
    import shutil

    src = tmp_path / "p.zarr" / "_partitions"
    keep = tmp_path / "keep"
    shutil.copytree(src, keep)
    from facebank.embed.bank._store import pending_partitions

    store = bank._segments[0][0]
    first = pending_partitions(store.loc, store.attrs)[:1]
    assert first[0][0] == 0
    bank._absorb_partitions()
    shutil.rmtree(src)
    shutil.copytree(keep, src)  # every marker and data folder back, as if never cleaned
    rep = verify_bank(tmp_path / "p.zarr")
    assert (
        rep.ok
        and rep.rows == 60
        and any("consolidated but its files remain" in n for n in rep.notes)
    )
    assert len(FeatureBank.open(tmp_path / "p.zarr")) == 60  # partitions not read twice
    assert len(consolidate(bank)) == 60


def test_bad_partitions_are_refused_clearly(bank, tmp_path):
    X, cols = _part(0)
    with pytest.raises(BankError, match="integer >= 0"):
        write_partition(tmp_path / "p.zarr", -1, features=X, columns=cols)
    with pytest.raises(BankError, match=r"columns \['sha256'\] are missing"):
        write_partition(
            tmp_path / "p.zarr",
            0,
            features=X,
            columns={k: v for k, v in cols.items() if k != "sha256"},
        )
    with pytest.raises(BankError, match="not acquisition metadata columns"):
        write_partition(
            tmp_path / "p.zarr", 0, features=X, columns={**cols, "colour": cols["width"]}
        )
    with pytest.raises(BankError, match="do not fit bank"):
        write_partition(tmp_path / "p.zarr", 0, features=X[:, :3], columns=cols)
    with pytest.raises(BankError, match="not a feature bank"):
        write_partition(tmp_path / "nothing.zarr", 0, features=X, columns=cols)
    assert committed_partitions(tmp_path / "p.zarr") == set()


def test_append_takes_metadata_columns_and_v1_banks_say_backfill(tmp_path):
    with FeatureBank.create(tmp_path / "m.zarr", backbone=synthetic_backbone(D)) as b:
        X, cols = _part(0, n=4)
        b.append(
            X,
            labels=cols["label"],
            engines=cols["engine"],
            paths=cols["path"],
            splits=[""] * 4,
            sha256=cols["sha256"],
            columns={"width": [1, 2, 3, 4], "has_exif": [True, False, True, False]},
        )
        with pytest.raises(BankError, match="not acquisition metadata columns"):
            b.append(
                X,
                labels=cols["label"],
                engines=cols["engine"],
                paths=cols["path"],
                splits=[""] * 4,
                sha256=cols["sha256"],
                columns={"colour": [1, 2, 3, 4]},
            )
    r = FeatureBank.open(tmp_path / "m.zarr")
    meta = r.metadata()
    assert set(meta) == set(METADATA_SCHEMA)
    assert meta["width"].tolist() == [1, 2, 3, 4] and meta["has_exif"].dtype == bool
    assert meta["height"].tolist() == [-1] * 4 and np.isnan(meta["bytes_per_pixel"]).all()
    assert xr.open_zarr(tmp_path / "m.zarr")["width"].values.tolist() == [1, 2, 3, 4]
    # make it a format-1 bank: metadata absent -> the message names the backfill command
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    attrs = dict(g.attrs)
    attrs["facebank_format"] = 1
    attrs.pop("columns")
    from facebank.core.stores import Location
    from facebank.embed.bank._store import write_group_json

    store = FeatureBank.open(tmp_path / "m.zarr")._segments[0][0]
    write_group_json(Location(tmp_path / "m.zarr"), attrs, store.children())
    old = FeatureBank.open(tmp_path / "m.zarr")
    assert old.format == 1 and not old.has_metadata and len(old) == 4
    with pytest.raises(BankError, match="facebank bank backfill"):
        old.metadata()
    with pytest.raises(BankError, match="facebank bank backfill"):
        FeatureBank.open(tmp_path / "m.zarr", mode="a")


def test_verify_finds_a_path_in_two_partitions(bank, tmp_path):
    X, cols = _part(0, n=5)
    write_partition(tmp_path / "p.zarr", 0, features=X, columns=cols)
    write_partition(tmp_path / "p.zarr", 1, features=X, columns=cols)  # the same rows again
    rep = verify_bank(tmp_path / "p.zarr")
    assert not rep.ok and "5 path(s) stored in more than one partition" in rep.problems[0]


# ---------------------------------------------------------------- sharding rule and size
def _disk_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_sharding_rule_rounds_large_pieces_up_and_leaves_small_ones_plain():
    from facebank.embed.bank.partitions import auto_shard_rows

    assert auto_shard_rows(400) is None and auto_shard_rows(8192) is None
    assert auto_shard_rows(8193) == 16384 and auto_shard_rows(65536) == 65536
    assert auto_shard_rows(100, chunk_rows=16) == 112


def test_a_large_partition_is_one_sharded_object_per_array_and_reads_by_chunk(tmp_path):
    n = 9000  # > 8192 rows: sharded, one object per array
    path = tmp_path / "big.zarr"
    with FeatureBank.create(path, backbone=synthetic_backbone(D)):
        pass
    X, cols = _part(0, n=n)
    write_partition(path, 0, features=X, columns=cols)
    (folder,) = [p for p in (path / "_partitions").iterdir() if p.is_dir()]
    feats = zarr.open_array(folder / "features", mode="r")
    assert feats.shards == (16384, D) and feats.chunks == (8192, D)
    assert sorted(p.name for p in (folder / "features").rglob("*") if p.is_file()) == [
        "0",
        "zarr.json",
    ]
    np.testing.assert_allclose(feats[8190:8200], X[8190:8200], atol=2e-3, rtol=1e-3)
    assert FeatureBank.open(path).paths[-1] == f"part0/img{n - 1}.png"
    assert verify_bank(path).ok
    with FeatureBank.open(path, mode="a") as b:  # consolidates into the bank's own arrays
        assert len(b) == n
    assert verify_bank(path).ok and zarr.open_group(path, mode="r")["features"].shape == (n, D)


def test_a_400_row_bank_costs_a_small_multiple_of_its_features(tmp_path):
    """The issue's case: a 400-row x 1280 float16 bank took 21 MB for 1 MB of features."""
    from facebank.embed import write_bank

    dim, n = 1280, 400
    X = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    path = tmp_path / "small.zarr"
    write_bank(path, X, labels=np.zeros(n, int), engines="real")
    features = n * dim * 2
    assert _disk_bytes(path) < 1.5 * features  # measured 1.12x (docs/bank-format.md)
    # the same rows as one committed partition, before consolidation
    ppath = tmp_path / "part.zarr"
    with FeatureBank.create(ppath, backbone=synthetic_backbone(dim)):
        pass
    bank = FeatureBank.open(path)
    cols = {k: bank.column(k) for k in ("label", "engine", "path", "sha256")}
    write_partition(ppath, 0, features=bank.load_features(), columns=cols)
    assert _disk_bytes(ppath) < 1.5 * features


def test_a_bank_sharded_by_the_rule_consolidates_large_partitions_into_few_objects(tmp_path):
    from facebank.embed.bank.partitions import auto_shard_rows

    path = tmp_path / "sharded.zarr"
    n = 9000
    bank = FeatureBank.create(path, backbone=synthetic_backbone(D), shard_rows=auto_shard_rows(n))
    try:
        parts = {i: _part(i, n=n) for i in (1, 0)}
        for i, (X, cols) in parts.items():
            write_partition(path, i, features=X, columns=cols)
        consolidate(bank)
    finally:
        bank.close()
    feats = zarr.open_group(path, mode="r")["features"]
    assert feats.shards == (16384, D) and feats.shape == (2 * n, D)
    # 18,000 rows in two shard objects (not three 8192-row chunks)
    shards = path / "features" / "c"
    held = sorted(p.relative_to(shards).as_posix() for p in shards.rglob("*") if p.is_file())
    assert held == ["0/0", "1/0"]
    np.testing.assert_allclose(feats[n - 2 : n + 2], np.concatenate(
        [parts[0][0][-2:], parts[1][0][:2]]), atol=2e-3, rtol=1e-3)  # fmt: skip
    assert verify_bank(path).ok and not list((path / "_partitions").glob("0*"))
