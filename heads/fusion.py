"""Score-level fusion across backbones: one head per backbone, their scores combined.

The input is a joined bank's features (:func:`facebank.embed.runner.multi.join_banks`): each
backbone's columns side by side, given to the head as ``columns``. One member head (any
registered head) is fitted per backbone on the training rows; the rule combines their
decision scores (log-odds):

- ``mean``: the mean member logit (ClipBased's fusion rule);
- ``max``: the largest member logit;
- ``stack``: a logistic regression on the member logits (CO-SPY's stacker), fitted on
  **validation rows only** - ``fit(..., X_val=, y_val=)``, as ``facebank train`` passes
  the val split. Without them, a seeded, label-stratified quarter of the given rows is
  held out from the members to fit the stacker (the members never see those rows).

The threshold is set afterwards by ``calibrate`` on validation reals, as for every head.
A fusion head stores the joined spec of its training banks, so scoring banks of other
backbones (or another order) is refused by the usual backbone check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sklearn.utils._param_validation import StrOptions

from facebank.core.errors import DataError
from facebank.core.types import Device

from .base import SEED, BaseHead, check_features, check_labels
from .registry import create_head, head_params

__all__ = ["FusionHead", "RULES"]

RULES = ("mean", "max", "stack")


def _blocks(columns: Any, n_features: int) -> list[tuple[int, int]]:
    if columns is None:
        return [(0, n_features)]
    try:
        blocks = [(int(a), int(b)) for a, b in columns]
    except (TypeError, ValueError):
        raise DataError(
            f"columns={columns!r} is not valid; give one (start, stop) pair per backbone, "
            "e.g. JoinedBank.columns"
        ) from None
    ok = bool(blocks) and all(0 <= a < b <= n_features for a, b in blocks)
    if not ok or any(b1 > a2 for (_, b1), (a2, _) in zip(blocks, blocks[1:], strict=False)):
        raise DataError(
            f"columns={columns!r} do not split {n_features} features into ordered, "
            "non-overlapping (start, stop) blocks"
        )
    return blocks


class FusionHead(BaseHead):
    """One member head per backbone block of the features, scores fused by ``rule``.

    Parameters
    ----------
    rule : {"mean", "max", "stack"}, default="stack"
        How member logits are combined (see the module docstring).
    head : str, default="linear"
        The member head's registry name (any registered head but ``"fusion"``).
    head_params : dict or None, default=None
        Keyword parameters of every member head.
    columns : sequence of (start, stop) or None, default=None
        The columns of each backbone; ``None`` = one block.
    seed : int, default=0
        Seeds the members and the held-out quarter (when no val rows are given).
    device : str, default="auto"
        Passed to members that take a device.

    Attributes
    ----------
    columns_ : list of (int, int)
        The ``(start, stop)`` blocks used.
    members_ : list of BaseHead
        One fitted member head per block.
    stack_coef_ : ndarray of shape (n_blocks,)
        The stacker's weights on the member logits (``rule="stack"`` only).
    stack_intercept_ : float
        The stacker's intercept (``rule="stack"`` only).
    n_stack_rows_ : int
        Validation rows the stacker was fitted on (``rule="stack"`` only).
    n_features_in_ : int
        Number of features seen during ``fit``.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: 0 = real, 1 = AI-generated.
    n_train_ : int
        Training rows used (rows labelled -1 are left out).
    threshold_ : float
        Flag rows with ``decision_function(X) > threshold_``; 0.0 after ``fit``, set on
        validation reals by ``calibrate``.
    calibration_ : dict or None
        How ``threshold_`` was set (``fpr``, ``n_reals``, ``split``, ``n_above``); ``None``
        until ``calibrate``.
    score_calibration_ : dict or None
        The probability calibration ``heads.calibration.calibrate_head`` fitted on
        validation rows; ``None`` until then.

    Examples
    --------
    >>> import numpy as np
    >>> from facebank.heads.fusion import FusionHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 8)).astype(np.float32)  # two backbones of 4 columns
    >>> y = (X[:, 0] + X[:, 4] > 0).astype(int)  # 1 = AI-generated, 0 = real
    >>> head = FusionHead(rule="mean", columns=[(0, 4), (4, 8)], device="cpu").fit(X, y)
    >>> len(head.members_), head.columns_
    (2, [(0, 4), (4, 8)])
    >>> bool((head.predict(X) == y).mean() > 0.8)
    True
    """

    name = "fusion"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "rule": [StrOptions(set(RULES))],
        "head": [str],
        "head_params": [None, dict],
        "columns": [None, "array-like"],
        "seed": SEED,
        "device": [str],
    }

    def __init__(
        self,
        *,
        rule: str = "stack",
        head: str = "linear",
        head_params: dict[str, Any] | None = None,
        columns: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        device: Device = "auto",
    ) -> None:
        self.rule = rule
        self.head = head
        self.head_params = head_params
        self.columns = columns
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike | None,
        *,
        engines: npt.ArrayLike | None = None,
        X_val: npt.ArrayLike | None = None,
        y_val: npt.ArrayLike | None = None,
    ) -> FusionHead:
        """Fit the members on ``X, y`` and the ``stack`` rule on ``X_val, y_val``.

        Args:
            X: ``(n_samples, n_features)`` joined features (training rows).
            y: ``(n_samples,)`` labels 1 = AI, 0 = real, -1 = unknown (dropped).
            engines: Optional engine per row (passed to the members).
            X_val: ``(n_val, n_features)`` validation rows for the stacker.
            y_val: ``(n_val,)`` their labels (both classes needed).

        Returns:
            self.
        """
        if (X_val is None) != (y_val is None):
            raise DataError("give both X_val and y_val (validation rows and labels), or neither")
        self._val = None
        if X_val is not None:
            Xv = check_features(X_val, what="X_val", owner="FusionHead")
            yv, keep = check_labels(y_val, Xv.shape[0], owner="FusionHead")
            self._val = (Xv[keep], yv)
        try:
            return super().fit(X, y, engines=engines)  # type: ignore[return-value]
        finally:
            del self._val

    def _member_params(self) -> dict[str, Any]:
        params = dict(self.head_params or {})
        valid = head_params(self.head)
        for key, value in (("seed", self.seed), ("device", self.device)):
            if key in valid:
                params.setdefault(key, value)
        return params

    def _fit(self, X: np.ndarray, y: np.ndarray, engines: np.ndarray | None) -> None:
        if self.rule not in RULES:
            raise DataError(f"rule={self.rule!r} is not valid; valid rules: {', '.join(RULES)}")
        if self.head == self.name:
            raise DataError("a fusion head cannot have fusion members; give head='linear' etc.")
        self.columns_ = _blocks(self.columns, X.shape[1])
        fit_rows = np.arange(X.shape[0])
        val = self._val
        if self.rule == "stack" and val is None:
            fit_rows, held = self._hold_out(y)
            val = (X[held], y[held])
        if self.rule == "stack" and len(np.unique(val[1])) < 2:
            raise DataError(
                "the stack rule fits on validation rows of both classes (real and AI); the "
                "validation rows given hold one class only"
            )
        self.members_ = []
        for a, b in self.columns_:
            member = create_head(self.head, **self._member_params())
            member.fit(
                X[fit_rows, a:b],
                y[fit_rows],
                engines=None if engines is None else engines[fit_rows],
            )
            self.members_.append(member)
        if self.rule == "stack":
            from sklearn.linear_model import LogisticRegression

            S = self._member_scores(val[0])
            lr = LogisticRegression(C=1.0, max_iter=1000).fit(S, val[1])
            self.stack_coef_ = lr.coef_[0].astype(np.float64)
            self.stack_intercept_ = float(lr.intercept_[0])
            self.n_stack_rows_ = int(len(val[1]))

    def _hold_out(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A seeded quarter of each class held out for the stacker (at least one each)."""
        rng = np.random.default_rng(self.seed)
        held = []
        for cls in (0, 1):
            idx = np.flatnonzero(y == cls)
            if idx.size < 2:
                raise DataError(
                    "the stack rule needs validation rows: pass X_val, y_val, or at least two "
                    "training rows of each class to hold a quarter out"
                )
            k = max(1, idx.size // 4)
            held.append(rng.choice(idx, size=k, replace=False))
        held_rows = np.sort(np.concatenate(held))
        return np.setdiff1d(np.arange(y.size), held_rows), held_rows

    # ---------------------------------------------------------------- inference
    def _member_scores(self, X: np.ndarray) -> np.ndarray:
        """``(n_samples, n_members)`` member log-odds."""
        return np.stack(
            [
                m.decision_function(X[:, a:b])
                for m, (a, b) in zip(self.members_, self.columns_, strict=True)
            ],
            axis=1,
        )

    def member_scores(self, X: npt.ArrayLike) -> np.ndarray:
        """``(n_samples, n_members)`` each backbone's member score (higher = AI)."""
        return self._member_scores(self._check_X(X))

    def _decision(self, X: np.ndarray) -> np.ndarray:
        S = self._member_scores(X)
        if self.rule == "mean":
            return S.mean(axis=1)
        if self.rule == "max":
            return S.max(axis=1)
        # a row-wise sum, not a matrix-vector product: BLAS sums in an order that
        # depends on the number of rows, and a score must not depend on its batch
        return (S * self.stack_coef_).sum(axis=1) + self.stack_intercept_

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors: dict[str, np.ndarray] = {}
        members = []
        for i, m in enumerate(self.members_):
            t, meta = m._get_state()
            tensors.update({f"member{i}.{k}": np.asarray(v) for k, v in t.items()})
            members.append(
                {
                    "name": m.name,
                    "params": m.get_params(deep=False),
                    "n_features_in": m.n_features_in_,
                    "threshold": m.threshold_,
                    "state": meta,
                }
            )
        meta_all: dict[str, Any] = {"columns": [list(c) for c in self.columns_], "members": members}
        if self.rule == "stack":
            tensors["stack.coef"] = self.stack_coef_
            tensors["stack.intercept"] = np.array([self.stack_intercept_])
            meta_all["n_stack_rows"] = self.n_stack_rows_
        return tensors, meta_all

    def _set_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.columns_ = [tuple(int(v) for v in c) for c in meta["columns"]]
        self.members_ = []
        for i, info in enumerate(meta["members"]):
            params = {k: tuple(v) if isinstance(v, list) else v for k, v in info["params"].items()}
            m = create_head(info["name"], **params)
            m.n_features_in_ = int(info["n_features_in"])
            m.classes_ = np.array([0, 1])
            prefix = f"member{i}."
            m._set_state(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
                info.get("state") or {},
            )
            m.threshold_ = float(info["threshold"])
            self.members_.append(m)
        if "stack.coef" in tensors:
            self.stack_coef_ = np.asarray(tensors["stack.coef"], dtype=np.float64)
            self.stack_intercept_ = float(np.asarray(tensors["stack.intercept"])[0])
            self.n_stack_rows_ = int(meta.get("n_stack_rows", 0))
