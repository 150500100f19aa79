"""The shared base of every head: input checks, thresholds, device and seed handling.

Conventions (docs/design.md "Labels and conventions"): label 1 = AI-generated, 0 = real,
-1 = unknown; ``decision_function`` is "higher = more likely AI-generated" for every
head. Rows labelled -1 are dropped from training with an ``UnknownLabelWarning`` (they carry no
supervision); any other label outside {0, 1} is a ``DataError``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.utils import Tags
from sklearn.utils._param_validation import Interval, make_constraint

from facebank.core.devices import resolve_device
from facebank.core.errors import (
    DataError,
    FeatureTypeError,
    HeadError,
    SmallSampleWarning,
    UnknownLabelWarning,
)
from facebank.core.types import PathLike

__all__ = [
    "BaseHead",
    "resolve_device",
    "check_features",
    "check_labels",
    "threshold_at_fpr",
    "allowed_false_positives",
]

#: The constraint of every head's ``seed``: a non-negative int (torch and numpy seeds).
SEED: list[Any] = [Interval(Integral, 0, None, closed="left")]
#: Ranges most heads' tables use.
POSITIVE = Interval(Real, 0, None, closed="neither")
NON_NEGATIVE = Interval(Real, 0, None, closed="left")
AT_LEAST_ONE = Interval(Integral, 1, None, closed="left")


def check_features(
    X: npt.ArrayLike, *, n_features: int | None = None, what: str = "X", owner: str = "the head"
) -> np.ndarray:
    """Validate a feature matrix and return it as C-contiguous float32 ``(n_samples, n_features)``.

    Numeric ``object`` arrays are converted, as scikit-learn does; sparse matrices, complex
    numbers and non-numeric entries are refused.

    Args:
        X: (n_samples, n_features) features.
        n_features: the width the head was fitted on (``None`` while fitting).
        what: the argument's name in messages.
        owner: the estimator's class name in messages.

    Raises:
        DataError: sparse, non-numeric, complex, not 2-D, empty, non-finite values, or a
            width other than ``n_features``.
    """
    if sp.issparse(X):
        raise DataError(
            f"{what} is a sparse {type(X).__name__}; sparse input is not supported by heads "
            f"- pass dense features ({what}.toarray())"
        )
    try:
        X = np.asarray(X)
        if X.dtype.kind == "O":  # numbers held as Python objects, e.g. from a DataFrame
            X = X.astype(np.float64)
    except (TypeError, ValueError) as exc:  # ragged lists, strings, dicts...
        raise FeatureTypeError(
            f"{what} cannot be read as a 2-D numeric array ({exc}); pass numeric features "
            "(a float32 array of shape (n_samples, n_features))"
        ) from None
    if X.dtype.kind == "c":
        raise DataError(
            f"{what} has dtype {X.dtype}: Complex data not supported - pass real-valued "
            "features (a float32 array of shape (n_samples, n_features))"
        )
    if X.dtype.kind not in "fiub":
        raise DataError(
            f"{what} has dtype {X.dtype}; pass numeric features "
            "(a float32 array of shape (n_samples, n_features))"
        )
    if X.ndim != 2:
        raise DataError(
            f"{what} has shape {X.shape}; heads take a 2-D array (n_samples, n_features). "
            "Reshape your data: a single row is X.reshape(1, -1)"
        )
    if X.shape[0] == 0:
        raise DataError(
            f"{what} is empty: 0 sample(s) (shape={X.shape}) while a minimum of 1 is required; "
            "give at least one row"
        )
    if X.shape[1] == 0:
        raise DataError(
            f"{what} is empty: 0 feature(s) (shape={X.shape}) while a minimum of 1 is required; "
            "give at least one feature per row"
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise DataError(
            f"{what} has {bad} row(s) with NaN or inf features; drop or re-embed those rows "
            "(e.g. X[np.isfinite(X).all(axis=1)])"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise DataError(
            f"{what} has {X.shape[1]} features, but {owner} is expecting {n_features} features "
            "as input; score features from the backbone the head was trained with"
        )
    return X


_VALID_LABELS = "1 (AI-generated), 0 (real) or -1 (unknown)"


def check_labels(
    y: npt.ArrayLike | None, n_rows: int, *, owner: str = "the head"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels; return ``(y_int64 of the kept rows, boolean mask of kept rows)``.

    Labels follow the project convention - 1 = AI-generated, 0 = real, -1 = unknown - and
    are never remapped (which of two arbitrary classes is "AI" cannot be guessed). Rows
    labelled -1 are dropped with an ``UnknownLabelWarning``; at least one row of each class
    must remain. A column vector ``(n, 1)`` is ravelled with sklearn's
    ``DataConversionWarning``.
    """
    if y is None:
        raise DataError(
            f"{owner} requires y to be passed, but the target y is None; give one label per "
            f"row: {_VALID_LABELS}"
        )
    return _check_label_array(np.asarray(y), n_rows)


