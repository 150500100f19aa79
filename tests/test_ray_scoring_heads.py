"""``score --engine ray`` with heads of several backbones and of a block range.

A score-level ``fusion`` head and a joined-features head over ``tiny-cnn`` + ``tiny-vit``,
and a head on one block of a ``--layer blocks`` ``tiny-vit`` bank, are scored on the
session's local Ray cluster and must give the local engine's scores (same rows, same
failures, scores allclose). One Ray pipeline per head kind (each starts encoder actors
that import torch and load the backbones): the fusion head through the partitioned
output, the joined head through the in-memory CSV path, the block head through the CLI's
CSV path on images in a (loopback) S3 bucket with the endpoint only in
``--storage-options``. Backbones have seeded random weights: the scores are not judged.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import FacebankError, WeightsUnavailableError
from facebank.embed import FeatureBank, embed_source
from facebank.embed.runner.multi import embed_source_multi, select_blocks
from facebank.heads import load_head, score_run, train_run

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # tiny sample, test-only backbones
]
KW = {"progress": False, "batch_size": 8}
TOL = {"rtol": 1e-4, "atol": 1e-4}  # float32 features on both engines


@dataclass
class Heads:
    data: Path
    fusion: Path
    joined: Path
    block: Path


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Heads:
    """8 + 8 tiny JPEGs, one corrupt file and a copy; three heads trained on their banks."""
    root = tmp_path_factory.mktemp("ray-heads")
    data = root / "data"
    rng = np.random.default_rng(0)
    for engine, shift in (("real", 0), ("sdxl", 60)):
        (data / engine).mkdir(parents=True)
        for i in range(8):
            px = rng.integers(0, 196, (32, 32, 3), dtype=np.uint8) + shift
            Image.fromarray(px.astype(np.uint8)).save(data / engine / f"{i:02d}.jpg", quality=90)
    (data / "sdxl" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(data / "real" / "01.jpg", data / "sdxl" / "zz_copy.jpg")
    cnn, vit, blocks = root / "cnn.zarr", root / "vit.zarr", root / "vit-blocks.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_source_multi(
            data, backbones=["tiny-cnn", "tiny-vit"], outs=[cnn, vit], device="cpu",
            num_workers=0, **KW,
        )  # fmt: skip
        embed_source(data, backbone="tiny-vit", out=blocks, layer="blocks", num_workers=0, **KW)
        a, b = FeatureBank.open(cnn), FeatureBank.open(vit)
        fusion = train_run([a, b], head="fusion", params={"rule": "mean"}, out=root / "fusion")
        joined = train_run([a, b], head="linear", out=root / "joined")
        block = train_run(
            [select_blocks(FeatureBank.open(blocks), "1:2")], head="linear", out=root / "block"
        )
    return Heads(data, fusion.run_dir, joined.run_dir, block.run_dir)


def _local(head, inputs, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return score_run(head, inputs=inputs, out=out, device="cpu", batch_size=4)


def _failed(res) -> list[str]:
    return sorted(Path(p).name for p, _ in res.failures)


def _offline_member(run, tmp_path, monkeypatch):
    """The head of ``run`` with its first member swapped for a hub backbone, caches
    emptied and the hub offline: that member's weights cannot be had."""
    for var, sub in (("HF_HOME", "hf"), ("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", "xdg")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    head = load_head(run)
    head.backbone_["members"][0] = {**head.backbone_["members"][0], "name": "efficientnet-b1"}
    return head


def test_a_fusion_head_scores_on_ray_into_partitions_as_locally(
    heads, tmp_path, ray_cluster, monkeypatch
):
    from facebank.ray_engine.scoring import read_scores, score_partitioned

    spec = load_head(heads.fusion).backbone_
    assert spec["library"] == "joined"
    assert [m["name"] for m in spec["members"]] == ["tiny-cnn", "tiny-vit"]
    local = _local(heads.fusion, [heads.data], tmp_path / "local.csv")
    out = tmp_path / "scores"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = score_partitioned(heads.fusion, [heads.data], out=out, partition_rows=8, **KW)
    assert res.files == [f"scores/part-0000{k}.parquet" for k in range(3)]  # 18 files
    assert (res.written, res.n_scored) == (3, 17) and _failed(res) == ["bad.jpg"]
    table = read_scores(out)
    assert table["path"].to_pylist() == local.paths and len(local.paths) == 17
    np.testing.assert_allclose(table["score"].to_numpy(), local.scores, **TOL)
    assert table["decision"].to_pylist() == local.decisions.tolist()
    assert table["verdict"].to_pylist() == local.verdicts.tolist()
    assert np.std(local.scores) > 0  # not a constant score
    # resumable: the same command finds every partition committed and embeds nothing
    again = score_partitioned(heads.fusion, [heads.data], out=out, partition_rows=8, **KW)
    assert (again.written, again.skipped, again.n_scored) == (0, 3, 17)
    # a member that cannot be loaded offline: the local message, nothing written to out
    head = _offline_member(heads.fusion, tmp_path, monkeypatch)
    with pytest.raises(WeightsUnavailableError, match="efficientnet-b1") as ray_err:
        score_partitioned(head, [heads.data], out=tmp_path / "none", **KW)
    with pytest.raises(WeightsUnavailableError) as local_err:
        score_run(head, inputs=[heads.data], out=tmp_path / "none.csv")
    assert str(ray_err.value) == str(local_err.value)
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.csv").exists()


def test_a_joined_features_head_scores_on_ray_into_a_csv_as_locally(
    heads, tmp_path, ray_cluster, monkeypatch
):
    import facebank.ray_engine.scoring as ray_scoring
    from facebank.heads import scoring
    from facebank.ray_engine.scoring import score_images_ray

    local = _local(heads.joined, [heads.data], tmp_path / "local.csv")
    # with a progress bar score_run asks for blocks of images (here 8): one pipeline
    # serves them all, the actors start once
    pipelines = []

    def counted(*args, **kw):
        pipelines.append(len(args[0]))
        return iter_encoded_ray(*args, **kw)

    iter_encoded_ray = ray_scoring.iter_encoded_ray
    monkeypatch.setattr(ray_scoring, "iter_encoded_ray", counted)
    monkeypatch.setattr(scoring, "_BLOCK", 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        remote = score_images_ray(
            heads.joined, [heads.data], out=tmp_path / "ray.csv", batch_size=8, progress=True
        )
    assert pipelines == [18]
    assert remote.paths == local.paths and len(remote.paths) == 17
    np.testing.assert_allclose(remote.scores, local.scores, **TOL)
    assert remote.decisions.tolist() == local.decisions.tolist()
    assert _failed(remote) == _failed(local) == ["bad.jpg"]
    assert (tmp_path / "ray.csv").read_text().splitlines()[0] == (
        (tmp_path / "local.csv").read_text().splitlines()[0]
    )
    # real mismatches: the local engine's one-line errors, on the driver, before any work
    with pytest.raises(FacebankError, match="needs 2 backbones") as ray_err:
        score_images_ray(heads.joined, [heads.data], out=tmp_path / "w.csv", weights="w.st")
    with pytest.raises(FacebankError) as local_err:
        score_run(heads.joined, inputs=[heads.data], out=tmp_path / "w.csv", weights="w.st")
    assert str(ray_err.value) == str(local_err.value)
    # a member backbone whose weights are not here, offline (hub caches emptied)
    head = _offline_member(heads.joined, tmp_path, monkeypatch)
    with pytest.raises(WeightsUnavailableError, match="efficientnet-b1") as ray_err:
        score_images_ray(head, [heads.data], out=tmp_path / "x.csv")
    with pytest.raises(WeightsUnavailableError) as local_err:
        score_run(head, inputs=[heads.data], out=tmp_path / "x.csv")
    assert str(ray_err.value) == str(local_err.value) and "\n" not in str(ray_err.value)
    assert not (tmp_path / "w.csv").exists() and not (tmp_path / "x.csv").exists()


@pytest.fixture
def own_s3():
    """An S3 server (moto) on 127.0.0.1 in a process of its own, for one test: its buckets
    are not the session S3 fixture's (moto keeps its state per process), so a Ray worker
    not handed the options - falling back to an ``AWS_ENDPOINT_URL`` it may have inherited
    from the session fixture, whichever started first - finds nothing."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto.server", reason="needs moto[server]")
    pytest.importorskip("s3fs", reason="needs s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_block_range_head_scores_images_on_s3_with_storage_options_via_the_cli(
    heads, tmp_path, ray_cluster, own_s3, monkeypatch
):
    """The CSV path hands ``--storage-options`` to the decode tasks: the images are on a
    server only the options name (the driver's ``AWS_ENDPOINT_URL`` removed; the workers'
    environment, if it has one, names another server)."""
    import csv

    import s3fs
    from typer.testing import CliRunner

    from facebank.cli import app

    spec = load_head(heads.block).backbone_
    assert (spec["layer"], spec["blocks"]) == ("blocks", [1, 2])
    local = _local(heads.block, [heads.data], tmp_path / "local.csv")
    secret = "testing-secret"
    opts = {"key": "testing", "secret": secret, "client_kwargs": {"endpoint_url": own_s3}}
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("faces-bucket")
    fs.put(str(heads.data), "faces-bucket/faces", recursive=True)
    out = tmp_path / "ray.csv"
    args = ["score", "s3://faces-bucket/faces", "--head", str(heads.block), "--engine", "ray"]
    res = CliRunner().invoke(
        app,
        [*args, "--out", str(out), "--batch-size", "8", "--storage-options", json.dumps(opts)],
    )
    assert res.exit_code == 0, res.output
    assert "scored 17:" in res.output and "1 failed" in res.output
    assert secret not in res.output and secret not in out.read_text()
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    url = "s3://faces-bucket/faces/"
    assert [r["path"].split(url, 1)[-1] for r in rows] == [
        str(Path(p).relative_to(heads.data)) for p in local.paths
    ]
    np.testing.assert_allclose([float(r["score"]) for r in rows], local.scores, **TOL)
