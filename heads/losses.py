"""Losses of the ``mlp`` head (arXiv 2505.02182), in facebank's label convention.

Every function takes ``logits`` (n,) = the AI-generated log-odds ``h(x)`` and ``y`` (n,)
in {0 = real, 1 = AI-generated}. 2505.02182 labels **0 = fake, 1 = real** and writes its
VS loss with a real-vs-fake logit; the conversion happens once, here, at the boundary:
with signed labels ``s = +1`` (AI) / ``-1`` (real), ``s * h`` is the same margin in
both conventions, and the paper's class-0 (fake) constants belong to our class 1 (AI).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "PAPER_VS",
    "bce_loss",
    "vs_loss",
    "vs_class_weights",
    "cvar",
    "cvar_lambda",
    "auc_loss",
    "paper_loss",
]

# 2505.02182 Sec. III-D: zeta_{fake} = 1.2, zeta_{real} = 0.8, Delta_{fake} = 0.05,
# Delta_{real} = -0.05 (paper label 0 = fake). Keyed here by *our* labels: 0 real, 1 AI.
PAPER_VS = {"zeta": (0.8, 1.2), "delta": (-0.05, 0.05)}


def _signed(y: torch.Tensor) -> torch.Tensor:
    return y.to(torch.float32) * 2.0 - 1.0


def bce_loss(logits: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy ``log(1 + exp(-s * h))``; ``reduction="none"`` gives (n,)."""
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction=reduction)


def vs_class_weights(y: torch.Tensor) -> tuple[float, float]:
    """Class weights from the class ratio: ``omega_c = n / (2 n_c)`` for c in (real, AI).

    1.0 for balanced data; the rarer class weighs more (sklearn's ``"balanced"`` rule).
    A class absent from ``y`` gets weight 1.
    """
    n = y.numel()
    n1 = int(y.sum().item())
    counts = (n - n1, n1)
    return tuple(n / (2.0 * c) if c else 1.0 for c in counts)  # type: ignore[return-value]


def vs_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    zeta: tuple[float, float] = PAPER_VS["zeta"],
    delta: tuple[float, float] = PAPER_VS["delta"],
    weights: tuple[float, float] = (1.0, 1.0),
    reduction: str = "none",
) -> torch.Tensor:
    """Binary vector-scaling loss (Kini et al. 2021, as used by 2505.02182).

    ``l_i = omega_{y_i} * log(1 + exp(Delta_{y_i}) * exp(-zeta_{y_i} * s_i * h_i))``
    with ``s_i = +1`` for AI, ``-1`` for real; tuples are indexed by our label
    (0 real, 1 AI).

    Args:
        logits: (n,) AI log-odds.
        y: (n,) labels in {0, 1}.
        zeta: multiplicative logit scaling per class (real, AI).
        delta: additive logit offset per class (real, AI).
        weights: omega per class (real, AI); see :func:`vs_class_weights`.
        reduction: ``"none"`` -> (n,), ``"mean"`` -> scalar.
    """
    yi = y.long()
    z = torch.tensor(zeta, dtype=logits.dtype, device=logits.device)[yi]
    d = torch.tensor(delta, dtype=logits.dtype, device=logits.device)[yi]
    w = torch.tensor(weights, dtype=logits.dtype, device=logits.device)[yi]
    per = w * F.softplus(d - z * _signed(y).to(logits.dtype) * logits)
    return per.mean() if reduction == "mean" else per


def cvar_lambda(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """The exact minimiser ``lambda*`` of ``lambda + mean([l - lambda]_+) / alpha``.

    The objective is convex and piecewise linear with kinks at the losses, so its
    minimum sits at a kink: ``lambda*`` is the ``ceil(alpha * m)``-th largest loss (the
    (1 - alpha) quantile, the value-at-risk). Found from the sorted losses, not a search.
    It stays attached to the graph: the gradient of the CVaR value then gives the boundary
    sample its exact fractional weight ``(alpha m - floor(alpha m)) / (alpha m)``.
    """
    m = losses.numel()
    k = max(1, math.ceil(alpha * m - 1e-9))
    return torch.topk(losses, k).values[-1]


def cvar(losses: torch.Tensor, *, alpha: float = 0.9) -> torch.Tensor:
    """Conditional value-at-risk ``min_lambda lambda + (1/(alpha m)) sum_i [l_i - lambda]_+``.

    Equals the mean of the worst ``alpha``-fraction of the losses (with a fractional
    weight on the boundary sample when ``alpha * m`` is not an integer); only those
    samples receive gradient. ``alpha = 1`` is the plain mean.

    Args:
        losses: (m,) per-sample losses (differentiable).
        alpha: fraction in (0, 1].
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"cvar alpha={alpha!r} must be in (0, 1]")
    lam = cvar_lambda(losses, alpha)
    return lam + F.relu(losses - lam).sum() / (alpha * losses.numel())


def auc_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise logistic AUC surrogate over every (AI, real) pair in the batch.

    ``(1/(m+ m-)) sum_{i in AI} sum_{j in real} log(1 + exp(-(h_i - h_j)))`` - the
    paper's indicator ``I[h(F+) <= h(F-)]`` replaced by the logistic loss it names.
    (The paper ranks its positives = reals above fakes under a real-logit; with our AI
    logit the same pairs give the same values.) Zero when the batch lacks a class.
    """
    pos = logits[y == 1]
    neg = logits[y == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        return logits.sum() * 0.0
    return F.softplus(-(pos[:, None] - neg[None, :])).mean()


def paper_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float = 0.9,
    gamma: float = 0.6,
    weights: tuple[float, float] = (1.0, 1.0),
    zeta: tuple[float, float] = PAPER_VS["zeta"],
    delta: tuple[float, float] = PAPER_VS["delta"],
) -> torch.Tensor:
    """2505.02182 Eq. 3: ``CVaR_alpha(VS) + gamma * AUC`` (alpha 0.9, gamma 0.6)."""
    per = vs_loss(logits, y, zeta=zeta, delta=delta, weights=weights)
    return cvar(per, alpha=alpha) + gamma * auc_loss(logits, y)
