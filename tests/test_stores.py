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
from facebank.testing import synthetic_backbone

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
