"""A row's score does not depend on the batch it is computed in (every head).

sklearn's ``check_methods_subset_invariance`` allows a relative 1e-7; flags at a frozen
threshold need more: bit-identical scores, or a validation real that sits on the
threshold can move above it when the same rows are scored in another batch. These
tests ask for equality to the last bit, and that the threshold rule keeps its count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.cli import app
from facebank.embed import write_bank
from facebank.heads import create_head, list_heads
from facebank.heads.base import allowed_false_positives

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "mlp": {"hidden": (32, 16), "max_steps": 30, "batch_size": 64},
    "prototype": {"max_steps": 20, "embed_dim": 4},
    "wide-mlp": {"width": 32, "max_steps": 20},
    "fusion": {"rule": "stack"},
}
# Enough rows that the full call spans two evaluation blocks and a partial third.
N = 600


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    X = rng.standard_normal((N, 24)).astype(np.float32) + 0.7 * y[:, None]
    return X, y


def _scores_in_batches(head, X, size):
    return np.concatenate([head.decision_function(X[i : i + size]) for i in range(0, len(X), size)])


@pytest.mark.parametrize("name", list_heads())
def test_scores_are_bit_identical_in_any_batch(name, data):
    X, y = data
    head = create_head(name, device="cpu", **FAST.get(name, {})).fit(X, y)
    whole = head.decision_function(X)
    for size in (1, 7, 12, 257):
        np.testing.assert_array_equal(_scores_in_batches(head, X, size), whole, err_msg=f"{size}")
    # reversed order: a row's neighbours in its block change, its score must not
    np.testing.assert_array_equal(head.decision_function(X[::-1])[::-1], whole)


@pytest.mark.parametrize("name", list_heads())
def test_threshold_keeps_its_count_when_reals_are_rescored(name, data):
    X, y = data
    fpr = 0.02  # 99 reals: 1 may lie above
    head = create_head(name, device="cpu", **FAST.get(name, {})).fit(X[:400], y[:400])
    reals = X[400:][y[400:] == 0]
    head.calibrate(reals, fpr=fpr)
    allowed = allowed_false_positives(fpr, len(reals))
    flags = [_scores_in_batches(head, reals, size) > head.threshold_ for size in (1, 7, len(reals))]
    for f in flags:
        np.testing.assert_array_equal(f, flags[0])
        assert f.sum() == head.calibration_["n_above"] <= allowed


def test_train_prints_the_fpr_its_calibration_counted(tmp_path):
    """The realised FPR ``train`` prints is the one its calibration recorded (n_above)."""
    rng = np.random.default_rng(1)
    n = 360
    engines = rng.choice(["real", "sdxl"], n)
    X = rng.standard_normal((n, 12)).astype(np.float32)
    X[engines == "sdxl"] += 0.6
    bank = write_bank(
        tmp_path / "b.zarr",
        X,
        labels=(engines != "real").astype(np.int64),
        engines=engines,
        sha256=[f"s{i}" for i in range(n)],
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(bank.path), "--head", "linear", "--out", str(out)])
    assert res.exit_code == 0, res.output
    head = json.loads((out / "head.json").read_text())
    cal = head["calibration"]
    realised = cal["n_above"] / cal["n_reals"]
    assert f"at FPR {realised:.2%} (target" in res.output, res.output
