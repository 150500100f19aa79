"""A generated corpus of odd-but-valid and bad image files, with the expected outcome of each.

``make_image_corpus(dir)`` writes small files (a few KB, well under a second in all) and
returns ``{file name: Expected}``. Valid files must decode to RGB of ``Expected.size``
(width, height after EXIF orientation) with ``Expected.probe`` colours; bad files must
raise ``ImageDecodeError`` whose message contains ``Expected.reason``. Used by
tests/test_images.py and by the end-to-end embedding tests (bad-file corpus).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Expected", "make_image_corpus", "W", "H"]

# Non-square so that a missed EXIF rotation shows up as a wrong size.
W, H = 48, 32
_RED, _GREEN, _BLUE, _WHITE = (220, 30, 30), (30, 200, 40), (30, 40, 210), (255, 255, 255)


@dataclass(frozen=True)
class Expected:
    """What decoding one corpus file must give.

    Attributes:
        ok: True when the file must decode.
        size: (width, height) of the RGB result (after EXIF orientation) when ``ok``.
        probe: ``((x, y), (r, g, b))`` pixels the result must show (tolerance 12 per
            channel; JPEG-encoded files use uniform regions so the check is stable).
        reason: For bad files, a lower-case substring of the ``ImageDecodeError`` message.
    """

    ok: bool
    size: tuple[int, int] | None = None
    probe: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = field(default=())
    reason: str | None = None


def _quadrants(w: int = W, h: int = H) -> Image.Image:
    """RGB image: left half red, right half green, bottom-right quarter blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = _RED
    arr[:, w // 2 :] = _GREEN
    arr[h // 2 :, w // 2 :] = _BLUE
    return Image.fromarray(arr)


def _ok(size=(W, H), *probe) -> Expected:
    return Expected(ok=True, size=size, probe=tuple(probe))


def _bad(reason: str) -> Expected:
    return Expected(ok=False, reason=reason)


def _png_with_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR to declare another size (fixing the CRC): a cheap 'bomb'."""
    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def make_image_corpus(directory: str | Path) -> dict[str, Expected]:
    """Write the corpus into ``directory`` (created) and return ``{file name: Expected}``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Expected] = {}
    base = _quadrants()
    left, right_top, right_bottom = (W // 4, H // 4), (3 * W // 4, H // 4), (3 * W // 4, 3 * H // 4)
    colours = ((left, _RED), (right_top, _GREEN), (right_bottom, _BLUE))

    def save(name: str, img: Image.Image, expected: Expected, **kw) -> None:
        img.save(d / name, **kw)
        out[name] = expected

    # --- ordinary formats
    save("rgb.jpg", base, _ok((W, H), *colours), quality=95)
    save("upper_case.JPEG", base, _ok((W, H), *colours), quality=95)
    save("rgb.png", base, _ok((W, H), *colours))
    save("rgb.webp", base, _ok((W, H), *colours), lossless=True)
    save("rgb.bmp", base, _ok((W, H), *colours))
    save("rgb.tiff", base, _ok((W, H), *colours))

    # --- every PIL mode
    grey = Image.new("L", (W, H), 128)
    save("grey.png", grey, _ok((W, H), ((1, 1), (128, 128, 128))))
    la = Image.new("LA", (W, H), (0, 0))  # black but fully transparent -> white
    la.paste((0, 255), (0, 0, W // 2, H))  # left half opaque black
    save("grey_alpha.png", la, _ok((W, H), (left, (0, 0, 0)), (right_top, _WHITE)))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", (W, H), 255))
    alpha = Image.new("L", (W, H), 255)
    alpha.paste(0, (W // 2, 0, W, H))  # right half transparent
    rgba.putalpha(alpha)
    save("rgba.png", rgba, _ok((W, H), (left, _RED), (right_top, _WHITE), (right_bottom, _WHITE)))
    pal = base.quantize(colors=4)
    save("palette.gif", pal, _ok((W, H), *colours))
    pal_t = base.quantize(colors=4)
    blue_index = pal_t.getpixel(right_bottom)
    pal_t.info["transparency"] = blue_index
    save(
        "palette_transparent.png",
        pal_t,
        _ok((W, H), (left, _RED), (right_top, _GREEN), (right_bottom, _WHITE)),
        transparency=blue_index,
    )
    save(
        "cmyk.jpg",
        Image.new("CMYK", (W, H), (0, 255, 255, 0)),  # pure red in CMYK
        _ok((W, H), ((W // 2, H // 2), (255, 0, 0))),
        quality=95,
    )
    g16 = np.full((H, W), 32896, np.uint16)  # 0x8080 = mid grey in 16 bit
    g16[:, : W // 2] = 65535
    save(
        "grey16.png",
        Image.fromarray(g16),
        _ok((W, H), (left, (255, 255, 255)), (right_top, (128, 128, 128))),
    )
    i32 = np.full((H, W), 200, np.int32)
    save("int32.tif", Image.fromarray(i32), _ok((W, H), ((1, 1), (200, 200, 200))))
    f32 = np.full((H, W), 0.25, np.float32)
    save("float.tif", Image.fromarray(f32), _ok((W, H), ((1, 1), (64, 64, 64))))
    bilevel = Image.new("1", (W, H), 0)
    bilevel.paste(1, (0, 0, W // 2, H))
    save("bilevel.png", bilevel, _ok((W, H), (left, _WHITE), (right_top, (0, 0, 0))))

    # --- EXIF orientation 6 (rotate 90 CW to view): stored WxH, shown HxW. The red
    # left half of the stored image ends up on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    save(
        "exif_rotated.jpg",
        base,
        _ok((H, W), ((H // 2, W // 4), _RED), ((H // 4, 3 * W // 4), _BLUE)),
        quality=95,
        exif=exif.tobytes(),
    )

    # --- animation: first frame only (red), second frame blue
    frames = [Image.new("RGB", (W, H), _RED), Image.new("RGB", (W, H), _BLUE)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated.gif"] = _ok((W, H), ((1, 1), _RED))
    frames[0].save(d / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    out["animated.webp"] = _ok((W, H), ((1, 1), _RED))

    # --- bad files
    (d / "empty.jpg").write_bytes(b"")
    out["empty.jpg"] = _bad("empty")
    jpeg = io.BytesIO()
    _quadrants(256, 256).save(jpeg, format="JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    out["truncated.jpg"] = _bad("truncated")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        png, format="PNG"
    )
    (d / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    out["truncated.png"] = _bad("truncated")
    (d / "not_an_image.png").write_text("this is a text file, not a picture\n")
    out["not_an_image.png"] = _bad("not an image")
    (d / "random_bytes.jpg").write_bytes(np.random.default_rng(1).bytes(2048))
    out["random_bytes.jpg"] = _bad("not an image")
    # 100 MP: over facebank's limit (MAX_IMAGE_PIXELS); 400 MP: over PIL's own hard limit too
    (d / "bomb.png").write_bytes(_png_with_size(png.getvalue(), 10_000, 10_000))
    out["bomb.png"] = _bad("too large")
    (d / "huge_bomb.png").write_bytes(_png_with_size(png.getvalue(), 20_000, 20_000))
    out["huge_bomb.png"] = _bad("too large")
    return out


#: Odd file names (bytes, since one is not UTF-8): each holds a valid image.
ODD_NAMES: tuple[bytes, ...] = (
    b"bad-\xff\xfe-utf8.jpg",  # not UTF-8 at all
    b"new\nline.jpg",
    b"-leading-dash.jpg",
    b"a" * 246 + b".jpg",  # 250 bytes, near the usual 255-byte limit
)


def _corrupt_crc_png() -> bytes:
    """A valid PNG whose IHDR checksum is wrong."""
    buf = io.BytesIO()
    _quadrants().save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[29] ^= 0xFF  # first byte of the IHDR CRC (8 signature + 8 length/type + 13 data)
    return bytes(png)


def make_fault_corpus(folder: str | Path, *, n_good: int = 6) -> dict[str, str | None]:
    """A SOURCE folder ``real/`` + ``sdxl/`` of good images, the odd names and the bad files.

    ``n_good`` good images per engine (distinct, so no two share a sha256); the odd names
    (:data:`ODD_NAMES`, valid JPEGs) go under ``sdxl/odd/``, and so do the bad files:
    empty, text, truncated JPEG, corrupt-CRC PNG, decompression bomb, random bytes, a
    symlink loop ``loop.jpg`` and a directory named ``x.jpg``.

    Returns:
        ``{stored path: None for a file that decodes, else a lower-case substring of its
        failure reason}`` (stored = :func:`facebank.embed.inputs.datasets.encode_path` of
        the path relative to ``folder``); the directory ``x.jpg`` is not an image and is
        not listed.
    """
    import os

    from facebank.embed.inputs.datasets import encode_path

    root = Path(folder)
    rng = np.random.default_rng(7)
    out: dict[str, str | None] = {}
    for engine, base in (("real", 60), ("sdxl", 190)):
        (root / engine).mkdir(parents=True, exist_ok=True)
        for i in range(n_good):
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / engine / f"{i}.png")
            out[f"{engine}/{i}.png"] = None
    odd = root / "sdxl" / "odd"
    odd.mkdir()
    sdxl = os.fsencode(odd)
    for name in ODD_NAMES:
        arr = np.clip(190 + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
        with open(os.path.join(sdxl, name), "wb") as fh:
            Image.fromarray(arr).save(fh, format="JPEG", quality=90)
        out[encode_path("sdxl/odd/" + os.fsdecode(name))] = None
    jpeg = io.BytesIO()
    _quadrants(64, 64).save(jpeg, format="JPEG", quality=90)
    png = io.BytesIO()
    _quadrants(16, 16).save(png, format="PNG")
    bad = {
        "empty.jpg": (b"", "empty"),
        "text.png": (b"this is a text file, not a picture\n", "not an image"),
        "truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated"),
        "crc.png": (_corrupt_crc_png(), "not an image"),  # PIL refuses the header
        "bomb.png": (_png_with_size(png.getvalue(), 10_000, 10_000), "too large"),
        "random.jpg": (np.random.default_rng(1).bytes(2048), "not an image"),
    }
    for name, (data, reason) in bad.items():
        (odd / name).write_bytes(data)
        out[f"sdxl/odd/{name}"] = reason
    os.symlink("loop.jpg", odd / "loop.jpg")  # points at itself
    out["sdxl/odd/loop.jpg"] = "unreadable"
    (odd / "x.jpg").mkdir()
    return out
