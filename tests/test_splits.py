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


def _reference_assign(engines, sha256, seed, fractions=(0.70, 0.15, 0.15)):
    """The per-row Python definition the vectorised assign_splits must reproduce."""
    import hashlib

    out = np.empty(engines.shape, dtype="<U5")
    for engine in np.unique(engines):
        rows = np.flatnonzero(engines == engine)
        key = lambda s: hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest()  # noqa: E731
        uniq = sorted(set(sha256[rows].tolist()), key=key)
        n = len(uniq)
        n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
        if n >= 3:
            n_train = min(max(n_train, 1), n - 2)
            n_val = min(max(n_val, 1), n - n_train - 1)
        where = {
            s: "train" if i < n_train else ("val" if i < n_train + n_val else "test")
            for i, s in enumerate(uniq)
        }
        out[rows] = [where[s] for s in sha256[rows]]
    return out


def test_vectorised_split_equals_the_per_row_definition():
    for seed in (0, 7):
        assert np.array_equal(
            assign_splits(ENGINES, SHA, seed=seed), _reference_assign(ENGINES, SHA, seed)
        )


def test_groups_never_straddle_splits_and_rows_without_group_split_as_before():
    rng = np.random.default_rng(1)
    n = 600
    engines = np.where(rng.random(n) < 0.5, "real", "gan")
    sha = np.array([f"{i:064x}" for i in range(n)])
    # 30 identities of ~10 photos among the reals, no group elsewhere
    groups = np.where(
        engines == "real", np.char.add("person", (rng.integers(0, 30, n)).astype(str)), ""
    )
    splits = assign_splits(engines, sha, seed=0, groups=groups)
    for g in np.unique(groups[groups != ""]):
        assert len(set(splits[groups == g].tolist())) == 1, g
    # every split still gets real groups, and the AI rows split exactly as without groups
    assert set(splits[engines == "real"].tolist()) == {"train", "val", "test"}
    gan = engines == "gan"
    assert np.array_equal(splits[gan], assign_splits(engines[gan], sha[gan], seed=0))
    # seeded: another seed moves groups
    assert (assign_splits(engines, sha, seed=1, groups=groups) != splits).any()


def test_a_group_spanning_engines_lands_in_one_split():
    engines = np.array(["real"] * 5 + ["gan"] * 2 + ["gan"] * 20)
    sha = np.array([f"s{i}" for i in range(27)])
    groups = np.array(["tom"] * 7 + [""] * 20)
    splits = assign_splits(engines, sha, seed=0, groups=groups)
    assert len(set(splits[:7].tolist())) == 1


def test_group_by_folder_level():
    from facebank.core.splits import parse_group_by

    paths = np.array(["real/lfw/bush/1.jpg", "real/lfw/blair/2.jpg", "gan/x.png"])
    assert parse_group_by("level:2", paths).tolist() == ["bush", "blair", ""]
    assert parse_group_by("level:1", paths).tolist() == ["lfw", "lfw", ""]
    with pytest.raises(ValueError, match="level:K"):
        parse_group_by("depth=2", paths)


