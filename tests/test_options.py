"""Every command-line parameter is honoured or refused in one line; none is silently ignored.

``EXPECT`` lists every parameter of every command (walked from the typer app) with what
it does: ``subject`` (what is read or written), ``config:KEY`` (recorded under KEY in the
run's config.json or the bank), ``does`` (changes what the command does or prints), or
``refused`` (some engine cannot honour it: ``REFUSALS`` holds a command line for each,
run below: exit 1, one line naming the option and the engine, nothing written). A new
parameter without an entry fails ``test_every_parameter_has_an_expectation``.
"""

from __future__ import annotations

import json

import click
import pytest
import typer
from typer.testing import CliRunner

from facebank.cli import app

RUN = {"out": "subject", "overwrite": "does", "storage_options": "does"}
EXPECT: dict[str, dict[str, str]] = {
    "": {"verbose": "does"},
    "audit": {**RUN, "banks": "subject", "run": "subject", "band": "config:band",
              "fpr": "config:fpr", "seed": "config:seed", "group_by": "config:group_by",
              "cv": "config:cv", "cv_head": "config:cv_heads"},
    "backbones": {"pattern": "does", "no_test": "does"},
    "bank backfill": {"bank": "subject", "source": "subject", "max_listed": "does",
                      "storage_options": "does"},
    "bank consolidate": {"bank": "subject", "storage_options": "does"},
    "bank export": {**RUN, "bank": "subject", "format": "does", "rows_per_file": "does"},
    "bank import": {**RUN, "src": "subject", "engine": "does", "label": "does"},
    "bank info": {"bank": "subject", "max_listed": "does", "storage_options": "does"},
    "bank verify": {"bank": "subject", "storage_options": "does"},
    "demo": {"out": "subject", "small": "does", "device": "config:device",
             "storage_options": "does"},
    "embed": {
        "source": "subject", "backbone": "config:backbone", "out": "subject",
        "view": "config:view", "device": "refused", "batch_size": "does",
        "workers": "does", "engine": "does", "address": "refused",
        "gpus_per_worker": "refused", "partition_rows": "refused",
        "storage_options": "does", "weights": "config:backbone",
        "image_size": "config:backbone", "layer": "config:backbone", "real": "does",
        "compile_": "refused", "dtype": "config:dtype", "progress": "does",
        "flush_rows": "refused", "chunk_rows": "config:chunk_rows",
        "decode": "does", "threads": "does",
    },
    "evaluate": {**RUN, "banks": "subject", "head": "subject", "n_boot": "config:n_boot",
                 "seed": "config:seed"},
    "experiment": {
        **RUN, "source": "config:source", "backbone": "config:backbones",
        "views": "config:views", "controls": "config:views", "heads": "config:heads",
        "new_engine": "config:new_engine", "real": "config:real_names",
        "device": "config:device", "weights": "refused", "seed": "config:seed",
        "image_size": "refused", "protocols": "config:protocols",
        "group_by": "config:group_by", "engine_dates": "config:engine_dates",
    },
    "explain": {**RUN, "head": "subject", "images": "subject", "baseline": "does",
                "n_steps": "does", "bank": "subject", "row": "does", "weights": "does",
                "device": "does"},
    "heads": {"name": "does"},
    "neighbours clusters": {**RUN, "banks": "subject", "k": "config:k", "n_boot": "does",
                            "seed": "config:seed", "clusters": "does",
                            "silhouette_max": "does", "factory": "does", "metric": "does",
                            "device": "does", "nprobe": "does", "ef_search": "does",
                            "k_factor": "does", "index": "subject"},
    "neighbours index": {**RUN, "banks": "subject", "factory": "does", "metric": "does",
                         "device": "does", "nprobe": "does", "k_factor": "does",
                         "on_disk": "does", "chunk_rows": "does", "seed": "does"},
    "neighbours leaks": {**RUN, "banks": "subject", "threshold": "does", "k": "does",
                         "run": "subject", "factory": "does", "device": "does",
                         "nprobe": "does", "k_factor": "does", "index": "subject"},
    "neighbours map": {**RUN, "banks": "subject", "method": "does", "max_points": "does",
                       "seed": "does"},
    "neighbours query": {**RUN, "bank": "subject", "images": "subject", "rows": "does",
                         "k": "does", "factory": "does", "metric": "does", "device": "does",
                         "weights": "does"},
    "ood": {**RUN, "head": "subject", "known": "subject", "new": "subject",
            "k": "config:k", "flag_fpr": "config:flag_fpr", "seed": "config:seed"},
    "protocol": {**RUN, "protocol": "does", "banks": "subject", "head": "config:head",
                 "param": "does", "seed": "config:seed", "fpr": "config:fpr",
                 "n_boot": "does", "shots": "does", "draws": "does", "shot_weight": "does",
                 "engine_dates": "does", "window": "does"},
    "report": {**RUN, "run_dirs": "subject", "title": "does"},
    "robustness": {**RUN, "banks": "subject", "head": "subject", "n_boot": "config:n_boot",
                   "strict": "does", "seed": "config:seed"},
    "score": {
        "inputs": "subject", "head": "subject", "out": "subject", "views": "does",
        "prevalence": "does", "weights": "does", "device": "refused",
        "batch_size": "does", "engine": "does", "address": "refused",
        "format_": "refused", "partition_rows": "refused", "workers": "refused",
        "gpus_per_worker": "refused", "storage_options": "does",
    },
    "triage": {
        **RUN, "new": "subject", "run": "subject", "append": "subject",
        "engine_name": "config:engine_name", "shots": "config:shots", "draws": "config:draws",
        "target_tpr": "config:target_tpr", "group_by": "config:group_by",
        "few_shot_heads": "config:few_shot_heads", "seed": "config:seed", "device": "does",
    },
    "train": {**RUN, "banks": "subject", "head": "config:head", "param": "config:params",
              "seed": "config:seed", "fpr": "config:fpr", "blocks": "does",
              "group_by": "config:group_by", "balance": "config:balance"},
}  # fmt: skip

