"""Head directories: no pickle, tamper detection, backbone identity."""

import json
import pickle

import numpy as np
import pytest
import torch

from facebank.core.errors import BackboneMismatchError, HeadError
from facebank.heads import check_backbone, create_head, load_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RNG = np.random.default_rng(2)
X = RNG.standard_normal((120, 8)).astype(np.float32)
Y = (X[:, 0] + 0.3 * RNG.standard_normal(120) > 0).astype(np.int64)
SPEC_A = {
    "name": "a",
    "library": "numpy",
    "model": "synthetic-a",
    "pretrained": None,
    "weights_sha256": None,
    "dim": 8,
    "input_size": None,
}
SPEC_B = {**SPEC_A, "name": "b", "model": "synthetic-b"}


@pytest.fixture
def saved(tmp_path):
    h = create_head("linear", device="cpu").fit(X, Y).calibrate(X[Y == 0], fpr=0.1)
    h.save(tmp_path / "head", backbone=SPEC_A, bank_digest="d1")
    return tmp_path / "head"


def test_directory_holds_json_and_safetensors_only(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["head.json", "weights.safetensors"]
    doc = json.loads((saved / "head.json").read_text())
    for key in (
        "name",
        "params",
        "threshold",
        "calibration",
        "backbone",
        "bank_digest",
        "metrics",
        "weights_sha256",
        "json_sha256",
    ):
        assert key in doc
    from safetensors.numpy import load_file

    assert set(load_file(str(saved / "weights.safetensors"))) == {"coef", "intercept"}


def test_loading_never_unpickles(saved, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle used while loading a head")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    assert load_head(saved).threshold_ is not None


def test_missing_directory_and_files(tmp_path, saved):
    with pytest.raises(HeadError, match="does not exist"):
        load_head(tmp_path / "nope")
    (saved / "weights.safetensors").unlink()
    with pytest.raises(HeadError, match="weights.safetensors.*missing"):
        load_head(saved)
    (saved / "head.json").unlink()
    with pytest.raises(HeadError, match="head.json.*missing"):
        load_head(saved)


def test_tampered_weights_are_refused(saved):
    w = saved / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(HeadError, match="does not match the sha256") as e:
        load_head(saved)
    assert "\n" not in str(e.value)


def test_tampered_json_is_refused(saved):
    j = saved / "head.json"
    doc = json.loads(j.read_text())
    doc["threshold"] = -100.0
    j.write_text(json.dumps(doc))
    with pytest.raises(HeadError, match="modified after it was saved"):
        load_head(saved)
    j.write_text("{not json")
    with pytest.raises(HeadError, match="not valid JSON"):
        load_head(saved)


def test_swapped_weights_from_another_head_are_refused(tmp_path, saved):
    other = create_head("linear", device="cpu", C=0.01).fit(X, Y)
    other.save(tmp_path / "other")
    (saved / "weights.safetensors").write_bytes(
        (tmp_path / "other" / "weights.safetensors").read_bytes()
    )
    with pytest.raises(HeadError, match="sha256"):
        load_head(saved)


def test_backbone_mismatch_names_both(saved):
    head = load_head(saved)
    check_backbone(head, SPEC_A, what="bank x.zarr")  # same: fine
    with pytest.raises(BackboneMismatchError) as e:
        check_backbone(head, SPEC_B, what="bank x.zarr")
    assert (
        "synthetic-a" in str(e.value) and "synthetic-b" in str(e.value) and "x.zarr" in str(e.value)
    )


def test_unfitted_head_cannot_be_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        create_head("linear").save(tmp_path / "h")
