"""The object-store writer lease: one holder at a time, also after an expiry and a takeover."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from facebank.core.errors import BankLockedError
from facebank.core.stores import Location
from facebank.embed.bank._lock import LeaseLock


def _lease(loc: Location) -> dict:
    return json.loads(loc.read_bytes(LeaseLock.KEY))


def _takeover(loc: Location) -> None:
    """A's lease expires while A is paused; B takes it; A wakes up and renews."""
    a = LeaseLock(loc, ttl_s=0.4).acquire()
    assert _lease(loc)["generation"] == 1
    a._stop.set()  # a paused process: its keeper stops beating
    a._keeper.join()
    time.sleep(0.5)
    b = LeaseLock(loc).acquire()
    assert _lease(loc)["owner"] == b.owner and _lease(loc)["generation"] == 2
    with pytest.raises(BankLockedError, match="lost the writer lease.*holds it now"):
        a.renew()
    assert not a.held and _lease(loc)["owner"] == b.owner  # A did not write itself back
    with pytest.raises(BankLockedError):  # and keeps refusing: A never writes again
        a.renew()
    b.renew()
    assert _lease(loc)["owner"] == b.owner and _lease(loc)["generation"] == 3
    a.release()  # never deletes another writer's lease
    assert _lease(loc)["owner"] == b.owner
    with pytest.raises(BankLockedError, match="another process"):
        LeaseLock(loc).acquire()
    b.release()
    assert not loc.exists(LeaseLock.KEY)


def test_renew_refuses_after_another_writer_took_the_expired_lease():
    _takeover(Location(f"memory://facebank-{uuid.uuid4().hex[:8]}/b.zarr"))


def test_renew_refuses_after_a_takeover_on_a_local_folder(tmp_path):
    (tmp_path / "b.zarr").mkdir()
    _takeover(Location(str(tmp_path / "b.zarr")))


def test_renew_refuses_after_a_takeover_on_s3(s3_bucket):
    _takeover(Location(f"{s3_bucket}/b.zarr"))


def test_the_keeper_finds_the_takeover_and_the_next_commit_raises():
    loc = Location(f"memory://facebank-{uuid.uuid4().hex[:8]}/b.zarr")
    a = LeaseLock(loc, ttl_s=0.3).acquire()
    a._stop.set()
    a._keeper.join()
    time.sleep(0.4)
    b = LeaseLock(loc, ttl_s=0.3).acquire()
    a._stop.clear()
    beat = threading.Thread(target=a._keep, daemon=True)  # A's keeper after the pause
    beat.start()
    beat.join(timeout=5)
    assert not beat.is_alive()  # it found B's lease and stopped
    assert not a.held
    with pytest.raises(BankLockedError, match="lost the writer lease"):
        a.renew()
    time.sleep(0.3)  # B's own keeper keeps B's lease alive meanwhile
    assert _lease(loc)["owner"] == b.owner and _lease(loc)["expires"] > time.time()
    b.release()


def test_a_bank_writer_that_lost_its_lease_commits_nothing():
    import numpy as np

    from facebank.embed.bank.bank import FeatureBank
    from facebank.testing import synthetic_backbone

    url = f"memory://facebank-{uuid.uuid4().hex[:8]}/b.zarr"
    bank = FeatureBank.create(url, backbone=synthetic_backbone(8))
    lock = bank._lock
    lock._stop.set()
    lock._keeper.join()
    lock.loc.write_json(LeaseLock.KEY, {"owner": "other", "generation": 9, "expires": 1e12})
    rows = {"labels": np.zeros(2, np.int8), "engines": ["real"] * 2, "paths": ["a", "b"]}
    with pytest.raises(BankLockedError, match="lost the writer lease"):
        bank.append(np.zeros((2, 8), np.float32), splits=["t"] * 2, sha256=["1", "2"], **rows)
    assert _lease(lock.loc)["owner"] == "other"
    assert len(FeatureBank.open(url)) == 0  # the refused commit left the bank as it was
