"""The one device resolver: ``--device auto|cpu|cuda|cuda:N|mps`` -> a checked device string.

Backbones (torch), heads (torch) and FAISS indexes all ask this function; what "a GPU is
available" means differs per library (torch sees CUDA, a faiss build may not), so callers
may pass their own availability check and fix hint.
"""

from __future__ import annotations

from collections.abc import Callable

from facebank.core.errors import FacebankError, UnknownNameError
from facebank.core.types import Device

__all__ = ["DEVICES", "resolve_device"]

DEVICES = "auto, cpu, cuda, cuda:N, mps"


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(
    device: Device = "auto",
    *,
    gpu_available: Callable[[], bool] | None = None,
    gpu_fix: str = "use --device cpu or auto",
) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is available, else ``"cpu"``; others are checked.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (a ``torch.device`` is
            accepted too).
        gpu_available: Whether the calling library can use a GPU (default: torch CUDA).
        gpu_fix: The fix named when a GPU is asked for but unavailable.

    Returns:
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (``torch.device(...)`` accepts it).

    Raises:
        UnknownNameError: An unknown device (the valid ones are named).
        FacebankError: A GPU asked for but not available.
    """
    available = gpu_available or _torch_cuda
    text = str(device).strip().lower()
    if text in ("", "auto"):
        return "cuda" if available() else "cpu"
    if text == "gpu":
        text = "cuda"
    index = text[5:] if text.startswith("cuda:") else "0"
    if text not in ("cpu", "mps", "cuda") and not (text.startswith("cuda:") and index.isdigit()):
        raise UnknownNameError(f"unknown device {str(device)!r}; valid: {DEVICES}")
    if text.startswith("cuda") and not available():
        raise FacebankError(f"device {str(device)!r} asked for but no GPU is available; {gpu_fix}")
    return text