# One command line per refused parameter: (command, parameter, argv, the engine named).
REFUSALS = [
    ("embed", "device", ["--engine", "ray", "--device", "cuda:1"], "ray"),
    ("embed", "compile_", ["--engine", "ray", "--compile"], "ray"),
    ("embed", "flush_rows", ["--engine", "ray", "--flush-rows", "10"], "ray"),
    ("embed", "address", ["--address", "auto"], "local"),
    ("embed", "gpus_per_worker", ["--gpus-per-worker", "1"], "local"),
    ("embed", "partition_rows", ["--partition-rows", "10"], "local"),
    ("experiment", "weights", ["--backbone", "tiny-cnn,tiny-vit", "--weights", "w.pt"],
     "several-backbones"),
    ("experiment", "image_size", ["--backbone", "tiny-cnn,tiny-vit", "--image-size", "64"],
     "several-backbones"),
    ("score", "device", ["--engine", "ray", "--device", "cuda:0"], "ray"),
    ("score", "address", ["--address", "auto"], "local"),
    ("score", "workers", ["--workers", "2"], "local"),
    ("score", "gpus_per_worker", ["--gpus-per-worker", "1"], "local"),
    ("score", "format_", ["--format", "csv"], "local"),
    ("score", "partition_rows", ["--partition-rows", "5"], "local"),
]  # fmt: skip
FLAG = {"compile_": "--compile", "format_": "--format"}


def _commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        commands = getattr(cmd, "commands", None)
        if commands:
            out[" ".join(path)] = cmd
            for name, sub in commands.items():
                walk(sub, (*path, name))
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), ())
    return out


def test_every_parameter_has_an_expectation():
    found = {path: {p.name for p in cmd.params} for path, cmd in _commands().items()}
    found = {path: names for path, names in found.items() if names or path in EXPECT}
    missing = {p: sorted(n - set(EXPECT.get(p, {}))) for p, n in found.items()}
    missing = {p: n for p, n in missing.items() if n}
    assert not missing, f"parameters without an expectation in EXPECT: {missing}"
    stale = {p: sorted(set(e) - found.get(p, set())) for p, e in EXPECT.items()}
    assert not {p: n for p, n in stale.items() if n}, f"EXPECT names gone parameters: {stale}"
    for path, params in EXPECT.items():
        for name, how in params.items():
            assert how in ("subject", "does", "refused") or how.startswith("config:"), (
                path,
                name,
            )


