# ruff: noqa: E741  (FAISS convention: results are named D, I)
"""analysis.neighbours: exactness against sklearn, streaming, knobs, clusters, leaks, maps."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from facebank.analysis import _plots_neighbours, plots
from facebank.analysis.neighbours import (
    NeighbourIndex,
    NeighbourRecord,
    embedding_map,
    engine_clusters,
    find_leaks,
    resolve_image_path,
)
from facebank.core.errors import (
    BackboneMismatchError,
    BankError,
    DataError,
    FacebankError,
    ImageDecodeError,
    UnknownNameError,
)
from facebank.embed import FeatureBank, write_bank

# Tiny synthetic data: Gaussian clusters per engine, 16-d.
ENGINES = ("real", "sdxl", "stylegan2")
N_PER, DIM = 40, 16


def sha(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


def clusters(seed: int = 0, *, n_per: int = N_PER, dim: int = DIM, spread: float = 4.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(ENGINES), dim)) * spread
    X = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    engines = np.repeat(ENGINES, n_per)
    labels = (engines != "real").astype(np.int8)
    splits = np.tile(["train", "val", "test"], len(X) // 3 + 1)[: len(X)]
    return X, engines, labels, splits


def make_bank(path, seed=0, *, salt="", backbone=None, source="synthetic", **kw):
    X, engines, labels, splits = clusters(seed, **kw)
    return write_bank(
        path,
        X,
        labels=labels,
        engines=engines,
        splits=splits,
        sha256=[sha(i, salt or str(path)) for i in range(len(X))],
        paths=[f"{e}/img{i:03d}.png" for i, e in enumerate(engines)],
        backbone=backbone,
        source=source,
    )


@pytest.fixture
def bank(tmp_path):
    return make_bank(tmp_path / "faces.zarr")


def with_ties(seed=1, n=60, dim=8):
    """Random rows with exact duplicates, so some neighbour distances tie."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[10] = X[3]
    X[11] = X[3]
    X[20] = 2.0 * X[5]  # same direction: a cosine tie, not an l2 one
    return X


def assert_same_neighbours(D, I, ref_D, ref_I, true_score, *, atol=1e-5):
    """Distances equal; indices equal except within ties, whose members must score the same."""
    np.testing.assert_allclose(D, ref_D, atol=atol)
    for q in range(len(I)):
        # every returned index really has the reported score
        np.testing.assert_allclose(true_score(q, I[q]), D[q], atol=atol)
        for j in range(I.shape[1]):
            tied = np.abs(ref_D[q] - ref_D[q, j]) < atol
            if tied.sum() == 1 and abs(ref_D[q, j] - (ref_D[q, -1])) > atol:
                assert I[q, j] == ref_I[q, j]


# ------------------------------------------------------------------ exactness


def test_exact_cosine_search_equals_sklearn_brute_with_ties():
    X = with_ties()
    k = 6
    D, I = NeighbourIndex(X, metric="cosine").search(X, k)
    ref_d, ref_I = (
        NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(X).kneighbors(X)
    )
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert_same_neighbours(D, I, 1 - ref_d, ref_I, lambda q, idx: Xn[idx] @ Xn[q])
    # the tied duplicates are all found at similarity 1
    assert {3, 10, 11} <= set(I[3, :3].tolist())
    assert {5, 20} == set(I[5, :2].tolist())
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (60, k)


def test_exact_l2_search_equals_sklearn_brute_squared():
    X = with_ties(seed=2)
    k = 5
    D, I = NeighbourIndex(X, metric="l2").search(X[:25], k)
    ref_d, ref_I = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X[:25])
    assert_same_neighbours(
        D, I, ref_d**2, ref_I, lambda q, idx: ((X[idx] - X[q]) ** 2).sum(1), atol=1e-4
    )
    assert np.all(np.diff(D, axis=1) >= -1e-6)  # ascending distances


