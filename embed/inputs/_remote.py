"""SOURCE on an fsspec store (``s3://bucket/faces``, ``gs://...``, ``memory://...``).

A folder or a CSV manifest on a store is listed by the same rules as a local one
(:mod:`embed.datasets`); each item's :attr:`~embed.datasets.ImageItem.file` is then a
URL, and the engines read it with :func:`read_url` (one GET per image: the bytes are
hashed and decoded from memory, never staged on disk).

Endpoints and credentials come from the store's standard mechanisms
(``AWS_ENDPOINT_URL``, ``AWS_*`` variables, config files) or a ``storage_options``
mapping; neither is recorded, and a URL is shown without any ``user:password@``.

Decisions:

- A manifest on a store is read once into memory; its paths are relative to the
  manifest's folder on the same store (an absolute path names a local file).
- Objects whose key has a component starting with ``.`` are skipped, as hidden files
  are locally; an empty "folder" does not exist on an object store, so an engine
  folder is one that holds at least one object.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facebank.core.errors import BankError, SourceError

__all__ = ["read_url", "scan_store_source", "store_inputs"]


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def read_url(url: str, *, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of one object at ``url``.

    Raises:
        FileNotFoundError: no such object. OSError: the store refused or failed.
    """
    fs, path = _fs(url, storage_options)
    try:
        return bytes(fs.cat_file(path))
    except OSError:  # FileNotFoundError included: the caller's reason
        raise
    except Exception as exc:  # botocore/aiohttp errors: one reason, never a traceback
        raise OSError(f"{type(exc).__name__}: {str(exc)[:160]}") from None


