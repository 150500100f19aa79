"""The float64 scoring copies of the torch heads: built once, rebuilt when the model changes.

``mlp``, ``wide-mlp`` and ``prototype`` score through a float64 copy of their torch model
(``heads._torch.cached_copy``), and the prototype head through its projection's QR factor
computed once for every block. The reference below is the uncached path: a fresh
``float64_copy`` per call and, for the prototype head, ``projection()`` recomputed in
every 256-row block. Scores must equal it to the last bit, before and after every change
to the head.
"""

from __future__ import annotations

import copy
import gc
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from facebank.heads import _torch, create_head, load_head
from facebank.heads import mlp as mlp_module
from facebank.heads import prototype as prototype_module
from facebank.heads._torch import float64_copy, predict_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "mlp": {"hidden": (32, 16), "max_steps": 20, "batch_size": 64},
    "wide-mlp": {"width": 32, "max_steps": 20},
    "prototype": {"max_steps": 20, "embed_dim": 4},
    "prototype-identity": {"max_steps": 20, "embedding": "identity"},
}
HEADS = list(FAST)
# three 256-row blocks, the last one partial
N = 600


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    X = (rng.standard_normal((N, 24)) + 0.7 * y[:, None]).astype(np.float32)
    return X, y


def _head(name: str, **params):
    return create_head(name.removesuffix("-identity"), device="cpu", **{**FAST[name], **params})


def _reference(head, X: np.ndarray, what: str = "odds") -> np.ndarray:
    """The uncached path: a new float64 copy, and for prototype a QR in every block."""
    model = float64_copy(head.model_, "cpu")
    if head.name == "prototype":
        fn = {"odds": model.log_odds, "density": model.log_density, "classes": model.class_loglik}
        return predict_blocks(fn[what], X, "cpu")
    return predict_blocks(lambda t: model(model.norm(t)), X, "cpu").reshape(-1)


def _first_parameter(head) -> torch.Tensor:
    return next(head.model_.parameters())


@pytest.mark.parametrize("name", HEADS)
def test_scores_equal_the_uncached_path_bit_for_bit(name, data):
    X, y = data
    head = _head(name).fit(X, y)
    for _ in range(2):  # the first call may build the copy, the second reuses it
        np.testing.assert_array_equal(head.decision_function(X), _reference(head, X))
        np.testing.assert_array_equal(head.decision_function(X[5:6]), _reference(head, X[5:6]))
    if head.name == "prototype":
        np.testing.assert_array_equal(head.score_samples(X), _reference(head, X, "density"))
        np.testing.assert_array_equal(head.class_log_likelihood(X), _reference(head, X, "classes"))


@pytest.mark.parametrize("name", HEADS)
def test_the_float64_copy_is_built_once_not_per_call(name, data, monkeypatch):
    X, y = data
    head = _head(name).fit(X, y)
    built = []

    def counting_copy(module, device):
        built.append(device)
        return float64_copy(module, device)

    module = prototype_module if head.name == "prototype" else mlp_module
    monkeypatch.setattr(module, "float64_copy", counting_copy)
    for _ in range(5):
        head.decision_function(X[:3])
    # prototype: already built by fit (for offset_); mlp: built by the first call
    assert len(built) == (0 if head.name == "prototype" else 1)


def test_prototype_factorises_its_projection_once_not_per_block(data, monkeypatch):
    X, y = data
    head = _head("prototype").fit(X, y)
    calls = []
    qr = torch.linalg.qr

    def counting_qr(*args, **kwargs):
        calls.append(1)
        return qr(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "qr", counting_qr)
    head.decision_function(X)  # three blocks
    head.score_samples(X)
    assert calls == []  # the factor computed for fit's offset_ is reused
    with torch.no_grad():
        head.model_.proj.add_(0.1)  # a new matrix: refactorised, once for three blocks
    np.testing.assert_array_equal(head.decision_function(X), _reference(head, X))
    assert len(calls) == 1 + 3  # the head's one, and the reference's one per block


@pytest.mark.parametrize("name", HEADS)
def test_refit_and_set_params_give_the_new_models_scores(name, data):
    X, y = data
    head = _head(name).fit(X, y)
    before = head.decision_function(X)
    head.set_params(seed=1)
    np.testing.assert_array_equal(head.decision_function(X), before)  # not refitted yet
    head.fit(X, y)
    after = head.decision_function(X)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, _reference(head, X))
    np.testing.assert_array_equal(after, _head(name, seed=1).fit(X, y).decision_function(X))


@pytest.mark.parametrize("name", HEADS)
def test_parameters_written_in_place_are_seen(name, data):
    X, y = data
    head = _head(name).fit(X, y)
    before = head.decision_function(X)
    with torch.no_grad():
        _first_parameter(head).add_(0.1)
    after = head.decision_function(X)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, _reference(head, X))
    other = _head(name, seed=3).fit(X, y)
    head.model_.load_state_dict(other.model_.state_dict())
    np.testing.assert_array_equal(head.decision_function(X), other.decision_function(X))


@pytest.mark.parametrize("name", HEADS)
def test_copies_stay_off_the_head_pickle_clone_and_saved_head(name, data, tmp_path):
    X, y = data
    head = _head(name).fit(X, y)
    attrs, pickled = dict(vars(head)), pickle.dumps(head)
    scores = head.decision_function(X)
    assert vars(head) == attrs  # sklearn's check_dict_unchanged
    assert len(pickle.dumps(head)) == len(pickled)  # no float64 copy in the pickle
    np.testing.assert_array_equal(pickle.loads(pickled).decision_function(X), scores)
    twin = copy.deepcopy(head)
    np.testing.assert_array_equal(twin.decision_function(X), scores)
    fresh = clone(head)
    assert not hasattr(fresh, "model_") and fresh.get_params() == head.get_params()
    loaded = load_head(head.save(tmp_path / "run"))
    np.testing.assert_array_equal(loaded.decision_function(X), scores)


def test_a_copy_goes_with_its_model(data):
    X, y = data
    gc.collect()
    held = len(_torch._COPIES)
    head = _head("mlp").fit(X, y)
    head.decision_function(X[:1])
    assert len(_torch._COPIES) == held + 1
    head.fit(X, y)  # the old model and its copy are released
    head.decision_function(X[:1])
    gc.collect()
    assert len(_torch._COPIES) == held + 1
    del head
    gc.collect()
    assert len(_torch._COPIES) == held
