import json
import math
import re
import warnings

import numpy as np
import pytest

from facebank.core.errors import FacebankWarning, RunFolderError
from facebank.core.runs import (
    fmt_value,
    markdown_table,
    new_run_dir,
    run_session,
    start_run,
    to_jsonable,
    write_json,
)
from facebank.embed import (
    BackboneMismatchError,
    FacebankError,
    UnknownNameError,
    backbone_id,
    require_same_backbone,
    same_backbone,
)

SPEC = {
    "name": "tiny-cnn",
    "library": "timm",
    "model": "m",
    "pretrained": None,
    "weights_sha256": None,
    "dim": 8,
    "input_size": [3, 32, 32],
}


def test_unknown_name_error_is_a_keyerror_with_a_plain_message():
    err = UnknownNameError("unknown head 'x'; valid: linear, mlp")
    assert isinstance(err, KeyError) and isinstance(err, FacebankError)
    assert str(err) == "unknown head 'x'; valid: linear, mlp"


def test_backbone_identity_ignores_display_name_but_not_input_size():
    assert same_backbone(SPEC, {**SPEC, "name": "renamed", "input_size": (3, 32, 32)})
    other = {**SPEC, "input_size": [3, 64, 64]}
    assert not same_backbone(SPEC, other)
    with pytest.raises(BackboneMismatchError) as info:
        require_same_backbone(SPEC, other, a_name="bank a.zarr", b_name="head run1")
    msg = str(info.value)
    assert "bank a.zarr" in msg and "head run1" in msg and "32px" in msg and "64px" in msg
    assert "tiny-cnn" in backbone_id(SPEC)


def test_to_jsonable_handles_numpy_and_nan():
    out = to_jsonable({"a": np.float32(0.5), "b": np.arange(3), "c": math.nan, "d": (1, 2)})
    assert out == {"a": 0.5, "b": [0, 1, 2], "c": None, "d": [1, 2]}


def test_start_run_writes_config_with_versions(tmp_path):
    run = start_run(tmp_path / "r", command="evaluate", config={"seed": 1})
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"] == "evaluate" and cfg["seed"] == 1 and "numpy" not in cfg["versions"]
    write_json(run / "metrics.json", {"auc": np.float64(0.9)})
    assert json.loads((run / "metrics.json").read_text()) == {"auc": 0.9}
    assert not list(run.glob("*.tmp"))


def test_markdown_table_formats_floats_and_missing():
    md = markdown_table([{"engine": "sdxl", "tpr": 0.98765, "n": 3}, {"engine": "x", "tpr": None}])
    lines = md.splitlines()
    assert lines[0] == "| engine | tpr | n |"
    assert "| sdxl | 0.988 | 3 |" in md and "| x | - | - |" in md
    assert markdown_table([]) == "_(no rows)_\n"


def test_require_one_backbone_names_the_first_bank_and_the_one_that_differs():
    from types import SimpleNamespace

    from facebank.embed import require_one_backbone

    a = SimpleNamespace(path="a.zarr", backbone=SPEC)
    b = SimpleNamespace(path="b.zarr", backbone={**SPEC, "name": "alias"})
    c = SimpleNamespace(path="c.zarr", backbone={**SPEC, "dim": 16})
    assert require_one_backbone([a, b]) is SPEC
    with pytest.raises(BackboneMismatchError, match=r"bank 'a.zarr' .* bank 'c.zarr'"):
        require_one_backbone([a, b, c])
    names = {"a.zarr": "first one", "b.zarr": "second one", "c.zarr": "third one"}
    with pytest.raises(BackboneMismatchError, match="first one .* third one"):
        require_one_backbone([a, b, c], label=lambda x: names[x.path])


# ---------------------------------------------------------------- the one output-folder rule
def _run(path, command="train", **kw):
    return start_run(path, command=command, config={"seed": 0}, **kw)


