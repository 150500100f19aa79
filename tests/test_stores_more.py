"""Stores, continued: ``experiment`` on a SOURCE at a URL, and ``--storage-options`` reaching
every URL a command touches (run folders, scoring inputs, heads) with no ``AWS_ENDPOINT_URL``.

The S3 server is the moto fixture of ``tests/conftest.py`` on 127.0.0.1. The tests that
pass the endpoint only through ``--storage-options`` remove ``AWS_ENDPOINT_URL`` and clear
s3fs' instance cache (a cached client built from the variable would otherwise hide a code
path that ignores the options). The options carry a secret of their own, which must
appear in no output, no file and no object.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facebank.embed import FeatureBank

SECRET = "opt-secret-9f3c1"
D = 8


def _options(endpoint: str) -> str:
    return json.dumps(
        {"key": "opt-key", "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    )


def _invoke(*args):
    from typer.testing import CliRunner

    from facebank.cli import app

    return CliRunner().invoke(app, [*map(str, args)], catch_exceptions=False)


@pytest.fixture
def options_only(s3_endpoint, monkeypatch):
    """The endpoint reachable only through ``--storage-options`` (its JSON), and an s3fs
    client for the test itself (explicit endpoint)."""
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    yield _options(s3_endpoint), fs
    s3fs.S3FileSystem.clear_instance_cache()


def _no_secret_under(fs, url: str) -> None:
    for key in fs.find(url):
        assert SECRET not in fs.cat_file(key).decode("utf-8", "replace"), key


def _no_secret_in_folder(folder) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


# ---------------------------------------------------------------- experiment SOURCE at a URL
@pytest.mark.slow
def test_experiment_on_an_s3_source_gives_the_local_copys_bank_rows(
    tmp_path, s3_bucket, options_only
):
    from facebank.embed.inputs.standin import make_standin_dataset

    opts, fs = options_only
    local = make_standin_dataset(tmp_path / "faces", n_per_class=16)
    fs.put(str(local), f"{s3_bucket}/faces", recursive=True)
    common = ["--backbone", "tiny-cnn", "--views", "none", "--heads", "linear", "--device", "cpu"]
    ref = _invoke("experiment", local, *common, "--out", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    url, run = f"{s3_bucket}/faces", f"{s3_bucket}/runs/exp"
    # SOURCE and run folder on the store, the endpoint given only in --storage-options
    got = _invoke("experiment", url, *common, "--out", run, "--storage-options", opts)
    assert got.exit_code == 0, got.output
    _no_secret_under(fs, run)
    fs.get(run, str(tmp_path / "got"), recursive=True)
    a = FeatureBank.open(tmp_path / "ref" / "banks" / "original.zarr")
    b = FeatureBank.open(tmp_path / "got" / "banks" / "original.zarr")
    assert len(a) == len(b) == 32
    assert b.sha256.tolist() == a.sha256.tolist() and b.paths.tolist() == a.paths.tolist()
    assert b.labels.tolist() == a.labels.tolist() and b.engines.tolist() == a.engines.tolist()
    np.testing.assert_array_equal(b.load_features(), a.load_features())
    assert b.meta["source"] == url
    config = json.loads((tmp_path / "got" / "config.json").read_text())
    assert config["source"] == url and "storage_options" not in config
    assert (tmp_path / "got" / "report.html").is_file()
    assert SECRET not in got.output
    _no_secret_in_folder(tmp_path / "got")


def test_experiment_on_an_unreachable_store_is_one_line_before_any_work(tmp_path, s3_endpoint):
    opts = _options("http://127.0.0.1:9")  # nothing listens there
    res = _invoke(
        "experiment", "s3://nowhere/faces", "--backbone", "tiny-cnn", "--heads", "linear",
        "--out", tmp_path / "run", "--storage-options", opts,
    )  # fmt: skip
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "s3://nowhere" in lines[0]
    assert SECRET not in res.output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- --storage-options everywhere
@pytest.mark.slow
def test_storage_options_reach_run_folders_score_inputs_and_heads(
    tmp_path, s3_bucket, options_only
):
    from facebank.testing import synthetic_arrays, write_synthetic_bank

    opts, fs = options_only
    bank = write_synthetic_bank(
        tmp_path / "b.zarr", synthetic_arrays({"real": 100, "sdxl": 100}, dim=D)
    )
    bank_url = f"{s3_bucket}/banks/b.zarr"
    fs.put(str(bank.path), bank_url, recursive=True)
    run = f"{s3_bucket}/runs/linear"
    # a run folder on the store: train (which has no --storage-options of its own)
    res = _invoke("train", bank.path, "--head", "linear", "--out", run, "--storage-options", opts)
    assert res.exit_code == 0, res.output
    assert {"config.json", "head.json"} <= {p.rsplit("/", 1)[-1] for p in fs.find(run)}
    # the run folder rule answers through the options too
    res = _invoke("train", bank.path, "--head", "linear", "--out", run, "--storage-options", opts)
    assert res.exit_code == 1 and "already holds a `train` run" in res.output
    # a scoring input and the head, both on the store
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    res = _invoke("score", bank_url, "--head", run, "--out", a, "--storage-options", opts)
    assert res.exit_code == 0, res.output
    fs.get(run, str(tmp_path / "local-run"), recursive=True)
    res = _invoke("score", bank.path, "--head", tmp_path / "local-run", "--out", b)
    assert res.exit_code == 0, res.output
    import pandas as pd

    got, ref = pd.read_csv(a), pd.read_csv(b)
    assert len(got) == len(ref) == 200
    score_cols = [c for c in ref.columns if c not in ("input", "path", "bank")]
    pd.testing.assert_frame_equal(got[score_cols], ref[score_cols])
    # never printed, never written
    assert SECRET not in res.output
    _no_secret_under(fs, run)
    _no_secret_in_folder(tmp_path)


def test_store_defaults_set_only_the_urls_protocols_and_restore_them():
    import fsspec.config

    from facebank.core.stores import store_defaults

    before = {k: dict(v) for k, v in fsspec.config.conf.items()}
    opts = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    with store_defaults(opts, ["s3://b/run", "/local/path", "file:///x"]):
        assert fsspec.config.conf["s3"] == opts
        assert "gs" not in fsspec.config.conf or fsspec.config.conf["gs"] == before.get("gs")
        assert "file" not in fsspec.config.conf or fsspec.config.conf["file"] == before.get("file")
    assert {k: dict(v) for k, v in fsspec.config.conf.items()} == before
    with store_defaults(None, ["s3://b/run"]):
        assert fsspec.config.conf == before


def test_bad_storage_options_json_is_one_line_on_a_command_without_its_own_option(tmp_path):
    res = _invoke(
        "train", tmp_path / "b.zarr", "--head", "linear", "--out", tmp_path / "run",
        "--storage-options", '{"secret": "' + SECRET,
    )  # fmt: skip
    assert res.exit_code == 1
    assert "--storage-options is not valid JSON" in res.output and SECRET not in res.output
    assert not (tmp_path / "run").exists()