def _check_label_array(y: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; ravelled to shape "
            f"({y.shape[0]},)",
            DataConversionWarning,
            stacklevel=4,
        )
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise DataError(f"y has shape {y.shape} but X has {n_rows} rows; pass one label per row")
    if y.dtype.kind == "O":
        with contextlib.suppress(TypeError, ValueError):
            y = y.astype(np.float64)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"y contains NaN/inf; labels must be {_VALID_LABELS}")
    if y.dtype.kind == "f" and np.any(y != np.round(y)):
        raise DataError(
            f"y holds continuous values like {y[:3].tolist()!r}; labels must be integers "
            f"{_VALID_LABELS} - threshold scores into classes before training"
        )
    if y.dtype.kind not in "iubf":
        raise DataError(
            f"y has values like {y[:3].tolist()!r} (Unknown label type: {y.dtype}); labels "
            f"must be integers {_VALID_LABELS}"
        )
    y = y.astype(np.int64)
    classes = np.unique(y)
    bad = np.setdiff1d(classes, [-1, 0, 1])
    if bad.size:
        many = np.setdiff1d(classes, [-1]).size > 2
        raise DataError(
            f"y contains label(s) {bad.tolist()}; valid labels are {_VALID_LABELS} - map your "
            "classes onto these" + (" (Only binary classification is supported.)" if many else "")
        )
    keep = y != -1
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} row(s) labelled -1 (unknown) were left out of training",
            UnknownLabelWarning,
            stacklevel=4,
        )
    y = y[keep]
    present = set(np.unique(y).tolist())
    if present != {0, 1}:
        have = ", ".join(f"{c} ({'AI' if c else 'real'})" for c in sorted(present)) or "none"
        raise DataError(
            "training needs both classes 0 (real) and 1 (AI-generated); got one class only: "
            f"{have} - add rows of the missing class (e.g. concatenate a bank of reals)"
        )
    return y, keep


def allowed_false_positives(fpr: float, n_real: int) -> int:
    """How many of ``n_real`` reals may score above a threshold at ``fpr``: ``floor(fpr * n)``."""
    return int(math.floor(fpr * n_real + 1e-9))  # 1e-9: 0.005 * 200 is 0.99999... in binary