def test_bank_index_equals_array_index_and_carries_row_metadata(bank):
    X = bank.load_features()
    D1, I1 = NeighbourIndex(bank).search(X[:7], 4)
    D2, I2 = NeighbourIndex(X).search(X[:7], 4)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, atol=1e-6)
    rows = NeighbourIndex(bank).rows
    assert len(rows) == len(bank)
    assert rows.engine[I1[0, 0]] == bank.engines[I1[0, 0]]
    assert rows.record(5) == {
        "row": 5,
        "path": bank.paths[5],
        "engine": bank.engines[5],
        "label": int(bank.labels[5]),
        "split": bank.splits[5],
        "sha256": bank.sha256[5],
        "bank": "faces",
    }


def test_two_banks_are_numbered_bank_after_bank(tmp_path):
    a = make_bank(tmp_path / "a.zarr", seed=0)
    b = make_bank(tmp_path / "b.zarr", seed=1)
    index = NeighbourIndex([a, b])
    assert index.ntotal == len(a) + len(b)
    assert set(index.rows.bank.tolist()) == {"a", "b"}
    assert index.rows.bank[len(a)] == "b"
    Xb = b.load_features(rows=[4])
    D, I = index.search(Xb, 1)
    assert I[0, 0] == len(a) + 4 and D[0, 0] == pytest.approx(1.0, abs=1e-5)
    # paths also accepted
    assert NeighbourIndex([str(a.path), str(b.path)]).ntotal == index.ntotal
    # chunks that straddle the two banks (120 rows + 120 rows in chunks of 50)
    D, I = NeighbourIndex([a, b], factory="IVF2,Flat", nprobe=2, chunk_rows=50).self_knn(3)
    X = np.concatenate([a.load_features(), b.load_features()])
    D0, I0 = NeighbourIndex(X).self_knn(3)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, atol=1e-5)


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize(("factory", "passes"), [("Flat", 1), ("IVF4,Flat", 2)])
def test_self_knn_streams_in_chunks_and_equals_brute_force(bank, monkeypatch, factory, passes):
    # Flat on the CPU: the self-search runs over the index's own rows in 32-row blocks
    # (4 blocks, the last one short), so the bank is read once, for the add; other
    # indexes stream the bank a second time for the self-search (IVF with every list
    # probed is exact)
    import facebank.analysis.neighbours.selfknn as nb

    monkeypatch.setattr(nb, "SELF_BLOCK_ROWS", 32)
    seen = []
    original = FeatureBank.iter_features

    def spy(self, *, chunk_rows=None, dtype=np.float32):
        for start, stop, X in original(self, chunk_rows=chunk_rows, dtype=dtype):
            seen.append(stop - start)
            yield start, stop, X

    def no_full_load(self, rows=None, **kw):
        if rows is None:
            raise AssertionError("the whole bank was loaded")
        return original_load(self, rows, **kw)

    original_load = FeatureBank.load_features
    monkeypatch.setattr(FeatureBank, "iter_features", spy)
    monkeypatch.setattr(FeatureBank, "load_features", no_full_load)
    index = NeighbourIndex(
        bank, chunk_rows=17, factory=factory, nprobe=None if factory == "Flat" else 4
    )
    D, I = index.self_knn(5)
    monkeypatch.undo()

    assert max(seen) == 17 and sum(seen) == passes * len(bank)
    X = bank.load_features()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)
    ref = -np.sort(-S, axis=1)[:, :5]
    np.testing.assert_allclose(D, ref, atol=1e-5)
    np.testing.assert_array_equal(I, np.argsort(-S, axis=1, kind="stable")[:, :5])
    assert not (I == np.arange(len(bank))[:, None]).any()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_symmetric_block_self_knn_equals_sklearn_brute(monkeypatch, metric, exclude_self):
    import facebank.analysis.neighbours.selfknn as nb

    monkeypatch.setattr(nb, "SELF_BLOCK_ROWS", 40)  # blocks of 40, 40, 40 and 30 rows
    X = np.random.default_rng(4).standard_normal((150, 12)).astype(np.float32) * 3 + 1
    index = NeighbourIndex(X, metric=metric)
    D, I = index.self_knn(6, exclude_self=exclude_self)
    nn = NearestNeighbors(
        n_neighbors=6, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean"
    )
    nn.fit(X)
    ref_d, ref_i = nn.kneighbors() if exclude_self else nn.kneighbors(X)
    np.testing.assert_array_equal(I, ref_i)
    np.testing.assert_allclose(D, 1 - ref_d if metric == "cosine" else ref_d**2, atol=1e-4)