def test_new_run_dir_is_timestamped_and_never_an_existing_folder(tmp_path):
    a = new_run_dir("neighbours query", root=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("neighbours-query-2")
    a.mkdir()
    b = new_run_dir("neighbours query", root=tmp_path)
    assert b != a and b.name.startswith(a.name) and not b.exists()


def test_start_run_refuses_an_existing_run_and_keeps_it(tmp_path):
    run = _run(tmp_path / "r")
    (run / "head.json").write_text("first")
    with pytest.raises(RunFolderError, match=r"already holds a `train` run.*--overwrite"):
        _run(tmp_path / "r")
    assert (run / "head.json").read_text() == "first"


def test_start_run_overwrite_replaces_a_run_but_never_a_foreign_folder(tmp_path):
    run = _run(tmp_path / "r")
    (run / "head.json").write_text("first")
    _run(tmp_path / "r", overwrite=True)
    assert not (run / "head.json").exists() and (run / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # nothing left aside
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="not a facebank run folder"):
        _run(home, overwrite=True)
    assert (home / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        _run(tmp_path / "file")


def test_start_run_resumes_only_a_run_of_the_same_command(tmp_path):
    run = _run(tmp_path / "r", command="experiment", resume=True)
    (run / "bank.zarr").mkdir()
    assert _run(tmp_path / "r", command="experiment", resume=True) == run
    assert (run / "bank.zarr").is_dir()
    with pytest.raises(RunFolderError, match="`experiment` run"):
        _run(tmp_path / "r", command="train", resume=True)


def test_a_failed_command_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError), run_session():
        _run(tmp_path / "new")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError), run_session():
        (_run(tmp_path / "empty") / "part.csv").write_text("x")
        raise RuntimeError("boom")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_a_failed_overwrite_puts_the_previous_run_back(tmp_path):
    (_run(tmp_path / "r") / "head.json").write_text("first")
    with pytest.raises(RuntimeError), run_session(overwrite=True):
        (_run(tmp_path / "r") / "head.json").write_text("half")
        raise RuntimeError("boom")
    assert (tmp_path / "r" / "head.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    with run_session(overwrite=True):
        (_run(tmp_path / "r") / "head.json").write_text("second")
    assert (tmp_path / "r" / "head.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_a_failed_resumable_run_keeps_its_work_but_not_a_bare_config(tmp_path):
    with pytest.raises(RuntimeError), run_session():
        _run(tmp_path / "bare", command="experiment", resume=True)
        raise RuntimeError("weights missing")
    assert not (tmp_path / "bare").exists()
    with pytest.raises(KeyboardInterrupt), run_session():
        bank = _run(tmp_path / "x", command="experiment", resume=True) / "bank.zarr"
        bank.mkdir()
        (bank / "zarr.json").write_text("{}")
        raise KeyboardInterrupt
    assert (tmp_path / "x" / "bank.zarr" / "zarr.json").is_file()


def test_a_run_folder_being_written_is_refused(tmp_path):
    import fcntl
    import os

    (tmp_path / "r").mkdir()
    fd = os.open(tmp_path / "r", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another command would hold it
    try:
        with pytest.raises(RunFolderError, match="being written by another"):
            _run(tmp_path / "r")
    finally:
        os.close(fd)
    assert not any((tmp_path / "r").iterdir())


def test_warnings_are_shown_once_as_one_line_and_kept_in_metrics(tmp_path):
    lines = []
    with run_session(echo=lines.append) as session:
        run = _run(tmp_path / "r")
        write_json(run / "metrics.json", {"auc": 0.9})
        for _ in range(3):
            warnings.warn(
                "engine 'x' has 2 images:\n  its TPR moves in 50% steps", UserWarning, stacklevel=1
            )
    assert lines == ["warning: engine 'x' has 2 images: its TPR moves in 50% steps"]
    assert session.warnings == [lines[0].removeprefix("warning: ")]
    doc = json.loads((run / "metrics.json").read_text())
    assert doc == {"auc": 0.9, "warnings": session.warnings}
    verbose = []
    with run_session(echo=verbose.append, verbose=True):
        warnings.warn("w", FacebankWarning, stacklevel=1)
    assert verbose[0].startswith("warning: w (FacebankWarning at ") and ".py:" in verbose[0]


def test_fmt_value_is_the_one_number_formatter():
    assert fmt_value(float("nan")) == "n/a" and fmt_value(None) == "n/a"
    assert fmt_value(np.float32(0.12345), pct=True, digits=1) == "12.3%"
    assert fmt_value(0.5) == "0.500" and fmt_value(3) == "3"
    assert "| n/a |" in markdown_table([{"p": float("nan")}])


def test_head_weights_follow_the_umask_like_every_other_file(tmp_path):
    import os

    from facebank.heads import create_head, save_head

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.repeat([0, 1], 20)
    old = os.umask(0o022)
    try:
        path = save_head(create_head("linear").fit(X, y), tmp_path / "h")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert modes["weights.safetensors"] == 0o644 == modes["head.json"]


# ---------------------------------------------------------------- the rule through the CLI
@pytest.fixture(scope="module")
def cli_bank(tmp_path_factory):
    from facebank.testing import synthetic_arrays, write_synthetic_bank

    root = tmp_path_factory.mktemp("cli-runs")
    data = synthetic_arrays({"real": 300, "sdxl": 200, "tiny": 4}, dim=16, seed=3)
    write_synthetic_bank(root / "b.zarr", data)
    return root / "b.zarr"


def _cli(*args, cwd=None):
    import os

    from typer.testing import CliRunner

    from facebank.cli import app

    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def _stderr(res) -> str:
    try:
        return res.stderr
    except ValueError:
        return res.output


@pytest.mark.slow
def test_cli_train_never_overwrites_a_run_silently(cli_bank, tmp_path):
    out = tmp_path / "run"
    first = _cli("train", cli_bank, "--out", out)
    assert first.exit_code == 0, first.output
    weights = (out / "weights.safetensors").read_bytes()
    again = _cli("train", cli_bank, "--out", out, "--param", "C=0.01")
    assert again.exit_code == 1
    err = _stderr(again).strip().splitlines()
    assert len(err) == 1 and "already holds a `train` run" in err[0] and "--overwrite" in err[0]
    assert (out / "weights.safetensors").read_bytes() == weights
    forced = _cli("train", cli_bank, "--out", out, "--param", "C=0.01", "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "config.json").read_text())["params"]["C"] == 0.01
    # no --out: a new timestamped folder each time, never the same one
    a = _cli("train", cli_bank, cwd=tmp_path)
    b = _cli("train", cli_bank, cwd=tmp_path)
    assert a.exit_code == b.exit_code == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("train-") for r in runs)


@pytest.mark.slow
def test_cli_evaluate_warns_once_in_one_line_and_keeps_it(cli_bank, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _cli("train", cli_bank, "--out", run).exit_code == 0
    res = _cli("evaluate", cli_bank, "--head", run, "--out", tmp_path / "ev", "--n-boot", "50")
    assert res.exit_code == 0, res.output
    err = _stderr(res)
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    tiny = [ln for ln in lines if "'tiny'" in ln]
    assert len(tiny) == 1, err
    assert ".py:" not in err and "UserWarning" not in err and "warnings.warn" not in err
    assert (res.output + ("" if err in res.output else err)).count("moves in steps") == 1
    kept = json.loads((tmp_path / "ev" / "metrics.json").read_text())["warnings"]
    assert any("'tiny'" in w for w in kept)
    # a command that fails half-way leaves no run folder behind
    from facebank.analysis import runfolder

    def disk_full(*_a, **_k):
        raise FacebankError("no space left on device")

    monkeypatch.setattr(runfolder, "save_figure", disk_full)  # the one run-folder writer
    bad = _cli("evaluate", cli_bank, "--head", run, "--out", tmp_path / "ev2", "--n-boot", "0")
    assert bad.exit_code == 1 and "no space left" in _stderr(bad)
    assert not (tmp_path / "ev2").exists()


def test_train_run_refuses_an_existing_run_before_training(cli_bank, tmp_path, monkeypatch):
    from facebank.heads import train_run, training

    out = _run(tmp_path / "r")  # an earlier run
    monkeypatch.setattr(training, "create_head", lambda *a, **k: pytest.fail("trained anyway"))
    with pytest.raises(RunFolderError, match="already holds a `train` run"):
        train_run([cli_bank], head="linear", out=out)


@pytest.mark.slow
def test_cli_train_prints_the_tpr_beside_the_fpr_it_realised(cli_bank, tmp_path):
    res = _cli("train", cli_bank, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("val ("))
    assert re.search(r"TPR \d+\.\d% at FPR \d+\.\d\d% \(target 0\.50%\)", line), line
