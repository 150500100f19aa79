"""Rebuild the realfaces set from its public sources and verify every file's sha256.

Run on a machine that can reach GitHub (nothing here runs in facebank's tests)::

    python data/realfaces/rebuild.py OUT_DIR [--cache DIR] [--token GITHUB_TOKEN]

For every row of ``sources.csv`` (next to this script) it fetches ``source_path`` of
``repository`` at ``commit`` (raw.githubusercontent.com; the short commit is resolved
to the full one through the GitHub API once per repository and commit), or the file
shipped inside the Python package named ``package:NAME`` (install scikit-image and
matplotlib), then applies ``processing``:

- ``original``: the bytes as fetched;
- ``crop:png``: ``crop_box`` (``x0,y0,x1,y1``, PIL's box) of the source figure, saved as
  PNG by Pillow with its defaults;
- ``resize-lanczos:jpeg-q95``: resized to ``width`` x ``height`` with LANCZOS and saved as
  JPEG quality 95 by Pillow (the large real photos were downscaled to a long side of
  1024).

Then it writes ``OUT_DIR/<path>``, compares the file's sha256 with the column, and
prints one line per mismatch and a summary. Exit code 0 when every file matches, 1
otherwise. Derived files (crops, resizes) are byte-exact only with the encoders they
were made with (Pillow's PNG and JPEG encoders; their versions were not recorded); a
mismatch there is reported as an encoder difference, and the files can still be compared
with the originals by eye or by pixels. ``OUT_DIR`` then holds ``MANIFEST.csv``
(path,label,engine) ready for ``facebank embed OUT_DIR/MANIFEST.csv`` - and the images
are never to be committed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _get(url: str, token: str | None) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "facebank-realfaces-rebuild"})
    if token and "api.github.com" in url:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def _full_commit(repo: str, short: str, token: str | None, known: dict[str, str]) -> str:
    key = f"{repo}@{short}"
    if key not in known:
        doc = json.loads(_get(f"https://api.github.com/repos/{repo}/commits/{short}", token))
        known[key] = doc["sha"]
    return known[key]


def _package_file(row: dict[str, str]) -> bytes:
    package = row["repository"].split(":", 1)[1]
    module = {"scikit-image": "skimage"}.get(package, package)
    mod = __import__(module)
    root = Path(str(mod.__file__)).resolve().parent.parent
    return (root / row["source_path"]).read_bytes()


def fetch(row: dict[str, str], cache: Path, token: str | None, known: dict[str, str]) -> bytes:
    """The source file's bytes (cached under ``cache``)."""
    if row["repository"].startswith("package:"):
        return _package_file(row)
    name = hashlib.sha256(
        f"{row['repository']}@{row['commit']}/{row['source_path']}".encode()
    ).hexdigest()
    hit = cache / name
    if hit.is_file():
        return hit.read_bytes()
    full = _full_commit(row["repository"], row["commit"], token, known)
    data = _get(
        f"https://raw.githubusercontent.com/{row['repository']}/{full}/{row['source_path']}", token
    )
    hit.write_bytes(data)
    return data


def build(row: dict[str, str], data: bytes) -> bytes:
    """Apply the row's ``processing`` to the source bytes."""
    from PIL import Image

    how = row["processing"]
    if how == "original":
        return data
    img = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    if how == "crop:png":
        x0, y0, x1, y1 = (int(v) for v in row["crop_box"].split(","))
        img.crop((x0, y0, x1, y1)).save(buf, format="PNG")
    elif how == "resize-lanczos:jpeg-q95":
        size = (int(row["width"]), int(row["height"]))
        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
            buf, format="JPEG", quality=95
        )
    else:
        raise ValueError(f"unknown processing {how!r} for {row['path']}")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write the set into (outside the repository)")
    ap.add_argument(
        "--cache", type=Path, default=None, help="downloaded sources (default OUT/.cache)"
    )
    ap.add_argument("--token", default=None, help="a GitHub token (raises the API rate limit)")
    args = ap.parse_args()
    cache = args.cache or args.out / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    with open(HERE / "sources.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    known: dict[str, str] = {}
    ok, mismatched, failed = 0, [], []
    for row in rows:
        try:
            made = build(row, fetch(row, cache, args.token, known))
        except Exception as exc:  # one unreachable source must not stop the others
            failed.append((row["path"], f"{type(exc).__name__}: {exc}"))
            continue
        dest = args.out / row["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(made)
        if hashlib.sha256(made).hexdigest() == row["sha256"]:
            ok += 1
        else:
            kind = "encoder difference" if row["processing"] != "original" else "different bytes"
            mismatched.append((row["path"], kind))
    with open(args.out / "MANIFEST.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "engine"])
        for row in rows:
            real = row["class"] == "real"
            w.writerow([row["path"], 0 if real else 1, "real" if real else row["engine"]])
    for path, why in mismatched:
        print(f"sha256 mismatch ({why}): {path}")
    for path, why in failed:
        print(f"not rebuilt: {path}: {why}")
    n_bad, n_failed = len(mismatched), len(failed)
    print(f"{ok} of {len(rows)} files match their sha256; {n_bad} differ, {n_failed} failed")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
