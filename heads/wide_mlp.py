"""``wide-mlp``: the head of *Finding AI-Generated Faces in the Wild* (arXiv 2311.08577).

Two 2048-unit fully connected layers with ReLU, dropout 0.8, one sigmoid output
(trained with binary cross-entropy on its logit); AdaGrad, lr 1e-4, batch 32, a budget
of up to 10k steps. The paper trains for up to 10k steps; our default budget is
``max_steps=1000`` so that the head trains in seconds on a CPU - pass
``max_steps=10000`` for the paper's budget. "0.8 dropout" is read as drop probability
0.8 (torch's ``p``), applied after each hidden layer. Inputs are standardised with the
training mean/std (stored with the head), as the paper's backbone features were
normalised by its own batch norm.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from facebank.core.types import Device

from ._torch import numpy_to_state, state_to_numpy
from .base import BaseHead
from .mlp import MLPHead, Standardize, TrainConfig, make_loss, train_logit_model

__all__ = ["WideMLPHead"]


class _Wide(nn.Module):
    def __init__(self, dim: int, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = Standardize(dim)
        self.body = nn.Sequential(
            nn.Linear(dim, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


class WideMLPHead(BaseHead):
    """2x2048 FC + ReLU, dropout 0.8, sigmoid; AdaGrad lr 1e-4, batch 32 (2311.08577).

    Args:
        width: units of each hidden layer (2048 in the paper).
        dropout: drop probability after each hidden layer (0.8).
        lr: AdaGrad learning rate (1e-4).
        batch_size: 32.
        max_steps: update budget; the paper allows up to 10k, the default 1000 keeps CPU
            training to seconds.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``. seed: reproducible CPU training.
    """

    name = "wide-mlp"

    def __init__(
        self,
        *,
        width: int = 2048,
        dropout: float = 0.8,
        lr: float = 1e-4,
        batch_size: int = 32,
        max_steps: int = 1000,
        device: Device = "auto",
        seed: int = 0,
    ) -> None:
        self.width = width
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.device = device
        self.seed = seed

    def _build(self, dim: int) -> _Wide:
        return _Wide(dim, int(self.width), float(self.dropout))

    def _fit(self, X: np.ndarray, y: np.ndarray, engines: Any) -> None:
        device = self._device()
        model = self._build(X.shape[1]).to(device)
        model.norm.mean.copy_(torch.from_numpy(X.mean(0, dtype=np.float64).astype(np.float32)))
        model.norm.std.copy_(
            torch.from_numpy(np.maximum(X.std(0, dtype=np.float64), 1e-6).astype(np.float32))
        )
        cfg = TrainConfig(
            optimizer="adagrad",
            lr=float(self.lr),
            weight_decay=0.0,
            schedule="constant",
            batch_size=int(self.batch_size),
            epochs=10**9,
            max_steps=int(self.max_steps),
            sam=False,
            loss="bce",
            augment=False,
        )
        loss_fn = make_loss("bce", alpha=1.0, gamma=0.0, weights=(1.0, 1.0))
        self.train_log_ = train_logit_model(
            model,
            X,
            y,
            cfg=cfg,
            device=device,
            seed=int(self.seed),
            loss_fn=loss_fn,
            pre=model.norm,
        )
        self.config_ = asdict(cfg)
        self.model_ = model.cpu().eval()

    # same scoring path as the mlp: standardise, forward in chunks on the device, logits out
    _decision = MLPHead._decision

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return state_to_numpy(self.model_), {"train_log": self.train_log_, "config": self.config_}

    def _set_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        model = self._build(self.n_features_in_)
        numpy_to_state(model, tensors)
        self.model_ = model.eval()
        self.train_log_ = meta.get("train_log", {})
        self.config_ = meta.get("config", {})
