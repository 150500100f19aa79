import numpy as np
import pytest
from facebank.embed import assign_splits, has_splits

ENGINES = np.array(["real"] * 200 + ["sdxl"] * 100 + ["tiny"] * 3)
SHA = np.array([f"{i:064x}" for i in range(len(ENGINES))])


def test_assign_splits_is_stratified_and_close_to_fractions():
    splits = assign_splits(ENGINES, SHA, seed=0)
    for engine, n in [("real", 200), ("sdxl", 100)]:
        s = splits[ENGINES == engine]
        assert (s == "train").sum() == round(0.70 * n)
        assert (s == "val").sum() == round(0.15 * n)
        assert (s == "test").sum() == n - round(0.70 * n) - round(0.15 * n)
    # an engine of three images still gets one image in each split
    assert sorted(splits[ENGINES == "tiny"]) == ["test", "train", "val"]


def test_assign_splits_depends_only_on_seed_and_hash_not_on_row_order():
    perm = np.random.default_rng(1).permutation(len(ENGINES))
    a = assign_splits(ENGINES, SHA, seed=3)
    b = assign_splits(ENGINES[perm], SHA[perm], seed=3)
    assert (a[perm] == b).all()
    assert (assign_splits(ENGINES, SHA, seed=4) != a).any()


def test_duplicates_never_straddle_splits():
    sha = SHA.copy()
    sha[1::2] = sha[0::2][: len(sha[1::2])]  # pairs of identical files
    splits = assign_splits(ENGINES, sha, seed=0)
    for h in np.unique(sha):
        assert len(set(splits[sha == h])) == 1


def test_bad_fractions_and_shapes_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(ENGINES, SHA, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="differ in shape"):
        assign_splits(ENGINES[:3], SHA[:4])


def test_has_splits():
    assert has_splits(np.array(["train", "test"]))
    assert not has_splits(np.array(["", ""]))
    assert not has_splits(np.array(["train", "train"]))
