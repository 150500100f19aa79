"""The Ray Data engine on a local cluster: same bank as the local runner, resume, actor loss."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import FacebankError
from facebank.embed import FeatureBank, embed_source

FAST = dict(batch_size=4, progress=False)


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    import facebank.ray_engine.embedding as ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(FacebankError, match=r"pip install 'facebank\[ray\]'"):
        ray_engine.import_ray()


def test_cli_engine_ray_without_ray_is_one_line_with_the_install(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facebank.cli import app

    src = _source(tmp_path / "src", n=2)
    monkeypatch.setitem(sys.modules, "ray", None)
    args = ["embed", str(src), "--backbone", "tiny-cnn", "--out", str(tmp_path / "b.zarr")]
    res = CliRunner().invoke(app, [*args, "--engine", "ray", "--no-progress"])
    assert res.exit_code == 1 and "pip install 'facebank[ray]'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "b.zarr").exists()


def test_options_are_checked_before_any_work():
    from facebank.ray_engine.embedding import RayOptions

    with pytest.raises(FacebankError, match="--partition-rows 0"):
        RayOptions(partition_rows=0)
    with pytest.raises(FacebankError, match="--workers 0"):
        RayOptions(workers=0)


ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture
def cluster(ray_cluster):
    """The session's local two-CPU Ray cluster (tests/conftest.py: one start per session)."""
    return ray_cluster


