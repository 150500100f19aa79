"""Open registries: a head and a backbone from another installed package.

The package is tests/plugins/facebank_plugin_demo (its own pyproject.toml declares the
entry points). The tests install it the way pip would leave it - a ``.dist-info`` with
its ``entry_points.txt`` on ``sys.path`` - and drive the CLI: list, embed, train,
evaluate, score, and load the saved head.
"""

from __future__ import annotations

import configparser
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import facebank.embed.backbones.registry as bb_registry
from facebank.cli import app
from facebank.core import plugins
from facebank.core.errors import FacebankError, HeadError, PluginWarning, UnknownNameError
from facebank.heads import BaseHead, create_head, list_heads, load_head, register_head
from facebank.heads import registry as head_registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = Path(__file__).parent / "plugins" / "facebank_plugin_demo"
RUNNER = CliRunner()


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def _install(site: Path, entry_points: dict[str, dict[str, str]], name="facebank_plugin_demo"):
    """Write ``<name>-0.1.0.dist-info`` under ``site`` as pip would (no network, no build)."""
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1.0\n"
    )
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fresh_registries(monkeypatch):
    """Registries as the built-ins leave them; entry points read again on the next look-up."""
    monkeypatch.setattr(head_registry, "_REGISTRY", dict(head_registry._REGISTRY))
    monkeypatch.setattr(bb_registry, "_REGISTRY", dict(bb_registry._REGISTRY))
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()
    for mod in [m for m in sys.modules if m.startswith("facebank_plugin_demo")]:
        del sys.modules[mod]


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_registries):
    """The demo plugin installed from its pyproject's entry points."""
    site = tmp_path / "site"
    _install(site, _entry_points(PLUGIN / "pyproject.toml"))
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    return site


def _entry_points(pyproject: Path) -> dict[str, dict[str, str]]:
    """The ``[project.entry-points."GROUP"]`` tables (flat ``key = "value"`` TOML)."""
    cp = configparser.ConfigParser()
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(pyproject.read_text())
    prefix = 'project.entry-points."'
    return {
        section[len(prefix) : -1]: {k: v.strip('"') for k, v in cp[section].items()}
        for section in cp.sections()
        if section.startswith(prefix)
    }


def _faces(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for engine, base in (("real", 60), ("sdxl", 190)):
        (root / engine).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / engine / f"{i}.png")
    return root


def test_a_plugin_head_and_backbone_work_in_every_command(installed, tmp_path):
    res = invoke("heads")
    assert res.exit_code == 0, res.output
    assert "demo-centroid" in res.output and "facebank-plugin-demo" in res.output
    res = invoke("backbones", "demo-*")
    assert res.exit_code == 0, res.output
    assert "demo-cnn" in res.output

    src = _faces(tmp_path / "faces")
    bank, run = tmp_path / "faces.zarr", tmp_path / "runs" / "centroid"
    res = invoke("embed", src, "--backbone", "demo-cnn", "--out", bank, "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = invoke(
        "train",
        bank,
        "--head",
        "demo-centroid",
        "--param",
        "temperature=2.0",
        "--fpr",
        "0.05",
        "--out",
        run,
    )
    assert res.exit_code == 0, res.output

    head = load_head(run)
    assert type(head).__name__ == "CentroidHead" and head.temperature == 2.0
    assert head.backbone_["name"] == "demo-cnn"
    res = invoke("evaluate", bank, "--head", run, "--out", tmp_path / "runs" / "eval")
    assert res.exit_code == 0, res.output
    # images are embedded again with the plugin backbone named in the head
    res = invoke(
        "score",
        src / "sdxl" / "0.png",
        src / "real" / "0.png",
        "--head",
        run,
        "--out",
        tmp_path / "s.csv",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 3  # header + two images
    # the CLI embeds the image again with the plugin backbone: the bank row's score (float16)
    assert float(rows[1].split(",")[rows[0].split(",").index("score")]) == pytest.approx(
        float(head.decision_function(_bank_row(bank, "sdxl/0.png"))[0]), rel=1e-3
    )


def _bank_row(bank: Path, suffix: str) -> np.ndarray:
    from facebank.embed import FeatureBank

    b = FeatureBank.open(bank)
    idx = [i for i, p in enumerate(b.paths) if str(p).endswith(suffix)]
    return b.load_features(np.asarray(idx))


def test_a_broken_plugin_warns_once_and_the_built_ins_still_work(
    tmp_path, monkeypatch, fresh_registries
):
    site = tmp_path / "site"
    _install(site, {"facebank.heads": {"gone": "no_such_module_xyz:Head"}}, name="broken_plugin")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(
        PluginWarning,
        match=r"'gone' = 'no_such_module_xyz:Head' from package "
        r"'broken-plugin'.*ModuleNotFoundError",
    ):
        names = list_heads()
    assert {"linear", "knn"} <= set(names) and "gone" not in names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read once: no second warning
        assert create_head("linear").C == 1.0
        with pytest.raises(UnknownNameError, match=r"unknown head 'gone'.*failed to load"):
            create_head("gone")


def test_register_head_refuses_what_load_could_not_rebuild(fresh_registries):
    class Nameless(BaseHead):
        name = "other"

    with pytest.raises(HeadError, match="has name = 'other' but is registered as 'x'"):
        register_head("x", Nameless)
    with pytest.raises(HeadError, match="already registered"):
        register_head("linear", "facebank.heads.linear:LinearHead")
    with pytest.raises(HeadError, match="subclass of facebank.heads.BaseHead"):
        register_head("dict", dict)  # type: ignore[arg-type]

    @register_head("renamed", source="test")
    class Renamed(BaseHead):
        """A head registered by a decorator."""

        name = "renamed"

    assert "renamed" in list_heads()
    assert head_registry.head_info("renamed").description == "A head registered by a decorator."


def test_register_backbone_checks_the_entry(fresh_registries):
    info = bb_registry.backbone_info("tiny-cnn")
    import dataclasses

    with pytest.raises(FacebankError, match="already registered"):
        bb_registry.register_backbone(info)
    with pytest.raises(FacebankError, match="library 'keras' is not one of open_clip, timm"):
        bb_registry.register_backbone(dataclasses.replace(info, name="k", library="keras"))
    with pytest.raises(FacebankError, match="must say test_only=True"):
        bb_registry.register_backbone(dataclasses.replace(info, name="s", test_only=False))
    bb_registry.register_backbone(dataclasses.replace(info, name="tiny-cnn-2", seed=3))
    assert "tiny-cnn-2" in bb_registry.list_backbones("tiny-*")
