"""Sharpness-aware minimisation (Foret et al. 2020; 2505.02182 Eq. 4-5) around a torch optimiser."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SAM"]


class SAM:
    """Wraps a torch optimiser: each step ascends to ``theta + rho * g / ||g||``, then descends.

    ``step(closure)``: ``closure()`` must zero nothing itself, compute the loss and call
    ``backward``. SAM calls it twice: at ``theta`` (to get ``g``) and at the perturbed point;
    the base optimiser then updates ``theta`` with the perturbed-point gradient.

    Args:
        base: the wrapped optimiser (AdamW, SGD, AdaGrad...); its param groups are used.
        rho: radius of the perturbation (the paper's nu; 0.1).
    """

    def __init__(self, base: torch.optim.Optimizer, *, rho: float = 0.1) -> None:
        if rho <= 0:
            raise ValueError(f"SAM rho={rho!r} must be > 0")
        self.base = base
        self.rho = float(rho)
        self.param_groups = base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self):
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One SAM step; returns the loss at the unperturbed point."""
        self.zero_grad()
        loss = closure()
        params = self._params()
        with torch.no_grad():
            grads = [p.grad for p in params if p.grad is not None]  # _params keeps those
            norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2) if grads else 0.0
            saved = [p.detach().clone() for p in params]  # exact restore, not p - e
            for p, g in zip(params, grads, strict=True):
                p.add_(g * (self.rho / (norm + 1e-12)))
        self.zero_grad()
        closure()
        with torch.no_grad():
            for p, orig in zip(params, saved, strict=True):
                p.copy_(orig)
        self.base.step()
        return loss
