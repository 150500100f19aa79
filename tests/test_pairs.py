"""Paired data: the manifest's pair column, pairs kept whole by splits, the paired score."""

from __future__ import annotations

import numpy as np
import pytest

from facebank.analysis.paired import paired_score
from facebank.core.splits import assign_splits, merge_pairs, resolve_groups
from facebank.embed.bank.bank import FeatureBank, write_bank
from facebank.embed.inputs.datasets import scan_source

N_REAL = 60  # each real has one fake made from it


def _paired_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    paths = [f"real/r{i}.jpg" for i in range(N_REAL)] + [f"gen/f{i}.png" for i in range(N_REAL)]
    pairs = [""] * N_REAL + [f"real/r{i}.jpg" for i in range(N_REAL)]
    y = np.array([0] * N_REAL + [1] * N_REAL)
    X = rng.normal(size=(2 * N_REAL, 8)).astype(np.float32)
    # each fake is its real plus a weak generation trace and its own noise
    X[N_REAL:] = X[:N_REAL] + 0.2 + 0.5 * rng.normal(size=(N_REAL, 8))
    return paths, pairs, y, X


def test_manifest_pair_is_read_and_normalised_like_paths(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,label,engine,pair\nreal/a.jpg,0,real,\ngen/b.png,1,sdxl,./real/a.jpg\n"
    )
    items = scan_source(tmp_path / "m.csv").items
    assert [it.pair for it in items] == ["", "real/a.jpg"]


def test_pairs_never_straddle_splits_and_join_the_groups_they_touch():
    paths, pairs, _, _ = _paired_arrays()
    groups = np.array(["person0"] * 2 + [""] * (2 * N_REAL - 2))
    merged = merge_pairs(np.array(paths), np.array(pairs), groups)
    # r0, r1 share a group; their fakes f0, f1 join it
    assert len({merged[0], merged[1], merged[N_REAL], merged[N_REAL + 1]}) == 1
    engines = np.array(["real"] * N_REAL + ["sdxl"] * N_REAL)
    for seed in range(3):
        splits = assign_splits(engines, np.array(paths), seed=seed, groups=merged)
        assert (splits[:N_REAL] == splits[N_REAL:]).all()


def test_a_bank_with_pairs_is_split_with_pairs_whole_even_with_group_by_none(tmp_path):
    from facebank.heads.training import resolve_splits

    paths, pairs, y, X = _paired_arrays()
    bank = write_bank(
        tmp_path / "p.zarr", X, labels=y, engines=["real"] * N_REAL + ["sdxl"] * N_REAL,
        paths=paths, columns={"pair": np.array(pairs)},
    )  # fmt: skip
    assert list(FeatureBank.open(tmp_path / "p.zarr").pairs) == pairs
    groups, source = resolve_groups(bank, "none")
    assert groups is not None and "pair" in source
    splits, _ = resolve_splits(bank, seed=1, group_by="none")
    assert (splits[:N_REAL] == splits[N_REAL:]).all()


def test_paired_score_known_answer_ties_and_a_missing_real_listed():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.5, 0.9, 0.2, 0.4, 0.9, 0.7])
    paths = np.array(["r0", "r1", "r2", "f0", "f1", "f2", "f9"])
    pairs = np.array(["", "", "", "r0", "r1", "r2", "gone"])
    p = paired_score(y, s, paths, pairs, n_boot=200)
    # f0 > r0 (1), f1 < r1 (0), f2 = r2 (1/2); f9 names a real that is not there
    assert p.share == pytest.approx(0.5) and p.n_pairs == 3 and p.n_ties == 1
    assert p.missing == ["gone"] and p.n_dropped == 1 and "dropped" in p.sentence()
    assert 0 <= p.ci[0] <= p.share <= p.ci[1] <= 1
    assert paired_score(y, s, paths, np.full(7, "")) is None


def test_evaluate_reports_the_paired_score_with_its_interval(tmp_path):
    from facebank.analysis import evaluate
    from facebank.heads import create_head

    paths, pairs, y, X = _paired_arrays()
    bank = write_bank(
        tmp_path / "p.zarr", X, labels=y, engines=["real"] * N_REAL + ["sdxl"] * N_REAL,
        paths=paths, columns={"pair": np.array(pairs)},
    )  # fmt: skip
    head = create_head("linear").fit(X[::2], y[::2])
    head.calibrate(X[:N_REAL:2], fpr=0.05)
    ev = evaluate(head, [bank], out=tmp_path / "ev", n_boot=100)
    assert ev.paired.n_pairs == N_REAL and ev.paired.share > 0.7
    assert ev.paired.ci[0] < ev.paired.share < ev.paired.ci[1]
    assert "Paired score" in (ev.run_dir / "metrics.md").read_text()
    assert ev.to_dict()["paired"]["n_pairs"] == N_REAL
    from facebank.analysis import write_report

    html = write_report([ev.run_dir], out=tmp_path / "r.html").read_text()
    assert "Paired score" in html and "Cllr (bits)" in html  # the report carries both


def test_embed_stores_the_manifest_pair_per_row(tmp_path):
    from PIL import Image

    from facebank.embed import embed_source

    rng = np.random.default_rng(0)
    lines = ["path,label,engine,pair"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / f"r{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / f"f{i}.png")
        lines += [f"r{i}.jpg,0,real,", f"f{i}.png,1,gan,r{i}.jpg"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    embed_source(tmp_path / "m.csv", backbone="tiny-cnn", out=tmp_path / "b.zarr", device="cpu")
    bank = FeatureBank.open(tmp_path / "b.zarr")
    by_path = dict(zip(bank.paths.tolist(), bank.pairs.tolist(), strict=True))
    assert by_path == {
        **{f"r{i}.jpg": "" for i in range(3)},
        **{f"f{i}.png": f"r{i}.jpg" for i in range(3)},
    }
