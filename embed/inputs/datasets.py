"""Dataset input: turn a SOURCE (image folder or CSV manifest) into an ordered list of images.

Two forms (docs/design.md "Dataset input"):

- a **folder** ``SOURCE/<engine>/**/<image>``; the folder ``real`` (and any named in
  ``real_names``) holds real faces (label 0), every other engine folder is
  AI-generated (label 1). An optional split level above the engines,
  ``SOURCE/{train,val,test}/<engine>/...``, fills the ``split`` column.
- a **CSV manifest** with a header row and columns ``path,label,engine[,split][,group]``;
  ``path`` is relative to the CSV's folder (absolute paths are kept as given),
  ``label`` is 1 (AI-generated), 0 (real) or -1 (unknown), ``group`` names what rows
  belong together (an identity, a source, a camera): stored per row in the bank, and
  seeded splits keep every group inside one split (``embed.splits``).

Decisions where the contract is silent:

- Folder order is the sorted relative path (``/``-separated), so every run and every
  resume sees the same order; manifest order is the row order of the CSV.
- Engine names are the folder names in lower case (``SDXL/`` -> ``sdxl``).
- Files without an image extension (``.txt``, ``.json`` captions...) are not embedded;
  they are listed in :attr:`Source.ignored` (and the bank's ``ignored`` attribute)
  with the reason. Hidden files and folders (``.DS_Store``, ``.cache/``) are skipped
  silently. Files with an image extension that fail to decode are *failures*: the
  runner records them in the bank with the decoder's reason.
- A manifest row whose file is missing is a failure ("file not found"), not an error:
  one bad row must not take a large run down.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import facebank.embed.inputs._remote as _remote
from facebank.core.errors import SourceError
from facebank.core.splits import SPLITS
from facebank.core.stores import is_url, local_path

__all__ = [
    "ImageItem",
    "Source",
    "SourceError",
    "scan_source",
    "ImageInputs",
    "list_images",
    "MANIFEST_COLUMNS",
    "encode_path",
    "decode_path",
]

MANIFEST_COLUMNS = ("path", "label", "engine", "split", "group", "pair")
_REQUIRED = ("path", "label", "engine")


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One input image.

    Attributes:
        path: the path stored in the bank (relative to the source root, ``/``-separated,
            in the escaped form of :func:`encode_path` when the name is not UTF-8).
        label: 1 = AI-generated, 0 = real, -1 = unknown.
        engine: lower-case engine name.
        split: ``"train"``, ``"val"``, ``"test"`` or ``""``.
        root: the folder ``path`` is relative to (one string shared by every item, so a
            listing holds each path once; :attr:`file` is built when it is read).
        group: the manifest's ``group`` (identity, source...) or ``""`` (none).
        pair: the manifest's ``pair``: the path (as in the manifest) of the real image a
            fake was made from or matched to, or a name shared by the frames of one video;
            ``""`` (none). Pairs never straddle splits (``embed.splits``).
    """

    path: str
    label: int
    engine: str
    split: str = ""
    root: str = ""
    group: str = ""
    pair: str = ""

    @property
    def file(self) -> str:
        """Absolute path of the file to read (an absolute ``path`` is taken as is)."""
        return os.path.join(self.root, decode_path(self.path))


