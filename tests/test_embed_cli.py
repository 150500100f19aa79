"""`facebank embed`, `bank info`, `bank verify` end to end: layouts, bad files, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from _imagecorpus import make_image_corpus
from PIL import Image
from typer.testing import CliRunner

from facebank.cli import app
from facebank.embed import FeatureBank, sha256_file

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _images(root, engines, n, *, seed=0, size=24):
    rng = np.random.default_rng(seed)
    for engine in engines:
        (root / engine).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / engine / f"{i:03d}.jpg", quality=90)


def _embed(*args):
    return runner.invoke(
        app, ["embed", *map(str, args), "--workers", "0", "--no-progress"], catch_exceptions=False
    )


@pytest.fixture(scope="module")
def split_source(tmp_path_factory):
    """train/val/test x {real, sdxl, gan} plus the odd-and-bad corpus under train/odd/."""
    root = tmp_path_factory.mktemp("src")
    for k, split in enumerate(("train", "val", "test")):
        _images(root / split, ("real", "sdxl", "gan"), 3 if split == "train" else 2, seed=k)
    corpus = make_image_corpus(root / "train" / "odd")
    (root / "train" / "odd" / "caption.txt").write_text("a face")
    return root, corpus


@pytest.mark.parametrize("backbone", ["tiny-cnn", "tiny-vit"])
def test_embed_a_split_folder_with_odd_and_bad_files(tmp_path, split_source, backbone):
    root, corpus = split_source
    out = tmp_path / "bank.zarr"
    res = _embed(root, "--backbone", backbone, "--out", out, "--batch-size", "8")
    assert res.exit_code == 0, res.output
    bank = FeatureBank.open(out)
    good = sorted(n for n, e in corpus.items() if e.ok)
    bad = sorted(n for n, e in corpus.items() if not e.ok)
    # byte-identical corpus files are embedded once
    shas = {n: sha256_file(root / "train" / "odd" / n) for n in good}
    n_good_unique = len(set(shas.values()))
    assert len(bank) == 3 * 3 + 2 * 3 * 2 + n_good_unique
    odd = bank.select(engines="odd")
    assert sorted(Path(p).name for p in odd.paths) == sorted(
        {s: n for n, s in sorted(shas.items(), reverse=True)}.values()
    )
    assert set(odd.labels.tolist()) == {1} and set(odd.splits.tolist()) == {"train"}
    failures = {Path(f["path"]).name: f["reason"].lower() for f in bank.failures}
    assert sorted(failures) == bad
    for name in bad:
        assert corpus[name].reason in failures[name], (name, failures[name])
    assert bank.meta["ignored"] == [
        {"path": "train/odd/caption.txt", "reason": "not an image extension (.txt)"}
    ]
    assert np.isfinite(bank.load_features()).all()
    assert bank.backbone["name"] == backbone and bank.dim == bank.backbone["dim"]
    # the CLI summary names the failures
    assert f"failed: train/odd/{bad[0]}" in res.output and "rows in the bank" in res.output
    # plain zarr and xarray read it
    ds = xr.open_zarr(out)
    assert ds.sizes["row"] == len(bank) and set(ds["split"].values.tolist()) == {
        "train",
        "val",
        "test",
    }
    assert zarr.open_group(str(out), mode="r").attrs["count"] == len(bank)
    info = runner.invoke(app, ["bank", "info", str(out)])
    assert info.exit_code == 0, info.output
    for text in ("sdxl", "odd", "train", "val", "test", backbone, "failures", bad[0]):
        assert text in info.output
    ok = runner.invoke(app, ["bank", "verify", str(out)])
    assert ok.exit_code == 0 and "ok:" in ok.output


def test_manifest_variant_and_extra_real_folders(tmp_path):
    _images(tmp_path / "imgs", ("a", "b", "ffhq"), 2)
    (tmp_path / "m.csv").write_text(
        "path,label,engine,split\n"
        "imgs/a/000.jpg,1,a,train\n"
        "imgs/ffhq/001.jpg,0,ffhq,test\n"
        "imgs/b/000.jpg,-1,wild,\n"
        "imgs/b/gone.jpg,1,b,val\n"
    )
    res = _embed(tmp_path / "m.csv", "-b", "tiny-cnn", "-o", tmp_path / "m.zarr")
    assert res.exit_code == 0, res.output
    bank = FeatureBank.open(tmp_path / "m.zarr")
    assert bank.paths.tolist() == ["imgs/a/000.jpg", "imgs/ffhq/001.jpg", "imgs/b/000.jpg"]
    assert bank.labels.tolist() == [1, 0, -1] and bank.splits.tolist() == ["train", "test", ""]
    assert bank.failures == [{"path": "imgs/b/gone.jpg", "reason": "file not found"}]
    res = _embed(tmp_path / "imgs", "-b", "tiny-cnn", "-o", tmp_path / "f.zarr", "--real", "ffhq")
    assert res.exit_code == 0, res.output
    f = FeatureBank.open(tmp_path / "f.zarr")
    labels = dict(zip(f.engines.tolist(), f.labels.tolist(), strict=True))
    assert labels == {"a": 1, "b": 1, "ffhq": 0}


def test_cli_errors_are_one_line_and_leave_no_bank(tmp_path):
    res = _embed(tmp_path / "nope", "-b", "tiny-cnn", "-o", tmp_path / "x.zarr")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "does not exist" in res.output
    _images(tmp_path / "src", ("real",), 1)
    res = _embed(tmp_path / "src", "-b", "no-such-net", "-o", tmp_path / "x.zarr")
    assert res.exit_code == 1 and "tiny-cnn" in res.output  # lists the valid names
    assert not (tmp_path / "x.zarr").exists()
    assert _embed(tmp_path / "src", "-b", "tiny-cnn", "-o", tmp_path / "x.zarr").exit_code == 0
    res = _embed(tmp_path / "src", "-b", "tiny-vit", "-o", tmp_path / "x.zarr")
    assert res.exit_code == 1 and "tiny-cnn" in res.output and "tiny-vit" in res.output


def test_a_second_writer_stops_with_a_clear_message(tmp_path):
    _images(tmp_path / "src", ("real",), 1)
    out = tmp_path / "b.zarr"
    assert _embed(tmp_path / "src", "-b", "tiny-cnn", "-o", out).exit_code == 0
    with FeatureBank.open(out, mode="a"):  # another writer holds the bank
        res = _embed(tmp_path / "src", "-b", "tiny-cnn", "-o", out)
    assert res.exit_code == 1
    assert "being written by another process" in res.output and "resume" in res.output


def _verify(path):
    return runner.invoke(app, ["bank", "verify", str(path)])


def test_verify_finds_damage(tmp_path):
    _images(tmp_path / "src", ("real", "sdxl"), 3)
    good = tmp_path / "good.zarr"
    assert (
        _embed(tmp_path / "src", "-b", "tiny-cnn", "-o", good, "--flush-rows", "2").exit_code == 0
    )
    assert _verify(good).exit_code == 0

    def damaged(name):
        p = tmp_path / name
        shutil.copytree(good, p)
        return p

    p = damaged("chunk.zarr")
    (p / "split" / "c" / "0").unlink()
    res = _verify(p)
    assert (
        res.exit_code == 1 and "chunk file(s) missing" in res.output and "split/c/0" in res.output
    )

    p = damaged("corrupt.zarr")
    (p / "engine" / "c" / "0").write_bytes(b"garbage")
    res = _verify(p)
    assert res.exit_code == 1 and "'engine' has a corrupt chunk" in res.output

    p = damaged("count.zarr")
    doc = json.loads((p / "zarr.json").read_text())
    doc["attributes"]["count"] = 99
    (p / "zarr.json").write_text(json.dumps(doc))
    res = _verify(p)
    assert res.exit_code == 1 and "count=99 but array 'features' has only 6 rows" in res.output

    p = damaged("values.zarr")
    g = zarr.open_group(str(p), mode="r+", use_consolidated=False)
    g["features"][2, 0] = np.nan
    g["label"][1] = 5
    g["split"][0] = "holdout"
    res = _verify(p)
    assert res.exit_code == 1
    for text in ("NaN/inf: rows [2]", "outside {1, 0, -1}: rows [1]", "['holdout']"):
        assert text in res.output, res.output

    p = damaged("attrs.zarr")
    doc = json.loads((p / "zarr.json").read_text())
    del doc["attributes"]["backbone"]
    doc["attributes"]["facebank_format"] = 7
    (p / "zarr.json").write_text(json.dumps(doc))
    res = _verify(p)
    assert (
        res.exit_code == 1
        and "'backbone' is missing" in res.output
        and "expected one of [1, 2]" in res.output
    )
    assert _verify(tmp_path / "nothing.zarr").exit_code == 1


# ------------------------------------------------------------------ resume after kill -9
def _count(out: Path) -> int | None:
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"].get("count")
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_embed_killed_at_several_points_resumes_to_the_uninterrupted_bank(tmp_path):
    src = tmp_path / "src"
    for k, split in enumerate(("train", "test")):
        _images(src / split, ("real", "sdxl", "gan"), 24, seed=10 + k)
    shutil.copy(src / "train/real/000.jpg", src / "test/gan/leak.jpg")  # a cross-split duplicate
    (src / "train/sdxl/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    common = ["-b", "tiny-vit", "--batch-size", "8", "--flush-rows", "8", "--chunk-rows", "32"]
    common += ["--no-progress"]

    ref = tmp_path / "ref.zarr"
    res = runner.invoke(app, ["embed", str(src), "-o", str(ref), "--workers", "0", *common])
    assert res.exit_code == 0, res.output
    reference = FeatureBank.open(ref)
    total = len(reference)
    assert total == 2 * 3 * 24 and len(reference.duplicates) == 1 and len(reference.failures) == 1

    out = tmp_path / "killed.zarr"
    cmd = [
        sys.executable,
        str(REPO / "cli.py"),
        "embed",
        str(src),
        "-o",
        str(out),
        "--workers",
        "1",
        *common,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    seen = []
    # kill just after the bank appears (before its first commit), then the resumed run half
    # way through: the two kinds of point (a third kill mid-run only repeated the second)
    for target in (0, total // 2):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            c = _count(out)
            if c is not None and c >= target:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the killed writer's orphaned decoder worker must not keep the bank locked
        FeatureBank.open(out, mode="a").close()
        n = len(FeatureBank.open(out))
        assert n < total
        seen.append(n)
    assert seen == sorted(seen)
    # the resume itself runs in-process (same command line, no second interpreter start-up)
    res = runner.invoke(app, cmd[2:], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    embedded = re.search(r"embedded\s+│\s+([\d,]+)", res.output).group(1)
    assert int(embedded.replace(",", "")) == total - seen[-1]
    resumed = FeatureBank.open(out)
    assert len(resumed) == total
    for col in ("paths", "engines", "labels", "splits", "sha256"):
        np.testing.assert_array_equal(getattr(resumed, col), getattr(reference, col))
    np.testing.assert_array_equal(resumed.load_features(), reference.load_features())
    assert resumed.digest == reference.digest
    assert resumed.failures == reference.failures
    assert resumed.duplicates == reference.duplicates
    assert _verify(out).exit_code == 0
