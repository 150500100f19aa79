"""``score --engine ray`` in its own process: --workers/--gpus-per-worker reach the actors,
and a successful run that starts and stops its own Ray cluster prints no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_successful_ray_scoring_run_prints_no_traceback(tmp_path):
    from facebank.embed import FeatureBank, embed_source
    from facebank.heads import train_run

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for engine, shift in (("real", 0), ("sdxl", 60)):
        (data / engine).mkdir(parents=True)
        for i in range(6):
            px = rng.integers(0, 196, (32, 32, 3), dtype=np.uint8) + shift
            Image.fromarray(px.astype(np.uint8)).save(data / engine / f"{i:02d}.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_source(data, backbone="tiny-cnn", out=tmp_path / "b.zarr", num_workers=0,
                     progress=False)  # fmt: skip
        head = train_run([FeatureBank.open(tmp_path / "b.zarr")], head="linear",
                         out=tmp_path / "head").run_dir  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    cmd = [
        sys.executable, "-m", "facebank", "score", str(data / "sdxl"), "--head", str(head),
        "--engine", "ray", "--workers", "1", "--gpus-per-worker", "0", "--device", "cpu",
        "--out", str(tmp_path / "scores.csv"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "scored 6" in run.stderr
    assert "Traceback" not in run.stderr and "not initialized" not in run.stderr, run.stderr
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 7
