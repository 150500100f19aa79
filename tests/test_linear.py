"""The ``linear`` head's warm start and engine weights (used by the few-shot protocol)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from facebank.core.errors import DataError
from facebank.heads import create_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(n=3000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[y == 1, :3] += 0.6
    engines = np.where(y == 1, np.where(rng.random(n) < 0.5, "a", "b"), "real")
    return X, y, engines


def test_warm_start_continues_to_the_cold_fits_minimiser_in_fewer_iterations():
    X, y, eng = rows()
    kw = {"device": "cpu", "dtype": "float64", "tol": 1e-7}
    first = create_head("linear", **kw).fit(X[:2950], y[:2950])  # 50 rows fewer
    cold = create_head("linear", **kw).fit(X, y)
    warm = copy.deepcopy(first).set_params(warm_start=True).fit(X, y)
    assert np.allclose(warm.coef_, cold.coef_, atol=1e-4)
    assert np.allclose(warm.intercept_, cold.intercept_, atol=1e-4)
    assert warm.n_iter_warm_ == 0 and warm.n_iter_ < cold.n_iter_
    # refitting the same rows from their own minimiser: nothing left to do
    again = copy.deepcopy(cold).set_params(warm_start=True).fit(X, y)
    assert again.n_iter_ <= 1 and np.allclose(again.coef_, cold.coef_, atol=1e-5)


def test_warm_start_without_a_previous_fit_or_on_another_width_starts_cold():
    X, y, _ = rows()
    plain = create_head("linear", device="cpu").fit(X, y)
    fresh = create_head("linear", device="cpu", warm_start=True).fit(X, y)
    assert np.allclose(fresh.coef_, plain.coef_)
    wider = fresh.fit(np.hstack([X, X[:, :2]]), y)
    assert wider.coef_.shape == (1, 18)


def test_engine_weight_equals_repeating_that_engines_rows():
    X, y, eng = rows()
    kw = {"device": "cpu", "dtype": "float64", "tol": 1e-8, "warm_start_rows": 0}
    weighted = create_head("linear", engine_weight={"a": 3.0}, **kw).fit(X, y, engines=eng)
    a = eng == "a"
    Xr = np.vstack([X, X[a], X[a]])
    yr = np.r_[y, y[a], y[a]]
    repeated = create_head("linear", **kw).fit(Xr, yr)
    plain = create_head("linear", **kw).fit(X, y)
    assert np.allclose(weighted.coef_, repeated.coef_, atol=1e-5)
    assert not np.allclose(weighted.coef_, plain.coef_, atol=1e-3)


def test_engine_weight_bad_input():
    X, y, eng = rows(n=200)
    with pytest.raises(DataError, match="engine_weight=.* is not valid"):
        create_head("linear", engine_weight={"a": -1.0}).fit(X, y, engines=eng)
    with pytest.raises(DataError, match="needs the rows' engine names"):
        create_head("linear", engine_weight={"a": 2.0}).fit(X, y)