def test_every_refused_parameter_has_a_refusal_case():
    refused = {(c, p) for c, ps in EXPECT.items() for p, how in ps.items() if how == "refused"}
    assert refused == {(c, p) for c, p, _, _ in REFUSALS}


@pytest.mark.parametrize(
    ("command", "param", "argv", "engine"),
    REFUSALS,
    ids=[f"{c}-{p}" for c, p, _, _ in REFUSALS],
)
def test_an_option_an_engine_cannot_honour_is_one_line_and_nothing_written(
    tmp_path, monkeypatch, command, param, argv, engine
):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src" / "real"
    src.mkdir(parents=True)
    out = tmp_path / "out"
    subject = {
        "embed": ["embed", str(src.parent), "--backbone", "tiny-cnn", "--out", str(out)],
        "experiment": ["experiment", str(src.parent), "--out", str(out)],
        "score": ["score", str(src), "--head", str(tmp_path / "head"), "--out", str(out)],
    }[command]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, [*subject, *argv])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    flag = FLAG.get(param, "--" + param.replace("_", "-"))
    assert len(lines) == 1 and flag in lines[0] and f"{engine} engine" in lines[0], lines
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def _param(command: str, name: str) -> click.Parameter:
    return next(p for p in _commands()[command].params if p.name == name)


def test_help_defaults_come_from_the_constants_the_code_uses():
    from facebank.core.options import (
        CONTROL_VIEWS,
        DEFAULT_HEADS,
        DEFAULT_SCORE_BATCH_SIZE,
        DEFAULT_SCORE_PARTITION_ROWS,
        DEGRADED_VIEWS,
        MIN_NEW_ROWS,
        ExperimentOptions,
    )
    from facebank.embed.runner.options import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_DTYPE,
        DEFAULT_PARTITION_ROWS,
        EmbedOptions,
    )

    assert _param("embed", "batch_size").default == DEFAULT_BATCH_SIZE == EmbedOptions.batch_size
    assert _param("embed", "dtype").default.value == DEFAULT_DTYPE == EmbedOptions.dtype
    assert _param("embed", "partition_rows").default == DEFAULT_PARTITION_ROWS
    assert _param("score", "batch_size").default == DEFAULT_SCORE_BATCH_SIZE
    assert _param("score", "partition_rows").default == DEFAULT_SCORE_PARTITION_ROWS
    assert ExperimentOptions.views == (*CONTROL_VIEWS, *DEGRADED_VIEWS)
    views_help = _param("experiment", "views").help
    assert ", ".join(DEGRADED_VIEWS) in views_help and ", ".join(CONTROL_VIEWS) in views_help
    assert "--no-controls" in views_help
    assert ", ".join(DEFAULT_HEADS) in _param("experiment", "heads").help
    new_help = _param("experiment", "new_engine").help
    assert "smallest" not in new_help and f"at least {MIN_NEW_ROWS}" in new_help
    from facebank.analysis.ood import MIN_NEW_ROWS as used

    assert used is MIN_NEW_ROWS


