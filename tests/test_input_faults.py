"""Every command that takes images, on one fault corpus, from three places.

The corpus (``_imagecorpus.make_fault_corpus``): good images under ``real/`` and
``sdxl/``, names that are not UTF-8 / hold a newline / start with a dash / are 250 bytes
long, and bad files (empty, text, truncated JPEG, corrupt-CRC PNG, decompression bomb,
random bytes, a symlink loop, a directory named ``x.jpg``). It is given as a folder, as
a ``file://`` URL and on the loopback S3 server (where a non-UTF-8 key and a symlink
cannot exist and the loopback server refuses a newline, so those three are left out
there).

For each command and place: exit code 0, every good image used and named as
``encode_path`` writes names, every bad one a failure with its reason on one line, no
traceback, and no temporary file left behind.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from _imagecorpus import make_fault_corpus

from facebank.embed import FeatureBank, embed_source
from facebank.embed.inputs.datasets import encode_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# an S3 key is UTF-8 and S3 has no symlinks; the loopback server (moto) refuses a newline
NOT_ON_S3 = ("sdxl/odd/bad-\\xff\\xfe-utf8.jpg", "sdxl/odd/loop.jpg", "sdxl/odd/new\\x0aline.jpg")
PLACES = ("local", "file-url", "s3")
TMP_SUFFIXES = (".tmp", ".partial", ".part", ".staging")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus on disk, its expected outcomes, a tiny-cnn bank of it and a linear head."""
    from facebank.heads.training import train_run

    tmp = tmp_path_factory.mktemp("faults")
    expected = make_fault_corpus(tmp / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # test-only backbone, tiny calibration
        embed_source(
            tmp / "src", backbone="tiny-cnn", out=tmp / "b.zarr", progress=False, device="cpu"
        )
        train_run([tmp / "b.zarr"], head="linear", out=tmp / "run", fpr=0.1)
    return tmp, expected


@pytest.fixture(scope="module")
def s3_src(s3_endpoint, corpus):
    """The corpus copied to a fresh bucket, key by key (S3 has no symlinks or byte names)."""
    import uuid

    import s3fs

    tmp, _ = corpus
    fs = s3fs.S3FileSystem(anon=False)
    bucket = f"facebank-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    root = tmp / "src"
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if encode_path(rel) in NOT_ON_S3:
                continue
            fs.put_file(str(full), f"{bucket}/src/{rel}")
    fs.invalidate_cache()
    return f"s3://{bucket}/src"


def _where(place: str, corpus, request) -> tuple[str, dict[str, str | None]]:
    tmp, expected = corpus
    if place == "local":
        return str(tmp / "src"), expected
    if place == "file-url":
        return f"file://{tmp / 'src'}", expected
    url = request.getfixturevalue("s3_src")
    return url, {k: v for k, v in expected.items() if k not in NOT_ON_S3}


def _invoke(*args):
    from typer.testing import CliRunner

    from facebank.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, [str(a) for a in args])


def _rel(name: str) -> str:
    """``.../src/sdxl/x.jpg`` (a path or URL, encoded) -> ``sdxl/x.jpg``."""
    return name.split("/src/", 1)[1]


def _check_common(res, out_dir: Path, src_before: set[str], src: Path) -> list[str]:
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    lines = res.output.splitlines()
    # the newline name never splits a line; no raw undecodable byte is printed
    assert not any(ln.startswith("line.jpg") for ln in lines), res.output
    assert not any(0xDC80 <= ord(c) <= 0xDCFF for c in res.output)
    left = [p for p in out_dir.rglob("*") if p.name.endswith(TMP_SUFFIXES)]
    assert left == [], left
    assert {p.as_posix() for p in src.rglob("*")} == src_before  # nothing written there
    return lines


def _check_failures(lines: list[str], bad: dict[str, str]) -> None:
    """Each bad file is named, once, on one line with its reason."""
    for name, reason in bad.items():
        hits = [ln for ln in lines if f"{name}: " in ln]
        assert len(hits) == 1, (name, lines)
        assert reason in hits[0].lower(), (name, reason, hits)


def _embed(source: str, out: Path):
    return _invoke(
        "embed", source, "--backbone", "tiny-cnn", "--out", out, "--workers", "0",
        "--no-progress", "--device", "cpu",
    )  # fmt: skip


def _bank_outcome(bank: Path) -> tuple[set[str], dict[str, str]]:
    b = FeatureBank.open(bank)
    return set(b.paths.tolist()), {f["path"]: f["reason"] for f in b.failures}