def test_train_run_group_by_keeps_each_folder_group_in_one_split(tmp_path):
    import csv

    from facebank.embed import write_bank
    from facebank.heads import train_run

    rng = np.random.default_rng(0)
    n = 240
    engines = np.where(np.arange(n) < n // 2, "real", "gan")
    people = rng.integers(0, 12, n)
    paths = np.array(
        [
            f"{e}/p{k}/{i}.png" if e == "real" else f"{e}/{i}.png"
            for i, (e, k) in enumerate(zip(engines, people, strict=True))
        ]
    )
    X = rng.normal(size=(n, 4)).astype(np.float32) + (engines == "gan")[:, None]
    bank = write_bank(
        tmp_path / "b.zarr", X, labels=(engines == "gan").astype(int), engines=engines, paths=paths
    )
    res = train_run([bank], head="linear", out=tmp_path / "run", group_by="level:1")
    assert "grouped by level:1" in res.split_source
    with open(tmp_path / "run" / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split_of_person: dict[str, set] = {}
    for r in rows:
        parts = r["path"].split("/")
        if parts[0] == "real":
            split_of_person.setdefault(parts[1], set()).add(r["split"])
    assert len(split_of_person) == 12
    assert all(len(s) == 1 for s in split_of_person.values())


def test_resolve_groups_forms_and_errors(tmp_path):
    from facebank.core.errors import DataError
    from facebank.core.splits import resolve_groups
    from facebank.embed import write_bank

    bank = write_bank(
        tmp_path / "b.zarr",
        np.zeros((3, 2), np.float32),
        labels=[0, 0, 1],
        engines=["real", "real", "gan"],
        paths=["real/bush/1.jpg", "real/blair/2.jpg", "gan/3.png"],
    )
    # no group column values: no groups by default, a clear error when asked for
    assert resolve_groups(bank) == (None, "")
    with pytest.raises(DataError, match="no row of the bank has a group"):
        resolve_groups(bank, "group")
    groups, source = resolve_groups(bank, "level:1")
    assert groups.tolist() == ["bush", "blair", ""] and source == "level:1"
    groups, source = resolve_groups(bank, "engine")
    assert groups.tolist() == ["real", "real", "gan"] and "engine column" in source
    assert resolve_groups(bank, "none") == (None, "")
    for bad in ("person", "label", "width"):  # unknown, or not a string column
        with pytest.raises(DataError, match="level:K"):
            resolve_groups(bank, bad)


def _manifest_with_groups(root, rng, *, people=8, photos=5, fakes=40):
    """A manifest source: reals of ``people`` identities (``group`` column), fakes without."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    lines = ["path,label,engine,group"]
    k = 0
    for label, engine, n in ((0, "real", people * photos), (1, "gan", fakes)):
        for i in range(n):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(a).resize((48, 48), Image.Resampling.BICUBIC)
            name = f"img/{k:03d}.{'jpg' if label == 0 else 'png'}"
            img.save(root / name)
            group = f"person{i // photos}" if label == 0 else ""
            lines.append(f"{name},{label},{engine},{group}")
            k += 1
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


@pytest.mark.slow  # embeds 80 small images with the test backbone, trains twice, audits
def test_manifest_group_column_is_stored_keeps_splits_whole_and_audit_lists_straddlers(tmp_path):
    """Manifest ``group`` -> bank column (plain zarr too) -> seeded splits never straddle
    -> a run split *without* groups has straddling groups, which audit and leaks list."""
    import csv

    import zarr

    from facebank.analysis.audit import audit
    from facebank.analysis.neighbours.leaks import find_leaks
    from facebank.embed import FeatureBank, embed_source
    from facebank.heads import train_run

    manifest = _manifest_with_groups(tmp_path / "src", np.random.default_rng(0))
    embed_source(manifest, backbone="tiny-cnn", out=tmp_path / "b.zarr", device="cpu")
    bank = FeatureBank.open(tmp_path / "b.zarr")
    by_path = dict(zip(bank.paths.tolist(), bank.groups.tolist(), strict=True))
    assert by_path["img/000.jpg"] == "person0" and by_path["img/039.jpg"] == "person7"
    assert by_path["img/040.png"] == ""
    z = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert z["group"].metadata.dimension_names == ("row",)

    def split_sets(run_dir):
        with open(run_dir / "splits.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        per: dict[str, set] = {}
        for r in rows:
            if r["group"]:
                per.setdefault(r["group"], set()).add(r["split"])
        return per

    # default: the bank's group column keeps each person inside one split
    grouped = train_run([bank], head="linear", out=tmp_path / "grouped", seed=0)
    assert "grouped by the bank's group column" in grouped.split_source
    per = split_sets(tmp_path / "grouped")
    assert len(per) == 8 and all(len(s) == 1 for s in per.values())
    assert audit(bank, run=tmp_path / "grouped").straddling_groups == []

    # a split made without groups: people straddle it, and both checks say which
    loose = train_run([bank], head="linear", out=tmp_path / "loose", seed=0, group_by="none")
    assert "grouped" not in loose.split_source
    straddling = {g for g, s in split_sets(tmp_path / "loose").items() if len(s) > 1}
    assert straddling  # 8 people of 5 photos over 70/15/15: some straddle
    res = audit(bank, run=tmp_path / "loose")
    assert {g["group"] for g in res.straddling_groups} == straddling
    assert any("more than one split" in n for n in res.notes)
    leaks = find_leaks(bank, splits=tmp_path / "loose", device="cpu")
    assert {g["group"] for g in leaks.groups} == straddling


def test_resuming_a_bank_without_a_group_column_from_a_manifest_with_groups_is_refused(
    tmp_path,
):
    """An older bank (no ``group`` column) resumed from a manifest with groups: appending
    would drop the new rows' groups silently, so the run stops first and says what to do."""
    import json
    import shutil

    from facebank.embed import BankError, FeatureBank, embed_source

    manifest = _manifest_with_groups(
        tmp_path / "src", np.random.default_rng(0), people=2, photos=2, fakes=4
    )
    out = tmp_path / "b.zarr"
    embed_source(manifest, backbone="tiny-cnn", out=out, device="cpu", num_workers=0)
    # make it a bank from before the column: no array, not listed
    shutil.rmtree(out / "group")
    doc = json.loads((out / "zarr.json").read_text())
    doc["attributes"]["columns"].remove("group")
    doc.pop("consolidated_metadata", None)
    (out / "zarr.json").write_text(json.dumps(doc))
    before = len(FeatureBank.open(out))
    with pytest.raises(BankError, match="without a group column but the manifest gives groups"):
        embed_source(manifest, backbone="tiny-cnn", out=out, device="cpu", num_workers=0)
    assert len(FeatureBank.open(out)) == before