def test_self_knn_keeps_an_exact_duplicate_as_a_neighbour():
    X = with_ties()
    D, I = NeighbourIndex(X, chunk_rows=8).self_knn(3)
    # row 3 has two exact copies (10, 11): they are its first neighbours, itself is not
    assert set(I[3, :2].tolist()) == {10, 11}
    assert 3 not in I[3]
    np.testing.assert_allclose(D[3, :2], 1.0, atol=1e-6)
    D2, I2 = NeighbourIndex(X).self_knn(3, exclude_self=False)
    assert (D2[:, 0] > 0.9999).all()


# ------------------------------------------------------------------ factories and knobs


def test_ivf_with_every_list_probed_is_exact_and_hnsw_recalls(bank):
    X = bank.load_features()
    D0, I0 = NeighbourIndex(bank).search(X, 5)
    D1, I1 = NeighbourIndex(bank, factory="IVF4,Flat", nprobe=4).search(X, 5)
    np.testing.assert_allclose(D1, D0, atol=1e-5)
    _, I2 = NeighbourIndex(bank, factory="HNSW16", ef_search=64).search(X, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(I0, I2, strict=True)])
    assert recall > 0.95


def test_ivf_is_trained_on_a_seeded_sample(bank):
    X = bank.load_features()[:10]
    a = NeighbourIndex(bank, factory="IVF8,Flat", nprobe=1, seed=3).search(X, 5)
    b = NeighbourIndex(bank, factory="IVF8,Flat", nprobe=1, seed=3).search(X, 5)
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_factory_and_knobs_give_clear_errors(bank):
    with pytest.raises(UnknownNameError, match="'Bogus12'.*'Flat'"):
        NeighbourIndex(bank, factory="Bogus12")
    with pytest.raises(DataError, match="nprobe=4 does not apply to index 'Flat'"):
        NeighbourIndex(bank, nprobe=4)
    with pytest.raises(DataError, match="ef_search=9 does not apply"):
        NeighbourIndex(bank, factory="IVF4,Flat", ef_search=9)
    with pytest.raises(DataError, match="has 512 lists but only 120 rows"):
        NeighbourIndex(bank, factory="IVF512,Flat")
    with pytest.raises(UnknownNameError, match="metric 'dot'.*cosine, l2"):
        NeighbourIndex(bank, metric="dot")


def test_device_is_chosen_at_construction_not_import(bank):
    import faiss

    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    assert NeighbourIndex(bank, device="auto").device == ("cuda:0" if has_gpu else "cpu")
    assert NeighbourIndex(bank, device="cpu").device == "cpu"
    with pytest.raises(UnknownNameError, match="'tpu'; valid: auto, cpu"):
        NeighbourIndex(bank, device="tpu")
    if not has_gpu:
        with pytest.raises(FacebankError, match="faiss-gpu"):
            NeighbourIndex(bank, device="cuda")


def test_gpu_code_path_is_wired(bank, monkeypatch):
    """With a (faked) faiss-gpu: device auto picks the GPU, clones, sets knobs, falls back."""
    import faiss

    calls = []

    def to_gpu(res, device, index, opts):
        calls.append((device, bool(opts.useFloat16), type(faiss.downcast_index(index)).__name__))
        if "HNSW" in type(faiss.downcast_index(index)).__name__:
            raise RuntimeError("Error: HNSW has no GPU implementation")
        return index  # the CPU index stands in for the GPU one

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(
        faiss, "GpuClonerOptions", lambda: type("O", (), {"useFloat16": False})(), raising=False
    )
    monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    X = bank.load_features()
    index = NeighbourIndex(bank, device="auto", gpu_float16=True, chunk_rows=50)
    assert index.device == "cuda:0" and calls[-1] == (0, True, "IndexFlat")
    D, I = index.self_knn(4)
    D0, I0 = NeighbourIndex(X, device="cpu").self_knn(4)
    np.testing.assert_array_equal(I, I0)
    ivf = NeighbourIndex(bank, factory="IVF4,Flat", nprobe=4, device="cuda:1")
    assert ivf.device == "cuda:1" and calls[-1][0] == 1
    hnsw = NeighbourIndex(bank, factory="HNSW16", device="cuda")
    assert hnsw.device == "cpu"  # no GPU HNSW in FAISS: stays on the CPU


