"""embed/inputs/decode.py: uint8 pixels normalised on the device, each file read once,
threads that never oversubscribe the cores, and the device JPEG decoder (--decode gpu),
run here through torchvision's CPU decoder."""

from __future__ import annotations

import builtins
import hashlib
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from facebank.embed.inputs.decode import (
    JpegBytes,
    load_one,
    pixel_transform,
    plan_threads,
    resolve_decode,
)
from facebank.embed.inputs.views import parse_view

RNG = np.random.default_rng(0)


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray((arr + rng.normal(0, 5, arr.shape)).clip(0, 255).astype(np.uint8))


def _backbone(name: str):
    from facebank.embed import create_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_backbone(name, device="cpu")


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-vit"])
def test_uint8_pixels_normalised_on_the_device_equal_the_float_transform_bit_for_bit(name):
    bb = _backbone(name)
    pt = pixel_transform(bb.transform)
    assert pt is not None and pt.runs_on_tensors
    imgs = [_photo(300, 220, 1), _photo(97, 140, 2)]
    u8 = torch.stack([pt(im) for im in imgs])
    assert u8.dtype == torch.uint8
    expected = torch.stack([bb.transform(im) for im in imgs])
    assert torch.equal(pt.normalise(u8, "cpu"), expected)
    assert torch.equal(bb.encode(pt.normalise(u8, "cpu")), bb.encode(expected))


def test_pixel_transform_is_none_for_a_transform_it_does_not_know():
    assert pixel_transform(lambda img: img) is None


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 6, 8, 16, 64])
def test_the_automatic_plan_never_oversubscribes_the_cores(cores):
    plan = plan_threads(device_type="cpu", cores=cores)
    assert plan.torch_threads >= 1 and plan.chosen == "auto"
    if plan.workers == 0:  # decoding runs between forward passes, never beside them
        assert plan.decode_threads == plan.torch_threads == cores
    else:
        assert plan.workers + plan.torch_threads <= cores
    gpu = plan_threads(device_type="cuda", cores=cores)
    assert gpu.workers + gpu.torch_threads <= max(2, cores)


def test_workers_and_threads_override_and_the_other_fits():
    assert plan_threads(device_type="cpu", cores=8, workers=3).torch_threads == 5
    assert plan_threads(device_type="cpu", cores=8, threads=6).workers == 2
    p = plan_threads(device_type="cpu", cores=2, workers=1, threads=2)
    assert (p.workers, p.torch_threads, p.chosen) == (1, 2, "given workers and threads")