def encode_path(path: str | os.PathLike) -> str:
    """A file name as stored in a bank and as written anywhere: printable UTF-8 on one
    line that gives the exact bytes back.

    The one encoding of names: banks, score CSVs, neighbour tables, figure titles and
    one-line messages all write a name through it. Names that are valid UTF-8 and hold
    no backslash and no control character are written unchanged. Otherwise every byte
    that is not part of valid UTF-8, and the bytes of every control character (newline,
    tab, ...), are written ``\\xNN`` (two hex digits) and every literal backslash
    ``\\\\``, so two different names never share a written form. :func:`decode_path`
    reverses it. ``path`` is a ``str`` as the OS gave it (undecodable bytes as lone
    surrogates, Python's ``surrogateescape``).
    """
    path = os.fspath(path)
    if "\\" not in path and _is_utf8(path) and path.isprintable():
        return path
    out: list[str] = []
    # (os.fsencode/fsdecode round trip: one surrogate per undecodable byte)
    for ch in os.fsencode(path).decode("utf-8", "surrogateescape"):
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif not ch.isprintable() and ch != " ":  # newline, tab, other controls
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def decode_path(stored: str) -> str:
    """The OS file name (``surrogateescape`` str) of a path stored by :func:`encode_path`."""
    if "\\" not in stored:
        return stored
    raw = bytearray()
    i = 0
    while i < len(stored):
        ch = stored[i]
        if ch == "\\" and stored.startswith("\\\\", i):
            raw += b"\\"
            i += 2
        elif ch == "\\" and stored.startswith("\\x", i) and i + 4 <= len(stored):
            raw.append(int(stored[i + 2 : i + 4], 16))
            i += 4
        else:
            raw += ch.encode("utf-8", "surrogatepass")
            i += 1
    return os.fsdecode(bytes(raw))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Source:
    """A scanned SOURCE.

    Attributes:
        root: folder paths are relative to (the SOURCE folder, or the manifest's folder;
            a URL ``str`` for a SOURCE on a store).
        kind: ``"folder"`` or ``"manifest"``.
        items: images in processing order.
        ignored: ``(path, reason)`` of files that were not taken as images.
    """

    root: Path | str
    kind: str
    items: list[ImageItem]
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def engines(self) -> list[str]:
        return sorted({it.engine for it in self.items})

    @property
    def has_splits(self) -> bool:
        return any(it.split for it in self.items)

    def __len__(self) -> int:
        return len(self.items)