# ------------------------------------------------------------------ bad input


def test_k_larger_than_the_bank(bank):
    index = NeighbourIndex(bank)
    with pytest.raises(DataError, match=r"k=121 is larger than the index: it holds 120 rows"):
        index.search(bank.load_features(rows=[0]), 121)
    with pytest.raises(DataError, match=r"k=120 .* use k <= 119"):
        index.self_knn(120)
    with pytest.raises(DataError, match="k must be >= 1"):
        index.search(bank.load_features(rows=[0]), 0)


def test_empty_bank(tmp_path):
    empty = write_bank(
        tmp_path / "empty.zarr", np.zeros((0, DIM), np.float32), labels=[], engines=[]
    )
    with pytest.raises(BankError, match="empty.zarr' has no rows"):
        NeighbourIndex(empty)
    with pytest.raises(DataError, match="no rows"):
        NeighbourIndex(np.zeros((0, 4), np.float32))


def test_mismatched_backbones_name_both_banks(tmp_path):
    a = make_bank(tmp_path / "a.zarr")
    other = {
        "name": "other",
        "library": "numpy",
        "model": "other",
        "pretrained": None,
        "weights_sha256": None,
        "dim": DIM,
        "input_size": None,
        "mean": None,
        "std": None,
        "l2_normalised": False,
    }
    b = make_bank(tmp_path / "b.zarr", backbone=other)
    with pytest.raises(BackboneMismatchError, match=r"a\.zarr.*b\.zarr"):
        NeighbourIndex([a, b])


def test_wrong_query_width_and_nan_rows(bank):
    index = NeighbourIndex(bank)
    with pytest.raises(DataError, match=r"shape \(n, 16\)"):
        index.search(np.zeros((2, 3), np.float32), 2)
    X = np.ones((5, 4), np.float32)
    X[2, 1] = np.nan
    with pytest.raises(DataError, match="row 2 has NaN"):
        NeighbourIndex(X)


def test_query_images_need_a_decodable_file_and_a_real_backbone(bank, tmp_path):
    index = NeighbourIndex(bank)
    with pytest.raises(ImageDecodeError, match="missing.png' does not exist"):
        index.query([str(tmp_path / "missing.png")], 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="synthetic.*cannot embed images.*--rows"):
        index.query([str(bad)], 3)


# ------------------------------------------------------------------ records


def test_query_and_query_rows_return_records(bank):
    index = NeighbourIndex(bank)
    X = bank.load_features(rows=[0, 50])
    recs = index.query(X, 3, names=["a", "b"])
    assert len(recs) == 2 and all(len(r) == 3 for r in recs)
    top = recs[1][0]
    assert isinstance(top, NeighbourRecord)
    assert (top.query, top.rank, top.row, top.engine) == ("b", 1, 50, bank.engines[50])
    assert top.similarity == pytest.approx(1.0, abs=1e-5)
    assert top.distance == pytest.approx(0.0, abs=1e-5)
    assert top.image_path is None  # synthetic bank: no files
    by_row = index.query_rows([50], 3)
    assert [r.row for r in by_row[0]] == [r.row for r in recs[1][1:]] + [by_row[0][-1].row]
    assert 50 not in [r.row for r in by_row[0]]
    with pytest.raises(DataError, match="row 500 is out of range"):
        index.query_rows([500], 2)
    l2 = NeighbourIndex(bank, metric="l2").query(X[:1], 2)[0][0]
    assert l2.similarity is None and l2.distance == pytest.approx(0.0, abs=1e-4)