def _run_embed(source, tmp, corpus, *, head, bank) -> tuple[set[str], dict[str, str], list]:
    res = _embed(source, tmp / "b.zarr")
    got, failed = _bank_outcome(tmp / "b.zarr")
    return got, failed, [res]


def _run_experiment(source, tmp, corpus, *, head, bank):
    res = _invoke(
        "experiment", source, "--backbone", "tiny-cnn", "--views", "none", "--heads",
        "linear", "--device", "cpu", "--out", tmp / "exp",
    )  # fmt: skip
    got, failed = _bank_outcome(tmp / "exp" / "banks" / "original.zarr")
    if source.startswith("file://"):  # recorded as the local folder it names
        assert "file:" not in (tmp / "exp" / "config.json").read_text()
    return got, failed, [res]


def _run_score(source, tmp, corpus, *, head, bank):
    out = tmp / "scores.csv"
    res = _invoke("score", source, "--head", head, "--out", out, "--device", "cpu")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    summary = json.loads((tmp / "scores.summary.json").read_text())
    failed = {_rel(f["path"]): f["reason"] for f in summary["failures"]}
    return {_rel(r["path"]) for r in rows}, failed, [res]


def _run_explain(source, tmp, corpus, *, head, bank):
    res = _invoke(
        "explain", "--head", head, f"{source}/sdxl/odd", "--out", tmp / "ex", "--steps", 2,
        "--baseline", "black", "--device", "cpu",
    )  # fmt: skip
    m = json.loads((tmp / "ex" / "metrics.json").read_text())
    failed = {_rel(f["path"]): f["reason"] for f in m["failures"]}
    assert len(list((tmp / "ex").glob("*.png"))) == len(m["explanations"])
    return {_rel(e["path"]) for e in m["explanations"]}, failed, [res]


def _run_query(source, tmp, corpus, *, head, bank):
    res = _invoke(
        "neighbours", "query", "--bank", bank, f"{source}/sdxl/odd", "-k", 2, "--out",
        tmp / "nq", "--device", "cpu",
    )  # fmt: skip
    rows = list(csv.DictReader((tmp / "nq" / "neighbours.csv").open(encoding="utf-8")))
    failed = {}
    for ln in res.output.splitlines():
        if ln.startswith("failed: "):
            name, reason = ln[len("failed: ") :].split(": ", 1)
            failed[_rel(name)] = reason
    return {_rel(r["query"]) for r in rows}, failed, [res]


def _run_backfill(source, tmp, corpus, *, head, bank):
    """A bank of the corpus stripped to format 1, its metadata read back from ``source``."""
    from test_export import _as_format_1

    made = _embed(source, tmp / "b.zarr")
    _as_format_1(tmp / "b.zarr")
    res = _invoke("bank", "backfill", tmp / "b.zarr", "--source", source)
    got, failed = _bank_outcome(tmp / "b.zarr")
    n = len(got)
    assert f"ok: {n} of {n} rows read their file metadata" in res.output, res.output
    b = FeatureBank.open(tmp / "b.zarr")
    assert b.format == 2 and (b.column("width") == 24).all()
    return got, failed, [made, res]


COMMANDS = {
    "embed": (_run_embed, ""),
    "experiment": (_run_experiment, ""),
    "score": (_run_score, ""),
    "explain": (_run_explain, "sdxl/odd/"),
    "neighbours query": (_run_query, "sdxl/odd/"),
    "bank backfill": (_run_backfill, ""),
}


# experiment draws a dozen figures (about 10 s a run): it runs on the two places whose
# resolution it adds to embed's (file:// and S3); a local folder takes the same path
CASES = [
    pytest.param(c, p, marks=pytest.mark.slow) if c == "experiment" else (c, p)
    for c in COMMANDS
    for p in PLACES
    if not (c == "experiment" and p == "local")
]


@pytest.mark.parametrize(("command", "place"), CASES)
def test_every_image_command_survives_the_fault_corpus(command, place, corpus, tmp_path, request):
    source, expected = _where(place, corpus, request)
    run, under = COMMANDS[command]
    src = corpus[0] / "src"
    before = {p.as_posix() for p in src.rglob("*")}
    got, failed, results = run(
        source, tmp_path, corpus, head=corpus[0] / "run", bank=corpus[0] / "b.zarr"
    )
    ok = {k for k, v in expected.items() if v is None and k.startswith(under)}
    bad = {k: v for k, v in expected.items() if v is not None and k.startswith(under)}
    assert got == ok
    assert set(failed) == set(bad)
    for name, reason in bad.items():
        assert reason in failed[name].lower(), (name, failed[name])
    for res in results:
        lines = _check_common(res, tmp_path, before, src)
    if command in ("embed", "score", "explain", "neighbours query"):
        _check_failures(lines, bad)  # experiment and backfill keep them in the bank


