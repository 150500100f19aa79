"""scikit-learn's own estimator checker on every head in the registry.

Heads keep the project's label convention (1 = AI-generated, 0 = real, -1 = unknown)
and never remap labels, because which of two arbitrary classes is "AI" cannot be
guessed. Four checks train on other labels ({1, 2}, strings): they run through
:class:`ConventionAdapter`, a thin wrapper that maps the checker's two classes onto
0 and 1 (sorted order) and back, so what they test - integer and list input, one
feature, ``classes_`` and predictions in the caller's labels - is exercised on every
head. Every other check runs on the head itself. ``EXPECTED_FAILURES`` lists what still
cannot pass, each with its reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import Tags
from sklearn.utils.estimator_checks import estimator_checks_generator

from facebank.core.errors import DataError
from facebank.heads import BaseHead, create_head, list_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Settings that keep each of the ~56 fits per head short on a CPU while still learning
# the checker's easy blobs (check_classifiers_train asks for 83% accuracy).
FAST = {
    "linear": {},
    "mlp": {"hidden": (32, 16), "max_steps": 30, "batch_size": 64, "lr": 1e-2},
    "prototype": {"max_steps": 20, "embed_dim": 4},
    "wide-mlp": {"width": 32, "max_steps": 20, "lr": 3e-2},
    "knn": {"k": 5},
    "fusion": {"rule": "stack"},
}

# The checks that fit on labels outside the convention: run through the adapter.
LABEL_CHECKS = (
    "check_estimators_dtypes",  # int32/int64/float32 X, labels {1, 2}
    "check_classifier_data_not_an_array",  # list X and y, labels {1, 2}
    "check_fit2d_1feature",  # one feature, labels {1, 2}
    "check_classifiers_classes",  # string labels ('one', 'two')
)

# (head, check) -> why it cannot pass; empty when every check passes.
EXPECTED_FAILURES: dict[tuple[str, str], str] = {}


class ConventionAdapter(ClassifierMixin, BaseEstimator):
    """Fit ``head`` on any two labels: the first (sorted) becomes 0 = real, the second 1 = AI.

    For the checker only: a caller's labels carry no AI/real meaning, so facebank itself
    never does this. ``classes_`` and ``predict`` speak the caller's labels; scores and
    probabilities are the head's own (column 1 = the second class).
    """

    def __init__(self, head: BaseHead):
        self.head = head

    def fit(self, X, y):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        self.classes_, y01 = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise DataError(f"the adapter takes two classes, got {len(self.classes_)}")
        self.head_ = clone(self.head).fit(X, y01)
        self.n_features_in_ = self.head_.n_features_in_
        return self

    def decision_function(self, X):
        return self.head_.decision_function(X)

    def predict_proba(self, X):
        return self.head_.predict_proba(X)

    def predict(self, X):
        return self.classes_[self.head_.predict(X)]

    def __sklearn_tags__(self) -> Tags:
        return self.head.__sklearn_tags__()


def _head(name: str) -> BaseHead:
    return create_head(name, device="cpu", **FAST.get(name, {}))


def _expected(name: str) -> dict[str, str]:
    return {check: why for (head, check), why in EXPECTED_FAILURES.items() if head == name}


def _checks():
    """(head name, estimator, check) for every head: label checks on the adapter."""
    for name in list_heads():
        if name not in FAST:
            continue  # a plugin installed in this environment: its own package tests it
        for est, check in estimator_checks_generator(
            _head(name),
            legacy=True,
            expected_failed_checks=_expected(name),
            mark="xfail",
            xfail_strict=True,
        ):
            if _check_name(check) not in LABEL_CHECKS:
                yield pytest.param(est, check, id=f"{name}-{_check_name(check)}")
        adapted = ConventionAdapter(_head(name))
        for est, check in estimator_checks_generator(
            adapted,
            legacy=True,
            expected_failed_checks=_expected(name),
            mark="xfail",
            xfail_strict=True,
        ):
            if _check_name(check) in LABEL_CHECKS:
                yield pytest.param(est, check, id=f"{name}-adapted-{_check_name(check)}")


def _check_name(check) -> str:
    func = getattr(check, "func", check)
    while hasattr(func, "func"):
        func = func.func
    return func.__name__


def test_every_registered_head_is_checked():
    assert set(FAST) <= set(list_heads())
    assert {n for n in list_heads() if n in FAST} == set(FAST)


def test_every_label_check_is_generated():
    """A check renamed or dropped by a scikit-learn upgrade would silently stop running."""
    names = {_check_name(c) for _, c in estimator_checks_generator(ConventionAdapter(_head("knn")))}
    assert set(LABEL_CHECKS) <= names


@pytest.mark.parametrize(("estimator", "check"), list(_checks()))
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["linear", "knn"])
def test_heads_refuse_labels_outside_the_convention(name, two_classes):
    """Heads themselves never remap: {1, 2} and strings are refused with the convention."""
    X, y = two_classes
    y_other = y + 1  # {1, 2}: what the checks give
    with pytest.raises(DataError, match=r"label\(s\) \[2\]; valid labels are 1 \(AI"):
        _head(name).fit(X, y_other)
    with pytest.raises(DataError, match="Unknown label type"):
        _head(name).fit(X, np.where(y_other == 1, "one", "two"))
    adapted = ConventionAdapter(_head(name)).fit(X, np.where(y_other == 1, "one", "two"))
    assert set(adapted.predict(X)) <= {"one", "two"}
    assert list(adapted.classes_) == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "linear",
            {"C": 0},
            r"C=0 is not valid for LinearHead: C must be a float in the range "
            r"\(0.0, inf\)",
        ),
        ("linear", {"C": -1.0}, r"C=-1.0 is not valid"),
        (
            "linear",
            {"dtype": "float16"},
            r"dtype='float16' is not valid.* a str among \{.*'float32'",
        ),
        (
            "knn",
            {"k": 0},
            r"k=0 is not valid for KNNHead: k must be an int in the range \[1, inf\)",
        ),
        ("mlp", {"dropout": 1.0}, r"dropout must be a float in the range \[0.0, 1.0\)"),
        ("prototype", {"ood_contamination": 0.7}, r"range \[0.0, 0.5\]"),
        ("wide-mlp", {"seed": -1}, r"seed=-1 is not valid"),
        ("fusion", {"rule": "vote"}, r"rule='vote' is not valid"),
    ],
)
def test_parameters_are_checked_at_fit_with_the_valid_range(name, params, message, two_classes):
    X, y = two_classes
    head = create_head(name, **params)  # __init__ stores, as sklearn's contract says
    with pytest.raises(DataError, match=message):
        head.fit(X, y)
