"""The audit's fixed numbers, its verdict rule, and how its figures are printed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

VERDICTS = ("confounded", "partly confounded", "no metadata shortcut found")
# 0.90 is where a reviewer would call a detector "nearly perfect"; a lower bound of 0.60
# keeps a handful of test rows from crying wolf.
CONFOUNDED_AUC = 0.90
CONFOUNDED_LO = 0.80
PARTLY_LO = 0.60
CARRIER_AUC = 0.70
CARRIER_LO = 0.60
#: cross-validated metadata probability inside which "the files cannot tell"
BAND = (0.05, 0.95)
# An AUC on fewer rows of either class is noise with an interval wider than its meaning.
MIN_ROWS_PER_CLASS = 5
CV_FOLDS = 5
# Above this many labelled rows, 3 folds for the propensity of the split audit: each model
# still sees hundreds of thousands of rows, and two fewer fits keep 1M rows within seconds.
CV_FOLDS_LARGE_FROM = 100_000
# `cv="auto"` cross-fits when the test split has fewer uncertain rows than this: below
# ~30 rows an AUC's 95 % interval is wider than +-0.15.
AUTO_CV_BELOW = 30
N_BOOT = 500

RULE_MD = (
    f"- `confounded`: metadata-only test AUC >= {CONFOUNDED_AUC} and its 95% lower bound "
    f">= {CONFOUNDED_LO}.\n"
    f"- `partly confounded`: otherwise, when the lower bound is > {PARTLY_LO}.\n"
    "- `no metadata shortcut found`: otherwise (only the recorded properties were tried).\n"
    f"- carrier: a property whose AUC alone is >= {CARRIER_AUC} with lower bound > {CARRIER_LO}.\n"
    "- balanced AUCs (docs/confounds.md): propensity-stratified (5 quantile strata of the "
    "metadata probability, within-stratum pairs pooled; strata with fewer than 2 rows of a "
    "class dropped and counted) and overlap-weighted (reals weigh e, AI rows 1 - e).\n"
)


def fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def fmt_ci(v: Any, ci: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if not ci or ci[0] is None or any(isinstance(c, float) and math.isnan(c) for c in ci):
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def both(y: Any) -> bool:
    return bool((y == 0).any() and (y == 1).any())


def audit_verdict(
    metadata_auc: float | None,
    metadata_auc_ci: Sequence[float] | None,
    properties: Sequence[Mapping[str, Any]],
) -> tuple[str, list[str]]:
    """``(verdict, carriers)`` by the rule of the module docstring.

    Args:
        metadata_auc: the metadata-only baseline's test AUC (None: not measurable).
        metadata_auc_ci: its 95 % interval.
        properties: dicts with ``name``, ``constant``, ``auc_alone``, ``auc_ci``.
    """
    if metadata_auc is None or not math.isfinite(metadata_auc):
        return "no metadata shortcut found", []
    lo = metadata_auc_ci[0] if metadata_auc_ci else metadata_auc
    lo = metadata_auc if lo is None or not math.isfinite(lo) else lo
    if metadata_auc >= CONFOUNDED_AUC and lo >= CONFOUNDED_LO:
        verdict = "confounded"
    elif lo > PARTLY_LO:
        verdict = "partly confounded"
    else:
        return "no metadata shortcut found", []
    ranked = sorted(
        (p for p in properties if not p["constant"] and p.get("auc_alone") is not None),
        key=lambda p: -p["auc_alone"],
    )
    carriers = [
        p["name"]
        for p in ranked
        if p["auc_alone"] >= CARRIER_AUC and (p.get("auc_ci") or (0, 0))[0] > CARRIER_LO
    ]
    return verdict, carriers or [p["name"] for p in ranked[:3]]
