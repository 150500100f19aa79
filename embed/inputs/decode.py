"""Pixels from a file to the model: read once, decoded to uint8, normalised on the model's device.

Every engine's per-image work is :func:`load_one`: the file's bytes are read **once**
(a local file or an object on a store), hashed, and the same bytes decoded
(:func:`embed.inputs.images.load_image_and_metadata`), so the sha256 recorded for a row
is always that of the pixels embedded. The view and the backbone's resize/crop then run
on the decoded image and the result leaves as a **uint8** ``(3, H, W)`` tensor
(:class:`PixelTransform`): a quarter of the bytes of the float32 tensor the backbone's
own transform makes, which matters where pixels cross processes (DataLoader workers,
Ray's object store) or go to a GPU. The conversion to float, ``/ 255`` and the
backbone's mean/std happen on the model's device (:meth:`PixelTransform.normalise`)
with the same float32 operations as torchvision's ``ToTensor`` + ``Normalize``, so on
a CPU the model sees bit-identical input.

Decode placement (``--decode``):

- ``cpu``: the decode above, in decoder processes or threads.
- ``gpu``: JPEG files travel as their compressed bytes to the model's process, which
  decodes them in batches with ``torchvision.io.decode_jpeg(device=...)`` and resizes,
  crops and normalises them on the device (:class:`DeviceDecoder`). Other formats, and
  JPEGs the GPU decoder does not take (CMYK, progressive, other than 8-bit), are decoded
  on the CPU as above and counted (``decoded_on_cpu``); so are EXIF-rotated JPEGs
  (nvJPEG ignores the orientation tag). A JPEG the device decoder
  fails on is retried alone, then on the CPU; if that fails too it is recorded as
  failed with the CPU decoder's reason, and the rest of the batch is kept. The device
  decoder always decodes at
  full resolution (no DCT-domain draft), so its rows differ slightly from the CPU
  path's (``docs/embedding.md`` gives the measured difference).
- ``auto``: ``gpu`` when the model is on a CUDA device, the view is ``original`` and
  the backbone's resize/crop can run on tensors; else ``cpu``.

:func:`plan_threads` sizes decoder workers and torch threads from the cores this
process may use, so that decoders and the model never compete for them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from facebank.core.errors import FacebankError, ImageDecodeError
from facebank.embed.inputs.views import FACE_FOUND

__all__ = [
    "DECODE_MODES",
    "DeviceDecoder",
    "JpegBytes",
    "PixelTransform",
    "ThreadPlan",
    "available_cores",
    "check_decode",
    "collate_rows",
    "iter_in_threads",
    "load_one",
    "pixel_transform",
    "plan_threads",
    "resolve_decode",
    "torch_threads",
]

DecodeMode = Literal["auto", "cpu", "gpu"]
DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112  # the EXIF tag
# torchvision transforms that also run on a (3, H, W) tensor with the same meaning
_TENSOR_STEPS = frozenset({"Resize", "CenterCrop", "MaybeConvertMode"})
_TO_TENSOR = frozenset({"ToTensor", "MaybeToTensor"})


# ---------------------------------------------------------------- uint8 pixels
@dataclass(frozen=True)
class PixelTransform:
    """A backbone's evaluation transform cut before ``ToTensor``: PIL -> uint8 pixels.

    Attributes:
        steps: the transform's PIL steps (resize, centre crop, mode), in order.
        mean, std: the ``Normalize`` that followed ``ToTensor``, applied on the device.
    """

    steps: tuple[Callable[[Any], Any], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, img: Any) -> Any:
        """PIL RGB image -> uint8 tensor ``(3, H, W)``."""
        import torch

        for step in self.steps:
            img = step(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        # HWC -> CHW in numpy: a torch copy of this size runs on its OpenMP threads, whose
        # spin-wait afterwards takes a core from the decoders and the model
        chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(chw))

    @property
    def runs_on_tensors(self) -> bool:
        """True when every step also runs on a tensor (the device decoder's resize/crop)."""
        return all(type(s).__name__ in _TENSOR_STEPS for s in self.steps)

    def on_tensor(self, x: Any) -> Any:
        """The resize/crop steps on a uint8 tensor ``(n, 3, H, W)`` or ``(3, H, W)``."""
        for step in self.steps:
            x = step(x)
        return x

    def normalise(self, x: Any, device: Any) -> Any:
        """uint8 ``(n, 3, H, W)`` -> float32 on ``device``, as ``ToTensor`` + ``Normalize``.

        A float tensor (made by the backbone's own transform) is only moved.
        """
        import torch

        x = x.to(device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x
        # the same float32 operations, in the same order, as ToTensor then Normalize
        x = x.to(torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


def pixel_transform(transform: Any) -> PixelTransform | None:
    """The uint8 form of a backbone transform, or ``None`` when it is not a plain
    ``Compose([..., ToTensor, Normalize])`` (the float transform is then used as is)."""
    steps = list(getattr(transform, "transforms", None) or [])
    if len(steps) < 2:
        return None
    to_tensor, norm = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in _TO_TENSOR or type(norm).__name__ != "Normalize":
        return None
    mean = tuple(float(v) for v in np.asarray(norm.mean, dtype=np.float64).ravel())
    std = tuple(float(v) for v in np.asarray(norm.std, dtype=np.float64).ravel())
    return PixelTransform(steps=tuple(steps[:-2]), mean=mean, std=std)


def model_input(x: Any, backbone: Any, pixels: PixelTransform | None) -> Any:
    """A batch from decoders -> the float32 batch ``backbone.encode`` takes, on its device."""
    if pixels is not None:
        return pixels.normalise(x, backbone.device)
    return x


# ---------------------------------------------------------------- one file
@dataclass(frozen=True)
class JpegBytes:
    """A JPEG's compressed bytes, left for the device decoder (``--decode gpu``).

    Attributes:
        data: the file's bytes (plain bytes cross the DataLoader's pipe in one piece,
            where a tensor per file would take a shared-memory segment each).
    """

    data: bytes


def load_one(
    file: str,
    *,
    view: Any,
    transform: Callable,
    draft_size: int | None,
    storage_options: Mapping[str, Any] | None = None,
    keep_jpeg: bool = False,
) -> tuple[str | None, Any, str | None, dict[str, Any] | None]:
    """Read once, hash, decode, apply the view and the transform to one file.

    The per-image work of every engine (DataLoader workers and decode threads, Ray
    tasks). Never raises for a bad file. ``file`` may be an fsspec URL (a SOURCE on a
    store), read with ``storage_options``. The bytes hashed are the bytes decoded.

    Args:
        transform: a :class:`PixelTransform` (uint8 out) or any PIL -> tensor transform.
        keep_jpeg: return an 8-bit RGB/greyscale baseline JPEG as :class:`JpegBytes`
            for the device decoder instead of decoding it (the view must be identity).

    Returns:
        ``(sha256 | None, pixels | None, reason | None, metadata | None)``.
    """
    from facebank.embed.inputs.images import load_image_and_metadata, open_input

    try:
        data, sha = open_input(file, storage_options=storage_options)
    except ImageDecodeError as exc:  # missing, a directory, unreadable
        return None, None, str(exc), None
    if keep_jpeg and data[:3] == _JPEG_MAGIC:
        meta = _device_jpeg_metadata(data)
        if meta is not None:
            return sha, JpegBytes(data), None, meta
    try:
        img, meta = load_image_and_metadata(data, draft_size=draft_size)
        img = view(img)
        if FACE_FOUND in img.info:  # a face view: was a face found? (column face_found)
            meta["face_found"] = int(bool(img.info[FACE_FOUND]))
        x = transform(img)
    except ImageDecodeError as exc:
        return sha, None, str(exc), None
    except Exception as exc:  # a bad file is a reason, never a crash
        return sha, None, f"{type(exc).__name__}: {str(exc)[:160]}", None
    if keep_jpeg and data[:3] == _JPEG_MAGIC and meta is not None:
        meta = {**meta, "_cpu_decoded": True}
    return sha, x, None, meta


def _device_jpeg_metadata(data: bytes) -> dict[str, Any] | None:
    """The metadata row of a JPEG the device decoder takes, from its header alone;
    ``None`` for one it does not (CMYK/YCCK, progressive, other than 8-bit, too large,
    EXIF-rotated, unreadable header): those take the CPU path."""
    import io

    from PIL import Image

    from facebank.embed.inputs.images import MAX_IMAGE_PIXELS
    from facebank.embed.inputs.metadata import finish_metadata, header_metadata

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.info.get("progressive") or img.info.get("progression"):
                return None
            if getattr(img, "bits", 8) != 8 or not 0 < w * h <= MAX_IMAGE_PIXELS:
                return None
            if img.getexif().get(_ORIENTATION, 1) not in (0, 1):
                return None  # nvJPEG ignores the EXIF orientation: the CPU path applies it
            meta = header_metadata(img, file_bytes=len(data))
            # a JPEG's EXIF and ICC come with its header: nothing of it needs the pixels
            return finish_metadata(meta, img)
    except Exception:  # the CPU path gives the reason
        return None


# ---------------------------------------------------------------- the device decoder
class DeviceDecoder:
    """The model-side half of ``--decode gpu``: JPEG bytes -> normalised batch on the device.

    Called on each collated batch (:func:`collate_mixed`); returns the batch with
    ``x`` the uint8 pixels ``(n, 3, H, W)`` on the device, JPEGs that failed moved to
    ``failed``, and the count of images decoded on the CPU in ``decoded_on_cpu``.
    """

    def __init__(self, pixels: PixelTransform, *, device: Any, view: Any) -> None:
        self.pixels = pixels
        self.device = device
        self.view = view
        self.decoded_on_cpu = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        items: list[Any] = batch["x"] or []
        self.decoded_on_cpu += sum(1 for m in batch["meta"] if m and m.pop("_cpu_decoded", False))
        jpeg = [j for j, x in enumerate(items) if isinstance(x, JpegBytes)]
        decoded, reasons = self._decode(
            [torch.frombuffer(bytearray(items[j].data), dtype=torch.uint8) for j in jpeg]
        )
        out: list[Any] = list(items)
        bad: set[int] = set()
        for k, j in enumerate(jpeg):
            if decoded[k] is None:
                bad.add(j)
                continue
            out[j] = decoded[k]
        for k, j in enumerate(jpeg):
            if j in bad:  # the CPU decoder's verdict: retried there, or the reason
                x, why = self._cpu(items[j].data)
                if x is None:
                    batch["failed"].append((batch["index"][j], batch["sha"][j], why or reasons[k]))
                    continue
                self.decoded_on_cpu += 1
                out[j] = x.to(self.device)
                bad.discard(j)
        keep = [j for j in range(len(items)) if j not in bad]
        batch = dict(batch)
        for key in ("index", "sha", "meta"):
            batch[key] = [batch[key][j] for j in keep]
        batch["x"] = torch.stack([out[j].to(self.device) for j in keep]) if keep else None
        return batch

    def _decode(self, blobs: list[Any]) -> tuple[list[Any], list[str]]:
        """Decode and resize/crop on the device; a failed batch is retried file by file."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not blobs:
            return [], []
        kw = {"mode": ImageReadMode.RGB, "device": self.device, "apply_exif_orientation": True}
        images: list[Any] = []
        reasons: list[str] = []
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders for a move to torchcodec; they still work
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                images = list(decode_jpeg(blobs, **kw))
                reasons = [""] * len(blobs)
            except RuntimeError:  # one bad file fails the whole call: find it
                for blob in blobs:
                    try:
                        images.append(decode_jpeg(blob, **kw))
                        reasons.append("")
                    except RuntimeError as exc:
                        images.append(None)
                        reasons.append(f"corrupt JPEG ({str(exc).splitlines()[-1][:160]})")
        return self._resize(images), reasons

    def _resize(self, images: list[Any]) -> list[Any]:
        import torch

        out: list[Any] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, img in enumerate(images):
            if img is not None:
                groups.setdefault(tuple(img.shape), []).append(k)
        for ks in groups.values():  # one resize per input size: a batched kernel each
            done = self.pixels.on_tensor(torch.stack([images[k] for k in ks]))
            for k, x in zip(ks, done, strict=True):
                out[k] = x
        return out

    def _cpu(self, data: bytes) -> tuple[Any, str | None]:
        from facebank.embed.inputs.images import load_image_and_metadata

        try:
            img, _ = load_image_and_metadata(data)
            return self.pixels(self.view(img)), None
        except ImageDecodeError as exc:
            return None, str(exc)
        except Exception as exc:  # a bad file is a reason, never a crash
            return None, f"{type(exc).__name__}: {str(exc)[:160]}"


def collate_rows(
    batch: list[tuple[int, str | None, Any, str | None, Any]],
    pixels: Callable[[list[Any]], Any],
) -> dict[str, Any]:
    """What every engine's collate returns for a batch of ``(index, sha256, pixels,
    reason, metadata)``: the decoded rows' ``index``, ``sha``, ``meta`` and ``x`` (their
    pixels gathered by ``pixels``; ``None`` when none decoded), and the other rows as
    ``failed`` ``(index, sha256, reason)``."""
    ok = [b for b in batch if b[2] is not None]
    return {
        "index": [b[0] for b in ok],
        "sha": [b[1] for b in ok],
        "x": pixels([b[2] for b in ok]) if ok else None,
        "meta": [b[4] for b in ok],
        "failed": [(b[0], b[1], b[3]) for b in batch if b[2] is None],
    }


def collate_mixed(batch: list[tuple[int, str | None, Any, str | None, Any]]) -> dict[str, Any]:
    """The DataLoader collate of ``--decode gpu``: pixels and JPEG bytes left unstacked."""
    return collate_rows(batch, list)


def check_decode(decode: str) -> None:
    """Raise one line unless ``decode`` is one of :data:`DECODE_MODES`.

    Raises:
        FacebankError: naming the valid modes.
    """
    if decode not in DECODE_MODES:
        raise FacebankError(f"--decode {decode!r} is not valid; valid: {', '.join(DECODE_MODES)}")


def resolve_decode(
    decode: str, *, device_type: str, view: Any, pixels: PixelTransform | None
) -> str:
    """``"cpu"`` or ``"gpu"`` for a ``--decode`` choice (see the module docstring).

    Raises:
        FacebankError: an unknown mode, or ``gpu`` where the device decoder cannot run.
    """
    check_decode(decode)
    why = None
    if not view.is_identity:
        why = f"the view {view.name!r} works on the CPU-decoded image (only 'original' can)"
    elif pixels is None or not pixels.runs_on_tensors:
        why = "this backbone's transform does not run on tensors"
    if decode == "cpu" or (decode == "auto" and (why or device_type != "cuda")):
        return "cpu"
    if why:
        raise FacebankError(f"--decode gpu is not possible here: {why}; use --decode cpu or auto")
    return "gpu"


# ---------------------------------------------------------------- threads and workers
@dataclass(frozen=True)
class ThreadPlan:
    """How a run shares the machine's cores (printed with ``-v``, stored in the bank).

    Attributes:
        cores: CPU cores this process may use.
        workers: decoder processes (0: decoding runs in this process, between batches).
        decode_threads: threads decoding a batch in this process when ``workers`` is 0.
        torch_threads: torch intra-op threads of the model.
        decode: ``"cpu"`` or ``"gpu"``.
        chosen: ``"auto"``, or which of ``workers``/``threads`` were given.
        heap: ``"kept"`` when freed memory stays in the heap for the next batch
            (:func:`core.memory.keep_freed_memory`), else ``"system"`` and why.
    """

    cores: int
    workers: int
    decode_threads: int
    torch_threads: int
    decode: str
    chosen: str
    heap: str = "system"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = (
            f"{self.workers} decoder process(es)"
            if self.workers
            else f"decoding in this process on {self.decode_threads} thread(s) between batches"
        )
        heap = "freed memory kept for the next batch" if self.heap == "kept" else self.heap
        return (
            f"{self.cores} core(s): {where}, model on {self.torch_threads} torch thread(s), "
            f"decode {self.decode} ({self.chosen}), heap: {heap}"
        )


def available_cores() -> int:
    """Cores this process may use: its CPU affinity (``os.cpu_count`` where unknown),
    or ``$OMP_NUM_THREADS`` when that is set lower (the user's own limit, which torch
    honours too)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        cores = max(1, os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return cores


def plan_threads(
    *,
    device_type: str,
    decode: str = "cpu",
    workers: int | None = None,
    threads: int | None = None,
    cores: int | None = None,
    heap: str = "system",
) -> ThreadPlan:
    """Decoder workers and torch threads that do not oversubscribe ``cores``.

    - CUDA: the model needs one core to drive the GPU; every other core decodes
      (at most 16 processes).
    - CPU, fewer than 4 cores: the model is the bottleneck and needs every core; a
      batch is decoded in this process on as many threads as cores, *between* forward
      passes, so decoding and the model never run at once (decoding is a few percent
      of the model's time per image for the registered backbones).
    - CPU, 4 or more cores: a quarter of the cores decode in worker processes, the
      rest run the model, so the sum never exceeds the cores.

    ``workers`` and ``threads`` override; with one given, the other is chosen to fit.
    ``heap`` is recorded as given (the :class:`~facebank.embed.runner.loader.Encoder`'s).
    """
    n = max(1, int(cores if cores is not None else available_cores()))
    given = [k for k, v in (("workers", workers), ("threads", threads)) if v is not None]
    chosen = "given " + " and ".join(given) if given else "auto"
    if workers is not None and workers < 0 or threads is not None and threads < 1:
        raise FacebankError(
            f"workers={workers!r}, threads={threads!r}: give workers >= 0 and threads >= 1"
        )
    if device_type == "cuda":
        w = workers if workers is not None else max(1, min(n - 1, 16))
        t = threads if threads is not None else 1
    elif workers is None and threads is None:
        w = 0 if n < 4 else max(1, n // 4)
        t = n - w
    elif workers is None:
        t = int(threads)  # type: ignore[arg-type]
        w = 0 if t >= n - 1 or n < 4 else n - t
    else:
        w = int(workers)
        t = threads if threads is not None else (n if w == 0 else max(1, n - w))
    decode_threads = n if w == 0 else 1
    return ThreadPlan(
        cores=n,
        workers=int(w),
        decode_threads=int(decode_threads),
        torch_threads=int(t),
        decode=decode,
        chosen=chosen,
        heap=heap,
    )


def iter_in_threads(
    get: Callable[[int], Any],
    batches: Sequence[Sequence[int]],
    *,
    collate: Callable[[list[Any]], dict[str, Any]],
    threads: int,
) -> Iterator[dict[str, Any]]:
    """Collated batches decoded in this process on ``threads`` threads, one batch at a
    time when the consumer asks for it (never while it runs the model).

    Pillow and hashlib release the GIL while decoding, resizing and hashing.
    """
    if threads <= 1:
        for batch in batches:
            yield collate([get(i) for i in batch])
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="facebank-decode") as pool:
        for batch in batches:
            yield collate(list(pool.map(get, batch)))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Within the block, torch runs ``n`` intra-op threads (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
