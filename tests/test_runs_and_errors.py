import json
import math

import numpy as np
import pytest
from facebank.embed.runs import markdown_table, start_run, to_jsonable, write_json
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
