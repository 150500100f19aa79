"""``facebank report RUN_DIR... --out report.html``: one self-contained HTML page.

Every run folder becomes a section: its config (what was asked), its Markdown tables
rendered as HTML tables, its PNG figures inlined as base64 (the page needs no other
file and no network), its CSVs previewed, and its metrics.json in a collapsible block.
Sub-folders that are runs themselves (an experiment's sub-runs) become nested sections.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facebank.embed.errors import ReportError
from facebank.embed.runs import claim_output_file

__all__ = ["write_report", "render_markdown", "ReportError"]


_CSS = """
:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { padding:28px 40px 18px; border-bottom:1px solid var(--line); background:var(--soft); }
header h1 { margin:0 0 4px; font-size:26px; }
header p { margin:0; color:var(--muted); }
main { max-width:1180px; margin:0 auto; padding:8px 40px 60px; }
nav { margin:18px 0 8px; padding:12px 18px; background:var(--soft); border:1px solid var(--line); border-radius:8px; }
nav ul { margin:4px 0; padding-left:20px; }
nav a { color:var(--accent); text-decoration:none; }
section.run { margin:34px 0; padding-top:8px; border-top:3px solid var(--accent); }
section.run section.run { margin:24px 0 12px 0; padding-left:18px; border-top:1px solid var(--line); border-left:3px solid var(--line); }
h2.run-title { font-size:22px; margin:10px 0 2px; }
h3.run-title, h4.run-title, h5.run-title { margin:12px 0 2px; }
.path { color:var(--muted); font:12px ui-monospace, SFMono-Regular, Menlo, monospace; margin-bottom:10px; word-break:break-all; }
table { border-collapse:collapse; margin:10px 0 18px; font-size:13.5px; display:block; overflow-x:auto; max-width:100%; }
th, td { border:1px solid var(--line); padding:5px 10px; text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; }
tr:nth-child(even) td { background:#fbfcfd; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
table.config td:first-child { font-weight:600; white-space:nowrap; }
.figures { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
figure { margin:14px 0 22px; flex:0 1 530px; min-width:0; max-width:100%; }
figure.wide { flex-basis:100%; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:white; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.md h1 { font-size:19px; } .md h2 { font-size:17px; } .md h3 { font-size:15px; }
code { font:12.5px ui-monospace, SFMono-Regular, Menlo, monospace; background:var(--soft); padding:1px 4px; border-radius:4px; }
details { margin:8px 0 14px; } summary { cursor:pointer; color:var(--accent); }
pre { background:var(--soft); padding:12px; border-radius:6px; overflow-x:auto; font-size:12px; max-height:480px; }
.empty { color:var(--muted); font-style:italic; }
"""

_MAX_JSON_CHARS = 30_000
_CSV_PREVIEW_ROWS = 12


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])_([^_]+)_(?![\w])", r"<em>\1</em>", s)
    return s


def _is_num(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+%?(e[-+]?\d+)?", cell.strip()))


def _table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        line = line.strip()
        if line.startswith("|"):
            line = line[1:]
        if line.endswith("|"):
            line = line[:-1]
        return [c.strip() for c in line.split("|")]

    head = cells(lines[0])
    body = [
        cells(x)
        for x in lines[1:]
        if not re.fullmatch(r"\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?", x.strip())
    ]
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>",
        "<tbody>",
    ]
    for row in body:
        tds = "".join(
            f'<td class="num">{_inline(c)}</td>' if _is_num(c) else f"<td>{_inline(c)}</td>"
            for c in row
        )
        out.append(f"<tr>{tds}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_markdown(text: str, *, heading_offset: int = 0) -> str:
    """The Markdown our run folders write (headings, tables, lists, paragraphs) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + "</ul>")
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out.append(f"<pre>{html.escape(chr(10).join(block))}</pre>")
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not re.match(r"(#{1,6}\s|\||\s*[-*]\s|```)", lines[i].lstrip())
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _config_table(cfg: dict[str, Any]) -> str:
    rows = []
    for k, v in cfg.items():
        if k == "versions" and isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        elif isinstance(v, (dict, list)):
            v = json.dumps(v)
            if len(v) > 400:
                v = v[:400] + " ..."
        rows.append(f"<tr><td>{html.escape(str(k))}</td><td>{_inline(str(v))}</td></tr>")
    return '<table class="config"><tbody>' + "".join(rows) + "</tbody></table>"


def _csv_preview(path: Path) -> str:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        rows = []
        n = 0
        for row in reader:
            if n <= _CSV_PREVIEW_ROWS:
                rows.append(row)
            n += 1
    if not rows:
        return ""
    head, body = rows[0], rows[1:]
    out = [
        f"<details><summary>{html.escape(path.name)} ({max(n - 1, 0)} rows; first {len(body)} shown)</summary><table>"
    ]
    out.append(
        "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>"
    )
    for r in body:
        out.append(
            "<tr>"
            + "".join(
                f'<td class="num">{html.escape(c)}</td>'
                if _is_num(c)
                else f"<td>{html.escape(c)}</td>"
                for c in r
            )
            + "</tr>"
        )
    out.append("</tbody></table></details>")
    return "".join(out)


def _is_run(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        or any(path.glob("*.md"))
        or any(path.glob("*.png"))
        or (path / "metrics.json").is_file()
    )


def _has_content(path: Path, depth: int = 0) -> bool:
    if _is_run(path):
        return True
    if depth > 6:
        return False
    return any(_has_content(p, depth + 1) for p in sorted(path.iterdir()) if p.is_dir())


def _slug(path: Path, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", str(path)).strip("-")[-60:] or "run"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _run_section(
    path: Path, *, level: int, used: set[str], toc: list[tuple[int, str, str]], depth: int = 0
) -> str:
    slug = _slug(path, used)
    cfg: dict[str, Any] = {}
    if (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            cfg = {"error": f"config.json is not valid JSON ({exc})"}
    command = cfg.get("command")
    title = path.name + (f" - {command}" if command else "")
    toc.append((level, slug, title))
    h = min(level + 1, 6)
    parts = [
        f'<section class="run" id="{slug}">',
        f'<h{h} class="run-title">{html.escape(title)}</h{h}>',
        f'<div class="path">{html.escape(str(path.resolve()))}</div>',
    ]
    shown = False
    if cfg:
        parts.append(
            "<details><summary>configuration</summary>" + _config_table(cfg) + "</details>"
        )
    for md in sorted(path.glob("*.md")):
        parts.append(f'<div class="md">{render_markdown(md.read_text(), heading_offset=h)}</div>')
        shown = True
    figures = []
    for png in sorted(path.glob("*.png")):
        raw = png.read_bytes()
        data = base64.b64encode(raw).decode("ascii")
        # PNG header: width and height are big-endian ints at bytes 16-24
        wide = len(raw) > 24 and int.from_bytes(raw[16:20], "big") > 1.8 * max(
            1, int.from_bytes(raw[20:24], "big")
        )
        cls = ' class="wide"' if wide else ""
        figures.append(
            f'<figure{cls}><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(png.name)}</figcaption></figure>"
        )
    if figures:
        parts.append('<div class="figures">' + "".join(figures) + "</div>")
        shown = True
    for c in sorted(path.glob("*.csv")):
        parts.append(_csv_preview(c))
    if (path / "metrics.json").is_file():
        text = (path / "metrics.json").read_text()
        if not shown:  # no Markdown: the numbers are the content, show them as a table
            with contextlib.suppress(json.JSONDecodeError, TypeError):
                parts.append(_metrics_table(json.loads(text)))
        if len(text) > _MAX_JSON_CHARS:
            text = text[:_MAX_JSON_CHARS] + "\n... (truncated; see metrics.json)"
        parts.append(
            f"<details><summary>metrics.json</summary><pre>{html.escape(text)}</pre></details>"
        )
    if depth < 6:
        for sub in sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr")
        ):
            if _has_content(sub):
                parts.append(
                    _run_section(sub, level=level + 1, used=used, toc=toc, depth=depth + 1)
                )
    parts.append("</section>")
    return "\n".join(parts)


def _metrics_table(obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    rows = [(k, v) for k, v in obj.items() if isinstance(v, (int, float, str)) or v is None]
    if not rows:
        return ""
    body = "".join(
        f'<tr><td>{html.escape(str(k))}</td><td class="num">{html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))}</td></tr>'
        for k, v in rows
    )
    return (
        f"<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{body}</tbody></table>"
    )


def write_report(
    run_dirs: Sequence[str | Path] | str | Path,
    *,
    out: str | Path,
    title: str = "facebank report",
    overwrite: bool | None = None,
) -> Path:
    """Write one self-contained HTML page for the given run folders.

    Args:
        run_dirs: run folders (from evaluate, protocol, robustness, ood, train, experiment...);
            sub-folders that hold runs are included as nested sections.
        out: the HTML file to write (parents created).
        title: page title.
        overwrite: replace an existing ``out``; ``None`` follows the command's
            ``--overwrite`` (``embed.runs.claim_output_file``), refusing by default.

    Returns:
        The path of the written page.

    Raises:
        ReportError: a folder that does not exist or holds no run output.
        RunFolderError: ``out`` exists and may not be replaced.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ReportError(
            "no run folders given; pass one or more folders written by facebank commands"
        )
    for d in dirs:
        if not d.is_dir():
            raise ReportError(
                f"run folder {str(d)!r} does not exist; pass a folder written by a facebank command (--out)"
            )
        if not _has_content(d):
            raise ReportError(
                f"{str(d)!r} holds no config.json, metrics.json, *.md or *.png (nor sub-folders with them); is it a run folder?"
            )
    used: set[str] = set()
    toc: list[tuple[int, str, str]] = []
    sections = [_run_section(d, level=1, used=used, toc=toc) for d in dirs]
    toc_html = ["<nav><strong>Contents</strong><ul>"]
    for level, slug, name in toc:
        toc_html.append(
            f'<li style="margin-left:{(level - 1) * 18}px"><a href="#{slug}">{html.escape(name)}</a></li>'
        )
    toc_html.append("</ul></nav>")
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{html.escape(title)}</h1><p>{len(dirs)} run folder(s), {len(toc)} section(s) - generated {created} by facebank. Label 1 = AI-generated; flagged = score &gt; threshold; thresholds set on validation reals.</p></header>
<main>
{"".join(toc_html)}
{"".join(sections)}
</main>
</body>
</html>
"""
    out = claim_output_file(out, overwrite=overwrite)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    return out
