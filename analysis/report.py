"""``facebank report RUN_DIR... --out report.html``: one self-contained HTML page.

Every run folder becomes a section: its Markdown tables rendered as HTML tables (wide
ones scroll sideways on screen and wrap when printed), its PNG figures inlined as base64
and shown at their physical size (so a 10-point label reads as 10 points in every
figure), its CSVs previewed, its config and metrics.json in collapsible blocks. Sub-folders
that are runs themselves (an experiment's sub-runs) become nested sections.

Reading order: sections are sorted the way a reader needs them - summary, data and
audit, heads, protocols, robustness, OOD, neighbours - by :data:`SECTIONS`, keyed by the
run's command (``config.json``) or its folder name. Other analyses add their section with
one :func:`register_section` call. Caveats (Markdown "Notes"/"Caveats" lists and table
``warning`` cells) are collected into one numbered list at the end of the page; repeats
are merged, and each place that raised one links to it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import datetime as _dt
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facebank.core.errors import ReportError
from facebank.core.runs import check_output_file, claim_output_file

from ._plotstyle import DPI

__all__ = [
    "write_report",
    "render_markdown",
    "figure_html",
    "PAGE_CSS",
    "register_section",
    "SECTIONS",
    "ReportError",
]


_CSS = """
:root {
  --fg:#1f2328;
  --muted:#57606a;
  --line:#d0d7de;
  --bg:#ffffff;
  --soft:#f6f8fa;
  --accent:#0969da;
}
* { box-sizing: border-box; }
body {
  margin:0;
  font:15px/1.55 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color:var(--fg);
  background:var(--bg);
}
header { padding:28px 40px 18px; border-bottom:1px solid var(--line); background:var(--soft); }
header h1 { margin:0 0 4px; font-size:28px; }
header p { margin:0; color:var(--muted); }
main { max-width:1180px; margin:0 auto; padding:8px 40px 60px; }
nav {
  margin:18px 0 8px;
  padding:12px 18px;
  background:var(--soft);
  border:1px solid var(--line);
  border-radius:8px;
}
nav ul { margin:4px 0; padding-left:20px; }
nav a { color:var(--accent); text-decoration:none; }
section.run { margin:34px 0; padding-top:8px; border-top:3px solid var(--accent); }
section.run section.run {
  margin:24px 0 12px 0;
  padding-left:18px;
  border-top:1px solid var(--line);
  border-left:3px solid var(--line);
}
/* every heading is larger than the 15px body text, and each level smaller than the one above */
h2.run-title { font-size:25px; margin:10px 0 2px; }
h3.run-title { font-size:21px; margin:12px 0 2px; }
h4.run-title { font-size:19px; margin:12px 0 2px; }
h5.run-title, h6.run-title { font-size:17px; margin:12px 0 2px; }
.md h1, .md h2, .md h3 { font-size:17px; margin:14px 0 6px; }
.md h4, .md h5, .md h6 { font-size:16px; margin:12px 0 6px; }
.path {
  color:var(--muted);
  font:12px ui-monospace, SFMono-Regular, Menlo, monospace;
  margin-bottom:10px;
  word-break:break-all;
}
.scroll { overflow-x:auto; max-width:100%; margin:10px 0 18px; }
table { border-collapse:collapse; font-size:13.5px; }
th, td { border:1px solid var(--line); padding:5px 10px; text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; }
tr:nth-child(even) td { background:#fbfcfd; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.config td:first-child { font-weight:600; white-space:nowrap; }
.figures { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
figure { margin:14px 0 22px; min-width:0; max-width:100%; }
figure img {
  max-width:100%;
  height:auto;
  border:1px solid var(--line);
  border-radius:6px;
  background:white;
}
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
code {
  font:12.5px ui-monospace, SFMono-Regular, Menlo, monospace;
  background:var(--soft);
  padding:1px 4px;
  border-radius:4px;
}
details { margin:8px 0 14px; } summary { cursor:pointer; color:var(--accent); }
pre {
  background:var(--soft);
  padding:12px;
  border-radius:6px;
  overflow-x:auto;
  font-size:12px;
  max-height:480px;
}
.empty { color:var(--muted); font-style:italic; }
a.caveat { font-size:12px; color:var(--accent); text-decoration:none; white-space:nowrap; }
p.caveats { color:var(--muted); font-size:13px; }
ol.caveats li { margin:4px 0; }
@page { size:A4; margin:12mm; }
@media print {
  body { font-size:10.5px; }
  header { padding:0 0 6px; background:none; }
  header h1 { font-size:20px; }
  main { max-width:none; padding:0; }
  nav { padding:4px 8px; font-size:9.5px; }
  nav ul { columns:3; }
  section.run { margin:12px 0; }
  section.run section.run { margin:8px 0 4px; padding-left:8px; }
  h2.run-title { font-size:17px; } h3.run-title { font-size:15px; }
  h4.run-title, h5.run-title, h6.run-title { font-size:13px; }
  .md h1, .md h2, .md h3, .md h4, .md h5, .md h6 { font-size:12px; margin:6px 0 3px; }
  a.caveat, p.caveats { font-size:8.5px; }
  .path, details, figcaption { display:none; }
  .scroll { overflow:visible; margin:4px 0 8px; }
  table { font-size:8.5px; width:100%; }
  th, td { padding:1px 4px; word-break:break-word; }
  td.num { white-space:normal; }
  .figures { gap:6px; }
  figure { margin:4px 0; break-inside:avoid; }
  figure { flex:0 0 auto; }
  figure img {
    max-height:42mm;
    max-width:100%;
    width:auto !important;
    height:auto;
    border:none;
  }
  h2, h3, h4, h5, h6 { break-after:avoid; }
}
"""

_MAX_JSON_CHARS = 30_000
_CSV_PREVIEW_ROWS = 12


# ---------------------------------------------------------------- reading order (hooks)
@dataclasses.dataclass(frozen=True)
class Section:
    """Where a kind of run sits in a report and what its heading says."""

    rank: int
    title: str


# Keyed by a run's command (first word of ``config.json``'s ``command``) or, for folders
# without a config, by the folder name up to its first "-". Lower rank = earlier.
SECTIONS: dict[str, Section] = {
    "experiment": Section(0, "Summary"),
    "summary": Section(0, "Summary"),
    "banks": Section(10, "Data"),
    "audit": Section(15, "Data audit"),
    "train": Section(20, "Heads: training"),
    "evaluate": Section(30, "Heads: test rows"),
    "leaderboard": Section(35, "Leaderboard"),
    "protocol": Section(40, "Protocols"),
    "loeo": Section(40, "Protocols: leave-one-engine-out"),
    # few-shot curves, chronological windows and explanations (analysis.fewshot/chrono/explain)
    "few-shot": Section(41, "Protocols: few-shot curves"),
    "chrono": Section(42, "Protocols: chronological windows"),
    "explain": Section(75, "Explanations (integrated gradients)"),
    "robustness": Section(50, "Robustness"),
    "normalised": Section(55, "Control: heads on format-normalised images"),
    "ood": Section(60, "Out-of-distribution (new engines)"),
    "neighbours": Section(70, "Neighbours"),
    "clusters": Section(71, "Engine clusters"),
    "map": Section(72, "Map"),
    "query": Section(73, "Nearest neighbours of given images"),
    "leaks": Section(74, "Near-duplicate leaks"),
}
_OTHER = Section(90, "")


def register_section(key: str, *, rank: int, title: str) -> None:
    """Place runs of command (or folder) ``key`` at ``rank`` under heading ``title``.

    Ranks in use: 0 summary, 10-19 data and audit, 20-39 heads, 40-49 protocols,
    50 robustness, 60 OOD, 70-79 neighbours, 90 anything unregistered.
    """
    SECTIONS[key] = Section(rank, title)


def _section_of(path: Path, command: str | None) -> tuple[Section, str]:
    """(section, key) of a run folder from its command, else from its folder name."""
    for key in (path.name, (command or "").split(" ")[0], path.name.split("-")[0]):
        if key in SECTIONS:
            return SECTIONS[key], key
    return _OTHER, ""


def _command_of(path: Path) -> str | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("command") if isinstance(cfg, dict) else None


def _reading_order(paths: Sequence[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (_section_of(p, _command_of(p))[0].rank, p.name))


# ---------------------------------------------------------------- caveats, once each
_NUMBERS = re.compile(r"'[^']*'|\d+(?:\.\d+)?%?")


class Caveats:
    """Collects caveat sentences; the same sentence (up to numbers and quoted names)
    raised in many places becomes one numbered item that each place links to."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def add(self, text: str, *, where: str) -> str:
        """Record ``text`` raised in section ``where``; returns the link to its item."""
        key = _NUMBERS.sub("#", text.strip().rstrip("."))
        item = self.items.setdefault(
            key, {"n": len(self.items) + 1, "text": text.strip(), "where": [], "count": 0}
        )
        item["count"] += 1
        if where not in item["where"]:
            item["where"].append(where)
        return f'<a class="caveat" href="#caveat-{item["n"]}">[caveat {item["n"]}]</a>'

    def html(self) -> str:
        if not self.items:
            return ""
        lis = []
        for it in self.items.values():
            more = it["count"] - 1
            seen = (
                f" <em>(raised {it['count']} times, with other numbers or names where they "
                f"differ; in: {html.escape(', '.join(it['where'][:6]))}"
                + (" ..." if len(it["where"]) > 6 else "")
                + ")</em>"
                if more
                else f" <em>(in: {html.escape(it['where'][0])})</em>"
            )
            lis.append(f'<li id="caveat-{it["n"]}">{_inline(it["text"])}{seen}</li>')
        return (
            '<section class="run" id="caveats"><h2 class="run-title">Caveats</h2>'
            "<p>Every caveat the runs raised, once each: read the numbers they qualify with "
            'them in mind.</p><ol class="caveats">' + "".join(lis) + "</ol></section>"
        )


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])_([^_]+)_(?![\w])", r"<em>\1</em>", s)
    return s