def test_the_one_encoding_writes_every_odd_name_on_one_printable_line():
    for raw in (b"bad-\xff\xfe-utf8.jpg", b"new\nline.jpg", b"tab\there.jpg", b"-dash.jpg"):
        name = os.fsdecode(raw)
        shown = encode_path(name)
        assert shown.isprintable() and "\n" not in shown
        shown.encode("utf-8")  # storable and printable anywhere
        from facebank.embed.inputs.datasets import decode_path

        assert os.fsencode(decode_path(shown)) == raw
    assert encode_path("plain/name.jpg") == "plain/name.jpg"


def test_a_file_url_source_is_the_same_source_as_its_path(corpus):
    from facebank.core.stores import local_path
    from facebank.embed import scan_source

    tmp, _ = corpus
    plain = scan_source(tmp / "src")
    for spelled in (f"file://{tmp / 'src'}", f"file:{tmp / 'src'}", f"file://localhost{tmp}/src"):
        assert local_path(spelled) == str(tmp / "src")
        assert [i.path for i in scan_source(spelled).items] == [i.path for i in plain.items]


# ---------------------------------------------------------------- messages
def test_explain_with_every_image_failing_says_so_and_writes_nothing(corpus, tmp_path):
    tmp, _ = corpus
    odd = tmp / "src" / "sdxl" / "odd"
    res = _invoke(
        "explain", "--head", tmp / "run", odd / "empty.jpg", odd / "text.png", "--out",
        tmp_path / "ex", "--steps", 2, "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("failed: ")] == [
        f"failed: {odd / 'empty.jpg'}: empty file (0 bytes)",
        f"failed: {odd / 'text.png'}: not an image (format not recognised)",
    ]
    assert lines[-1] == (
        "error: none of the 2 image(s) could be explained (each failure is listed above); "
        "nothing was written"
    )
    assert "run folder" not in res.output and not (tmp_path / "ex").exists()


@pytest.mark.parametrize("command", ["score", "explain"])
def test_score_and_explain_warn_about_a_test_only_backbone(command, corpus, tmp_path):
    tmp, _ = corpus
    image = tmp / "src" / "real" / "0.png"
    args = {
        "score": ("score", image, "--head", tmp / "run", "--out", tmp_path / "s.csv"),
        "explain": ("explain", "--head", tmp / "run", image, "--out", tmp_path / "ex"),
    }[command]
    res = _invoke(*args, "--device", "cpu", *(("--steps", 2) if command == "explain" else ()))
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.output.splitlines() if "seeded random weights" in ln]
    assert warned == [
        "warning: the head rests on backbone 'tiny-cnn', which has seeded random weights: "
        "for tests and smoke runs only, its scores mean nothing"
    ]


def test_score_prevalence_says_what_its_precisions_rest_on(corpus, tmp_path):
    tmp, _ = corpus
    res = _invoke(
        "score", tmp / "src" / "real", "--head", tmp / "run", "--out", tmp_path / "s.csv",
        "--prevalence", 0.01, "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rests = [ln for ln in lines if ln.startswith("each precision rests on the target FPR")]
    assert len(rests) == 1 and "not a measured one" in rests[0]
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    points = summary["operating_points"]
    assert all(p["precision_fpr"] == "target" for p in points)
    n_real = points[0]["n_real"]
    assert f"of the {n_real} val reals lie above these thresholds" in rests[0]
    # this head's few val reals give one threshold for the three FPRs: said once
    assert len({p["threshold"] for p in points}) == 1
    same = [ln for ln in lines if ln.startswith("thresholds coincide")]
    assert len(same) == 1 and f"{n_real} val reals cannot tell these FPRs apart" in same[0]


def test_a_score_csv_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    from facebank.heads.scoring import _write_csv

    def refuse(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", refuse)
    S, dec = np.zeros((1, 1)), np.zeros((1, 1), np.int64)
    with pytest.raises(OSError, match="No space"):
        _write_csv(
            tmp_path / "x.csv", ["a.png"], S, dec, ["original"], None, np.array(["real"]), None
        )
    assert list(tmp_path.iterdir()) == []