def test_resolve_image_path_follows_the_recorded_source(tmp_path):
    (tmp_path / "src" / "sdxl").mkdir(parents=True)
    (tmp_path / "src" / "sdxl" / "a.png").write_bytes(b"x")
    assert (
        resolve_image_path(str(tmp_path / "src"), "sdxl/a.png")
        == tmp_path / "src" / "sdxl" / "a.png"
    )
    manifest = tmp_path / "src" / "list.csv"
    assert resolve_image_path(str(manifest), "sdxl/a.png") == tmp_path / "src" / "sdxl" / "a.png"
    assert resolve_image_path(str(tmp_path / "src"), "sdxl/missing.png") is None
    assert resolve_image_path("synthetic", "row-000001") is None


# ------------------------------------------------------------------ clusters


def test_engine_clusters_on_separated_clusters(bank, tmp_path):
    res = engine_clusters(bank, k=5, n_boot=200, out=tmp_path / "run")
    assert res.engines == list(ENGINES)
    assert [p["purity"] for p in res.purity] == [1.0, 1.0, 1.0]
    assert res.overall["micro"] == 1.0
    np.testing.assert_allclose(res.confusion, np.eye(3))
    assert res.confusion_counts.sum() == len(bank) * 5
    assert res.kmeans["nmi"] == pytest.approx(1.0) and res.kmeans["ari"] == pytest.approx(1.0)
    assert res.silhouette > 0.5 and res.silhouette_n == len(bank)
    assert res.purity[0]["chance"] == pytest.approx((N_PER - 1) / (3 * N_PER - 1))
    for name in (
        "config.json",
        "metrics.json",
        "purity.md",
        "confusion.png",
        "purity.png",
        "confusion.csv",
    ):
        assert (tmp_path / "run" / name).is_file()
    assert "| real | 40 | 1.000 |" in (tmp_path / "run" / "purity.md").read_text()


def test_engine_clusters_when_two_engines_share_a_distribution(tmp_path):
    rng = np.random.default_rng(5)
    # "real" and "sdxl" drawn from one Gaussian, "stylegan2" far away
    X = np.concatenate([rng.normal(size=(120, DIM)), rng.normal(size=(60, DIM)) + 8]).astype(
        np.float32
    )
    X[:120] += 8 * np.eye(DIM, dtype=np.float32)[0]
    engines = np.array(["real"] * 60 + ["sdxl"] * 60 + ["stylegan2"] * 60)
    b = write_bank(
        tmp_path / "mix.zarr", X, labels=(engines != "real").astype(int), engines=engines
    )
    res = engine_clusters(b, k=10, n_boot=300, silhouette_max=100, seed=1)
    p = {r["engine"]: r for r in res.purity}
    assert p["stylegan2"]["purity"] == 1.0
    assert 0.3 < p["real"]["purity"] < 0.7  # half the neighbours are "sdxl"
    assert p["real"]["lo"] <= p["real"]["purity"] <= p["real"]["hi"]
    assert p["real"]["hi"] - p["real"]["lo"] > 0.01
    C = dict(zip(res.engines, res.confusion, strict=True))
    assert 0.3 < C["real"][1] < 0.7 and C["real"][2] == 0.0
    assert res.silhouette_n == 100  # seeded subsample above the limit
    assert res.silhouette < 0.5
    assert 0.3 < res.kmeans["nmi"] < 0.95
    again = engine_clusters(b, k=10, n_boot=300, silhouette_max=100, seed=1)
    assert again.silhouette == res.silhouette and again.purity == res.purity


# ------------------------------------------------------------------ leaks


def leaky_banks(tmp_path):
    X, engines, labels, splits = clusters(3)
    splits = np.array(["train"] * 60 + ["test"] * 60)
    shas = [sha(i, "leak") for i in range(len(X))]
    X[70] = X[2] + 1e-3  # a test image that is a near-copy of train image 2
    shas[80] = shas[5]  # a byte-identical file in train and test
    X[3] = X[4]  # a near-copy *within* train: not a leak
    train_test = write_bank(
        tmp_path / "tt.zarr", X, labels=labels, engines=engines, splits=splits, sha256=shas
    )
    return train_test, X