@pytest.mark.parametrize(
    ("argv", "views"),
    [
        ([], ("normalise", "jpeg:q=50", "resize:128", "vflip")),
        (["--views", "vflip"], ("normalise", "vflip")),
        (["--views", "vflip", "--no-controls"], ("vflip",)),
        (["--views", "none"], ()),
    ],
)
def test_views_add_to_the_control_views_unless_no_controls(monkeypatch, tmp_path, argv, views):
    import facebank.analysis.experiment as experiment

    seen = {}

    def fake(source, *, backbone, out, options):
        seen["options"] = options
        raise SystemExit(0)

    monkeypatch.setattr(experiment, "run_experiment", fake)
    CliRunner().invoke(app, ["experiment", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    assert seen["options"].views == views


# ------------------------------------------------------------------ several backbones, seeds
def _stable(doc, root: str):
    """metrics.json without times and paths (the only things two seeded runs may differ in)."""
    if isinstance(doc, dict):
        return {
            k: _stable(v, root)
            for k, v in doc.items()
            if "second" not in k
            and k not in ("report", "run_dir", "head_dir", "eval_dir")
            and not k.endswith("_dir")
        }
    if isinstance(doc, list):
        return [_stable(v, root) for v in doc]
    if isinstance(doc, str):
        return doc.replace(root, "RUN")
    return doc


@pytest.mark.slow
def test_several_backbones_honour_every_option_and_a_seed_repeats_the_metrics(tmp_path):
    """experiment with two backbones: --protocols, --group-by, --engine-dates and --seed
    reach every backbone's run (recorded in config.json, run), and two runs with the same
    seed write the same metrics.json apart from times and paths."""
    from facebank.embed.inputs.standin import STANDIN_ENGINES, make_standin_dataset

    data = make_standin_dataset(tmp_path / "data", n_per_class=16)
    dates = tmp_path / "dates.csv"
    dates.write_text(
        "engine,date\n" + "".join(f"{e},202{i}-01-01\n" for i, e in enumerate(STANDIN_ENGINES))
    )
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = CliRunner().invoke(
            app,
            [
                "experiment", str(data), "--backbone", "tiny-cnn,tiny-vit", "--out", str(out),
                "--views", "vflip", "--no-controls", "--heads", "linear", "--device", "cpu",
                "--seed", "7", "--protocols", "chrono", "--group-by", "none",
                "--new-engine", "upsample-nearest",
                "--engine-dates", str(dates),
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        runs.append(out)
    config = json.loads((runs[0] / "config.json").read_text())
    recorded = {how[7:] for how in EXPECT["experiment"].values() if how.startswith("config:")}
    assert recorded <= set(config), sorted(recorded - set(config))
    assert config["backbones"] == ["tiny-cnn", "tiny-vit"] and config["seed"] == 7
    assert config["protocols"] == ["chrono"] and config["group_by"] == "none"
    assert config["engine_dates"] == str(dates) and config["views"] == ["original", "vflip"]
    for backbone in ("tiny-cnn", "tiny-vit"):
        sub = json.loads((runs[0] / backbone / "config.json").read_text())
        assert sub["protocols"] == ["chrono"] and sub["group_by"] == "none"
        assert sub["seed"] == 7 and sub["engine_dates"] == str(dates)
        metrics = json.loads((runs[0] / backbone / "metrics.json").read_text())
        assert "chrono" in (metrics.get("protocols") or {}), metrics.get("skipped")
        robust = json.loads(
            (runs[0] / backbone / "robustness" / "linear" / "config.json").read_text()
        )
        assert robust["seed"] == 7  # the seed reaches robustness() and ood()
        assert json.loads((runs[0] / backbone / "ood" / "config.json").read_text())["seed"] == 7
    for rel in ("metrics.json", "tiny-cnn/metrics.json", "tiny-vit/metrics.json",
                "leaderboard/metrics.json"):  # fmt: skip
        a, b = (json.loads((r / rel).read_text()) for r in runs)
        assert _stable(a, str(runs[0])) == _stable(b, str(runs[1])), rel


def test_chrono_reads_a_manifest_date_column_unless_engine_dates_is_given(tmp_path):
    from facebank.analysis.experiment import engine_dates_of
    from facebank.core.options import ExperimentOptions

    manifest = tmp_path / "faces.csv"
    manifest.write_text("path,label,engine,date\na.png,1,sdxl,2023-07-26\n")
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label,engine\na.png,1,sdxl\n")
    chrono = ExperimentOptions(protocols=("chrono",))
    assert engine_dates_of(manifest, chrono) == manifest
    assert engine_dates_of(plain, chrono) is None
    assert engine_dates_of(tmp_path, chrono) is None  # a folder SOURCE: the shipped dates
    given = ExperimentOptions(protocols=("chrono",), engine_dates=plain)
    assert engine_dates_of(manifest, given) == plain
