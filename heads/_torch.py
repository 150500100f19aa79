"""Small torch helpers shared by the heads (private)."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

# Rows per evaluation block. Every block - the last one zero-padded - goes through the
# model with this one shape, so a row's score does not depend on the rows it is batched
# with: BLAS picks its kernel and summation order by shape (a 1-row product is a gemv, a
# 12-row one a gemm), which moved float32 scores by up to 7.6e-6 on Intel CPUs. 256 rows
# keep a one-image call cheap and a million-row call within a few percent of one GEMM.
EVAL_BLOCK = 256

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
T = TypeVar("T")

# What cached_copy built from each fitted module: {(device, build): (signature, value)}.
# Weakly keyed on the module, so nothing is stored on the head (pickles, clones and
# sklearn's check_dict_unchanged see no difference) and a refitted or reloaded head's old
# entry goes when its old module does.
_COPIES: weakref.WeakKeyDictionary[torch.nn.Module, dict[Hashable, tuple[Hashable, Any]]] = (
    weakref.WeakKeyDictionary()
)


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


def float64_copy(module: ModuleT, device: str) -> ModuleT:
    """A float64 copy of ``module`` on ``device`` in eval mode, for :func:`predict_blocks`."""
    return copy.deepcopy(module).to(device=device, dtype=torch.float64).eval()


def _signature(module: torch.nn.Module) -> tuple[Hashable, ...]:
    """Changes whenever a tensor of ``module`` is replaced or written in place (torch's
    version counter, the one autograd checks), e.g. by ``load_state_dict`` or an optimiser
    step; writes through ``.data``, which torch does not count, are not seen."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.shape, t.device)
        for t in (*module.parameters(), *module.buffers())
    )


def cached_copy(module: ModuleT, device: str, build: Callable[[ModuleT, str], T]) -> T:
    """``build(module, device)`` (e.g. :func:`float64_copy`), built once and reused
    while ``module``'s tensors are unchanged, so a head's scoring copy is not rebuilt on
    every ``decision_function`` call.

    The copy is kept beside the module, not on the head, for as long as the module lives
    (one per device: a GPU copy holds GPU memory). Refitting or loading a head assigns a
    new module, hence a new copy; writing the module's parameters in place (under
    ``torch.no_grad()``, or by ``load_state_dict``) rebuilds it on the next call. What
    ``build`` returns is shared by every call: it must be used, never modified.
    """
    per_module = _COPIES.setdefault(module, {})
    key = (device, build)
    sig = _signature(module)
    hit = per_module.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    with torch.no_grad():
        value = build(module, device)
    per_module[key] = (sig, value)
    return value


def fixed_blocks(X: np.ndarray, *, dtype: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(rows, block)`` over ``X``: each block ``EVAL_BLOCK`` rows of ``dtype``, its first
    ``rows`` rows the next rows of ``X`` and the rest zeros, so every block has one shape.

    The block is one buffer reused from block to block: use its results before the next.
    """
    block = np.zeros((EVAL_BLOCK, X.shape[1]), dtype=dtype)
    for i in range(0, X.shape[0], EVAL_BLOCK):
        rows = min(EVAL_BLOCK, X.shape[0] - i)
        block[:rows] = X[i : i + rows]
        block[rows:] = 0
        yield rows, block


@torch.no_grad()
def predict_blocks(
    fn: Callable[[torch.Tensor], torch.Tensor], X: np.ndarray, device: str
) -> np.ndarray:
    """Apply ``fn`` to ``X`` in :func:`fixed_blocks` of float64 rows on ``device``.

    The contract of every head's scores (sklearn's ``check_methods_subset_invariance``,
    and thresholds that keep their false-positive count when scores are recomputed): a
    row's output is bit-identical whatever rows share its call, because every block has
    the same shape, and float64 accumulation keeps CPUs that sum in another order
    (Intel, AMD) within ~1e-12 of each other. ``fn`` must hold float64 parameters
    (:func:`float64_copy`, reused across calls by :func:`cached_copy`).

    Returns:
        float64 numpy array, ``(n_samples, ...)`` as ``fn`` returns per row.
    """
    out = [
        fn(torch.from_numpy(block).to(device))[:rows].double().cpu().clone()
        for rows, block in fixed_blocks(X, dtype=np.float64)
    ]
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
