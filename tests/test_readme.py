"""The README's Python code runs as written on a bank made by the README's workflow.

The workflow's first command (``facebank embed faces/ --backbone ... --out faces.zarr``)
runs on a generated ``faces/`` folder with the random-weight ``tiny-cnn`` backbone in
place of CLIP (no download), then every ``python`` block of the README runs in that
folder, in order, in one namespace.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facebank.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def _embed_command() -> list[str]:
    """The workflow's plain embed command, with ``tiny-cnn`` for the backbone."""
    for block in _blocks("bash"):
        for line in block.splitlines():
            if line.startswith("facebank embed ") and "--view" not in line:
                args = shlex.split(line.split("#")[0])[1:]
                args[args.index("--backbone") + 1] = "tiny-cnn"
                return args
    raise AssertionError("the README has no `facebank embed SOURCE --out BANK` line")


def _faces(root: Path) -> None:
    """``faces/<engine>/*.png``: 40 reals and 40 of one AI engine, small and separable."""
    rng = np.random.default_rng(0)
    for engine, base in (("real", 70), ("sdxl", 180)):
        (root / engine).mkdir(parents=True)
        for i in range(40):
            arr = np.clip(base + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / engine / f"{i}.png")


def test_readme_python_runs_on_the_readme_workflow_bank(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _embed_command()
    _faces(tmp_path / args[1].rstrip("/"))
    res = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    blocks = _blocks("python")
    assert blocks, "the README has no python block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # what the example promises: one score and one 0/1 flag per validation row
    assert namespace["scores"].shape == (len(namespace["val"]),)
    assert set(np.unique(namespace["flags"])) <= {0, 1}
    assert namespace["head"].calibration_["split"] == "val"