def _is_num(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+%?(e[-+]?\d+)?", cell.strip()))


def _table(lines: list[str], *, caveats: Caveats | None = None, where: str = "") -> str:
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
    warn_cols = {i for i, c in enumerate(head) if c.lower() in ("warning", "warnings", "caveat")}

    def cell(i: int, c: str) -> str:
        if i in warn_cols and caveats is not None and c.strip():
            return f"<td>{caveats.add(c, where=where)}</td>"
        return f'<td class="num">{_inline(c)}</td>' if _is_num(c) else f"<td>{_inline(c)}</td>"

    out = [
        '<div class="scroll"><table>',
        "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>",
        "<tbody>",
    ]
    for row in body:
        out.append("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def render_markdown(
    text: str, *, heading_offset: int = 0, caveats: Caveats | None = None, where: str = ""
) -> str:
    """The Markdown our run folders write (headings, tables, lists, paragraphs) as HTML.

    With ``caveats``, lists under a "Notes"/"Caveats" heading and table ``warning``
    cells go into that collector; their place shows links to the collected items.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    heading = ""
    in_detail = False
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = min(6, len(m.group(1)) + heading_offset)
            heading = m.group(2)
            if in_detail:
                out.append("</details>")
                in_detail = False
            if _is_detail_heading(heading):  # reference tables: collapsed, left out of print
                out.append(f"<details><summary>{_inline(heading)}</summary>")
                in_detail = True
                i += 1
                continue
            if caveats is not None and _is_caveat_heading(heading):
                i += 1  # the list that follows is collected; its heading goes with it
                continue
            out.append(f"<h{level}>{_inline(heading)}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block, caveats=caveats, where=where))
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                i += 1
            if caveats is not None and _is_caveat_heading(heading):
                links = " ".join(dict.fromkeys(caveats.add(x, where=where) for x in items))
                out.append(f'<p class="caveats">Caveats: {links}</p>')
            else:
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
    if in_detail:
        out.append("</details>")
    return "\n".join(out)


def _is_detail_heading(heading: str) -> bool:
    """Headings of reference material a reader opens on demand ("All metrics ...")."""
    return bool(re.match(r"all metrics\b|.*\(detail\)$", heading.strip(), re.IGNORECASE))


def _is_caveat_heading(heading: str) -> bool:
    return bool(re.match(r"(notes?|caveats?)\b", heading.strip(), re.IGNORECASE))


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
    return (
        '<div class="scroll"><table class="config"><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
    )


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
        f"<details><summary>{html.escape(path.name)} ({max(n - 1, 0)} rows; "
        f"first {len(body)} shown)</summary><table>"
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


def _title(path: Path, command: str | None, *, parent_key: str) -> tuple[str, str]:
    """(heading, key): a section's heading from its kind, its folder name when that adds
    something (``evaluate/linear`` -> ``linear`` under "Heads: test rows")."""
    section, key = _section_of(path, command)
    name = path.name
    if key and key == parent_key:  # e.g. a head's folder inside evaluate/
        return name, key
    if section.title and name in (key, "run", "run-small") or name.startswith(f"{key}-2"):
        return section.title, key
    if section.title:
        return f"{section.title}: {name}", key
    return name + (f" ({command})" if command and command != name else ""), key


def _figure(png: Path) -> str:
    raw = png.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    # PNG header: width and height are big-endian ints at bytes 16-24; shown at the
    # size it was drawn (DPI pixels per inch, 96 CSS pixels per inch)
    width = int.from_bytes(raw[16:20], "big") if len(raw) > 24 else 0
    style = f' style="width:{round(width * 96 / DPI)}px"' if width else ""
    return (
        f'<figure><img alt="{html.escape(png.stem)}"{style} '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(png.name)}</figcaption>'
        "</figure>"
    )


def _run_section(
    path: Path,
    *,
    level: int,
    used: set[str],
    toc: list[tuple[int, str, str]],
    caveats: Caveats,
    depth: int = 0,
    parent_key: str = "",
    trail: str = "",
) -> str:
    slug = _slug(path, used)
    cfg: dict[str, Any] = {}
    if (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            cfg = {"error": f"config.json is not valid JSON ({exc})"}
    command = cfg.get("command") if isinstance(cfg.get("command"), str) else None
    title, key = _title(path, command, parent_key=parent_key)
    where = f"{trail} / {title}" if trail and depth > 1 else title
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
    # a note (e.g. the demo's disclaimer) first, then the other Markdown files
    for md in sorted(path.glob("*.md"), key=lambda p: (p.name != "NOTE.md", p.name)):
        body = render_markdown(md.read_text(), heading_offset=h, caveats=caveats, where=where)
        parts.append(f'<div class="md">{body}</div>')
        shown = True
    figures = [_figure(png) for png in sorted(path.glob("*.png"))]
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
        subs = [
            p
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr")
        ]
        for sub in _reading_order(subs):
            if _has_content(sub):
                parts.append(
                    _run_section(
                        sub,
                        level=level + 1,
                        used=used,
                        toc=toc,
                        caveats=caveats,
                        depth=depth + 1,
                        parent_key=key,
                        trail=where,
                    )
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
        f"<tr><td>{html.escape(str(k))}</td>"
        f'<td class="num">{html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))}</td></tr>'
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
                f"run folder {str(d)!r} does not exist; pass a folder written by a facebank "
                "command (--out)"
            )
        if not _has_content(d):
            raise ReportError(
                f"{str(d)!r} holds no config.json, metrics.json, *.md or *.png (nor sub-folders "
                "with them); is it a run folder?"
            )
    check_output_file(out, overwrite=overwrite)  # refuse before the work, not after
    used: set[str] = set()
    toc: list[tuple[int, str, str]] = []
    caveats = Caveats()
    sections = [
        _run_section(d, level=1, used=used, toc=toc, caveats=caveats) for d in _reading_order(dirs)
    ]
    if caveats.items:
        sections.append(caveats.html())
        toc.append((1, "caveats", f"Caveats ({len(caveats.items)})"))
    toc_html = ["<nav><strong>Contents</strong><ul>"]
    for level, slug, name in toc:
        toc_html.append(
            f'<li style="margin-left:{(level - 1) * 18}px">'
            f'<a href="#{slug}">{html.escape(name)}</a></li>'
        )
    toc_html.append("</ul></nav>")
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"<header><h1>{html.escape(title)}</h1><p>{len(dirs)} run folder(s), {len(toc)} "
        f"section(s) - generated {created} by facebank. Label 1 = AI-generated; flagged = "
        "score &gt; threshold; thresholds set on validation reals.</p></header>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
{header}
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


# For pages written by other commands (``triage``) in the report's look.
PAGE_CSS = _CSS
figure_html = _figure