def threshold_at_fpr(real_scores: npt.ArrayLike, fpr: float) -> float:
    """The threshold ``t`` such that at most ``floor(fpr * n)`` real scores are ``> t``.

    Rule (exact, no interpolation): sort the ``n`` real scores in descending order and let
    ``k = floor(fpr * n)``. ``t`` is the ``(k+1)``-th largest score, so exactly the ``k``
    highest reals lie strictly above it (fewer when there are ties at ``t``: ties never
    push the false-positive rate above ``fpr``). With 200 reals and ``fpr=0.005``,
    ``k = 1``: the threshold is the second-highest real score and one real is above it.
    With fewer than ``1/fpr`` reals, ``k = 0`` and the threshold is the highest real score.
    This is the one implementation: heads calibrate with it and analysis re-exports it.

    Args:
        real_scores: (n_real,) scores of real images - a **validation** split when the
            threshold is to be used on test data.
        fpr: target false-positive rate in [0, 1).

    Returns:
        The threshold as a float; flag images with ``score > threshold``.
    """
    s = np.asarray(real_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise DataError(
            "no real scores given: a threshold at a fixed FPR needs real images (label 0)"
        )
    if not np.isfinite(s).all():
        raise DataError("real scores contain NaN or infinite values; check the head's output")
    if not 0.0 <= fpr < 1.0:
        raise DataError(f"fpr must be in [0, 1), got {fpr!r}; e.g. 0.005 for 0.5%")
    k = allowed_false_positives(fpr, s.size)
    # (k+1)-th largest = element n-1-k of the ascending order
    return float(np.partition(s, s.size - 1 - k)[s.size - 1 - k])


class BaseHead(ClassifierMixin, BaseEstimator):
    """Base class: sklearn estimator contract plus calibration and persistence hooks.

    Subclasses implement ``_fit(X, y, engines)`` and ``_decision(X) -> (n,)`` and the
    persistence pair ``_get_state() -> (tensors, meta)`` / ``_set_state(tensors, meta)``,
    and declare their parameters' valid values in ``_parameter_constraints``
    (scikit-learn's table: ``{"C": [Interval(Real, 0, None, closed="neither")]}``),
    checked at the start of ``fit``; parameters not in the table are not checked.

    Attributes
    ----------
    name : str
        The registry name (``create_head(name)``); saved heads are rebuilt from it.
    n_features_in_ : int
        Number of features seen during ``fit``.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: 0 = real, 1 = AI-generated.
    n_train_ : int
        Training rows used (rows labelled -1 are left out).
    threshold_ : float
        Flag rows with ``decision_function(X) > threshold_``; set by ``calibrate``.
    calibration_ : dict or None
        How ``threshold_`` was set (``fpr``, ``n_reals``, ``split``, ``n_above``).
    score_calibration_ : dict or None
        The probability calibration fitted on validation rows, if any.
    backbone_, bank_digest_, metrics_, path_
        Set by ``save_head`` / ``load_head``: the training bank's backbone spec and
        digest, the run's metrics, and the folder it was loaded from.
    """

    name: str = ""
    #: Valid values of each constructor parameter (sklearn's ``_parameter_constraints``).
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}
    #: Heads whose decision_function is a log-odds; predict_proba = sigmoid(decision).
    _default_threshold: float = 0.0

    # ------------------------------------------------------------------ fitting
    def fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike | None, *, engines: npt.ArrayLike | None = None
    ) -> BaseHead:
        """Fit the head.

        Args:
            X: (n_samples, n_features) features (float16/float32).
            y: (n_samples,) labels: 1 = AI-generated, 0 = real, -1 = unknown (dropped, warned).
            engines: optional (n_samples,) engine names; stored counts only.

        Returns:
            self, fitted; ``threshold_`` is the head's natural threshold until ``calibrate``.

        Raises:
            DataError: a parameter outside its valid range (the range is named), or
                features or labels that cannot be used.
        """
        self._check_params()
        Xc = check_features(X, owner=type(self).__name__)
        yc, keep = check_labels(y, Xc.shape[0], owner=type(self).__name__)
        if not keep.all():  # a boolean index copies X even when it keeps every row
            Xc = Xc[keep]
        eng = None
        if engines is not None:
            eng = np.asarray(engines, dtype=str)
            if eng.shape[0] != keep.shape[0]:
                raise DataError(
                    f"engines has {eng.shape[0]} entries but X has {keep.shape[0]} rows"
                )
            eng = eng[keep]
        self.n_features_in_ = int(Xc.shape[1])
        self.classes_ = np.array([0, 1])
        with self._seeded():
            self._fit(Xc, yc, eng)
        self.threshold_ = float(self._default_threshold)
        self.calibration_: dict[str, Any] | None = None
        self.score_calibration_ = None  # heads.calibration.calibrate_head, on val rows
        self.n_train_ = int(Xc.shape[0])
        return self

    def _check_params(self) -> None:
        """Refuse a parameter outside ``_parameter_constraints`` (what is valid is named)."""
        params = self.get_params(deep=False)
        for key, allowed in self._parameter_constraints.items():
            if key not in params:
                continue
            constraints = [make_constraint(c) for c in allowed]
            value = params[key]
            if any(c.is_satisfied_by(value) for c in constraints):
                continue
            valid = " or ".join(str(c) for c in constraints if not getattr(c, "hidden", False))
            raise DataError(
                f"{key}={value!r} is not valid for {type(self).__name__}: {key} must be {valid}"
                f" (`facebank heads {self.name}` lists the parameters)"
            )

    def _fit(self, X: np.ndarray, y: np.ndarray, engines: np.ndarray | None) -> None:
        raise NotImplementedError

    def _decision(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        """Seed torch with the head's ``seed`` (0 without one) for the fit, restoring the
        caller's torch RNG state afterwards; numpy randomness in heads comes from their own
        ``np.random.default_rng(seed)``, never the global state."""
        import torch

        seed = int(getattr(self, "seed", 0) or 0)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # ---------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(
                f"This {type(self).__name__} ({self.name!r} head) is not fitted yet; "
                "call fit(X, y) before using it (or load_head(path))"
            )

    def _check_X(self, X: npt.ArrayLike) -> np.ndarray:
        self._check_fitted()
        return check_features(X, n_features=self.n_features_in_, owner=type(self).__name__)

    def decision_function(self, X: npt.ArrayLike) -> np.ndarray:
        """Score rows.

        Args:
            X: (n_samples, n_features).

        Returns:
            (n_samples,) float64 scores; higher = more likely AI-generated (a log-odds for
            every head, so 0 is the uncalibrated decision boundary).
        """
        X = self._check_X(X)
        return np.asarray(self._decision(X), dtype=np.float64).reshape(-1)

    def predict_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """(n_samples, 2) probabilities ``[P(real), P(AI)]`` from the log-odds (uncalibrated)."""
        d = self.decision_function(X)
        p = 1.0 / (1.0 + np.exp(-np.clip(d, -500, 500)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """(n_samples,) int labels: 1 where ``decision_function(X) > threshold_``, else 0."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    # -------------------------------------------------------------- calibration
    def calibrate(self, X_val_real: npt.ArrayLike, *, fpr: float = 0.005) -> BaseHead:
        """Set ``threshold_`` so that a fraction ``fpr`` of validation reals score above it.

        The rule is :func:`threshold_at_fpr`: with ``n`` reals, exactly ``floor(fpr * n)``
        of them score strictly above the threshold (fewer with ties). Use reals of the
        **validation** split, never the test split.

        Args:
            X_val_real: (n_reals, n_features) features of real validation images.
            fpr: target false-positive rate on reals, in [0, 1).

        Returns:
            self, with ``threshold_`` and ``calibration_`` = {fpr, n_reals, split: "val",
            n_above}.
        """
        if not (0.0 <= float(fpr) < 1.0):
            raise DataError(f"fpr={fpr!r} must be in [0, 1); e.g. 0.005 for 0.5%")
        X = self._check_X(X_val_real)
        scores = self.decision_function(X)
        t = threshold_at_fpr(scores, float(fpr))
        self.threshold_ = t
        n_above = int((scores > t).sum())
        if len(scores) < 1 / max(fpr, 1e-12):
            warnings.warn(
                f"calibrating at fpr={fpr} with only {len(scores)} reals: the threshold is the "
                "highest real score (0 reals above it); use more validation reals",
                SmallSampleWarning,
                stacklevel=2,
            )
        self.calibration_ = {
            "fpr": float(fpr),
            "n_reals": int(len(scores)),
            "split": "val",
            "n_above": n_above,
        }
        return self

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Learned arrays (saved to safetensors) and JSON-able learned scalars."""
        raise NotImplementedError

    def _set_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def save(
        self,
        path: PathLike,
        *,
        backbone: dict | None = None,
        bank_digest: str | None = None,
        metrics: dict | None = None,
    ) -> Path:
        """Write ``head.json`` + ``weights.safetensors`` into folder ``path`` (see persistence)."""
        from .persistence import save_head

        return save_head(self, path, backbone=backbone, bank_digest=bank_digest, metrics=metrics)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # labels are 1 = AI, 0 = real (-1 dropped)
        return tags

    def _device(self) -> str:
        dev = resolve_device(getattr(self, "device", "auto"))
        if dev.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise HeadError(
                    f"device={dev!r} but no CUDA GPU is visible; use device='auto' or 'cpu'"
                )
        return dev
