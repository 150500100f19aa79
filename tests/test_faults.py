"""The fault campaign: bad input and hostile conditions, one test each.

Each test states what happens and what is kept; docs/faults.md is the table of these
and of the faults tested next to their own modules (it names the test for each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facebank.core.errors import DataError, FacebankError, RunFolderError, SourceError
from facebank.core.runs import run_session, start_run
from facebank.embed.inputs.datasets import scan_source

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20 % 256, 10, 10)).save(path)


def _manifest(root: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path = root / "m.csv"
    path.write_text(text, encoding=encoding)
    return path


# ---------------------------------------------------------------- manifests
def test_a_manifest_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    _images(tmp_path, ["real/a.png", "sdxl/b.png"])
    body = "path,label,engine\nreal/a.png,0,real\nsdxl/b.png,1,sdxl\n"
    plain = scan_source(_manifest(tmp_path, body))
    bom = scan_source(_manifest(tmp_path, body, encoding="utf-8-sig"))
    assert (tmp_path / "m.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert [(i.path, i.label, i.engine) for i in bom.items] == [
        (i.path, i.label, i.engine) for i in plain.items
    ]


def test_quoted_commas_stay_inside_their_field(tmp_path):
    _images(tmp_path, ["real/smith, john.png", "sdxl/b.png"])
    src = scan_source(
        _manifest(
            tmp_path,
            'path,label,engine\n"real/smith, john.png",0,real\n"sdxl/b.png","1","sdxl"\n',
        )
    )
    assert [(i.path, i.label) for i in src.items] == [
        ("real/smith, john.png", 0),
        ("sdxl/b.png", 1),
    ]
    assert Path(src.items[0].file).is_file()


@pytest.mark.parametrize(
    "second",
    ["real/a.png", "./real/a.png", "real/../real/a.png", "{root}/real/a.png"],
)
def test_a_duplicate_row_is_refused_whatever_its_spelling(tmp_path, second):
    _images(tmp_path, ["real/a.png"])
    second = second.format(root=tmp_path.resolve().as_posix())
    path = _manifest(tmp_path, f"path,label,engine\nreal/a.png,0,real\n{second},0,real\n")
    with pytest.raises(SourceError, match=r"line 3: path .* is listed again .*line 2"):
        scan_source(path)


def test_missing_columns_are_named_with_the_header_expected(tmp_path):
    path = _manifest(tmp_path, "file,engine\na.png,real\n")
    with pytest.raises(SourceError, match=r"lacks columns \['path', 'label'\].*path,label,engine"):
        scan_source(path)


def test_paths_outside_the_manifest_folder_are_kept_as_written(tmp_path):
    """A manifest may point at images elsewhere (a dataset next to it, an absolute path):
    they are read from there, and the bank records the path as the manifest wrote it."""
    _images(tmp_path / "elsewhere", ["b.png", "c.png"])
    (tmp_path / "ds").mkdir()
    abs_c = (tmp_path / "elsewhere" / "c.png").resolve().as_posix()
    src = scan_source(
        _manifest(tmp_path / "ds", f"path,label,engine\n../elsewhere/b.png,1,x\n{abs_c},0,real\n")
    )
    assert [i.path for i in src.items] == ["../elsewhere/b.png", abs_c]
    assert all(Path(i.file).is_file() for i in src.items)


# ---------------------------------------------------------------- run folders
def _bank(root: Path) -> Path:
    from facebank.testing import synthetic_arrays, write_synthetic_bank

    data = synthetic_arrays({"real": 300, "sdxl": 300}, dim=16, seed=5)
    write_synthetic_bank(root / "b.zarr", data)
    return root / "b.zarr"


@pytest.mark.slow
def test_two_train_runs_into_one_folder_at_once_leave_one_complete_run(tmp_path):
    bank = _bank(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "facebank", "train", str(bank), "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    (loser,) = [err for code, err in results if code == 1]
    last = loser.strip().splitlines()[-1]
    assert last.startswith("error: ") and (
        "being written by another" in last or "already holds a `train` run" in last
    )
    assert "Traceback" not in loser
    from facebank.heads import load_head

    assert load_head(out).threshold_ is not None  # the winner's run, whole
    assert json.loads((out / "config.json").read_text())["command"] == "train"


def test_a_read_only_output_folder_is_one_clear_error(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # what a read-only disk answers
    with pytest.raises(RunFolderError, match=r"cannot write the run folder .*Permission denied"):
        start_run(parent / "run", command="train", config={})


def test_a_read_only_output_folder_on_disk(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        if IS_ROOT:
            pytest.skip("needs permission to mount a tmpfs (root ignores chmod)")
        mnt.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match="cannot write the run folder"), run_session():
            start_run(mnt / "run", command="train", config={})
        assert not (mnt / "run").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        mnt.chmod(0o755)


# ---------------------------------------------------------------- features
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_features_offered_to_heads_are_a_clear_error(bad):
    from facebank.heads import create_head, list_heads

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 8)).astype(np.float32)
    y = np.repeat([0, 1], 40)
    Xbad = X.copy()
    Xbad[3, 2] = bad
    for name in list_heads():
        if name in ("mlp", "wide-mlp", "prototype"):
            continue  # torch heads: same shared validation, seconds each; test_heads covers fit
        with pytest.raises(DataError, match=r"1 row\(s\) with NaN or inf"):
            create_head(name).fit(Xbad, y)
        head = create_head(name).fit(X, y)
        with pytest.raises(DataError, match="NaN or inf"):
            head.decision_function(Xbad)
    assert issubclass(DataError, FacebankError)  # the CLI prints it as one line, exit 1
