"""Damaged banks and hostile disks: verify names the damage, appends refuse it, nothing is lost."""

from __future__ import annotations

import json
import subprocess
import uuid

import numpy as np
import pytest

from facebank.embed import BankError, FeatureBank, verify_bank, write_bank
from facebank.testing import synthetic_backbone

D = 16
RNG = np.random.default_rng(5)


def _rows(n: int, start: int = 0) -> dict:
    return {
        "labels": np.zeros(n, dtype=int),
        "engines": ["real"] * n,
        "paths": [f"real/{start + i}.jpg" for i in range(n)],
        "splits": [""] * n,
        "sha256": [f"{start + i:064x}" for i in range(n)],
    }


def _bank(tmp_path, n=100):
    X = RNG.normal(size=(n, D)).astype(np.float32)
    return write_bank(
        tmp_path / "b.zarr",
        X,
        chunk_rows=32,
        **{k: v for k, v in _rows(n).items() if k != "splits"},
    )


def test_corrupt_group_zarr_json_is_named_and_refused(tmp_path):
    _bank(tmp_path)
    (tmp_path / "b.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    rep = verify_bank(tmp_path / "b.zarr")
    assert not rep.ok and "zarr.json" in rep.problems[0] and "unreadable" in rep.problems[0]
    with pytest.raises(BankError, match="not a readable feature bank"):
        FeatureBank.open(tmp_path / "b.zarr", mode="a")


def test_corrupt_array_zarr_json_is_named_and_refused(tmp_path):
    _bank(tmp_path)
    (tmp_path / "b.zarr" / "engine" / "zarr.json").write_text("not json")
    rep = verify_bank(tmp_path / "b.zarr")
    assert not rep.ok and any("'engine'" in p for p in rep.problems)
    with pytest.raises(BankError):
        FeatureBank.open(tmp_path / "b.zarr", mode="a")


def test_deleted_chunk_is_named_and_appending_is_refused(tmp_path):
    _bank(tmp_path)
    (tmp_path / "b.zarr" / "features" / "c" / "1" / "0").unlink()
    rep = verify_bank(tmp_path / "b.zarr")
    assert not rep.ok and "features/c/1/0" in rep.problems[0]
    with pytest.raises(BankError, match=r"lost 1 stored chunk.*features/c/1/0.*bank verify"):
        FeatureBank.open(tmp_path / "b.zarr", mode="a")
    # reading still works for what is there (zarr fills the lost chunk; verify says so)
    assert len(FeatureBank.open(tmp_path / "b.zarr")) == 100


def test_read_only_output_folder_is_a_clear_error(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("needs permission to mount a tmpfs")
    try:
        with pytest.raises(BankError, match="not writable"):
            FeatureBank.create(mnt / "b.zarr", backbone=synthetic_backbone(D))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_during_appends_leaves_a_bank_that_verifies_and_resumes(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("needs permission to mount a tmpfs")
    try:
        path = mnt / "b.zarr"
        committed = 0
        bank = FeatureBank.create(path, backbone=synthetic_backbone(256), chunk_rows=64)
        with bank, pytest.raises(BankError, match=r"committed rows are safe.*rerun") as err:
            for step in range(1000):
                X = RNG.normal(size=(64, 256)).astype(np.float32)
                bank.append(X, **_rows(64, start=64 * step))
                committed = len(bank)
        assert committed > 0 and isinstance(err.value.__cause__, OSError)
        assert f"{committed:,} committed rows" in str(err.value)
        rep = verify_bank(path)
        assert rep.ok, rep.problems
        assert rep.rows == committed
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        with FeatureBank.open(path, mode="a") as bank:  # the resumed run
            bank.append(RNG.normal(size=(64, 256)), **_rows(64, start=10**6))
        assert verify_bank(path).ok and len(FeatureBank.open(path)) == committed + 64
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_lease_lock_refuses_a_second_writer_and_expires(tmp_path):
    from facebank.core.errors import BankLockedError
    from facebank.core.stores import Location
    from facebank.embed.bank._lock import LeaseLock

    loc = Location(f"memory://facebank-{uuid.uuid4().hex[:8]}/b.zarr")
    first = LeaseLock(loc).acquire()
    lease = json.loads(loc.read_bytes("facebank.lease"))
    assert lease["owner"] == first.owner and lease["expires"] > lease["acquired"]
    with pytest.raises(BankLockedError, match="another process.*expires in"):
        LeaseLock(loc).acquire()
    first.release()
    assert not loc.exists("facebank.lease")
    stale = LeaseLock(loc, ttl_s=-1).acquire()  # a killed writer's lease, already expired
    assert stale.held
    LeaseLock(loc).acquire().release()  # taken over
    # a holder that commits nothing still keeps its lease alive
    import time

    quiet = LeaseLock(loc, ttl_s=0.6).acquire()
    time.sleep(1.5)
    with pytest.raises(BankLockedError):
        LeaseLock(loc).acquire()
    quiet.release()


@pytest.mark.slow
def test_embed_refuses_to_append_to_a_damaged_bank(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from facebank.cli import app

    (tmp_path / "src" / "real").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(tmp_path / "src" / "real" / f"{i}.jpg")
    runner = CliRunner()
    for damage in ("chunk", "zarr.json"):
        out = tmp_path / f"{damage}.zarr"
        X = RNG.normal(size=(40, D)).astype(np.float32)
        write_bank(out, X, chunk_rows=16, labels=[0] * 40, engines="real")
        if damage == "chunk":
            (out / "label" / "c" / "1").unlink()
        else:
            (out / "zarr.json").write_text("{")
        res = runner.invoke(
            app,
            [
                "embed",
                str(tmp_path / "src"),
                "-b",
                "tiny-cnn",
                "-o",
                str(out),
                "--workers",
                "0",
                "--no-progress",
            ],
        )
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output
        want = "lost 1 stored chunk" if damage == "chunk" else "not a readable feature bank"
        assert want in res.output
        assert "facebank bank verify" in res.output or damage == "zarr.json"


@pytest.mark.slow
def test_embed_into_a_read_only_mount_is_one_line_and_writes_nothing(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from facebank.cli import app

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("needs permission to mount a read-only tmpfs (root or CAP_SYS_ADMIN)")
    (tmp_path / "src" / "real").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(tmp_path / "src" / "real" / f"{i}.jpg")
    try:
        res = CliRunner().invoke(
            app,
            [
                "embed",
                str(tmp_path / "src"),
                "-b",
                "tiny-cnn",
                "-o",
                str(mnt / "b.zarr"),
                "--workers",
                "0",
                "--no-progress",
            ],
        )
        assert res.exit_code == 1 and "not writable" in res.output, res.output
        assert "Traceback" not in res.output and not any(mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
