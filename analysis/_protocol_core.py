"""The one loop every protocol runs: train on some rows, threshold on validation reals, test.

``in_engine``, ``leave_one_engine_out``, ``few_shot`` and ``chronological`` differ only in
*which* rows they train on and *which* rows they test on; this module holds what they
share, so that the rule "thresholds from validation reals only, rates on rows no fit saw"
is written once:

- ``load_protocol_data``: the banks' features, labels, engines and splits in memory
  (read once per protocol, however many fits follow), with the split masks, the
  validation reals and the test reals gathered once.
- ``train_and_test``: fit a head on given rows, set its threshold on the validation
  reals at ``fpr``, score the test reals; the returned ``Trained`` rates any target rows
  at that frozen threshold (TPR, hits, n, exact binomial interval).

A fit may start from a related fitted head (``warm_from``): heads with scikit-learn's
``warm_start`` parameter (``linear``) then continue from its solution to the same
tolerance instead of starting cold; other heads ignore it and fit from scratch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from facebank.core.errors import DataError
from facebank.core.splits import assign_splits, has_splits

from ._evalcommon import bank_label, open_banks, require_one_backbone
from .metrics import proportion_interval

__all__ = [
    "ProtocolData",
    "Rate",
    "Trained",
    "fit_head",
    "load_protocol_data",
    "rate_of",
    "train_and_test",
]


@dataclasses.dataclass
class ProtocolData:
    """A protocol's rows in memory (labels 0/1 only; unknown rows are dropped).

    Attributes:
        X: (n_rows, n_features) float32 features; y: (n_rows,) labels; engines, splits:
            (n_rows,) names.
        split_source: where ``splits`` came from (the banks' column or ``assign_splits``).
        banks, views, backbone: provenance for the run folder.
    """

    X: np.ndarray
    y: np.ndarray
    engines: np.ndarray
    splits: np.ndarray
    split_source: str
    banks: list[str]
    views: list[str]
    backbone: dict

    @functools.cached_property
    def train(self) -> np.ndarray:
        """(n_rows,) bool: the train split."""
        return self.splits == "train"

    @functools.cached_property
    def test(self) -> np.ndarray:
        """(n_rows,) bool: the test split."""
        return self.splits == "test"

    @functools.cached_property
    def val_real(self) -> np.ndarray:
        """(n_rows,) bool: validation reals, the only rows a threshold is set on."""
        return (self.splits == "val") & (self.y == 0)

    @functools.cached_property
    def test_real(self) -> np.ndarray:
        """(n_rows,) bool: test reals, where every protocol measures its FPR."""
        return self.test & (self.y == 0)

    @functools.cached_property
    def X_val_real(self) -> np.ndarray:
        """(n_val_reals, n_features), gathered once for every fit's threshold."""
        return self.X[self.val_real]

    @functools.cached_property
    def X_test_real(self) -> np.ndarray:
        """(n_test_reals, n_features), gathered once for every fit's FPR."""
        return self.X[self.test_real]

    def rows(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, engines)`` of the rows in ``mask``, for ``train_and_test(d, *d.rows(m))``."""
        return self.X[mask], self.y[mask], self.engines[mask]

    @functools.cached_property
    def ai_engines(self) -> list[str]:
        """Sorted names of the AI engines (label 1)."""
        return sorted(set(self.engines[self.y == 1].tolist()))

    def held_engines(self, engines: Sequence[str] | None, *, protocol: str) -> list[str]:
        """The engines to hold out: ``engines`` (checked) or every AI engine (>= 2 needed)."""
        ai = self.ai_engines
        if len(ai) < 2:
            raise DataError(
                f"{protocol} needs at least 2 AI engines, the banks have {ai}; add banks of "
                "more engines"
            )
        held = list(engines) if engines else ai
        unknown = sorted(set(held) - set(ai))
        if unknown:
            raise DataError(f"engines {unknown} are not AI engines of these banks; valid: {ai}")
        return held

    def require_test_reals(self, what: str) -> None:
        """Raise ``DataError`` when the test split holds no reals (``what`` is undefined)."""
        if not self.test_real.any():
            raise DataError(
                f"no real images in the test split: {what} is undefined; add test reals"
            )


def protocol_config(res: Any, d: ProtocolData, **fields: Any) -> dict[str, Any]:
    """A protocol run's ``config.json``: the banks, views, head, its parameters, seed and
    FPR, the splits' source and which split chose the threshold (validation reals) and
    which one is tested; ``fields`` add to it or override the defaults."""
    return {
        "banks": d.banks,
        "views": d.views,
        "head": res.head,
        "params": res.params,
        "seed": res.seed,
        "fpr": res.fpr,
        "splits": d.split_source,
        "threshold_split": "val (reals only)",
        "test_split": "test",
        **fields,
    }


def load_protocol_data(banks: Any, seed: int) -> ProtocolData:
    """Read banks of one backbone and one view into memory, with their splits.

    Splits: the banks' own ``split`` column when it has one, else ``assign_splits``
    (per-engine stratified, seeded by ``seed``, by sha256).

    Raises:
        DataError: banks of more than one view; BackboneMismatchError: of more than one
            backbone.
    """
    banks = open_banks(banks)
    backbone = require_one_backbone(banks)
    views = sorted({b.view for b in banks})
    if len(views) > 1:
        raise DataError(
            f"protocol banks have different views {views}; a protocol trains and tests on one view "
            "- pass banks of one view (use `facebank robustness` to compare views)"
        )
    X = np.concatenate([b.load_features() for b in banks]).astype(np.float32, copy=False)
    y = np.concatenate([np.asarray(b.labels, dtype=np.int64) for b in banks])
    engines = np.concatenate([np.asarray(b.engines, dtype=str) for b in banks])
    sha = np.concatenate([np.asarray(b.sha256, dtype=str) for b in banks])
    given = np.concatenate([np.asarray(b.splits, dtype=str) for b in banks])
    if has_splits(given):
        splits, source = given, "the banks' split column"
    else:
        splits, source = (
            assign_splits(engines, sha, seed=seed),
            f"assign_splits(seed={seed}), stratified by engine",
        )
    keep = y != -1
    return ProtocolData(
        X[keep],
        y[keep],
        engines[keep],
        splits[keep],
        source,
        [bank_label(b) for b in banks],
        views,
        backbone,
    )


@dataclasses.dataclass(frozen=True)
class Rate:
    """The share of target rows scoring above a frozen threshold.

    Attributes:
        rate: hits / n (NaN when n = 0); hits, n: counts; ci: Clopper-Pearson 95%.
    """

    rate: float
    hits: int
    n: int
    ci: tuple[float, float]


def _scores(est: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(est.decision_function(X), dtype=np.float64) if len(X) else np.zeros(0)


def rate_of(scores: np.ndarray, threshold: float) -> Rate:
    """The ``Rate`` of (n,) ``scores`` above ``threshold``."""
    hits = int((scores > threshold).sum())
    n = int(scores.size)
    return Rate(hits / n if n else float("nan"), hits, n, proportion_interval(hits, n))


@dataclasses.dataclass(frozen=True)
class Trained:
    """A head fitted on a protocol's training rows, thresholded on validation reals.

    Attributes:
        estimator: the fitted head; threshold: its frozen threshold.
        test_real_scores: (n_test_reals,) scores of the test reals.
        fpr_test_reals: the share of test reals above the threshold.
    """

    estimator: Any
    threshold: float
    test_real_scores: np.ndarray
    fpr_test_reals: float

    @property
    def n_test_reals(self) -> int:
        return int(self.test_real_scores.size)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(n,) float64 scores of rows ``X``."""
        return _scores(self.estimator, X)

    def rate(self, X: np.ndarray) -> Rate:
        """The share of rows ``X`` (n, n_features) flagged at the frozen threshold."""
        return rate_of(self.scores(X), self.threshold)


def fit_head(
    head: str,
    params: Mapping[str, Any] | None,
    X: np.ndarray,
    y: np.ndarray,
    engines: np.ndarray,
    X_val_real: np.ndarray,
    fpr: float,
    *,
    warm_from: Any | None = None,
) -> Any:
    """Fit ``head`` on ``(X, y)`` and threshold it on ``X_val_real`` at ``fpr``.

    ``warm_from``: a fitted head of the same kind to start from when the head has a
    ``warm_start`` parameter (the copy is fitted; ``warm_from`` is left alone).

    Raises:
        DataError: a class missing from the training rows, no validation reals.
    """
    from facebank.heads import create_head

    if (y == 0).sum() == 0 or (y == 1).sum() == 0:
        raise DataError(
            f"the training rows hold {(y == 0).sum()} reals and {(y == 1).sum()} AI images; "
            "a head needs both - the protocol needs reals and at least two AI engines in the train "
            "split"
        )
    if len(X_val_real) == 0:
        raise DataError(
            "no real images in the validation split: the threshold at a fixed FPR cannot be set; "
            "add val reals"
        )
    est = create_head(head, **dict(params or {}))
    if warm_from is not None and "warm_start" in est.get_params():
        est = copy.deepcopy(warm_from)
        est.set_params(**{**dict(params or {}), "warm_start": True})
    est.fit(X, y, engines=engines)
    est.calibrate(X_val_real, fpr=fpr)
    return est


def train_and_test(
    d: ProtocolData,
    X: np.ndarray,
    y: np.ndarray,
    engines: np.ndarray,
    *,
    head: str,
    params: Mapping[str, Any] | None,
    fpr: float,
    warm_from: Any | None = None,
) -> Trained:
    """Fit on ``(X, y, engines)``, threshold on ``d``'s validation reals, score its test reals.

    Which split chose what: the head's params are used as given; the threshold is set on
    the **validation reals** at ``fpr``; the FPR is measured on the **test reals**. The
    caller picks training rows that hold no test row and rates its target rows with
    ``Trained.rate``.
    """
    est = fit_head(head, params, X, y, engines, d.X_val_real, fpr, warm_from=warm_from)
    s_real = _scores(est, d.X_test_real)
    thr = float(est.threshold_)
    return Trained(est, thr, s_real, float((s_real > thr).mean()) if s_real.size else float("nan"))