def _reachable(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """``(fs, path)`` of ``url`` after one request that proves the store answers."""
    from facebank.core.stores import Location, redact

    try:
        loc = Location(url, storage_options=storage_options)
        loc.check_reachable()
    except BankError as exc:  # the store's one-line reason, said about the SOURCE
        raise SourceError(
            str(exc).replace("store ", "source store ", 1) if str(exc) else redact(url)
        ) from None
    return loc.fs, loc.root


def scan_store_source(
    url: str, *, reals: set[str], storage_options: Mapping[str, Any] | None = None
) -> Any:
    """List a SOURCE folder or ``.csv`` manifest on a store (see the module docstring).

    Returns:
        A :class:`~embed.datasets.Source` whose ``root`` is the URL (``str``) the items'
        paths are relative to.

    Raises:
        SourceError: unreachable store (before any listing), missing source, bad layout
        or manifest, no images.
    """
    from facebank.core.stores import redact

    url = url.rstrip("/")
    shown = redact(url)
    fs, root = _reachable(url, storage_options)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise SourceError(
            f"source {shown!r} does not exist on its store; give a folder laid out "
            "SOURCE/<engine>/... or a CSV manifest with columns path,label,engine[,split]"
        ) from None
    if info.get("type") == "file":
        if not root.lower().endswith(".csv"):
            raise SourceError(
                f"source {shown!r} is an object but not a .csv manifest; give a folder "
                "SOURCE/<engine>/... or a CSV with columns path,label,engine[,split]"
            )
        return _scan_store_manifest(url, shown, bytes(fs.cat_file(root)))
    keys = sorted(str(k) for k in fs.find(root, withdirs=False))
    prefix = root.rstrip("/") + "/"
    rel = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    return _layout(url, shown, rel, reals)


def _scan_store_manifest(url: str, shown: str, data: bytes) -> Any:
    from facebank.embed.inputs.datasets import scan_manifest

    parent = url.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / url.rsplit("/", 1)[-1]
        local.write_bytes(data)
        try:
            src = scan_manifest(local)
        except SourceError as exc:
            raise SourceError(str(exc).replace(repr(str(local)), repr(shown))) from None
    # one root string shared by every item (paths stay relative to the manifest's folder)
    items = [dataclasses.replace(it, root=parent) for it in src.items]
    return dataclasses.replace(src, root=parent, items=items)


def _layout(url: str, shown: str, rel: list[str], reals: set[str]) -> Any:
    """The folder rules of :func:`embed.datasets.scan_source` over an object listing."""
    from facebank.embed.inputs.datasets import (
        ImageItem,
        Source,
        encode_path,
        image_extensions,
        split_folders,
    )

    exts = image_extensions()
    parts = [r.split("/") for r in rel if r and not any(p.startswith(".") for p in r.split("/"))]
    top = sorted({p[0] for p in parts if len(p) > 1})
    split_dirs = split_folders(top, shown)
    depth = 1 if split_dirs else 0  # components before the engine folder
    items: list[Any] = []
    ignored: list[tuple[str, str]] = []
    for p in parts:
        path = encode_path("/".join(p))
        if len(p) < depth + 2:
            ignored.append((path, "not inside an engine folder (SOURCE/<engine>/...)"))
            continue
        suffix = os.path.splitext(p[-1])[1]
        if suffix.lower() not in exts:
            ignored.append((path, f"not an image extension ({suffix or 'none'})"))
            continue
        split = p[0].lower() if depth else ""
        engine = p[depth].strip().lower()
        items.append(ImageItem(path, 0 if engine in reals else 1, engine, split, url))
    items.sort(key=lambda it: it.path)
    ignored.sort()
    if not items:
        hint = (
            f" ({len(ignored)} other objects, e.g. {ignored[0][0]!r}: {ignored[0][1]})"
            if ignored
            else ""
        )
        raise SourceError(
            f"source {shown!r} holds no images{hint}; lay it out as SOURCE/<engine>/image "
            f"(e.g. SOURCE/real/001.jpg, SOURCE/sdxl/001.png) with extensions {sorted(exts)}"
        )
    return Source(root=url, kind="folder", items=items, ignored=ignored)


def store_inputs(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[str, list[str], list[tuple[str, str]]]:
    """What a scoring input at a URL is: a bank, a manifest's images, a folder's images,
    or one image (``facebank score s3://bucket/photos ...``).

    A folder is walked recursively (objects sorted by key, hidden ones skipped, other
    extensions listed as ignored), as a local input folder is.

    Returns:
        ``(kind, items, ignored)``: kind ``"bank"`` (items = ``[url]``) or ``"images"``
        (items = image URLs in order); ``ignored`` = ``(url, reason)``.

    Raises:
        SourceError: unreachable store, or nothing at ``url``.
    """
    from facebank.core.stores import redact
    from facebank.embed.inputs.images import is_image_path

    url = url.rstrip("/")
    fs, root = _reachable(url, storage_options)
    if fs.isfile(f"{root}/zarr.json"):
        return "bank", [url], []
    try:
        info = fs.info(root)
    except FileNotFoundError:
        if is_image_path(url):  # a missing image is a failure of its own, as locally
            return "images", [url], []
        raise SourceError(
            f"input {redact(url)!r} does not exist on its store; give banks, images, "
            "folders of images or CSV manifests"
        ) from None
    if info.get("type") == "file":
        if root.lower().endswith(".csv"):
            src = scan_store_source(url, reals={"real"}, storage_options=storage_options)
            return "images", [it.file for it in src.items], []
        return "images", [url], []
    prefix = root.rstrip("/") + "/"
    images: list[str] = []
    ignored: list[tuple[str, str]] = []
    for key in sorted(str(k) for k in fs.find(root, withdirs=False)):
        rel = key[len(prefix) :] if key.startswith(prefix) else key
        if not rel or any(p.startswith(".") for p in rel.split("/")):
            continue
        full = f"{url}/{rel}"
        if is_image_path(rel):
            images.append(full)
        else:
            ignored.append((full, "not an image file extension"))
    if not images:
        raise SourceError(
            f"folder {redact(url)!r} holds no image files and is not a feature bank (no "
            "zarr.json); give a folder of images, a bank made by `facebank embed`, or images"
        )
    return "images", images, ignored