def _source(root, n=8):
    """n images per engine, a corrupt file and a cross-engine duplicate."""
    rng = np.random.default_rng(0)
    for engine in ("real", "sdxl"):
        (root / engine).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / engine / f"{i:03d}.jpg", quality=85)
    (root / "sdxl" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(root / "real" / "001.jpg", root / "sdxl" / "zz_copy.jpg")
    return root


def _local(src, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_source(src, backbone="tiny-cnn", out=out, num_workers=0, **FAST)
    return FeatureBank.open(out)


def _assert_same_bank(a: FeatureBank, b: FeatureBank) -> None:
    assert a.paths.tolist() == b.paths.tolist()
    assert a.sha256.tolist() == b.sha256.tolist()
    assert a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.load_features(), b.load_features(), rtol=2e-3, atol=2e-3)
    assert {d["path"]: d["duplicate_of"] for d in a.duplicates} == {
        d["path"]: d["duplicate_of"] for d in b.duplicates
    }
    assert [f["path"] for f in a.failures] == [f["path"] for f in b.failures]
    for key in ("file_format", "width", "jpeg_quality", "meta_error"):
        assert a.column(key).tolist() == b.column(key).tolist()


def _ray_embed(src, out, **opts):
    from facebank.ray_engine.embedding import RayOptions, embed_source_ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return embed_source_ray(
            src, backbone="tiny-cnn", out=out, ray_options=RayOptions(**opts), **FAST
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_bank_equals_the_local_runners(tmp_path, cluster):
    src = _source(tmp_path / "src")
    local = _local(src, tmp_path / "local.zarr")
    s = _ray_embed(src, tmp_path / "ray.zarr", partition_rows=5)
    assert (s.embedded, s.duplicates, [p for p, _ in s.failed]) == (16, 1, ["sdxl/bad.jpg"])
    assert s.device.startswith("ray:1x")
    bank = FeatureBank.open(tmp_path / "ray.zarr")
    _assert_same_bank(bank, local)
    # consolidated: plain zarr sees every row
    import zarr

    assert zarr.open_group(tmp_path / "ray.zarr", mode="r")["features"].shape[0] == 16
    again = _ray_embed(src, tmp_path / "ray.zarr", partition_rows=5)
    # the failed file is retried (and fails again: still one record); nothing else redone
    assert (again.embedded, again.skipped_present, len(again.failed)) == (0, 17, 1)
    assert [f["path"] for f in FeatureBank.open(tmp_path / "ray.zarr").failures] == ["sdxl/bad.jpg"]
    # a file added later sorts inside a committed partition's range: still embedded
    shutil.copy(src / "sdxl" / "003.jpg", src / "real" / "000a.jpg")
    Image.new("RGB", (24, 24), (9, 99, 199)).save(src / "real" / "000b.jpg")
    more = _ray_embed(src, tmp_path / "ray.zarr", partition_rows=5)
    assert (more.embedded, more.duplicates) == (1, 1)
    bank = FeatureBank.open(tmp_path / "ray.zarr")
    assert len(bank) == 17 and bank.paths.tolist()[-1] == "real/000b.jpg"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_killed_between_partitions_resumes_to_the_same_bank(tmp_path, cluster, monkeypatch):
    import facebank.ray_engine.embedding as ray_engine
    from facebank.embed.bank.partitions import committed_partitions

    src = _source(tmp_path / "src")
    local = _local(src, tmp_path / "local.zarr")
    real_write = ray_engine.write_partition
    calls = []

    def dying_write(bank, index, **kw):
        if len(calls) == 2:
            raise RuntimeError("node lost")
        calls.append(index)
        real_write(bank, index, **kw)

    monkeypatch.setattr(ray_engine, "write_partition", dying_write)
    with pytest.raises(RuntimeError, match="node lost"):
        _ray_embed(src, tmp_path / "ray.zarr", partition_rows=4)
    assert committed_partitions(tmp_path / "ray.zarr") == {0, 1}
    monkeypatch.setattr(ray_engine, "write_partition", real_write)
    s = _ray_embed(src, tmp_path / "ray.zarr", partition_rows=4)
    assert s.skipped_present == 8
    _assert_same_bank(FeatureBank.open(tmp_path / "ray.zarr"), local)


def _encoder_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if b"_EncodeBatches" in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds actors through /proc")
def test_kill_9_of_an_encoder_actor_mid_run_loses_no_row(tmp_path, cluster):
    from facebank.embed.bank.partitions import committed_partitions

    src = _source(tmp_path / "src", n=30)
    local = _local(src, tmp_path / "local.zarr")
    out = tmp_path / "ray.zarr"
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = _ray_embed(src, out, partition_rows=4)
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        time.sleep(0.2)
        pids = _encoder_pids()
        try:
            started = (out / "zarr.json").is_file() and committed_partitions(out)
        except Exception:  # the bank is being created
            started = False
        if pids and started:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert killed is not None, "the run ended before an encoder could be killed"
    if "error" in result:  # Ray gave up on the lost actor: the same command resumes
        _ray_embed(src, out, partition_rows=4)
    _assert_same_bank(FeatureBank.open(out), local)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_scoring_equals_local_scoring(tmp_path, cluster):
    from facebank.heads import train_run
    from facebank.heads.scoring import score_run
    from facebank.ray_engine.scoring import score_images_ray

    src = _source(tmp_path / "src", n=10)
    bank = _local(src, tmp_path / "local.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_run([bank], head="linear", params={}, out=tmp_path / "run", seed=0, fpr=0.05)
        local = score_run(run.run_dir, inputs=[src], out=tmp_path / "local.csv", batch_size=4)
        remote = score_images_ray(run.run_dir, [src], out=tmp_path / "ray.csv", batch_size=4)
    assert remote.paths == local.paths and len(remote.paths) == 21  # 20 + the copy
    np.testing.assert_allclose(remote.scores, local.scores, rtol=1e-3, atol=1e-3)
    assert remote.decisions.tolist() == local.decisions.tolist()
    assert [p for p, _ in remote.failures] == [p for p, _ in local.failures]
    assert (tmp_path / "ray.csv").read_text().splitlines()[0] == (
        (tmp_path / "local.csv").read_text().splitlines()[0]
    )
    # partitioned output on the cluster: parquet parts holding the same rows
    from facebank.ray_engine.scoring import read_scores, score_partitioned

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = score_partitioned(
            run.run_dir, [src], out=tmp_path / "scores", partition_rows=8, batch_size=4
        )
    assert parts.files == [f"scores/part-0000{k}.parquet" for k in range(3)]
    table = read_scores(tmp_path / "scores")
    assert table["path"].to_pylist() == local.paths
    np.testing.assert_allclose(table["score"].to_numpy(), local.scores, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_embeds_a_source_on_s3_with_storage_options_into_the_same_bank(
    tmp_path, s3_bucket, s3_endpoint, cluster
):
    """The decode tasks read each image from the store with --storage-options (the
    endpoint given explicitly: a worker never falls back to another address)."""
    import json

    import s3fs

    src = _source(tmp_path / "src")
    s3fs.S3FileSystem().put(str(src), f"{s3_bucket}/faces", recursive=True)
    # endpoint and credentials both in the options: the module's Ray workers may have
    # started before the S3 fixture set AWS_* in this process, so they have neither
    opts = {
        "key": "testing",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }
    local = _local(src, tmp_path / "local.zarr")
    from facebank.ray_engine.embedding import RayOptions, embed_source_ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = embed_source_ray(
            f"{s3_bucket}/faces", backbone="tiny-cnn", out=tmp_path / "ray.zarr",
            storage_options=opts, ray_options=RayOptions(partition_rows=6), **FAST,
        )  # fmt: skip
    assert (s.embedded, s.duplicates) == (16, 1), s.failed
    assert s.first_batch_s > 0
    bank = FeatureBank.open(tmp_path / "ray.zarr")
    _assert_same_bank(bank, local)
    assert bank.meta["source"] == f"{s3_bucket}/faces"
    assert "testing-secret" not in json.dumps(bank.meta)