def test_find_leaks_reports_near_and_exact_duplicates_across_splits(tmp_path):
    b, _ = leaky_banks(tmp_path)
    res = find_leaks(b, threshold=0.999, out=tmp_path / "run")
    pairs = {(p["row_a"], p["row_b"]): p for p in res.pairs}
    assert pairs[(2, 70)]["kind"] == "near" and pairs[(2, 70)]["similarity"] > 0.999
    assert pairs[(5, 80)]["kind"] == "exact"
    assert (3, 4) not in pairs  # same split of the same bank
    assert res.has_train_test_leak and res.train_test == 2
    assert res.counts == [
        {"split_a": "test", "split_b": "train", "near": 1, "exact": 1, "total": 2}
    ]
    csv_text = (tmp_path / "run" / "pairs.csv").read_text().splitlines()
    assert csv_text[0].startswith("kind,similarity,row_a") and len(csv_text) == 3


def test_find_leaks_across_banks_and_clean_data(tmp_path):
    a = make_bank(tmp_path / "a.zarr", seed=0, salt="a")
    clean = find_leaks(a, threshold=0.99)
    assert clean.pairs == [] and not clean.has_train_test_leak
    X, engines, labels, _ = clusters(0)
    # bank b holds a copy of a's row 7 (same features, own sha256) marked "train"
    b = write_bank(
        tmp_path / "b.zarr",
        X[7:8],
        labels=labels[7:8],
        engines=engines[7:8],
        splits=["train"],
        sha256=[sha(999)],
    )
    res = find_leaks([a, b], threshold=0.99)
    assert [(p["row_a"], p["row_b"], p["bank_a"], p["bank_b"]) for p in res.pairs] == [
        (7, len(a), "a", "b")
    ]
    assert res.pairs[0]["split_a"] == a.splits[7]
    with pytest.raises(DataError, match="threshold=1.5"):
        find_leaks(a, threshold=1.5)


# ------------------------------------------------------------------ maps


def test_embedding_map_pca_and_seeded_subsample(bank):
    full = embedding_map(bank, method="pca")
    assert full.coords.shape == (len(bank), 2) and not full.subsampled
    assert sum(full.explained_variance) > 0.5  # three separated clusters: 2 PCs explain most
    sub = embedding_map(bank, method="pca", max_points=50, seed=4)
    again = embedding_map(bank, method="pca", max_points=50, seed=4)
    assert sub.subsampled and len(sub.rows) == 50 and sub.n_total == len(bank)
    np.testing.assert_array_equal(sub.rows, again.rows)
    np.testing.assert_array_equal(sub.engines, bank.engines[sub.rows])
    with pytest.raises(UnknownNameError, match="'umap'.*pca, tsne"):
        embedding_map(bank, method="umap")


