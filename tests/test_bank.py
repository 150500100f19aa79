"""Feature bank format: round trips, plain zarr/xarray readability, subsets, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from facebank.embed import (
    BackboneMismatchError,
    BankError,
    BankLockedError,
    FeatureBank,
    concat_banks,
    write_bank,
)
from facebank.testing import synthetic_backbone

RNG = np.random.default_rng(0)
N, D = 300, 24
X = RNG.normal(size=(N, D)).astype(np.float32)
ENGINES = np.array(["real", "sdxl", "stylegan2"])[RNG.integers(0, 3, N)]
LABELS = (ENGINES != "real").astype(np.int8)
SPLITS = np.array(["train", "val", "test"])[RNG.integers(0, 3, N)]


def _bank(tmp_path, name="b.zarr", **kw):
    kw.setdefault("labels", LABELS)
    kw.setdefault("engines", ENGINES)
    kw.setdefault("splits", SPLITS)
    kw.setdefault("chunk_rows", 64)
    return write_bank(tmp_path / name, kw.pop("features", X), **kw)


def test_round_trip_keeps_rows_columns_and_attrs(tmp_path):
    bank = _bank(tmp_path)
    assert len(bank) == N and bank.dim == D and bank.name == "b"
    assert bank.features.shape == (N, D)
    np.testing.assert_allclose(bank.load_features(), X, atol=2e-3, rtol=1e-3)
    assert bank.load_features().dtype == np.float32
    assert bank.storage_dtype == np.float16
    np.testing.assert_array_equal(bank.labels, LABELS)
    assert bank.labels.dtype == np.int8
    np.testing.assert_array_equal(bank.engines, ENGINES)
    np.testing.assert_array_equal(bank.splits, SPLITS)
    assert bank.paths[0] == "row-000001" and len(set(bank.sha256)) == N
    assert bank.engines.dtype.kind == "U"  # plain numpy strings, not StringDType
    meta = bank.meta
    assert meta["facebank_format"] == 2 and meta["count"] == N
    assert meta["backbone"] == synthetic_backbone(D) == bank.backbone
    assert meta["view"] == "original" and bank.view == "original"
    assert {"facebank", "torch", "zarr"} <= set(meta["versions"])
    assert bank.failures == [] and meta["created"].startswith("20")


def test_float32_storage_is_exact(tmp_path):
    bank = _bank(tmp_path, dtype="float32")
    assert bank.storage_dtype == np.float32
    np.testing.assert_array_equal(bank.load_features(), X)


def test_plain_zarr_and_xarray_read_the_bank(tmp_path):
    _bank(tmp_path)
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert g.attrs["facebank_format"] == 2 and g.attrs["count"] == N
    assert g["features"].shape == (N, D) and g["features"].metadata.dimension_names == (
        "row",
        "dim",
    )
    assert g["features"].chunks == (64, D)
    for col in ("label", "engine", "path", "split", "sha256"):
        assert g[col].metadata.dimension_names == ("row",)
    assert list(g["engine"][:5]) == list(ENGINES[:5])
    ds = xr.open_zarr(tmp_path / "b.zarr")
    assert ds.sizes == {"row": N, "dim": D}
    assert list(ds["engine"].values[:5]) == list(ENGINES[:5])
    np.testing.assert_allclose(ds["features"].values.astype(np.float32), X, atol=2e-3, rtol=1e-3)
    assert ds.attrs["backbone"]["name"] == "synthetic"


def test_select_by_engine_split_and_rows(tmp_path):
    bank = _bank(tmp_path)
    sub = bank.select(engines=["real", "sdxl"], splits="train")
    mask = np.isin(ENGINES, ["real", "sdxl"]) & (SPLITS == "train")
    assert len(sub) == mask.sum()
    np.testing.assert_allclose(sub.load_features(), X[mask], atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(sub.engines, ENGINES[mask])
    picked = sub.select(rows=[4, 0, 2])  # the given order is kept
    np.testing.assert_array_equal(picked.paths, sub.paths[[4, 0, 2]])
    np.testing.assert_allclose(picked.features[:], X[mask][[4, 0, 2]], atol=2e-3, rtol=1e-3)
    assert picked.features[1].shape == (D,)
    boolean = bank.select(rows=LABELS == 0)
    assert (boolean.labels == 0).all() and len(boolean) == (LABELS == 0).sum()
    assert len(bank.select(rows=[])) == 0 and bank.select(rows=[]).load_features().shape == (0, D)


def test_select_unknown_engine_names_valid_ones(tmp_path):
    bank = _bank(tmp_path)
    with pytest.raises(BankError, match=r"'midjourney'.*valid.*'real'"):
        bank.select(engines="midjourney")
    nosplit = _bank(tmp_path, "n.zarr", splits=None)
    with pytest.raises(BankError, match="no split column"):
        nosplit.select(splits="train")


def test_load_and_iter_features_of_sparse_rows(tmp_path):
    bank = _bank(tmp_path)
    rows = np.array([299, 0, 150, 64, 63, 1])
    np.testing.assert_allclose(bank.load_features(rows), X[rows], atol=2e-3, rtol=1e-3)
    sparse = bank.select(rows=np.arange(0, N, 97))  # forces the per-chunk gather path
    np.testing.assert_allclose(sparse.load_features(), X[::97], atol=2e-3, rtol=1e-3)
    seen = []
    for start, stop, chunk in bank.iter_features(chunk_rows=50):
        assert chunk.shape == (stop - start, D) and chunk.dtype == np.float32
        seen.append(chunk)
    np.testing.assert_array_equal(np.concatenate(seen), bank.load_features())
    with pytest.raises(BankError, match="out of range"):
        bank.load_features([N])


def test_concat_same_backbone_and_refuses_others(tmp_path):
    a = _bank(tmp_path, "a.zarr")
    b = _bank(
        tmp_path,
        "b.zarr",
        features=X[:50],
        labels=LABELS[:50],
        engines=ENGINES[:50],
        splits=SPLITS[:50],
    )
    both = FeatureBank.concat([a, b.select(engines="real")])
    assert len(both) == N + (ENGINES[:50] == "real").sum()
    assert both.name == "a+b" and set(both.bank_names) == {"a", "b"}
    np.testing.assert_array_equal(both.labels[:N], LABELS)
    assert concat_banks([a, b]).load_features().shape == (N + 50, D)
    other = synthetic_backbone(D) | {"name": "clip", "library": "open_clip", "model": "ViT-L-14"}
    c = _bank(tmp_path, "c.zarr", backbone=other)
    with pytest.raises(BackboneMismatchError, match=r"a\.zarr.*c\.zarr"):
        FeatureBank.concat([a, c])
    v = _bank(tmp_path, "v.zarr", view="jpeg:q=50")
    with pytest.raises(BackboneMismatchError, match="jpeg:q=50"):
        FeatureBank.concat([a, v])
    mixed = FeatureBank.concat([a, v], allow_mixed_views=True)
    assert mixed.view == "original+jpeg:q=50"


def test_digest_is_stable_and_content_sensitive(tmp_path):
    a = _bank(tmp_path, "a.zarr")
    again = _bank(tmp_path, "again.zarr")
    assert a.digest == again.digest == FeatureBank.open(tmp_path / "a.zarr").digest
    Y = X.copy()
    Y[7, 3] += 1.0
    assert _bank(tmp_path, "y.zarr", features=Y).digest != a.digest
    assert _bank(tmp_path, "z.zarr", view="vflip").digest != a.digest
    assert a.select(engines="real").digest != a.digest


def test_create_refuses_existing_and_overwrite_replaces(tmp_path):
    _bank(tmp_path)
    with pytest.raises(BankError, match="already exists.*overwrite"):
        _bank(tmp_path)
    bank = _bank(
        tmp_path,
        features=X[:10],
        labels=LABELS[:10],
        engines=ENGINES[:10],
        splits=SPLITS[:10],
        overwrite=True,
    )
    assert len(bank) == 10
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(BankError, match="non-empty folder"):
        FeatureBank.create(tmp_path / "junk", backbone=synthetic_backbone(4))


def test_open_errors_are_one_line_with_a_fix(tmp_path):
    with pytest.raises(BankError, match="does not exist.*facebank embed"):
        FeatureBank.open(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(BankError, match="not a feature bank"):
        FeatureBank.open(tmp_path / "plain")
    zarr.create_group(store=str(tmp_path / "g.zarr"))
    with pytest.raises(BankError, match="not a facebank"):
        FeatureBank.open(tmp_path / "g.zarr")


def test_append_validates_inputs(tmp_path):
    with FeatureBank.create(tmp_path / "w.zarr", backbone=synthetic_backbone(4)) as bank:
        kw = dict(labels=[0], engines=["real"], paths=["a"], splits=[""], sha256=["x"])
        with pytest.raises(BankError, match="dim 4"):
            bank.append(np.zeros((1, 5)), **kw)
        with pytest.raises(BankError, match="one value per row"):
            bank.append(np.zeros((2, 4)), **kw)
        with pytest.raises(BankError, match=r"labels \[7\]"):
            bank.append(np.zeros((1, 4)), **(kw | {"labels": [7]}))
        bank.append(np.zeros((1, 4)), **kw, attrs={"failures": [{"path": "b", "reason": "x"}]})
        assert len(bank) == 1
    reopened = FeatureBank.open(tmp_path / "w.zarr")
    assert reopened.failures == [{"path": "b", "reason": "x"}]
    with pytest.raises(BankError, match="read-only"):
        reopened.append(np.zeros((1, 4)), **kw)


def test_rows_beyond_count_are_invisible(tmp_path):
    _bank(tmp_path)
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r+")
    for key in ("features", "label", "engine", "path", "split", "sha256"):
        arr = g[key]
        arr.resize((N + 10, *arr.shape[1:]))  # what a writer killed mid-append leaves
    g["features"][N:] = np.full((10, D), 99.0)
    bank = FeatureBank.open(tmp_path / "b.zarr")
    assert len(bank) == N and bank.load_features().max() < 99
    with FeatureBank.open(tmp_path / "b.zarr", mode="a") as w:
        w.append(
            X[:2],
            labels=[0, 0],
            engines=["real"] * 2,
            paths=["n1", "n2"],
            splits=["", ""],
            sha256=["s1", "s2"],
        )
    bank = FeatureBank.open(tmp_path / "b.zarr")
    assert len(bank) == N + 2 and zarr.open_group(str(tmp_path / "b.zarr"))["path"].shape == (
        N + 2,
    )
    np.testing.assert_allclose(bank.load_features()[N:], X[:2], atol=2e-3, rtol=1e-3)


def test_second_writer_is_refused_and_lock_dies_with_its_process(tmp_path):
    path = tmp_path / "w.zarr"
    first = FeatureBank.create(path, backbone=synthetic_backbone(4))
    with pytest.raises(BankLockedError, match="another process"):
        FeatureBank.open(path, mode="a")
    assert len(FeatureBank.open(path)) == 0  # readers are never blocked
    first.close()
    FeatureBank.open(path, mode="a").close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from facebank.embed import FeatureBank; import time; "
            f"b = FeatureBank.open({str(path)!r}, mode='a'); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BankLockedError):
            FeatureBank.open(path, mode="a")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    FeatureBank.open(path, mode="a").close()  # the killed writer left no stale lock


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from facebank.embed import FeatureBank
    from facebank.testing import synthetic_backbone
    path = sys.argv[1]
    try:
        bank = FeatureBank.open(path, mode="a")
    except Exception:
        bank = FeatureBank.create(path, backbone=synthetic_backbone(8), chunk_rows=32)
    print("ready", flush=True)
    while len(bank) < 4000:
        i = len(bank)
        rows = np.arange(i, i + 7)
        X = np.repeat(rows[:, None], 8, axis=1).astype(np.float32) % 2048
        bank.append(X, labels=rows % 2, engines=["e"] * 7, paths=[f"p{r}" for r in rows],
                    splits=[""] * 7, sha256=[f"s{r}" for r in rows],
                    attrs={"failures": [{"path": f"f{i}", "reason": "r"}]})
    bank.close()
    """
)


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_exactly_count_good_rows(tmp_path):
    path = tmp_path / "crash.zarr"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = np.random.default_rng(1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    counts = []
    for delay in rng.uniform(0.05, 0.6, size=4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        bank = FeatureBank.open(path)
        n = len(bank)
        counts.append(n)
        rows = np.arange(n)
        np.testing.assert_array_equal(bank.load_features()[:, 0], rows % 2048)
        np.testing.assert_array_equal(bank.paths, [f"p{r}" for r in rows])
        np.testing.assert_array_equal(bank.labels, rows % 2)
        if n:
            assert bank.failures == [{"path": f"f{n - 7}", "reason": "r"}]
        # plain readers see exactly the committed rows, even with arrays allocated further
        assert xr.open_zarr(path).sizes["row"] == n
        assert zarr.open_group(str(path), mode="r")["path"].shape == (n,)
    assert counts == sorted(counts) and counts[-1] > 0
    json.loads((path / "zarr.json").read_text())
