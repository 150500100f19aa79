# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""analysis.neighbours at scale: IVF-PQ, on-disk inverted lists, streamed self-search,
and leaks against the splits a training run used."""

from __future__ import annotations

import csv
import hashlib
import json

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.neighbours import NeighbourIndex, engine_clusters, find_leaks
from facebank.cli import app
from facebank.core.errors import DataError
from facebank.embed import write_bank

ENGINES = ("real", "sdxl", "stylegan2")


@pytest.fixture(autouse=True)
def one_thread():
    # FAISS's OpenMP threads spin while waiting: on a busy shared CPU, tiny k-means runs
    # take seconds with 2 threads and milliseconds with 1
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n_per=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 4
    X = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    return X, np.repeat(ENGINES, n_per)


def sha(i: int) -> str:
    return hashlib.sha256(f"image {i}".encode()).hexdigest()


def make_bank(path, X, engines, *, splits=None, shas=None):
    n = len(X)
    return write_bank(
        path,
        X,
        labels=(np.asarray(engines) != "real").astype(int),
        engines=engines,
        splits=splits,
        sha256=shas if shas is not None else [sha(i) for i in range(n)],
        paths=[f"{e}/{i}.png" for i, e in enumerate(engines)],
    )


# ------------------------------------------------------------------ IVF-PQ, on disk


def test_ivfpq_on_disk_finds_what_the_in_memory_index_finds(tmp_path):
    X, _ = clustered()
    mem = NeighbourIndex(X, factory="IVF8,PQ4", nprobe=4, chunk_rows=128)
    disk = NeighbourIndex(X, factory="IVF8,PQ4", nprobe=4, chunk_rows=128, on_disk=tmp_path / "ix")
    assert disk.ntotal == mem.ntotal == len(X)
    assert (tmp_path / "ix" / "index.ivfdata").stat().st_size > 0
    assert (tmp_path / "ix" / "index.faiss").is_file()
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["index.faiss", "index.ivfdata"]
    D1, I1 = mem.search(X[:50], 5)
    D2, I2 = disk.search(X[:50], 5)
    np.testing.assert_array_equal(I1, I2)  # same training seed, same codes, same lists
    np.testing.assert_allclose(D1, D2, atol=1e-6)
    assert (np.diff(D1, axis=1) <= 1e-6).all() and D1.max() <= 1.0 + 1e-5  # similarities
    # the on-disk index reads back with faiss alone (its lists memory-mapped; IO_FLAG_MMAP
    # would instead resize index.ivfdata and crash the search)
    back = faiss.read_index(str(tmp_path / "ix" / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert back.ntotal == len(X)


def test_on_disk_refuses_non_ivf_indexes_and_non_empty_folders(tmp_path):
    X, _ = clustered(n_per=20)
    with pytest.raises(DataError, match="on_disk needs an IVF index.*'Flat'"):
        NeighbourIndex(X, factory="Flat", on_disk=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("mine")
    with pytest.raises(DataError, match="re-rank copy of every row"):
        NeighbourIndex(X, factory="IVF4,PQ4,RFlat", on_disk=tmp_path / "c")
    with pytest.raises(DataError, match="is not empty"):
        NeighbourIndex(X, factory="IVF4,Flat", on_disk=tmp_path / "b")
    assert (tmp_path / "b" / "x").read_text() == "mine"


def test_ivfpq_cosine_recall_against_exact_search():
    X, _ = clustered(n_per=400, dim=32)
    exact = NeighbourIndex(X, factory="Flat")
    pq = NeighbourIndex(X, factory="IVF16,PQ16", nprobe=16)
    _, I_ex = exact.search(X[:200], 10)
    D, I = pq.search(X[:200], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ex, strict=True)])
    assert recall > 0.5  # 16 bytes a row for 32 floats: approximate, far above chance (0.008)
    assert (D <= 1.0 + 1e-5).all() and (D >= -1.0 - 1e-5).all()


# ------------------------------------------------------------------ streamed self-search


@pytest.mark.parametrize("analysis", ["clusters", "leaks"])
def test_clusters_and_leaks_stream_the_self_search(tmp_path, monkeypatch, analysis):
    X, engines = clustered(n_per=100)
    splits = np.array(["train", "test"] * 150)
    bank = make_bank(tmp_path / "b.zarr", X, engines, splits=splits)
    index = NeighbourIndex(bank, factory="IVF4,Flat", nprobe=4, chunk_rows=64)  # exact: all lists
    reference = NeighbourIndex(bank, factory="Flat")

    def whole(*a, **kw):
        raise AssertionError("the whole (n, k) self-search was materialised")

    seen = []
    original = NeighbourIndex.iter_self_knn

    def spy(self, k, **kw):
        for start, stop, D, I in original(self, k, **kw):
            seen.append(len(I))
            yield start, stop, D, I

    monkeypatch.setattr(NeighbourIndex, "self_knn", whole)
    monkeypatch.setattr(NeighbourIndex, "iter_self_knn", spy)
    if analysis == "clusters":
        got = engine_clusters(index, k=5, n_boot=50)
        monkeypatch.undo()
        ref = engine_clusters(reference, k=5, n_boot=50)
        assert [p["purity"] for p in got.purity] == pytest.approx([p["purity"] for p in ref.purity])
        np.testing.assert_array_equal(got.confusion_counts, ref.confusion_counts)
    else:
        got = find_leaks(index, threshold=0.9, k=5)
        monkeypatch.undo()
        ref = find_leaks(reference, threshold=0.9, k=5)
        assert got.counts == ref.counts and len(got.pairs) > 0
        assert [(p["row_a"], p["row_b"]) for p in got.pairs] == [
            (p["row_a"], p["row_b"]) for p in ref.pairs
        ]
    assert max(seen) == 64 and sum(seen) == len(X)


# ------------------------------------------------------------------ leaks and splits


def test_leaks_on_a_bank_without_splits_say_no_split_pair_was_checked(tmp_path):
    X, engines = clustered(n_per=20)
    X[1] = X[0]
    bank = make_bank(tmp_path / "b.zarr", X, engines)  # no split column
    res = find_leaks(bank, threshold=0.99, k=3, out=tmp_path / "run")
    assert res.split_checked is False and res.pairs == []
    assert "no split pairs could be checked" in res.split_note
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["split_checked"] is False and metrics["train_test"] is None
    assert "no split pairs could be checked" in (tmp_path / "run" / "leaks.md").read_text()

    result = CliRunner().invoke(
        app,
        ["neighbours", "leaks", str(bank.path), "--threshold", "0.99", "-k", "3"]
        + ["--out", str(tmp_path / "cli")],
    )
    assert result.exit_code == 0, result.output
    assert "no split pairs could be checked" in result.output
    assert "nothing checked:" in result.output and "0 pairs" not in result.output


def write_run(run, shas, splits, groups=None):
    run.mkdir()
    with open(run / "splits.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sha256", "path", "engine", "label", "split", *(["group"] if groups else [])])
        for i, (h, s) in enumerate(zip(shas, splits, strict=True)):
            w.writerow([h, f"{i}.png", "e", 1, s, *([groups[i]] if groups else [])])


def test_leaks_check_the_splits_a_training_run_used(tmp_path):
    X, engines = clustered(n_per=20)
    X[1] = X[0]  # a near-copy (identical features, different files)
    bank = make_bank(tmp_path / "b.zarr", X, engines)
    shas = [sha(i) for i in range(len(X))]
    splits = ["train", "test"] * 30
    groups = [f"person{i // 4}" for i in range(len(X))]  # 4 rows each: both splits
    groups[40:44] = ["solo"] * 4
    splits[40:44] = ["val"] * 4
    write_run(tmp_path / "train-run", shas, splits, groups)

    res = find_leaks(bank, threshold=0.99, k=3, splits=tmp_path / "train-run", out=tmp_path / "o")
    assert res.split_checked and res.split_rows == len(X)
    assert res.split_source.endswith("splits.csv")
    assert [(p["row_a"], p["row_b"], p["split_a"], p["split_b"]) for p in res.pairs] == [
        (0, 1, "train", "test")
    ]
    assert res.has_train_test_leak
    straddling = {g["group"] for g in res.groups}
    assert "solo" not in straddling and len(straddling) == 14  # 15 groups, "solo" in val only
    assert res.groups[0] == {"group": "person0", "splits": "test:2 train:2", "rows": 4}
    rows = list(csv.DictReader((tmp_path / "o" / "groups.csv").open()))
    assert len(rows) == 14

    result = CliRunner().invoke(
        app,
        ["neighbours", "leaks", str(bank.path), "--run", str(tmp_path / "train-run")]
        + ["--threshold", "0.99", "-k", "3", "--out", str(tmp_path / "cli")],
    )
    assert result.exit_code == 2, result.output  # a train/test leak gates, the run is kept
    assert (tmp_path / "cli" / "pairs.csv").is_file()
    assert "14 group(s) lie in more than one split" in result.output


def test_leaks_refuse_a_run_folder_without_splits_csv(tmp_path):
    X, engines = clustered(n_per=10)
    bank = make_bank(tmp_path / "b.zarr", X, engines)
    (tmp_path / "notarun").mkdir()
    with pytest.raises(DataError, match="has no splits.csv; give the folder of a training run"):
        find_leaks(bank, splits=tmp_path / "notarun")
    write_run(tmp_path / "r", [sha(0)], ["train"])
    (tmp_path / "r" / "splits.csv").write_text("path,label\na.png,1\n")
    with pytest.raises(DataError, match="needs sha256 and split"):
        find_leaks(bank, splits=tmp_path / "r")


def test_exact_duplicates_are_found_by_full_sha256(tmp_path):
    X, engines = clustered(n_per=10)
    shas = [sha(i) for i in range(len(X))]
    shas[5] = shas[2]  # same file in train and test
    shas[7] = shas[3][:16] + "0" * 48  # same 8-byte prefix, different file: not a duplicate
    splits = np.array(["train"] * 5 + ["test"] * 25)
    bank = make_bank(tmp_path / "b.zarr", X, engines, splits=splits, shas=shas)
    res = find_leaks(bank, threshold=1.0, k=1)
    exact = [(p["row_a"], p["row_b"]) for p in res.pairs if p["kind"] == "exact"]
    assert exact == [(2, 5)]


# ------------------------------------------------------------------ chunked row columns


def test_bank_iter_columns_streams_every_partition_and_subsets(tmp_path):
    from facebank.embed import FeatureBank, write_partition
    from facebank.testing import synthetic_backbone

    path = tmp_path / "p.zarr"
    FeatureBank.create(path, backbone=synthetic_backbone(4), chunk_rows=8).close()
    for i, n in ((1, 11), (0, 7)):  # committed out of order, never consolidated
        write_partition(
            path,
            i,
            features=np.zeros((n, 4), np.float32),
            columns={
                "label": np.full(n, i),
                "engine": np.full(n, f"e{i}"),
                "path": np.array([f"p{i}/{j}.png" for j in range(n)]),
                "sha256": np.array([sha(100 * i + j) for j in range(n)]),
            },
        )
    bank = FeatureBank.open(path)
    chunks = list(bank.iter_columns(["path", "label"], chunk_rows=5))
    assert [(a, b) for a, b, _ in chunks] == [(0, 5), (5, 7), (7, 12), (12, 17), (17, 18)]
    np.testing.assert_array_equal(np.concatenate([c["path"] for *_, c in chunks]), bank.paths)
    np.testing.assert_array_equal(np.concatenate([c["label"] for *_, c in chunks]), bank.labels)
    sub = bank.select(rows=[16, 2, 8])
    got = [c["sha256"] for *_, c in sub.iter_columns(["sha256"], chunk_rows=10)]
    np.testing.assert_array_equal(np.concatenate(got), bank.sha256[[16, 2, 8]])
    with pytest.raises(Exception, match="not a bank column; valid"):
        next(bank.iter_columns(["nope"]))


@pytest.mark.parametrize("analysis", ["clusters", "leaks"])
def test_clusters_and_leaks_never_read_a_whole_column(tmp_path, monkeypatch, analysis):
    from facebank.embed import FeatureBank

    X, engines = clustered(n_per=50)
    X[8] = X[3]  # train and test: a near pair
    shas = [sha(i) for i in range(len(X))]
    shas[120] = shas[5]
    bank = make_bank(tmp_path / "b.zarr", X, engines, splits=["train", "test"] * 75, shas=shas)
    run = find_leaks if analysis == "leaks" else engine_clusters
    kwargs = {"threshold": 0.99, "k": 3} if analysis == "leaks" else {"k": 3, "n_boot": 20}
    ref = run(FeatureBank.open(bank.path), **kwargs)

    def whole(self):
        raise AssertionError("a whole row column was read")

    for prop in ("paths", "engines", "splits", "sha256", "labels"):
        monkeypatch.setattr(FeatureBank, prop, property(whole))
    got = run(FeatureBank.open(bank.path), chunk_rows=32, **kwargs)
    if analysis == "leaks":
        assert got.pairs == ref.pairs and {p["kind"] for p in got.pairs} == {"near", "exact"}
    else:
        assert got.purity == ref.purity and got.kmeans == ref.kmeans


def test_large_bank_purity_uses_running_sums_with_the_same_means(tmp_path, monkeypatch):
    import facebank.analysis.neighbours.clusters as clusters

    X, engines = clustered(n_per=100)
    engines[::7] = "real"  # uneven engines, purities neither 0 nor 1
    index = NeighbourIndex(make_bank(tmp_path / "b.zarr", X, engines), factory="Flat")
    ref = engine_clusters(index, k=5, n_boot=200)
    monkeypatch.setattr(clusters, "_BOOTSTRAP_MAX", 10)  # this bank counts as "large"
    got = engine_clusters(index, k=5, n_boot=200)
    for a, b in zip(got.purity, ref.purity, strict=True):
        assert a["purity"] == pytest.approx(b["purity"]) and a["n"] == b["n"]
        # normal interval of the mean: centred, about as wide as the bootstrap's
        assert (a["lo"] + a["hi"]) / 2 == pytest.approx(a["purity"])
        assert 0.5 < (a["hi"] - a["lo"]) / max(b["hi"] - b["lo"], 1e-9) < 2.0
    assert got.overall["micro"] == pytest.approx(ref.overall["micro"])
    assert got.overall["micro_lo"] < got.overall["micro"] < got.overall["micro_hi"]


def test_nmi_and_ari_from_the_contingency_table_equal_sklearn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from facebank.analysis.neighbours.clusters import _ari, _nmi

    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 4, 500)
        c = np.where(rng.random(500) < 0.6, y, rng.integers(0, 5, 500))
        table = np.zeros((4, 5), dtype=np.int64)
        np.add.at(table, (y, c), 1)
        assert _nmi(table) == pytest.approx(normalized_mutual_info_score(y, c))
        assert _ari(table) == pytest.approx(adjusted_rand_score(y, c))
    assert _ari(np.diag([3, 4])) == 1.0 and _nmi(np.array([[5]])) == 1.0


# ------------------------------------------------------------------ neighbours index


def test_cli_index_on_disk_gives_the_neighbours_of_the_in_memory_index(tmp_path):
    X, engines = clustered()
    bank = make_bank(tmp_path / "b.zarr", X, engines)
    args = ["neighbours", "index", str(bank.path), "--factory", "IVF8,PQ4", "--nprobe", "4"]
    args += ["--chunk-rows", "128"]  # 600 rows: five partitions added one by one
    runner = CliRunner()
    mem = runner.invoke(app, [*args, "--out", str(tmp_path / "mem")])
    disk = runner.invoke(app, [*args, "--on-disk", "--out", str(tmp_path / "disk")])
    assert mem.exit_code == 0 and disk.exit_code == 0, mem.output + disk.output
    assert "600 rows, IVF8,PQ4" in disk.output and "index.ivfdata" in disk.output
    files = json.loads((tmp_path / "disk" / "metrics.json").read_text())["files"]
    assert sorted(files) == ["index.faiss", "index.ivfdata"] and files["index.ivfdata"] > 0
    assert json.loads((tmp_path / "disk" / "config.json").read_text())["on_disk"] is True

    a = faiss.read_index(str(tmp_path / "mem" / "index" / "index.faiss"))
    b = faiss.read_index(
        str(tmp_path / "disk" / "index" / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR
    )
    assert a.ntotal == b.ntotal == len(X)
    assert type(b.invlists).__name__ != "ArrayInvertedLists"  # b's lists stay on disk
    Q = X[::7].copy()
    faiss.normalize_L2(Q)
    for ix in (a, b):
        faiss.extract_index_ivf(ix).nprobe = 4
    Da, Ia = a.search(Q, 5)
    Db, Ib = b.search(Q, 5)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, atol=1e-6)
    # ... and those are the neighbours NeighbourIndex finds in memory
    _, I = NeighbourIndex(bank, factory="IVF8,PQ4", nprobe=4, chunk_rows=128).search(X[::7], 5)
    np.testing.assert_array_equal(Ia, I)


def test_cli_index_on_disk_refuses_a_flat_index(tmp_path):
    X, engines = clustered(n_per=20)
    bank = make_bank(tmp_path / "b.zarr", X, engines)
    res = CliRunner().invoke(
        app, ["neighbours", "index", str(bank.path), "--on-disk", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1
    assert "on_disk needs an IVF index" in res.output
    assert not (tmp_path / "o").exists()  # a failed command leaves no run folder


def test_refine_k_factor_reranks_more_candidates_and_is_refused_elsewhere():
    X, _ = clustered(n_per=400, dim=32)
    _, I_ex = NeighbourIndex(X, factory="Flat").search(X[:200], 10)

    def recall(**kw):
        _, I = NeighbourIndex(X, factory="IVF16,PQ4,RFlat", nprobe=16, **kw).search(X[:200], 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ex, strict=True)])

    shallow, deep = recall(), recall(k_factor=16)
    assert shallow < 0.8 and deep > 0.97  # 4 bytes a row re-ranked on the full vectors
    with pytest.raises(DataError, match="k_factor=4 does not apply.*knob of refine indexes"):
        NeighbourIndex(X, factory="IVF16,Flat", k_factor=4)


def test_cli_leaks_and_clusters_take_the_refine_depth(tmp_path):
    X, engines = clustered(n_per=100)
    bank = make_bank(tmp_path / "b.zarr", X, engines, splits=["train", "test"] * 150)
    common = [str(bank.path), "--factory", "IVF4,PQ4,RFlat", "--nprobe", "4", "--k-factor", "8"]
    res = CliRunner().invoke(app, ["neighbours", "clusters", *common, "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "config.json").read_text())["k_factor"] == 8
    res = CliRunner().invoke(app, ["neighbours", "leaks", *common, "--out", str(tmp_path / "l")])
    assert res.exit_code in (0, 2), res.output
    bad = CliRunner().invoke(app, ["neighbours", "leaks", str(bank.path), "--k-factor", "8"])
    assert bad.exit_code == 1 and "k_factor=8 does not apply" in bad.output


def test_leaks_and_clusters_search_a_written_on_disk_index(tmp_path):
    X, engines = clustered(n_per=100)
    X[1] = X[0]  # a train/test near-copy
    splits = ["train", "test"] * 150
    bank = make_bank(tmp_path / "b.zarr", X, engines, splits=splits)
    runner = CliRunner()
    ivf = ["--factory", "IVF4,Flat", "--nprobe", "4"]  # all lists probed: exact
    made = runner.invoke(
        app,
        ["neighbours", "index", str(bank.path), *ivf, "--on-disk", "--out", str(tmp_path / "ix")],
    )
    assert made.exit_code == 0, made.output
    leaks = [str(bank.path), "--threshold", "0.99", "-k", "3"]
    res = runner.invoke(
        app,
        ["neighbours", "leaks", *leaks, "--index", str(tmp_path / "ix"), "-o", str(tmp_path / "l")],
    )
    ref = find_leaks(bank, threshold=0.99, k=3)
    assert res.exit_code == 2 and f"{len(ref.pairs)} pairs" in res.output, res.output
    got = find_leaks(NeighbourIndex.open(tmp_path / "ix", bank), threshold=0.99, k=3)

    def rows(r):
        return [(p["row_a"], p["row_b"], p["kind"]) for p in r.pairs]

    assert rows(got) == rows(ref) and (0, 1, "near") in rows(got)
    sims = [p["similarity"] for p in got.pairs]
    assert sims == pytest.approx([p["similarity"] for p in ref.pairs], abs=1e-5)
    assert got.factory == "IVF4,Flat"
    c = runner.invoke(
        app,
        ["neighbours", "clusters", str(bank.path), "-k", "5", "--index", str(tmp_path / "ix")]
        + ["--out", str(tmp_path / "c")],
    )
    assert c.exit_code == 0, c.output
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["factory"] == "IVF4,Flat"

    other = make_bank(tmp_path / "other.zarr", X[:50], engines[:50])
    with pytest.raises(DataError, match="was built from .*b.zarr.*give those banks"):
        NeighbourIndex.open(tmp_path / "ix", other)
    with pytest.raises(DataError, match="holds no index/index.faiss"):
        NeighbourIndex.open(tmp_path, bank)
