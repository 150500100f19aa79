"""analysis.audit: metadata shortcuts are named on a confounded set, not invented on a control."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facebank.analysis.audit import VERDICTS, audit, audit_verdict, straddling_groups
from facebank.core.errors import BankError, DataError
from facebank.embed.bank.bank import FeatureBank
from facebank.embed.inputs.metadata import metadata_columns, read_metadata
from facebank.testing import synthetic_backbone

N_PER_CLASS = 70


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """A smooth random texture (photo-like: it compresses like one)."""
    small = rng.integers(0, 256, size=(side // 8 + 1, side // 8 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


def _write(img: np.ndarray, path: Path, fmt: str, quality: int = 90) -> None:
    im = Image.fromarray(img)
    if fmt == "JPEG":
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path, format="PNG")


def _make_bank(tmp: Path, *, confounded: bool, seed: int = 0) -> tuple[FeatureBank, np.ndarray]:
    """Reals and fakes; confounded: reals JPEG 200 px, fakes PNG 128 px (same pixel statistics).
    Control: both JPEG q90 at 160 px; fakes are tinted (the only difference is in the pixels).

    Features are the channel means plus noise. Returns the bank and a per-row "pixel"
    score (mean red minus mean blue).
    """
    rng = np.random.default_rng(seed)
    root = tmp / ("confounded" if confounded else "control")
    rows, paths, labels, engines, pixel, feats = [], [], [], [], [], []
    for label in (0, 1):
        engine = "real" if label == 0 else "gan"
        (root / engine).mkdir(parents=True)
        for i in range(N_PER_CLASS):
            side = (200 if label == 0 else 128) if confounded else 160
            img = _texture(rng, side).astype(np.int16)
            if not confounded and label == 1:
                img[..., 0] += 20
                img[..., 2] -= 20
            img = np.clip(img, 0, 255).astype(np.uint8)
            fmt = ("JPEG" if label == 0 else "PNG") if confounded else "JPEG"
            path = root / engine / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            _write(img, path, fmt)
            rows.append(read_metadata(path))
            paths.append(path.relative_to(root).as_posix())
            labels.append(label)
            engines.append(engine)
            pixel.append(float(img[..., 0].mean() - img[..., 2].mean()))
            feats.append([*img.reshape(-1, 3).mean(axis=0) / 255.0, rng.normal()])
    n = len(paths)
    bank = FeatureBank.create(tmp / f"{root.name}.zarr", backbone=synthetic_backbone(4))
    bank.append(
        np.asarray(feats, dtype=np.float32),  # channel means: a head can learn the tint
        labels=labels,
        engines=engines,
        paths=paths,
        splits=[""] * n,
        sha256=[hashlib.sha256(p.encode()).hexdigest() for p in paths],
        columns=metadata_columns(rows),
    )
    bank.close()
    return FeatureBank.open(tmp / f"{root.name}.zarr"), np.asarray(pixel)


@pytest.fixture(scope="module")
def confounded(tmp_path_factory):
    return _make_bank(tmp_path_factory.mktemp("audit"), confounded=True)


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return _make_bank(tmp_path_factory.mktemp("audit"), confounded=False)


def test_confounded_dataset_is_called_confounded_naming_format_and_size(confounded):
    bank, pixel = confounded
    res = audit(bank, scores={"pixels": (pixel, 0.0)}, seed=0)
    assert res.verdict == "confounded"
    assert "file_format" in res.carriers
    assert {"width", "height"} & set(res.carriers)
    assert res.metadata_auc == pytest.approx(1.0)
    assert res.metadata_model["tpr"] == pytest.approx(1.0)
    # the classes are perfectly separated by the files: no test row is uncertain
    assert res.uncertain_rows == 0
    assert res.heads["pixels"]["uncertain_auc"] is None
    assert "too few" in res.uncertain["note"]
    # per-class distributions say what differs
    dist = res.distributions["class"]
    assert dist["real"]["formats"] == {"JPEG": 1.0}
    assert dist["AI-generated"]["formats"] == {"PNG": 1.0}
    assert dist["real"]["short_side_q"] == [200, 200, 200]
    assert dist["AI-generated"]["jpeg_quality_q"] == []


def test_control_differing_only_in_pixels_is_not_called_confounded(control):
    bank, pixel = control
    res = audit(bank, scores={"pixels": (pixel, 0.0)}, seed=0)
    assert res.verdict == "no metadata shortcut found", res.reason
    assert res.carriers == []
    props = {p["name"]: p for p in res.properties}
    for name in ("file_format", "width", "height", "jpeg_quality", "pil_mode"):
        assert props[name]["constant"], name  # reported as constant, never a crash
        assert props[name]["auc_alone"] is None
    # the files cannot tell: most test rows are uncertain and the pixel score still works
    assert res.uncertain_rows >= 0.8 * res.uncertain["n_test"]
    assert res.heads["pixels"]["uncertain_auc"] > 0.95


@pytest.mark.slow  # the four-panel figure: ~10 s on a loaded 2-core machine
def test_write_puts_verdict_keys_in_metrics_json_and_a_figure(confounded, tmp_path):
    bank, pixel = confounded
    res = audit(bank, scores={"pixels": (pixel, 0.0)})
    run = res.write(tmp_path / "audit-run")
    m = json.loads((run / "metrics.json").read_text())["audit"]
    assert m["verdict"] == "confounded"
    assert m["metadata_auc"] == pytest.approx(1.0)
    assert "file_format" in m["carriers"]
    assert m["uncertain_rows"] == 0
    assert "uncertain_auc" in m["heads"]["pixels"]
    assert (run / "audit.png").stat().st_size > 10_000
    md = (run / "audit.md").read_text()
    assert "Verdict: confounded" in md and "constant" in md
    assert (run / "uncertain_rows.csv").read_text().startswith("path,engine,label")


def test_verdict_rule_thresholds():
    props = [
        {"name": "file_format", "constant": False, "auc_alone": 0.95, "auc_ci": [0.9, 0.99]},
        {"name": "width", "constant": False, "auc_alone": 0.72, "auc_ci": [0.55, 0.85]},
        {"name": "has_icc", "constant": True, "auc_alone": None, "auc_ci": None},
    ]
    assert audit_verdict(0.97, [0.93, 0.99], props) == ("confounded", ["file_format"])
    assert audit_verdict(0.92, [0.70, 0.99], props)[0] == "partly confounded"
    assert audit_verdict(0.75, [0.65, 0.85], props)[0] == "partly confounded"
    assert audit_verdict(0.70, [0.45, 0.90], props) == ("no metadata shortcut found", [])
    # no single property qualifies: the strongest ones are named together
    weak = [dict(p, auc_ci=[0.5, 0.8]) for p in props]
    assert audit_verdict(0.95, [0.9, 1.0], weak)[1] == ["file_format", "width"]
    assert set(VERDICTS) == {"confounded", "partly confounded", "no metadata shortcut found"}


def test_straddling_groups_listed():
    groups = np.array(["bush", "bush", "blair", "blair", "", ""])
    splits = np.array(["train", "test", "val", "val", "train", "test"])
    out = straddling_groups(groups, splits)
    assert out == [{"group": "bush", "rows": 2, "train": 1, "val": 0, "test": 1}]


def test_bank_without_metadata_values_names_backfill(tmp_path):
    from facebank.embed import write_bank

    bank = write_bank(
        tmp_path / "arrays.zarr",
        np.zeros((4, 2), np.float32),
        labels=[0, 0, 1, 1],
        engines=["real", "real", "gan", "gan"],
        splits=["train", "test", "train", "test"],
    )
    with pytest.raises((BankError, DataError), match="backfill"):
        audit(bank)


def test_bad_band_is_refused(confounded):
    bank, _ = confounded
    with pytest.raises(DataError, match="band"):
        audit(bank, band=(0.9, 0.1))


@pytest.mark.slow  # trains a head, audits, draws the figure: ~30 s on a loaded 2-core machine
def test_cli_audit_with_a_train_run_scores_its_head_on_the_same_rows(control, tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app
    from facebank.heads import train_run

    bank, _ = control
    tr = train_run([bank], head="linear", out=tmp_path / "train", seed=0)
    result = CliRunner().invoke(
        app,
        ["audit", str(bank.path), "--run", str(tr.run_dir), "--out", str(tmp_path / "a")],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "verdict: no metadata shortcut found" in result.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["audit"]
    assert m["splits_source"].endswith("splits.csv")
    head = m["heads"]["linear"]
    assert head["uncertain_auc"] > 0.8  # the tint is in the pixels: the head still sees it
    assert m["uncertain_rows"] >= 10


def test_cli_audit_of_a_bank_without_metadata_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from facebank.cli import app
    from facebank.embed import write_bank

    write_bank(
        tmp_path / "arrays.zarr",
        np.zeros((4, 2), np.float32),
        labels=[0, 0, 1, 1],
        engines=["real", "real", "gan", "gan"],
        splits=["train", "test", "train", "test"],
    )
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "arrays.zarr")])
    assert result.exit_code == 1
    assert "backfill" in result.output and "Traceback" not in result.output


def test_group_by_folder_level_lists_groups_straddling_the_runs_splits(confounded, tmp_path):
    from facebank.heads import train_run

    bank, pixel = confounded
    run = train_run([bank], head="linear", out=tmp_path / "run", seed=0).run_dir
    # paths are <engine>/<file>: level 0 makes each engine one group, which straddles the
    # run's (ungrouped) splits
    res = audit(bank, run=run, group_by="level:0")
    names = {g["group"] for g in res.straddling_groups}
    assert names == {"real", "gan"}
    assert any("more than one split" in n for n in res.notes)
    with pytest.raises(DataError, match="level:K"):
        audit(bank, group_by="person")


def test_without_a_run_the_split_is_grouped_as_training_would_group_it(tmp_path):
    """Audit without ``run`` splits like ``facebank train --group-by``: groups stay whole."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    paths = [f"{'real' if v == 0 else 'gan'}/p{i % 10}/{i}.png" for i, v in enumerate(y)]
    meta = {
        "file_format": np.where(rng.random(n) < 0.5, "PNG", "JPEG"),
        "width": rng.integers(100, 110, n),
    }
    cols = metadata_columns([{k: v[i].item() for k, v in meta.items()} for i in range(n)])
    bank = FeatureBank.create(tmp_path / "g.zarr", backbone=synthetic_backbone(4))
    bank.append(
        rng.normal(size=(n, 4)).astype(np.float32),
        labels=y,
        engines=np.where(y == 0, "real", "gan"),
        paths=paths,
        splits=[""] * n,
        sha256=[f"{i:064x}" for i in range(n)],
        columns=cols,
    )
    bank.close()
    res = audit(FeatureBank.open(tmp_path / "g.zarr"), group_by="level:1")
    assert res.straddling_groups == [] and "grouped by level:1" in res.splits_source