def test_each_file_is_read_once_and_the_hashed_bytes_are_the_decoded_ones(tmp_path, monkeypatch):
    bb = _backbone("tiny-cnn")
    path = tmp_path / "a.jpg"
    _photo(200, 160).save(path, quality=90)
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *a, **kw):
        if str(file) == str(path):
            opened.append(str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", counting_open)
    sha, x, reason, meta = load_one(
        str(path), view=parse_view("original"), transform=pixel_transform(bb.transform),
        draft_size=None,
    )  # fmt: skip
    assert reason is None and x.dtype == torch.uint8 and meta["file_format"] == "JPEG"
    assert len(opened) == 1
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_store_object_is_fetched_once(monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    _photo(64, 64).save(buf, format="PNG")
    fs.pipe("/decode-once/a.png", buf.getvalue())
    calls: list[str] = []
    real = type(fs).cat_file

    def counting(self, path, *a, **kw):
        calls.append(path)
        return real(self, path, *a, **kw)

    monkeypatch.setattr(type(fs), "cat_file", counting)
    sha, x, reason, _ = load_one(
        "memory://decode-once/a.png", view=parse_view("original"), transform=lambda im: im,
        draft_size=None,
    )  # fmt: skip
    assert reason is None and len(calls) == 1
    assert sha == hashlib.sha256(buf.getvalue()).hexdigest()


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return exif.tobytes()


def test_keep_jpeg_leaves_baseline_jpegs_as_bytes_and_decodes_the_rest(tmp_path):
    pt = pixel_transform(_backbone("tiny-cnn").transform)
    view = parse_view("original")
    kinds = {
        "base.jpg": {"quality": 90},
        "prog.jpg": {"quality": 90, "progressive": True},
        "cmyk.jpg": {"quality": 90},
        "rot.jpg": {"quality": 90, "exif": _rotated_exif()},
        "p.png": {},
    }
    out = {}
    for name, kw in kinds.items():
        img = _photo(120, 90).convert("CMYK") if name.startswith("cmyk") else _photo(120, 90)
        img.save(tmp_path / name, **kw)
        out[name] = load_one(
            str(tmp_path / name), view=view, transform=pt, draft_size=None, keep_jpeg=True
        )
    assert isinstance(out["base.jpg"][1], JpegBytes)
    assert out["base.jpg"][3]["file_format"] == "JPEG"
    for name in ("prog.jpg", "cmyk.jpg", "rot.jpg"):  # not for the device decoder: done here
        assert out[name][1].dtype == torch.uint8 and out[name][3]["_cpu_decoded"] is True
    assert out["p.png"][1].dtype == torch.uint8 and "_cpu_decoded" not in out["p.png"][3]


def test_decode_gpu_is_refused_by_name_where_it_cannot_run():
    pt = pixel_transform(_backbone("tiny-cnn").transform)
    orig = parse_view("original")
    assert resolve_decode("auto", device_type="cpu", view=orig, pixels=pt) == "cpu"
    assert resolve_decode("auto", device_type="cuda", view=orig, pixels=pt) == "gpu"
    assert resolve_decode("auto", device_type="cuda", view=parse_view("hflip"), pixels=pt) == "cpu"
    with pytest.raises(ValueError, match="view 'jpeg:q=50'"):
        resolve_decode("gpu", device_type="cuda", view=parse_view("jpeg:q=50"), pixels=pt)
    with pytest.raises(ValueError, match="valid: auto, cpu, gpu"):
        resolve_decode("fast", device_type="cpu", view=parse_view("original"), pixels=pt)


def _mixed_source(root, n: int = 10):
    """JPEGs of several sizes, a PNG, a progressive and a CMYK JPEG, and a corrupt one."""
    for i in range(n):
        engine = root / ("real" if i % 2 else "fake")
        engine.mkdir(parents=True, exist_ok=True)
        _photo(180 + 40 * (i % 3), 160 + 30 * (i % 2), seed=i).save(engine / f"{i}.jpg", quality=90)
    _photo(150, 200, 50).save(root / "real" / "p.png")
    _photo(170, 170, 51).save(root / "real" / "prog.jpg", quality=90, progressive=True)
    _photo(190, 150, 52).convert("CMYK").save(root / "fake" / "cmyk.jpg", quality=90)
    good = (root / "fake" / "0.jpg").read_bytes()
    (root / "fake" / "bad.jpg").write_bytes(good[: len(good) // 2])  # truncated


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_decode_gpu_and_cpu_banks_agree_and_a_corrupt_jpeg_fails_alone(tmp_path, workers):
    """On the CPU, --decode gpu runs torchvision's CPU JPEG decoder; the measured
    agreement with the PIL path is cosine >= 0.999 per row (docs/embedding.md)."""
    from facebank.embed import FeatureBank, embed_source

    src = tmp_path / "src"
    _mixed_source(src)
    banks = {}
    for mode in ("cpu", "gpu"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = embed_source(
                src, backbone="tiny-cnn", out=tmp_path / f"{mode}.zarr", device="cpu",
                batch_size=6, num_workers=workers, progress=False, decode=mode, dtype="float32",
            )  # fmt: skip
        assert s.embedded == 13 and [p for p, _ in s.failed] == ["fake/bad.jpg"]
        assert "truncated" in s.failed[0][1]
        assert s.runtime["decode"] == mode
        banks[mode] = FeatureBank.open(tmp_path / f"{mode}.zarr")
        assert banks[mode].meta["embed_runtime"]["workers"] == workers
    assert s.decoded_on_cpu == 2  # the progressive and the CMYK JPEG
    cpu, gpu = banks["cpu"], banks["gpu"]
    assert list(cpu.paths) == list(gpu.paths) and list(cpu.sha256) == list(gpu.sha256)
    cos = _cos(cpu.load_features(), gpu.load_features())
    assert cos.min() >= 0.999, cos
    on_cpu = [i for i, p in enumerate(cpu.paths) if p.endswith((".png", "prog.jpg", "cmyk.jpg"))]
    np.testing.assert_array_equal(
        cpu.load_features()[on_cpu], gpu.load_features()[on_cpu]
    )  # decoded by the same code on both paths


def test_cli_decode_threads_workers_and_the_verbose_runtime_line(tmp_path, caplog):
    import logging

    from typer.testing import CliRunner

    from facebank.cli import app
    from facebank.embed import FeatureBank

    src = tmp_path / "src"
    _mixed_source(src, n=4)
    out = tmp_path / "b.zarr"
    args = ["-v", "embed", str(src), "-b", "tiny-cnn", "-o", str(out), "--device", "cpu"]
    args += ["--decode", "gpu", "--workers", "0", "--threads", "1", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="facebank.embed.runner.local"):
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    # -v shows INFO logs on stderr: the plan is one of them
    assert "decode gpu (given workers and threads)" in caplog.text
    assert "JPEGs decoded on the CPU" in res.output
    rt = FeatureBank.open(out).meta["embed_runtime"]
    assert (rt["workers"], rt["torch_threads"], rt["decode"]) == (0, 1, "gpu")


def test_ray_decode_tasks_send_uint8_and_the_actor_matches_the_local_encoder(
    tmp_path, monkeypatch, request
):
    """The Ray engine's two halves, called in this process (no cluster needed). Both sides
    run as many torch threads (the actor takes its count from OMP_NUM_THREADS, the local
    plan honours it too): the features' last bits depend on the count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # (the actor sets this process's torch threads, as it would its own worker's)
    request.addfinalizer(lambda n=torch.get_num_threads(): torch.set_num_threads(n))
    from facebank.embed.runner.loader import Transforms
    from facebank.embed.runner.local import encode_images
    from facebank.ray_engine.embedding import _decode_batch, _EncodeBatches

    bb = _backbone("tiny-cnn")
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.jpg"))
        _photo(200 + 30 * i, 180, seed=i).save(files[-1], quality=90)
    files.append(str(tmp_path / "missing.jpg"))
    view = parse_view("original")
    batch = _decode_batch(
        {"index": np.arange(4), "file": np.asarray(files)},
        view=view,
        transform=Transforms([pixel_transform(bb.transform)]),
        draft_size=view.draft_size(bb.input_size),
    )
    assert batch["pixels_0"].dtype == np.uint8 and list(batch["reason"][:3]) == ["", "", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = _EncodeBatches(dict(bb.spec), None, "cpu")(batch)["features"][:3]
        local = encode_images(files[:3], backbone="tiny-cnn", device="cpu", batch_size=3)
    np.testing.assert_array_equal(feats, local.features)


def test_the_ray_engine_refuses_threads_and_decode_gpu_by_name():
    from facebank.embed.runner.options import EmbedOptions
    from facebank.ray_engine.embedding import RayOptions, ray_options_for

    with pytest.raises(ValueError, match="--threads"):
        ray_options_for(EmbedOptions(threads=2), RayOptions())
    with pytest.raises(ValueError, match="--decode gpu"):
        ray_options_for(EmbedOptions(decode="gpu"), RayOptions())
    assert ray_options_for(EmbedOptions(decode="cpu"), RayOptions()) is not None


# ---------------------------------------------------------------- the heap
_FAULTS = """
import resource, sys, torch
from facebank.core.memory import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "untouched")

def batch():  # a model's activations: 64 MiB and 21 MiB, allocated, written, freed
    x = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    y = torch.empty(21 << 20, dtype=torch.uint8).fill_(1)
    del x, y

for _ in range(10):  # warm-up: the heap grows to what a batch needs
    batch()
usage = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(10):  # the next batches
    batch()
after = resource.getrusage(resource.RUSAGE_SELF)
print(after.ru_minflt - usage.ru_minflt, after.ru_maxrss - usage.ru_maxrss)
"""


def _faults(mode: str, **env: str) -> tuple[str, int, int]:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


def test_freed_memory_is_kept_so_the_next_batch_does_not_fault_its_buffers_in_again():
    """glibc gives freed buffers of a batch (85 MiB) back to the kernel and faults the
    next batch's in page by page (21,760 pages); kept, the next batches reuse them, and
    the process grows no further once warm."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the heap is tuned on glibc only")
    _, untouched, _ = _faults("plain")
    heap, kept, grew_kib = _faults("keep")
    assert untouched >= 10 * 21_760 / 2, untouched  # (huge pages would fault less)
    assert heap == "kept" and kept < 1_000, kept
    assert grew_kib < 1024, grew_kib
    assert _faults("keep", FACEBANK_MALLOC="system")[0] == "system"


def test_the_plan_records_the_heap_and_says_it_with_v():
    plan = plan_threads(device_type="cpu", cores=2, heap="kept")
    assert plan.as_dict()["heap"] == "kept"
    assert "freed memory kept for the next batch" in plan.describe()
    assert "heap: system" in plan_threads(device_type="cpu", cores=2).describe()


# ---------------------------------------------------------------- several backbones
def test_several_backbones_send_uint8_plan_threads_and_refuse_decode_gpu(tmp_path, monkeypatch):
    """The several-backbones engine honours --threads and --workers as embed does (the plan
    recorded in each bank), moves uint8 pixels to every backbone, and refuses --decode
    gpu in one line naming itself."""
    from facebank.embed import FeatureBank, embed_source
    from facebank.embed.runner import loader
    from facebank.embed.runner.multi import embed_source_multi

    src = tmp_path / "src"
    _mixed_source(src, n=4)
    sent = []
    real_collate = loader.collate_each

    def spy(batch):
        out = real_collate(batch)
        sent.extend(x.dtype for x in out["x"] or [])
        return out

    monkeypatch.setattr("facebank.embed.runner.multi.collate_each", spy)
    names, outs = ["tiny-cnn", "tiny-vit"], [tmp_path / "c.zarr", tmp_path / "v.zarr"]
    kw = {"device": "cpu", "batch_size": 4, "progress": False, "dtype": "float32"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="--decode 'gpu' is not supported by the several-b"):
            embed_source_multi(src, backbones=names, outs=outs, decode="gpu", **kw)
        assert not any(o.exists() for o in outs)  # refused before any work
        summaries = embed_source_multi(
            src, backbones=names, outs=outs, threads=1, num_workers=0, **kw
        )
        # (tiny-cnn has the larger input: the JPEG draft size of both runs is its)
        single = embed_source(src, backbone="tiny-cnn", out=tmp_path / "one.zarr", threads=1, **kw)
    assert sent and set(sent) == {torch.uint8}
    for s, out in zip(summaries, outs, strict=True):
        rt = FeatureBank.open(out).meta["embed_runtime"]
        assert s.runtime == rt and (rt["workers"], rt["torch_threads"]) == (0, 1)
        assert rt["chosen"] == "given workers and threads" and rt["decode"] == "cpu"
    # uint8 pixels normalised by each backbone's Encoder: the one-backbone bank exactly
    cnn, one = FeatureBank.open(outs[0]), FeatureBank.open(tmp_path / "one.zarr")
    assert single.embedded == summaries[0].embedded == 7
    np.testing.assert_array_equal(cnn.load_features(), one.load_features())


def test_resuming_with_another_torch_thread_count_warns_and_the_same_count_does_not(tmp_path):
    """On a CPU the features depend, in the last bits, on how many threads share a
    convolution: a resume with another --threads says so; with the same, or with nothing
    left to embed, it is silent (resumes with the same settings are bit-identical:
    tests/test_embed_cli.py)."""
    from facebank.core.errors import ResumeWarning
    from facebank.embed import FeatureBank, embed_source

    src = tmp_path / "src"
    _mixed_source(src, n=8)
    (src / "fake" / "bad.jpg").unlink()  # (a failed file is retried: there would be work left)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    late = [f for f in files if f.name in ("6.jpg", "7.jpg")]
    for f in late:  # the first run sees the other images only
        f.rename(f.with_suffix(".later"))
    kw = {"backbone": "tiny-cnn", "device": "cpu", "batch_size": 4, "progress": False}
    kw |= {"num_workers": 0, "dtype": "float32"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_source(src, out=tmp_path / "a.zarr", threads=2, **kw)
        embed_source(src, out=tmp_path / "b.zarr", threads=2, **kw)
    for f in late:
        f.with_suffix(".later").rename(f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embed_source(src, out=tmp_path / "a.zarr", threads=1, **kw)
        embed_source(src, out=tmp_path / "b.zarr", threads=2, **kw)
        embed_source(src, out=tmp_path / "a.zarr", threads=2, **kw)  # nothing left to embed
    said = [str(w.message) for w in caught if issubclass(w.category, ResumeWarning)]
    assert len(said) == 1 and "a.zarr" in said[0] and "--threads 2" in said[0], said
    for name in ("a.zarr", "b.zarr"):
        assert len(FeatureBank.open(tmp_path / name)) == 11
    # (a run with nothing to embed leaves the runtime of the run that made the rows)
    assert FeatureBank.open(tmp_path / "a.zarr").meta["embed_runtime"]["torch_threads"] == 1


def test_an_unknown_decode_mode_is_refused_by_every_engine_before_any_bank_exists(tmp_path):
    """The options object checks --decode, so no engine starts work on a mode it would
    then drop or fail on (the local engine used to create the bank first)."""
    from facebank.embed import embed_source
    from facebank.embed.runner.multi import embed_source_multi
    from facebank.embed.runner.options import EmbedOptions
    from facebank.ray_engine.embedding import RayOptions, ray_options_for

    src = tmp_path / "src"
    _mixed_source(src, n=2)
    with pytest.raises(ValueError, match="--decode 'fast' is not valid; valid: auto, cpu, gpu"):
        embed_source(src, backbone="tiny-cnn", out=tmp_path / "a.zarr", decode="fast")
    with pytest.raises(ValueError, match="--decode 'fast' is not valid"):
        embed_source_multi(
            src, backbones=["tiny-cnn", "tiny-vit"], outs=[tmp_path / "c", tmp_path / "v"],
            decode="fast",
        )  # fmt: skip
    with pytest.raises(ValueError, match="--decode 'fast' is not valid"):
        ray_options_for(EmbedOptions(decode="fast"), RayOptions())
    assert not any((tmp_path / name).exists() for name in ("a.zarr", "c", "v"))
