"""Layer taps shared by the open_clip and timm builders (see ``spec.py`` for their meaning).

``BlockTap`` hooks every transformer block and returns, per image, the class token after
each block side by side: ``(n, n_blocks * width)``. Models without a class token (SigLIP)
give the mean over tokens instead, which the docs say.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BlockTap"]


class BlockTap(nn.Module):
    """Run ``model`` and return the class token (or token mean) after each of ``blocks``.

    Args:
        model: The full image model (run as is; its own output is discarded).
        blocks: The transformer blocks, in order.
        class_token: Whether token 0 is a class token (else the mean over tokens).
        batch_first: Block outputs are ``(n, L, C)``; else ``(L, n, C)`` (older open_clip).
    """

    def __init__(
        self, model: nn.Module, blocks: Sequence[nn.Module], *, class_token: bool, batch_first: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.class_token = class_token
        self.batch_first = batch_first
        self._outputs: list[torch.Tensor] = []
        for block in blocks:
            block.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: object, output: object) -> None:
        x = output[0] if isinstance(output, tuple) else output
        if not self.batch_first:
            x = x.transpose(0, 1)
        self._outputs.append(x[:, 0] if self.class_token else x.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._outputs = []
        try:
            self.model(x)
            return torch.cat(self._outputs, dim=1)
        finally:
            self._outputs = []
