"""scikit-learn's own estimator checker on every head in the registry.

Each head must pass every check of ``parametrize_with_checks`` except those that train
on labels outside the project convention (1 = AI-generated, 0 = real, -1 = unknown):
heads never remap labels, because which of two arbitrary classes is "AI" cannot be
guessed. Those checks are listed below with the labels they use, run as strict
expected failures (they must fail), and ``test_convention_checks_fail_on_labels_only``
shows that they fail on the labels and nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from facebank.core.errors import DataError
from facebank.heads import create_head, list_heads

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

_CONVENTION = (
    "labels are 1 = AI, 0 = real, -1 = unknown and are never remapped; this check fits on "
)
LABEL_CONVENTION = {
    "check_estimators_dtypes": _CONVENTION + "labels {1, 2}",
    "check_classifier_data_not_an_array": _CONVENTION + "labels {1, 2}",
    "check_fit2d_1feature": _CONVENTION + "labels {1, 2}",
    "check_classifiers_classes": _CONVENTION + "string labels ('one', 'two', ...)",
}


def _head(name: str):
    return create_head(name, device="cpu", **FAST.get(name, {}))


def _expected_failures(estimator) -> dict[str, str]:
    return dict(LABEL_CONVENTION)


def test_every_registered_head_is_checked():
    assert set(FAST) == set(list_heads())


@parametrize_with_checks(
    [_head(name) for name in list_heads()],
    expected_failed_checks=_expected_failures,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["linear", "knn"])
def test_convention_checks_fail_on_labels_only(name, two_classes):
    """The same data the expected failures use trains once its labels follow the convention."""
    X, y = two_classes
    y_other = y + 1  # {1, 2}: what the checks give
    with pytest.raises(DataError, match=r"label\(s\) \[2\]; valid labels are 1 \(AI"):
        _head(name).fit(X, y_other)
    with pytest.raises(DataError, match="Unknown label type"):
        _head(name).fit(X, np.where(y_other == 1, "one", "two"))
    head = _head(name).fit(X, y_other - 1)  # {1, 2} -> {0, 1}
    assert head.predict(X).shape == (len(X),)
