"""The distribution installs exactly one top-level name, `facebank`, with every subpackage."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("embed", "heads", "analysis", "commands")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    pytest.importorskip("setuptools", minversion="77")
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = out.glob("facebank-*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_one_top_level_name(wheel_names):
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"facebank"}


def test_every_subpackage_and_the_shipped_data_are_in_the_wheel(wheel_names):
    packages = sorted(
        "facebank/" + str(p.parent.relative_to(ROOT))
        for layer in LAYERS
        for p in (ROOT / layer).rglob("__init__.py")
    )
    for pkg in packages:
        assert f"{pkg}/__init__.py" in wheel_names, f"{pkg} missing from pyproject packages"
    assert "facebank/cli.py" in wheel_names and "facebank/__main__.py" in wheel_names
    assert "facebank/data/engine_dates.csv" in wheel_names
    assert not any(n.startswith("facebank/tests/") for n in wheel_names)
