"""A stand-in dataset for the demo, built offline from photographs that ship inside packages.

No face dataset can be downloaded at run time, so ``facebank demo`` makes one from the
real photographs bundled with matplotlib (``grace_hopper.jpg``) and scikit-image
(``astronaut``, ``camera``, ``chelsea``, ``coffee``, ``rocket``, ``motorcycle_left``
and the ``brick``/``grass``/``gravel`` texture photos):

- ``real``: crops of those photos at varied positions, sizes and flips, resampled to a
  fixed size with a high-quality (Lanczos) filter - some downscaled, some upscaled;
- one folder per simulated "engine": crops of the same photos (from *other* positions,
  see below) taken to half resolution and brought back up by a generator-style
  up-sampling or re-synthesis step, in the spirit of the AutoGAN artifact simulation
  (Zhang et al., "Detecting and Simulating Artifacts in GAN Fake Images", 2019):

  ============================  ========================================================
  ``upsample-nearest``          x2 nearest-neighbour up-sampling (blocky, replicated pixels)
  ``upsample-bilinear``         x2 bilinear up-sampling (smooth, missing high frequencies)
  ``transposed-conv``           zero insertion + a fixed 3x3 stride-2 kernel whose taps do
                                not sum evenly, i.e. the checkerboard of transposed convolutions
  ``denoise-renoise``           full resolution, median-filtered then re-noised with
                                seeded Gaussian noise (a diffusion-like "clean then add noise")
  ============================  ========================================================

Real and simulated crops never share a crop position: the positions a crop can take in a
photo are cut into a 4x4 checkerboard; real crops lie in the "white" cells and simulated
crops in the "black" ones, so no simulated image is a re-rendering of a real one.
The AI engines get different shares of the images (30/30/25/15 %), so the smallest one
(``denoise-renoise``, the only one without up-sampling) is a natural "new engine" for
out-of-distribution tests.

This is **not** a face-forensics dataset: the artifacts are simulated and the content is a
handful of photos. It exists so the whole workbench can run, offline, in minutes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from facebank.core.errors import DataError

__all__ = ["STANDIN_ENGINES", "STANDIN_NOTE", "make_standin_dataset", "standin_sources"]

log = logging.getLogger(__name__)

# Output side in pixels: big enough that `resize:128` is a real degradation, small enough
# that a few hundred PNGs are written in a second or two.
IMAGE_SIZE = 192
# Share of the AI-generated images each simulated engine gets (sums to 1). Unequal on
# purpose: real datasets are imbalanced, and the smallest engine is the default "new" one.
STANDIN_ENGINES: dict[str, float] = {
    "upsample-nearest": 0.30,
    "upsample-bilinear": 0.30,
    "transposed-conv": 0.25,
    "denoise-renoise": 0.15,
}
# A 3-tap kernel for stride-2 zero-insertion up-sampling. Even output pixels get the
# centre tap (1.0), odd ones the two outer taps (0.45 + 0.50 = 0.95): the 5 % gain
# difference between neighbouring pixels is the checkerboard of transposed convolutions,
# and the unequal outer taps shift odd pixels slightly towards one neighbour.
_TCONV_TAPS = np.array([0.45, 1.0, 0.50], dtype=np.float32)
_GRID = 4  # cells per side of the real/simulated checkerboard of crop centres

STANDIN_NOTE = (
    "This is the facebank demo on a STAND-IN dataset: {n_sources} real photographs that ship "
    "inside matplotlib and scikit-image, cropped and rescaled ('real') and passed through "
    "simulated generator artifacts ({engines}). These are simulated artifacts on a handful of "
    "source photos, NOT real AI-generated faces; the numbers say the workbench runs, not how "
    "well any detector finds AI-generated faces."
)


@dataclass(frozen=True)
class _Source:
    name: str
    package: str  # where the file ships
    filename: str


_SOURCES = (
    _Source("grace_hopper", "matplotlib", "grace_hopper.jpg"),
    _Source("astronaut", "skimage", "astronaut.png"),
    _Source("camera", "skimage", "camera.png"),
    _Source("chelsea", "skimage", "chelsea.png"),
    _Source("coffee", "skimage", "coffee.png"),
    _Source("rocket", "skimage", "rocket.jpg"),
    _Source("motorcycle", "skimage", "motorcycle_left.png"),
    _Source("brick", "skimage", "brick.png"),
    _Source("grass", "skimage", "grass.png"),
    _Source("gravel", "skimage", "gravel.png"),
)


def _source_path(src: _Source) -> Path:
    if src.package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / src.filename
    import skimage.data

    return Path(skimage.data.__file__).parent / src.filename


def standin_sources() -> dict[str, Path]:
    """The bundled photographs the stand-in dataset is cut from, by name.

    Returns:
        ``{name: path}`` for every source photo, in a fixed order.

    Raises:
        DataError: a photo is missing from its package (an unusual matplotlib or
            scikit-image install); the message names the file and the package.
    """
    out = {}
    for src in _SOURCES:
        path = _source_path(src)
        if not path.is_file():
            raise DataError(
                f"the stand-in dataset needs {src.filename!r} from the {src.package} package, "
                f"but {str(path)!r} does not exist; reinstall it "
                "(`pip install --force-reinstall "
                f"{'scikit-image' if src.package == 'skimage' else src.package}`)"
            )
        out[src.name] = path
    return out


def _load_photos() -> list[np.ndarray]:
    photos = []
    for path in standin_sources().values():
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos


def _engine_counts(n_ai: int) -> dict[str, int]:
    """Split ``n_ai`` images over the engines by their shares (largest remainder)."""
    names = list(STANDIN_ENGINES)
    raw = np.array([STANDIN_ENGINES[e] * n_ai for e in names])
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n_ai - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


def _crop_box(rng: np.random.Generator, shape: tuple[int, int], parity: int) -> tuple[int, ...]:
    """A square crop (left, top, right, bottom) whose position lies in a cell of ``parity``.

    The position is normalised by the free range, ``(top / (h - side), left / (w - side))``
    in ``[0, 1]^2``; that square is cut into a ``_GRID x _GRID`` checkerboard and the crop
    falls inside a cell with ``(row + col) % 2 == parity`` (5 % away from its borders), so
    crops of the two parities never share a position.
    """
    h, w = shape
    side = int(rng.uniform(0.22, 0.55) * min(h, w))
    while True:
        cy, cx = rng.integers(0, _GRID, size=2)
        if (cy + cx) % 2 == parity:
            break
    u, v = rng.uniform(0.05, 0.95, size=2)
    top = int((cy + u) / _GRID * (h - side))
    left = int((cx + v) / _GRID * (w - side))
    return left, top, left + side, top + side


def _crop(rng: np.random.Generator, photo: np.ndarray, parity: int) -> Image.Image:
    img = Image.fromarray(photo).crop(_crop_box(rng, photo.shape[:2], parity))
    if rng.uniform() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _tconv_upsample(img: Image.Image) -> Image.Image:
    """x2 up-sampling by zero insertion and the fixed uneven 3-tap kernel (separable)."""
    x = np.asarray(img, dtype=np.float32)
    h, w, _ = x.shape
    # one replicated row/column at the far edge, so the last output pixels are not dimmed
    x = np.pad(x, ((0, 1), (0, 1), (0, 0)), mode="edge")
    up = np.zeros((2 * h + 2, 2 * w + 2, 3), dtype=np.float32)
    up[1::2, 1::2] = x
    a = _TCONV_TAPS
    up = a[0] * up[:-2] + a[1] * up[1:-1] + a[2] * up[2:]  # along rows
    up = a[0] * up[:, :-2] + a[1] * up[:, 1:-1] + a[2] * up[:, 2:]  # along columns
    return Image.fromarray(np.clip(np.rint(up), 0, 255).astype(np.uint8))


def _simulate(engine: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    size = (IMAGE_SIZE, IMAGE_SIZE)
    half = (IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    if engine == "upsample-nearest":
        return img.resize(half, Image.Resampling.LANCZOS).resize(size, Image.Resampling.NEAREST)
    if engine == "upsample-bilinear":
        return img.resize(half, Image.Resampling.LANCZOS).resize(size, Image.Resampling.BILINEAR)
    if engine == "transposed-conv":
        return _tconv_upsample(img.resize(half, Image.Resampling.LANCZOS))
    if engine == "denoise-renoise":
        clean = np.asarray(
            img.resize(size, Image.Resampling.LANCZOS).filter(ImageFilter.MedianFilter(3)),
            dtype=np.float32,
        )
        noisy = clean + rng.normal(0.0, rng.uniform(3.0, 6.0), size=clean.shape)
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    raise AssertionError(f"no simulation for engine {engine!r}")  # internal table only


def make_standin_dataset(out: str | Path, *, n_per_class: int = 300, seed: int = 0) -> Path:
    """Build the demo's stand-in dataset ``out/<engine>/*.png``, deterministically.

    ``real`` gets ``n_per_class`` images; the AI-generated class gets ``n_per_class``
    images split over the simulated engines of :data:`STANDIN_ENGINES` (30/30/25/15 %).
    Every image is a ``192 x 192`` RGB PNG. The same ``seed`` gives the same files, byte
    for byte; an existing file with the expected name is overwritten.

    Args:
        out: the dataset root; created if missing. Must not already hold other images
            under the engine folders (they would join the dataset).
        n_per_class: images of real, and images of AI-generated in total (>= 8, so each
            engine gets at least one image).
        seed: seeds crop positions, sizes, flips and the re-noising.

    Returns:
        The dataset root, ready for ``facebank embed`` / ``facebank experiment``.

    Raises:
        DataError: ``n_per_class`` too small, or a bundled photo is missing.
    """
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 2 * len(STANDIN_ENGINES):
        raise DataError(
            f"n_per_class={n_per_class!r} is too small: the stand-in dataset needs at least "
            f"{2 * len(STANDIN_ENGINES)} so each of the {len(STANDIN_ENGINES)} simulated engines "
            "gets two images; pass a larger n_per_class (default 300)"
        )
    out = Path(out)
    photos = _load_photos()
    plan = {"real": int(n_per_class), **_engine_counts(int(n_per_class))}
    for engine_index, (engine, count) in enumerate(plan.items()):
        folder = out / engine
        folder.mkdir(parents=True, exist_ok=True)
        # one generator per engine: changing one engine's count never moves another's crops
        rng = np.random.default_rng([seed, engine_index])
        parity = 0 if engine == "real" else 1
        for i in range(count):
            p = int(rng.integers(len(photos)))
            crop = _crop(rng, photos[p], parity)
            if engine == "real":
                img = crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
            else:
                img = _simulate(engine, crop, rng)
            # fixed zlib level and no metadata: identical bytes for an identical seed
            img.save(folder / f"{engine}-{i:04d}.png", format="PNG", compress_level=1)
    log.info("stand-in dataset: %s in %s", plan, out)
    return out
