"""Check a facebank report page in headless Chromium: print it to PDF, screenshot it.

    python tests/benchmarks/check_report.py REPORT.html [--out DIR] [--width 1280]

Writes ``DIR/report.pdf`` (A4, the page's print stylesheet), ``DIR/screen-top.png``
(the first screen at ``--width``) and ``DIR/screen-full.png`` (a tall window showing
much of the page), then prints one JSON line: the printed page count, the PDF size, and
the text of the page's widest table cells that are missing from the PDF (a clipped
table would lose them; an empty list is what a good page gives).

Needs Debian's ``chromium`` (``apt-get install chromium``) and, for page counts and the
text check, ``pdfinfo``/``pdftotext`` from ``poppler-utils`` (without them the page count
comes from counting ``/Type /Page`` objects and the text check is skipped).
"""

from __future__ import annotations

import argparse
import html.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The path of a Chromium binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(binary: str, page: Path, *extra: str, timeout: float = 120.0) -> None:
    with tempfile.TemporaryDirectory(prefix="facebank-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)


def print_to_pdf(binary: str, page: Path, pdf: Path) -> Path:
    """Print ``page`` to ``pdf`` as a reader's browser would (print stylesheet, A4)."""
    _chromium(binary, page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    if not pdf.is_file():
        raise RuntimeError(f"chromium wrote no PDF for {page}")
    return pdf


def screenshot(binary: str, page: Path, png: Path, *, width: int, height: int) -> Path:
    _chromium(binary, page, f"--screenshot={png}", f"--window-size={width},{height}")
    return png


def page_count(pdf: Path) -> int:
    """Printed pages: ``pdfinfo`` when present, else the PDF's ``/Type /Page`` objects."""
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
        match = re.search(r"^Pages:\s+(\d+)", out.stdout, re.MULTILINE)
        if match:
            return int(match.group(1))
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))


class _LastCells(html.parser.HTMLParser):
    """The last cell's text of every table row (what clipping would cut off first)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row:
            self.cells.append(self._row[-1])
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def clipped_cells(page: Path, pdf: Path, *, hidden: tuple[str, ...] = ()) -> list[str] | None:
    """Last-column cell texts of the page's tables that are missing from the PDF's text.

    Tables inside collapsed ``<details>`` blocks are not printed and not checked (pass
    their texts as ``hidden`` or keep them out of the page). ``None`` without pdftotext.
    """
    if not shutil.which("pdftotext"):
        return None
    text = subprocess.run(
        ["pdftotext", "-raw", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = re.sub(r"[\s-]+", "", text)
    source = re.sub(r"<details>.*?</details>", "", page.read_text(), flags=re.DOTALL)
    parser = _LastCells()
    parser.feed(source)
    missing = []
    for cell in dict.fromkeys(parser.cells):
        key = re.sub(r"[\s-]+", "", cell)
        if len(key) >= 4 and key not in flat and cell not in hidden:
            missing.append(cell)
    return missing


def check(page: Path, out: Path, *, width: int = 1280) -> dict:
    """Print, screenshot and measure ``page``; returns the figures as a dict."""
    binary = find_chromium()
    if binary is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium poppler-utils")
    out.mkdir(parents=True, exist_ok=True)
    pdf = print_to_pdf(binary, page, out / "report.pdf")
    screenshot(binary, page, out / "screen-top.png", width=width, height=1000)
    screenshot(binary, page, out / "screen-full.png", width=width, height=6000)
    return {
        "page": str(page),
        "pages": page_count(pdf),
        "pdf_bytes": pdf.stat().st_size,
        "clipped": clipped_cells(page, pdf),
        "screenshots": [str(out / "screen-top.png"), str(out / "screen-full.png")],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, help="the report.html to check")
    ap.add_argument("--out", type=Path, default=Path("report-check"), help="folder for outputs")
    ap.add_argument("--width", type=int, default=1280, help="screen width in CSS pixels")
    args = ap.parse_args(argv)
    print(json.dumps(check(args.page, args.out, width=args.width)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