def test_embedding_map_tsne_separates_clusters(bank):
    emap = embedding_map(bank, method="tsne", max_points=60, seed=0, max_iter=500)
    assert emap.coords.shape == (60, 2) and np.isfinite(emap.coords).all()
    # nearest 2-D neighbour shares the engine for almost every point
    d = ((emap.coords[:, None] - emap.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (emap.engines[d.argmin(1)] == emap.engines).mean() > 0.9


# ------------------------------------------------------------------ plots


def test_neighbour_grid_draws_images_when_files_exist_and_placeholders_otherwise(tmp_path):
    from matplotlib.figure import Figure
    from PIL import Image

    src = tmp_path / "src"
    X, engines, labels, splits = clusters(0, n_per=4)
    paths = [f"{e}/img{i}.png" for i, e in enumerate(engines)]
    for i, p in enumerate(paths[:6]):  # only half the files exist
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (20 * i, 100, 50)).save(src / p)
    b = write_bank(
        tmp_path / "img.zarr",
        X,
        labels=labels,
        engines=engines,
        paths=paths,
        splits=splits,
        source=str(src),
    )
    recs = NeighbourIndex(b).query_rows([0, 9], 3)
    fig = plots.neighbour_grid(recs)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 2 * 4
    drawn = [bool(ax.images) for ax in axes]
    expected = (
        [recs[0][0].query_image is not None]
        + [r.image_path is not None for r in recs[0]]
        + [recs[1][0].query_image is not None]
        + [r.image_path is not None for r in recs[1]]
    )
    assert drawn == expected and any(drawn) and not all(drawn)
    captions = axes[1].get_title()
    assert "sim" in captions and recs[0][0].engine in captions and "#1" in captions
    plots.save_figure(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_confusion_heatmap_and_map_scatter(bank):
    res = engine_clusters(bank, k=3, n_boot=10)
    fig = plots.confusion_heatmap(res.confusion, res.engines, k=3)
    assert len(fig.axes[0].texts) == 9
    emap = embedding_map(bank, method="pca", max_points=30, seed=0)
    fig = plots.embedding_scatter(emap)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(legend) == len(set(emap.engines.tolist())) and legend[0].startswith("real")
    assert "subsample of 30 of 120 rows (seed 0)" in fig.axes[0].get_title()
    colours = plots.engine_colours(ENGINES)
    assert fig.axes[0].collections[0].get_facecolor()[0][:3] == pytest.approx(
        __import__("matplotlib").colors.to_rgb(colours["real"])
    )


# ------------------------------------------------------------------ image queries (tiny backbone)


@pytest.fixture(scope="module")
def image_bank(tmp_path_factory):
    """Six real PNGs embedded by the test-only ``tiny-cnn`` backbone into a bank."""
    from PIL import Image

    from facebank.embed import create_backbone, encode_images

    root = tmp_path_factory.mktemp("imgbank")
    src = root / "src"
    rng = np.random.default_rng(0)
    rel = []
    for i in range(6):
        engine = ENGINES[i % 3]
        (src / engine).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            src / engine / f"{i}.png"
        )
        rel.append(f"{engine}/{i}.png")
    spec = create_backbone("tiny-cnn", device="cpu").spec
    enc = encode_images([str(src / p) for p in rel], backbone=spec, device="cpu")
    assert not enc.failures
    engines = [p.split("/")[0] for p in rel]
    bank = write_bank(
        root / "img.zarr",
        enc.features,
        labels=[int(e != "real") for e in engines],
        engines=engines,
        paths=rel,
        sha256=[hashlib.sha256((src / p).read_bytes()).hexdigest() for p in rel],
        backbone=spec,
        source=str(src),
    )
    return bank, src, rel


@pytest.mark.slow
def test_query_image_files_are_embedded_with_the_banks_backbone(image_bank, tmp_path):
    bank, src, rel = image_bank
    index = NeighbourIndex(bank, device="cpu")
    recs = index.query([str(src / rel[4])], 2, device="cpu")
    top = recs[0][0]
    assert top.row == 4 and top.similarity == pytest.approx(1.0, abs=1e-3)
    assert top.query == str(src / rel[4]) and top.image_path == str(src / rel[4])
    # the suspect file is in the bank: its own row is flagged, the next neighbour is not
    assert top.self_match == "same file" and recs[0][1].self_match == ""
    assert top.query_file == str(src / rel[4])
    # a re-encoded copy (other bytes, same pixels) is flagged by its features
    copy = tmp_path / "copy.png"
    from PIL import Image

    Image.open(src / rel[4]).save(copy, optimize=True, compress_level=1)
    assert copy.read_bytes() != (src / rel[4]).read_bytes()
    again = index.query([str(copy)], 2, device="cpu")[0][0]
    assert again.row == 4 and again.self_match == "same features"
    # the grid captions the query with its file name, whatever the length of its path
    caption = _plots_neighbours._query_caption(top)
    assert caption.splitlines()[:2] == ["query", "4.png"]
    long = dataclasses.replace(top, query_file="/a/very/long/folder/" * 4 + "suspect_face.png")
    assert "suspect_face.png" in _plots_neighbours._query_caption(long).splitlines()[1]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageDecodeError, match=r"query image '.*broken\.jpg' could not be decoded"):
        index.query([str(src / rel[0]), str(bad)], 2, device="cpu")
