"""SOURCE scanning: folder layouts, split level, CSV manifests, and their error messages."""

from __future__ import annotations

import pytest

from facebank.embed import SourceError, scan_source


def _touch(root, *rels, data=b"x"):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_engine_folders_give_labels_engines_and_sorted_order(tmp_path):
    _touch(
        tmp_path,
        "sdxl/b.png",
        "real/z/2.jpg",
        "real/1.JPG",
        "SDXL2/a.webp",
        "ffhq/x.png",
        "real/notes.txt",
        "real/.DS_Store",
        ".cache/real/1.jpg",
        "loose.jpg",
    )
    src = scan_source(tmp_path, real_names=("real", "ffhq"))
    assert src.kind == "folder" and not src.has_splits
    assert [it.path for it in src.items] == [
        "SDXL2/a.webp",
        "ffhq/x.png",
        "real/1.JPG",
        "real/z/2.jpg",
        "sdxl/b.png",
    ]
    assert [(it.engine, it.label) for it in src.items] == [
        ("sdxl2", 1),
        ("ffhq", 0),
        ("real", 0),
        ("real", 0),
        ("sdxl", 1),
    ]
    assert src.engines == ["ffhq", "real", "sdxl", "sdxl2"]
    assert all(it.split == "" for it in src.items)
    assert str(tmp_path / "real" / "z" / "2.jpg") in {it.file for it in src.items}
    ignored = dict(src.ignored)
    assert "not an image extension" in ignored["real/notes.txt"]
    assert "engine folder" in ignored["loose.jpg"]
    assert ".DS_Store" not in " ".join(ignored) and ".cache" not in " ".join(ignored)
    # without ffhq among the reals it is an AI engine
    assert {it.engine: it.label for it in scan_source(tmp_path).items}["ffhq"] == 1


def test_split_level_fills_the_split_column(tmp_path):
    _touch(tmp_path, "train/real/1.jpg", "train/sdxl/1.jpg", "val/real/2.jpg", "test/sdxl/3.png")
    src = scan_source(tmp_path)
    assert src.has_splits
    assert [(it.path, it.split, it.engine, it.label) for it in src.items] == [
        ("test/sdxl/3.png", "test", "sdxl", 1),
        ("train/real/1.jpg", "train", "real", 0),
        ("train/sdxl/1.jpg", "train", "sdxl", 1),
        ("val/real/2.jpg", "val", "real", 0),
    ]


def test_mixing_split_and_engine_folders_is_an_error(tmp_path):
    _touch(tmp_path, "train/real/1.jpg", "sdxl/1.jpg")
    with pytest.raises(SourceError, match=r"mixes split folders \['train'\].*\['sdxl'\]"):
        scan_source(tmp_path)


def test_empty_or_missing_source_says_how_to_lay_it_out(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images.*SOURCE/<engine>/image"):
        scan_source(tmp_path / "empty")
    _touch(tmp_path, "flat/1.jpg", "flat/2.jpg")
    with pytest.raises(SourceError, match="2 other files.*engine folder"):
        scan_source(tmp_path / "flat")
    _touch(tmp_path, "notes.md")
    with pytest.raises(SourceError, match="not a .csv manifest"):
        scan_source(tmp_path / "notes.md")
    with pytest.raises(SourceError, match="real_names is empty"):
        scan_source(tmp_path / "flat", real_names=())


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    _touch(tmp_path, "imgs/a.jpg", "imgs/b.png")
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label,engine,split\n"
        "imgs/b.png,1,SDXL,train\n"
        "imgs/a.jpg,0,real,test\n"
        f"{tmp_path / 'abs.jpg'},-1,wild,\n"
        "imgs/missing.jpg,1,sdxl,val\n"
    )
    src = scan_source(csv)
    assert src.kind == "manifest" and src.root == tmp_path.resolve()
    assert [(it.path, it.label, it.engine, it.split) for it in src.items] == [
        ("imgs/b.png", 1, "sdxl", "train"),
        ("imgs/a.jpg", 0, "real", "test"),
        (str(tmp_path / "abs.jpg"), -1, "wild", ""),
        ("imgs/missing.jpg", 1, "sdxl", "val"),
    ]  # manifest order; a missing file is the runner's failure, not a scan error
    assert src.items[0].file == str(tmp_path.resolve() / "imgs" / "b.png")


def test_manifest_without_split_column(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("engine,label,path\nreal,0,a.jpg\n")
    (item,) = scan_source(csv).items
    assert (item.path, item.split, item.label) == ("a.jpg", "", 0)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("path,engine\na.jpg,real\n", r"lacks columns \['label'\]"),
        ("path,label,engine\na.jpg,2,real\n", r"line 2: label '2' is not valid"),
        ("path,label,engine\na.jpg,fake,real\n", r"label 'fake' is not valid"),
        ("path,label,engine\na.jpg,0.5,real\n", r"label '0.5' is not valid"),
        ("path,label,engine\na.jpg,0,\n", "empty engine"),
        ("path,label,engine\n,0,real\n", "empty path"),
        ("path,label,engine,split\na.jpg,0,real,holdout\n", r"split 'holdout' is not valid"),
        (
            "path,label,engine\na.jpg,0,real\nb.jpg,1,x\na.jpg,1,x\n",
            r"line 4.*listed again.*line 2",
        ),
        ("path,label,engine\n", "no rows"),
    ],
)
def test_manifest_errors_name_the_line_and_the_fix(tmp_path, body, match):
    csv = tmp_path / "m.csv"
    csv.write_text(body)
    with pytest.raises(SourceError, match=match):
        scan_source(csv)


def test_manifest_group_column_is_read_per_row_as_written(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,engine,group\na.jpg,0,real,George_Bush\nb.png,1,gan,\n")
    items = scan_source(csv).items
    # kept as written (case is part of an identity); an empty cell is no group
    assert [(it.path, it.group) for it in items] == [("a.jpg", "George_Bush"), ("b.png", "")]


def test_a_manifest_row_may_name_an_image_on_a_store_by_its_url(tmp_path):
    """A local manifest listing ``s3://...`` keeps the URL as the row's file and path
    (not joined to the manifest's folder); the same URL twice is refused."""
    from facebank.core.errors import SourceError
    from facebank.embed.inputs.datasets import scan_source

    m = tmp_path / "m.csv"
    m.write_text("path,label,engine\ns3://bucket/new/a.png,-1,new\nlocal.png,0,real\n")
    items = scan_source(m).items
    assert items[0].file == items[0].path == "s3://bucket/new/a.png"
    assert items[1].file == str(tmp_path / "local.png")
    m.write_text("path,label,engine\ns3://b/x.png,-1,new\ns3://b/x.png,-1,new\n")
    with pytest.raises(SourceError, match="listed again"):
        scan_source(m)