def test_realfaces_script_skips_cleanly_when_the_data_is_absent(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "examples" / "realfaces_audit.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--data",
            str(tmp_path / "absent"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "skipped: realfaces not found" in out.stderr
    assert not (tmp_path / "r").exists()


def test_rows_without_a_face_are_counted_and_shown_per_class(tmp_path):
    """A face view's misses (face_found = 0) are counted in the notes and shown per class
    and engine; other views show no such column."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    cols = metadata_columns(
        [
            {"file_format": "PNG" if rng.random() < 0.5 else "JPEG", "width": 100 + i % 7}
            for i in range(n)
        ]
    )
    i = np.arange(n)
    # 10 reals (of the first 20 rows) and 30 fakes (rows 100-159) without a face
    cols["face_found"] = np.ones(n, np.int8)
    cols["face_found"][(i < 20) & (y == 0)] = 0
    cols["face_found"][(i >= 100) & (i < 160) & (y == 1)] = 0
    bank = FeatureBank.create(tmp_path / "f.zarr", backbone=synthetic_backbone(4), view="face")
    bank.append(
        rng.normal(size=(n, 4)).astype(np.float32),
        labels=y,
        engines=np.where(y == 0, "real", "gan"),
        paths=[f"p{i}" for i in range(n)],
        splits=[""] * n,
        sha256=[f"{i:064x}" for i in range(n)],
        columns=cols,
    )
    bank.close()
    res = audit(FeatureBank.open(tmp_path / "f.zarr"))
    missed_real = int(((cols["face_found"] == 0) & (y == 0)).sum())
    missed_fake = int(((cols["face_found"] == 0) & (y == 1)).sum())
    assert (missed_real, missed_fake) == (10, 30)
    (note,) = [t for t in res.notes if "no face found" in t]
    assert note.startswith("40 of 200 rows") and "10 real, 30 AI" in note
    d = res.distributions["class"]
    assert d["real"]["face_found"] == 0.9 and d["AI-generated"]["face_found"] == 0.7
    assert res.distribution_rows("engine")[0]["face found"] in (0.7, 0.9)
    assert "face found" in res.markdown()


def test_a_format_1_bank_is_refused_with_the_backfill_command(tmp_path):
    import zarr

    from facebank.embed import write_bank

    write_bank(
        tmp_path / "v1.zarr",
        np.zeros((4, 2), np.float32),
        labels=[0, 0, 1, 1],
        engines=["real", "real", "gan", "gan"],
        splits=["train", "test", "train", "test"],
    )
    # what a version-1 bank looks like: format 1, no metadata columns listed
    g = zarr.open_group(str(tmp_path / "v1.zarr"), mode="r+")
    attrs = dict(g.attrs)
    attrs["facebank_format"], attrs["columns"] = 1, []
    g.attrs.put(attrs)
    with pytest.raises(BankError, match=r"format 1.*facebank bank backfill"):
        audit(FeatureBank.open(tmp_path / "v1.zarr"))


def test_rows_whose_metadata_could_not_be_read_are_kept_and_counted(confounded, tmp_path):
    """A property that could not be read is MISSING with its reason in meta_error: the row
    stays in the audit (its split, its test score) and the notes count it."""
    bank, pixel = confounded
    meta = bank.metadata()
    broken = np.arange(len(bank)) % 10 == 0
    meta["jpeg_quality"] = np.where(broken, -1, meta["jpeg_quality"])
    meta["meta_error"] = np.where(broken, "jpeg_quality: ValueError: no table 0", "")
    full = audit(bank, scores={"pixels": (pixel, 0.0)})
    res = audit(bank, metadata=meta, scores={"pixels": (pixel, 0.0)})
    assert res.splits == full.splits  # no row dropped
    assert res.heads["pixels"]["auc"] == full.heads["pixels"]["auc"]
    (note,) = [t for t in res.notes if "could not be read" in t]
    assert note.startswith(f"{int(broken.sum())} rows")
    assert res.verdict == "confounded"  # format and size still carry the label


def test_realfaces_groups_are_the_source_repository_folders(tmp_path):
    """``--groups source-folder`` writes a manifest group per real photo (no realfaces
    needed: a two-row MANIFEST.csv in its format)."""
    import importlib.util

    script = Path(__file__).parents[1] / "examples" / "realfaces_audit.py"
    spec = importlib.util.spec_from_file_location("realfaces_audit", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.source_folder("real/lfw_krasserm/images__Tony_Blair__Tony_Blair_0001.jpg") == (
        "lfw_krasserm/Tony_Blair"
    )
    assert mod.source_folder("real/python_packages/astronaut.png") == "python_packages"
    (tmp_path / "MANIFEST.csv").write_text(
        "path,class,engine\n"
        "real/lfw_krasserm/images__Tony_Blair__Tony_Blair_0001.jpg,real,lfw\n"
        "fake/sdxl/a.png,fake,sdxl\n"
    )
    manifest = mod.write_manifest(tmp_path, tmp_path / "m", groups="source-folder")
    from facebank.embed.inputs.datasets import scan_source

    items = scan_source(manifest).items
    assert [it.group for it in items] == ["lfw_krasserm/Tony_Blair", ""]
