"""Contract tests generated from the head registry: adding a head adds its tests."""

import json
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score

from facebank.core.errors import DataError, UnknownNameError
from facebank.heads import create_head, head_params, list_heads, load_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Tiny, easy data: two shifted Gaussian classes.
RNG = np.random.default_rng(0)
N, D = 240, 16
X = RNG.standard_normal((N, D)).astype(np.float32)
Y = (RNG.random(N) < 0.5).astype(np.int64)
X[Y == 1] += 0.9
X_NEW = RNG.standard_normal((40, D)).astype(np.float32)

# Per-head settings that keep each fit well under a second on a CPU.
FAST = {
    "linear": {},
    "mlp": {"max_steps": 40, "batch_size": 64},
    "prototype": {"max_steps": 40, "embed_dim": 4},
    "wide-mlp": {"width": 64, "max_steps": 60, "lr": 1e-2},  # lr: few steps here
    "knn": {"k": 5},
}


def make(name, **kw):
    return create_head(name, device="cpu", **{**FAST.get(name, {}), **kw})


@pytest.fixture(scope="module")
def fitted():
    return {name: make(name).fit(X, Y) for name in list_heads()}


def test_registry_lists_the_contract_heads():
    assert set(list_heads()) >= {"linear", "mlp", "prototype", "wide-mlp", "knn"}
    assert list_heads("*mlp") == ["mlp", "wide-mlp"]


def test_unknown_head_names_the_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        create_head("svm")
    assert "linear" in str(e.value) and "knn" in str(e.value)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(DataError, match="valid parameters: C"):
        create_head("linear", lr=0.1)


@pytest.mark.parametrize("name", list_heads())
def test_init_only_stores_params(name):
    h = make(name)
    params = h.get_params()
    assert set(params) == set(head_params(name))
    assert not [k for k in vars(h) if k.endswith("_")]  # no learned state before fit


@pytest.mark.parametrize("name", list_heads())
def test_inference_before_fit_says_call_fit(name):
    with pytest.raises(NotFittedError, match="call fit"):
        make(name).decision_function(X)


@pytest.mark.parametrize("name", list_heads())
def test_fit_contract(name, fitted):
    h = fitted[name]
    assert h.n_features_in_ == D
    assert list(h.classes_) == [0, 1]
    s = h.decision_function(X)
    assert s.shape == (N,) and np.isfinite(s).all()
    p = h.predict_proba(X)
    assert p.shape == (N, 2) and np.allclose(p.sum(1), 1)
    assert np.array_equal(h.predict(X), (s > h.threshold_).astype(int))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(Y, s) > 0.9  # higher = AI on easy data


@pytest.mark.parametrize("name", list_heads())
def test_clone_and_cross_val_score(name):
    h = make(name)
    c = clone(h)
    assert c.get_params() == h.get_params() and c is not h
    scores = cross_val_score(make(name), X, Y, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.7


@pytest.mark.parametrize("name", list_heads())
def test_seed_makes_training_reproducible(name, fitted):
    again = make(name).fit(X, Y)
    assert np.array_equal(again.decision_function(X_NEW), fitted[name].decision_function(X_NEW))


@pytest.mark.parametrize("name", ["mlp", "prototype", "wide-mlp"])
def test_other_seed_gives_other_model(name, fitted):
    other = make(name, seed=1).fit(X, Y)
    assert not np.array_equal(other.decision_function(X_NEW), fitted[name].decision_function(X_NEW))


@pytest.mark.parametrize("name", list_heads())
def test_save_load_round_trip_gives_identical_scores(name, fitted, tmp_path):
    h = clone(fitted[name]).fit(X, Y).calibrate(X[Y == 0], fpr=0.05)
    h.save(
        tmp_path / name,
        backbone={"name": "synthetic", "dim": D},
        bank_digest="abc",
        metrics={"auc": 1.0},
    )
    doc = json.loads((tmp_path / name / "head.json").read_text())
    assert doc["name"] == name and doc["bank_digest"] == "abc" and doc["metrics"] == {"auc": 1.0}
    assert doc["calibration"]["fpr"] == 0.05 and len(doc["weights_sha256"]) == 64
    back = load_head(tmp_path / name)
    assert np.array_equal(back.decision_function(X_NEW), h.decision_function(X_NEW))
    assert back.threshold_ == h.threshold_ and back.calibration_ == h.calibration_
    assert back.backbone_ == {"name": "synthetic", "dim": D} and back.bank_digest_ == "abc"
    assert back.get_params() == h.get_params()


@pytest.mark.parametrize("name", list_heads())
def test_calibrate_puts_fpr_fraction_of_reals_above(name, fitted):
    h = clone(fitted[name]).fit(X, Y)
    reals = RNG.standard_normal((200, D)).astype(np.float32)
    h.calibrate(reals, fpr=0.05)
    above = int((h.decision_function(reals) > h.threshold_).sum())
    assert above <= 10  # floor(0.05 * 200); fewer only when scores tie at the threshold
    if name != "knn":  # continuous scores: exactly 10
        assert above == 10
    assert h.calibration_ == {"fpr": 0.05, "n_reals": 200, "split": "val", "n_above": above}


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, D), np.float32), "empty"),
        (np.full((3, D), np.nan, np.float32), "NaN or inf"),
        (np.full((3, D), np.inf, np.float32), "NaN or inf"),
        (np.zeros((3, D + 1), np.float32), "expecting 16 features"),
        (np.zeros(D, np.float32), "2-D"),
    ],
)
def test_bad_features_at_inference(name, fitted, bad, match):
    with pytest.raises(DataError, match=match):
        fitted[name].decision_function(bad)


@pytest.mark.parametrize("name", list_heads())
def test_bad_training_input(name):
    h = make(name)
    with pytest.raises(DataError, match="empty"):
        h.fit(np.zeros((0, D)), np.zeros(0))
    with pytest.raises(DataError, match="only: 0 \\(real\\)"):
        h.fit(X, np.zeros(N, int))
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(DataError, match="1 row\\(s\\) with NaN"):
        h.fit(Xn, Y)
    with pytest.raises(DataError, match="label\\(s\\) \\[2\\]"):
        h.fit(X, np.where(Y == 1, 2, 0))
    with pytest.raises(DataError, match="one label per row"):
        h.fit(X, Y[:-1])


def test_error_messages_are_one_line():
    for call in (
        lambda: create_head("linear").fit(X, np.zeros(N, int)),
        lambda: create_head("linear").fit(np.zeros((0, D)), np.zeros(0)),
    ):
        with pytest.raises(DataError) as e:
            call()
        assert "\n" not in str(e.value)


def test_unknown_labels_are_left_out_with_a_warning():
    y = Y.copy()
    y[:20] = -1
    with pytest.warns(UserWarning, match="20 row\\(s\\) labelled -1"):
        h = make("linear").fit(X, y)
    ref = make("linear").fit(X[20:], Y[20:])
    assert np.allclose(h.coef_, ref.coef_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="both classes"):
            make("linear").fit(X, np.full(N, -1))


def test_fpr_out_of_range_is_refused(fitted):
    with pytest.raises(DataError, match="fpr"):
        clone(fitted["linear"]).fit(X, Y).calibrate(X, fpr=1.5)
