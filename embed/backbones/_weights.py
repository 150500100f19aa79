"""Weights files: reading state dicts safely, the Hugging Face hub cache, content hashes.

Resolution order (docs/design.md): an explicit ``weights=PATH`` wins; else the library's own
cache (the Hugging Face hub cache that open_clip and timm download into); else the
library's own download. Nothing here ever falls back to random weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from facebank.core.errors import FacebankError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

# torch is imported where tensors are read, so asking the hub cache (listings) stays fast.

_log = logging.getLogger(__name__)

# Checkpoints commonly nest the weights under one of these keys.
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, memoised per (path, size, mtime) within the process."""
    from facebank.embed.inputs.images import sha256_file

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a weights-only torch file, on the CPU.

    Accepts a flat mapping of tensors, or one nested under ``"state_dict"`` / ``"model"``
    (and their ``_ema`` variants); strips a DataParallel ``module.`` prefix. Never
    unpickles code (``torch.load(weights_only=True)``).

    Raises:
        FacebankError: The file is missing or cannot be read as weights.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FacebankError(
            f"weights file {str(path)!r} does not exist; pass --weights PATH to an existing "
            "open_clip / timm checkpoint (.safetensors, .pt, .pth, .bin)"
        )
    try:
        if _is_safetensors(p):
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FacebankError(
            f"cannot read weights file {str(path)!r} ({type(exc).__name__}: {first}); it must be "
            "a .safetensors file or a weights-only torch checkpoint holding a state dict - "
            "re-export it with safetensors.torch.save_file(model.state_dict(), PATH)"
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise FacebankError(
            f"weights file {str(path)!r} does not hold a state dict of tensors (found "
            f"{type(obj).__name__}); save one with "
            "safetensors.torch.save_file(model.state_dict(), PATH)"
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # torch files are zip archives ("PK") or legacy pickles (0x80); safetensors starts
    # with a little-endian u64 header length followed by "{".
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state_dict`` into ``module`` requiring every key and shape to match.

    Keys starting with one of ``ignore_prefixes`` (e.g. a classifier the backbone
    drops) are removed first.

    Raises:
        FacebankError: Missing, unexpected or differently shaped tensors, listed.
    """
    sd = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise FacebankError(
            f"weights from {source} do not fit {what}: {', '.join(parts)}; pass --weights a "
            f"checkpoint of exactly that model"
        )
    module.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------ Hugging Face hub


def hub_cache_dir() -> Path:
    """The hub cache directory, read from the environment at call time.

    Same rule as ``huggingface_hub``: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
    """
    if value := os.environ.get("HF_HUB_CACHE"):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (checked now, not at import time)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def hub_cached_file(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` present in the local hub cache for ``repo_id``, else None."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        except Exception:  # a malformed cache counts as not cached
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def hub_weights(repo_id: str, filenames: Sequence[str], *, backbone: str, what: str) -> Path:
    """Resolve weights from the hub: the cache first, then a download; else raise.

    Raises:
        WeightsUnavailableError: Not cached and the download failed or is disabled; the
            message names the backbone, the file expected and both fixes.
    """
    cached = hub_cached_file(repo_id, filenames)
    if cached is not None:
        return cached
    cache = hub_cache_dir()
    if hub_offline():
        why = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    elif unreachable := _hub_unreachable():
        why = f"the model hub is unreachable ({unreachable})"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        errors = []
        for name in filenames:
            try:
                _log.info("downloading %s/%s into %s", repo_id, name, cache)
                return Path(hf_hub_download(repo_id, name, cache_dir=str(cache)))
            except LocalEntryNotFoundError as exc:  # the connection failed: no use trying more
                errors.append(f"{name}: {type(exc).__name__}")
                break
            except Exception as exc:  # HTTP errors of many kinds (404, auth...)
                errors.append(f"{name}: {type(exc).__name__}")
        why = "the download failed (" + "; ".join(errors) + ")"
    raise WeightsUnavailableError(
        f"backbone {backbone!r} needs the pretrained weights of {what}: the file "
        f"{' or '.join(filenames)} from the Hugging Face hub repo {repo_id!r}, which is not in "
        f"the cache {str(cache)!r} and {why}. Fix: pass --weights PATH (weights=PATH in "
        "Python) pointing at a local copy of that file, or run once on a machine where the "
        "model hub is reachable so the file is cached"
    )


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """A reason when the hub's host cannot even be connected to, else None.

    huggingface_hub retries a failing request five times with back-off (about 25 s per
    file); one short TCP probe makes an offline machine fail in milliseconds instead.
    Behind an HTTP(S) proxy the probe is skipped (the proxy decides).
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:
        return None
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
