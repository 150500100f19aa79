"""The paired score: in how many pairs does the fake score above its own real?

Paired data (a fake made from, or matched to, a real image; frames of one video) lets a
detector be judged where nothing but generation differs: same person, framing and
usually the same source. The manifest's ``pair`` column names, for each fake, its real
(the real's path) or a name its rows share; a real belongs to a pair when its path is
the pair's name or its own ``pair`` names it.

The score is the share of (fake, real) pairs of the same pair in which the fake scores
higher (ties count one half) - an AUC restricted to matched pairs. Its 95 % interval is
a percentile bootstrap over pairs (the pair names are resampled, so a real with several
fakes moves with them). A fake whose pair names no real among the rows evaluated is
listed and dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["PairedScore", "paired_score"]


@dataclasses.dataclass
class PairedScore:
    """Attributes: ``share`` of pairs ranked right (ties 1/2) and its ``ci``; ``n_pairs``
    (fake, real) comparisons over ``n_names`` pair names; ``n_ties``; ``missing``: pair
    names of fakes with no real among the rows (dropped), ``n_dropped`` fakes."""

    share: float | None
    ci: list[float] | None
    n_pairs: int
    n_names: int
    n_ties: int
    missing: list[str]
    n_dropped: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        if self.share is None:
            return f"no complete pair among the rows ({self.n_dropped} fakes without their real)"
        ci = f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]" if self.ci else ""
        text = (
            f"the fake scores above its own real in {self.share:.3f}{ci} of {self.n_pairs} "
            f"pairs ({self.n_names} pair names, {self.n_ties} ties)"
        )
        if self.missing:
            text += f"; {self.n_dropped} fakes name a real not among the rows: dropped"
        return text


def paired_score(
    y: Any, scores: Any, paths: Any, pairs: Any, *, n_boot: int = 1000, seed: int = 0
) -> PairedScore | None:
    """The paired score of ``scores`` (module docstring); None when no row has a pair.

    Which split chose what: nothing is tuned; the caller passes held-out rows.

    Args:
        y: ``(n,)`` labels 0/1.
        scores: ``(n,)`` scores, higher = AI.
        paths: ``(n,)`` stored paths.
        pairs: ``(n,)`` pair name per row (``""`` = none).
        n_boot: bootstrap resamples over pair names.
        seed: bootstrap seed.
    """
    y = np.asarray(y).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    paths = np.asarray(paths, dtype=str).ravel()
    pairs = np.asarray(pairs, dtype=str).ravel()
    if not (pairs != "").any():
        return None
    reals: dict[str, list[float]] = {}
    for i in np.flatnonzero(y == 0):
        for key in {paths[i], pairs[i]} - {""}:
            reals.setdefault(key, []).append(s[i])
    wins: dict[str, list[float]] = {}
    missing: set[str] = set()
    dropped = 0
    for i in np.flatnonzero((y == 1) & (pairs != "")):
        key = pairs[i]
        if key not in reals:
            missing.add(key)
            dropped += 1
            continue
        r = np.asarray(reals[key])
        wins.setdefault(key, []).extend(np.where(s[i] > r, 1.0, np.where(s[i] == r, 0.5, 0.0)))
    names = sorted(wins)
    if not names:
        return PairedScore(None, None, 0, 0, 0, sorted(missing), dropped)
    per = [np.asarray(wins[k]) for k in names]
    total = np.array([w.sum() for w in per])
    count = np.array([w.size for w in per], dtype=np.float64)
    share = float(total.sum() / count.sum())
    ci = None
    if n_boot:
        rng = np.random.default_rng(seed)
        draw = rng.integers(0, len(names), size=(n_boot, len(names)))
        boots = total[draw].sum(axis=1) / count[draw].sum(axis=1)
        ci = [float(v) for v in np.percentile(boots, [2.5, 97.5])]
    ties = int(sum(int((w == 0.5).sum()) for w in per))
    return PairedScore(share, ci, int(count.sum()), len(names), ties, sorted(missing), dropped)
