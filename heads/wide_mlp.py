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
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from torch import nn

from facebank.core.types import Device

from ._torch import numpy_to_state, state_to_numpy
from .base import AT_LEAST_ONE, POSITIVE, SEED, BaseHead
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

    Parameters
    ----------
    width : int, default=2048
        Units of each hidden layer (2048 in the paper), >= 1.
    dropout : float, default=0.8
        Drop probability after each hidden layer (0.8 in the paper), in [0, 1).
    lr : float, default=1e-4
        AdaGrad learning rate (1e-4), > 0.
    batch_size : int, default=32
        Rows per step (32), >= 1.
    max_steps : int, default=1000
        Update budget, >= 1; the paper allows up to 10k, the default keeps CPU training
        to seconds.
    device : str, default="auto"
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed : int, default=0
        Seeds initialisation, dropout and batches (CPU training is reproducible).

    Attributes
    ----------
    model_ : torch.nn.Module
        The trained network (standardisation, two hidden layers, logit), on the CPU in
        eval mode.
    config_ : dict
        The training settings used.
    train_log_ : dict
        Steps taken, epochs and the last loss values.
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
    >>> from facebank.heads.wide_mlp import WideMLPHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 8)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)  # 1 = AI-generated, 0 = real
    >>> head = WideMLPHead(width=32, max_steps=100, lr=3e-2, device="cpu").fit(X, y)
    >>> bool((head.predict(X) == y).mean() > 0.8)
    True
    """

    name = "wide-mlp"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "width": [AT_LEAST_ONE],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "lr": [POSITIVE],
        "batch_size": [AT_LEAST_ONE],
        "max_steps": [AT_LEAST_ONE],
        "device": [str],
        "seed": SEED,
    }

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