def image_extensions() -> frozenset[str]:
    """The file extensions listed as images (``embed.inputs.images.IMAGE_EXTENSIONS``)."""
    from facebank.embed.inputs.images import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def scan_source(
    source: str | os.PathLike,
    *,
    real_names: Iterable[str] = ("real",),
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """List the images of a SOURCE folder or CSV manifest, in a deterministic order.

    Args:
        source: a folder ``SOURCE/[split/]<engine>/**/image`` or a ``.csv`` manifest,
            local or at an fsspec URL (``s3://bucket/faces``; :mod:`embed._remote`).
        real_names: engine folder names that hold real images (label 0); case-insensitive.
        storage_options: fsspec options for a URL (endpoint, credentials; never recorded).

    Returns:
        A :class:`Source` with at least one item.

    Raises:
        SourceError: missing source, bad layout or manifest, no images at all, or an
        unreachable store.
    """
    source = local_path(source)  # file:///x (or file:/x from a Path option) is /x
    src = Path(source)
    reals = {r.strip().lower() for r in real_names if r.strip()}
    if not reals:
        raise SourceError("real_names is empty; name at least one real folder, e.g. --real real")
    if is_url(source):
        return _remote.scan_store_source(
            os.fspath(source), reals=reals, storage_options=storage_options
        )
    if not src.exists():
        raise SourceError(
            f"source {str(src)!r} does not exist; give a folder laid out SOURCE/<engine>/... "
            "or a CSV manifest with columns path,label,engine[,split]"
        )
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise SourceError(
                f"source {str(src)!r} is a file but not a .csv manifest; give a folder "
                "SOURCE/<engine>/... or a CSV with columns path,label,engine[,split]"
            )
        return scan_manifest(src)
    return _scan_folder(src, reals)


def _visible(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def split_folders(top: Sequence[str], shown: str) -> list[str]:
    """The split folders (``train``/``val``/``test``) among a source's top-level folders.

    Raises:
        SourceError: split folders mixed with engine folders.
    """
    split_dirs = [d for d in top if d.lower() in SPLITS]
    if split_dirs and len(split_dirs) != len(top):
        others = [d for d in top if d.lower() not in SPLITS]
        raise SourceError(
            f"source {shown!r} mixes split folders {split_dirs} with engine folders "
            f"{others}; use either SOURCE/<engine>/... or SOURCE/{{train,val,test}}/<engine>/..."
        )
    return split_dirs


def _scan_folder(root: Path, reals: set[str]) -> Source:
    exts = image_extensions()
    top = [d for d in _visible(os.listdir(root)) if (root / d).is_dir()]
    loose = [f for f in _visible(os.listdir(root)) if (root / f).is_file()]
    split_dirs = split_folders(top, str(root))
    # (split, folder holding the engine folders)
    groups = [(d.lower(), root / d) for d in split_dirs] if split_dirs else [("", root)]
    root_text = str(root.resolve())  # one string shared by every item
    items: list[ImageItem] = []
    # loose files next to the split folders (those next to engine folders come below)
    ignored: list[tuple[str, str]] = [
        (encode_path(f), "not inside an engine folder (SOURCE/<engine>/...)")
        for f in loose
        if split_dirs
    ]
    for split, base in groups:
        for engine_dir in _visible(os.listdir(base)):
            epath = base / engine_dir
            rel_engine = encode_path(epath.relative_to(root).as_posix())
            if not epath.is_dir():
                ignored.append((rel_engine, "not inside an engine folder (SOURCE/<engine>/...)"))
                continue
            engine = engine_dir.strip().lower()
            label = 0 if engine in reals else 1
            for dirpath, dirnames, filenames in os.walk(epath):
                dirnames[:] = _visible(dirnames)
                for fname in _visible(filenames):
                    full = Path(dirpath) / fname
                    rel = encode_path(full.relative_to(root).as_posix())
                    if full.suffix.lower() not in exts:
                        ignored.append((rel, f"not an image extension ({full.suffix or 'none'})"))
                        continue
                    items.append(ImageItem(rel, label, engine, split, root_text))
    items.sort(key=lambda it: it.path)
    ignored.sort()
    if not items:
        hint = (
            f" ({len(ignored)} other files, e.g. {ignored[0][0]!r}: {ignored[0][1]})"
            if ignored
            else ""
        )
        raise SourceError(
            f"source {str(root)!r} holds no images{hint}; lay it out as SOURCE/<engine>/image "
            f"(e.g. SOURCE/real/001.jpg, SOURCE/sdxl/001.png) with extensions {sorted(exts)}"
        )
    return Source(root=root.resolve(), kind="folder", items=items, ignored=ignored)


def scan_manifest(csv_path: Path) -> Source:
    """A CSV manifest ``path,label,engine[,split][,group]`` as a :class:`Source`."""
    root = csv_path.resolve().parent
    root_text = str(root)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in _REQUIRED if c not in header]
            if missing:
                raise SourceError(
                    f"manifest {str(csv_path)!r} lacks columns {missing} (has {header}); "
                    "the header must be path,label,engine[,split][,group]"
                )
            reader.fieldnames = header
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise SourceError(f"manifest {str(csv_path)!r} is not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise SourceError(f"manifest {str(csv_path)!r} is not valid CSV ({exc})") from None
    items: list[ImageItem] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        where = f"manifest {str(csv_path)!r} line {lineno}"
        raw_path = (row.get("path") or "").strip()
        engine = (row.get("engine") or "").strip().lower()
        raw_label = (row.get("label") or "").strip()
        split = (row.get("split") or "").strip().lower()
        group = (row.get("group") or "").strip()  # names are kept as written: case is identity
        pair = (row.get("pair") or "").strip()
        if pair:  # the real's path, normalised as `path` is so that the two compare equal
            pair = posixpath.normpath(PurePosixPath(pair.replace("\\", "/")).as_posix())
        if not raw_path:
            raise SourceError(f"{where}: empty path; every row needs a path to an image")
        if not engine:
            raise SourceError(f"{where}: empty engine; give a name such as real or sdxl")
        try:
            label = int(float(raw_label))
            if label not in (-1, 0, 1) or float(raw_label) != label:
                raise ValueError
        except ValueError:
            raise SourceError(
                f"{where}: label {raw_label!r} is not valid; use 1 (AI-generated), 0 (real) "
                "or -1 (unknown)"
            ) from None
        if split not in ("", *SPLITS):
            raise SourceError(
                f"{where}: split {split!r} is not valid; use one of {list(SPLITS)} or leave it "
                "empty"
            )
        if is_url(raw_path):  # an image on a store, listed by its URL: read from there
            if raw_path in seen:
                raise SourceError(
                    f"{where}: path {raw_path!r} is listed again (line {seen[raw_path]}); "
                    "list each image once"
                )
            seen[raw_path] = lineno
            items.append(ImageItem(raw_path, label, engine, split, "", group, pair))
            continue
        # normalised ("a/../b.png" -> "b.png"); ImageItem.file joins it to root, an
        # absolute path or one leading outside the manifest's folder is kept as written
        norm = posixpath.normpath(PurePosixPath(raw_path.replace("\\", "/")).as_posix())
        stored = encode_path(norm)  # a newline or tab inside a quoted field: escaped
        same_file = posixpath.normpath(posixpath.join(root.as_posix(), norm))
        if same_file in seen:
            raise SourceError(
                f"{where}: path {raw_path!r} is listed again (the same file as line "
                f"{seen[same_file]}); list each image once"
            )
        seen[same_file] = lineno
        items.append(ImageItem(stored, label, engine, split, root_text, group, pair))
    if not items:
        raise SourceError(
            f"manifest {str(csv_path)!r} has a header but no rows; add lines path,label,engine"
        )
    return Source(root=root, kind="manifest", items=items)


@dataclass
class ImageInputs:
    """What :func:`list_images` found: banks to read features from, image files to decode.

    Attributes:
        banks: bank paths or URLs, in input order.
        images: image files (OS names) or URLs, in input order (folders expanded,
            manifests read); one that is missing or unreadable is the reader's failure.
        ignored: ``(name, reason)`` of files under folders that are not images (names
            as :func:`encode_path` writes them).
    """

    banks: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)


def list_images(
    inputs: Sequence[str | os.PathLike],
    *,
    banks: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageInputs:
    """List the images (and banks) of the inputs of a command that takes images.

    ``score``, ``explain`` and ``neighbours query`` take any mix of image files, folders
    of images (walked recursively, sorted, hidden entries skipped, other extensions
    ignored), CSV manifests (their images) and, with ``banks``, feature banks - local,
    ``file://`` or at an fsspec URL (``s3://bucket/photos``).

    Raises:
        SourceError: no input, an input that does not exist, a folder with no image, or
        a bank where ``banks`` is False.
    """
    from facebank.embed.inputs.images import is_image_path

    if not inputs:
        raise SourceError(
            "no input given; give image files, folders of images or CSV manifests"
            + (" or feature banks (NAME.zarr)" if banks else "")
        )
    found = ImageInputs()
    for item in inputs:
        if is_url(item):  # a bank, manifest, folder or image on a store
            kind, got, ignored = _remote.store_inputs(
                os.fspath(item), storage_options=storage_options
            )
            _add(found, kind, got, banks=banks)
            found.ignored.extend((encode_path(p), r) for p, r in ignored)
            continue
        p = Path(local_path(item))
        if p.is_dir() and (p / "zarr.json").is_file():
            _add(found, "bank", [str(p)], banks=banks)
        elif p.is_dir():
            images = _walk_images(p, found.ignored)
            if not images:
                raise SourceError(
                    f"folder {encode_path(p)!r} holds no image files"
                    + (" and is not a feature bank (no zarr.json)" if banks else "")
                    + "; give a folder of images"
                    + (", a bank made by `facebank embed`," if banks else "")
                    + " or image files"
                )
            found.images.extend(images)
        elif p.is_file() and p.suffix.lower() == ".csv":
            found.images.extend(it.file for it in scan_source(p).items)
        elif p.exists() or p.is_symlink() or is_image_path(p):
            found.images.append(str(p))  # a missing or unreadable image becomes a failure
        else:
            raise SourceError(
                f"input {encode_path(p)!r} does not exist; give image files, folders of "
                "images or CSV manifests (path,label,engine[,split])"
                + (" or feature banks" if banks else "")
            )
    return found


def _add(found: ImageInputs, kind: str, got: list[str], *, banks: bool) -> None:
    if kind == "bank" and not banks:
        raise SourceError(
            f"{encode_path(got[0])!r} is a feature bank; give image files, folders of images "
            "or CSV manifests here"
        )
    (found.banks if kind == "bank" else found.images).extend(got)


def _walk_images(root: Path, ignored: list[tuple[str, str]]) -> list[str]:
    from facebank.embed.inputs.images import is_image_path

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = _visible(dirnames)
        for name in _visible(filenames):
            p = os.path.join(dirpath, name)
            if is_image_path(p):
                found.append(p)
            else:
                ignored.append((encode_path(p), "not an image file extension"))
    return found
