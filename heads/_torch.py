"""Small torch helpers shared by the heads (private)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

# Rows per inference chunk: bounds memory at 1M x 768 without slowing small inputs.
INFER_CHUNK = 65536


def as_tensor(X: np.ndarray, device: str) -> torch.Tensor:
    """float32 tensor on ``device`` (no copy on CPU when already float32 contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)


def batches(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    device: str = "cpu",
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield index tensors of a seeded random permutation of ``range(n)``."""
    perm = torch.randperm(n, generator=generator).to(device)
    stop = n - (n % batch_size) if drop_last and n > batch_size else n
    for i in range(0, stop, batch_size):
        yield perm[i : i + batch_size]


@torch.no_grad()
def predict_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], X: np.ndarray, device: str
) -> np.ndarray:
    """Apply ``fn`` to ``X`` in chunks on ``device``; returns a float64 numpy array."""
    out = []
    for i in range(0, X.shape[0], INFER_CHUNK):
        out.append(fn(as_tensor(X[i : i + INFER_CHUNK], device)).double().cpu())
    return torch.cat(out).numpy()


def state_to_numpy(module: torch.nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def numpy_to_state(
    module: torch.nn.Module, tensors: dict[str, np.ndarray], prefix: str = ""
) -> None:
    sd = {
        k[len(prefix) :]: torch.from_numpy(np.array(v))
        for k, v in tensors.items()
        if k.startswith(prefix)
    }
    module.load_state_dict(sd, strict=True)
