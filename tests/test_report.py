"""analysis.report: one self-contained HTML page from run folders (structure checks)."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from facebank.analysis.report import ReportError, render_markdown, write_report
from facebank.embed.runs import markdown_table, start_run, write_json
from typer.testing import CliRunner


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    p = _Collect()
    p.feed(path.read_text())
    return p


def _png(path, colour="tab:blue"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot(np.arange(5), np.arange(5) ** 2, color=colour)
    fig.savefig(path, dpi=40)
    plt.close(fig)


def _run(path, command, *, rows=None, png=True):
    start_run(path, command=command, config={"seed": 0, "banks": ["a.zarr"]})
    write_json(path / "metrics.json", {"auc": 0.93, "tpr": 0.81})
    rows = rows or [
        {"engine": "sdxl", "tpr": 0.81, "n": 120},
        {"engine": "real", "tpr": 0.005, "n": 400},
    ]
    (path / "metrics.md").write_text(
        "# Result\n\nSome **bold** text with `code`.\n\n"
        + markdown_table(rows)
        + "\n- a note\n- another <b>note</b>\n"
    )
    if png:
        _png(path / "roc.png")
    (path / "scores.csv").write_text("path,score\na.png,0.1\nb.png,0.9\n")
    return path


@pytest.fixture()
def runs(tmp_path):
    a = _run(tmp_path / "eval", "evaluate")
    exp = _run(tmp_path / "experiment", "experiment", png=False)
    _run(exp / "linear", "evaluate")
    _run(exp / "linear" / "robustness", "robustness")
    (exp / "bank.zarr").mkdir()  # banks inside a run folder are not sections
    return a, exp


def test_report_is_self_contained_with_every_table_figure_and_nested_run(runs, tmp_path):
    a, exp = runs
    out = write_report([a, exp], out=tmp_path / "r" / "report.html", title="my report")
    page = _parse(out)
    tags = page.tags
    imgs = [t for t in tags if t[0] == "img"]
    assert len(imgs) == 3  # eval, experiment/linear, experiment/linear/robustness
    for _, attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing loaded from elsewhere
    for _, attrs in tags:
        for key in ("src", "href"):
            v = attrs.get(key)
            assert v is None or v.startswith(("data:", "#")), v
    assert not [t for t in tags if t[0] in ("script", "link")]
    sections = [t for t in tags if t[0] == "section"]
    assert len(sections) == 4
    assert sum(1 for t in tags if t[0] == "table") >= 4 + 4  # md tables + config tables
    text = "".join(page.text)
    assert "my report" in text and "sdxl" in text and "metrics.json" in text
    assert "bank.zarr" not in text
    html_text = out.read_text()
    assert "another &lt;b&gt;note&lt;/b&gt;" in html_text  # Markdown text is escaped
    assert "<strong>bold</strong>" in html_text and "<code>code</code>" in html_text
    # table of contents links to every section
    ids = {t[1]["id"] for t in sections}
    links = {t[1]["href"][1:] for t in tags if t[0] == "a"}
    assert ids == links


def test_markdown_tables_become_html_tables_with_numeric_cells_right_aligned():
    html_text = render_markdown(
        markdown_table([{"engine": "a", "tpr": 0.5}, {"engine": "b", "tpr": 0.25}])
    )
    assert html_text.count("<tr>") == 3
    assert '<td class="num">0.500</td>' in html_text
    assert "---" not in html_text


def test_run_with_only_metrics_json_shows_them_as_a_table(tmp_path):
    run = tmp_path / "only"
    start_run(run, command="train", config={})
    write_json(run / "metrics.json", {"val_auc": 0.97, "n_train": 300})
    out = write_report([run], out=tmp_path / "r.html")
    assert "val_auc" in out.read_text() and "0.97" in out.read_text()


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report([tmp_path / "nope"], out=tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="is it a run folder"):
        write_report([tmp_path / "empty"], out=tmp_path / "r.html")


def test_report_cli(runs, tmp_path):
    from facebank.cli import app

    a, exp = runs
    res = CliRunner().invoke(app, ["report", str(a), str(exp), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").exists() and "wrote" in res.output
    res = CliRunner().invoke(
        app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "y.html")]
    )
    assert res.exit_code == 1 and "does not exist" in res.output


def test_config_json_values_are_shown(runs, tmp_path):
    a, _ = runs
    out = write_report([a], out=tmp_path / "r.html")
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["command"] in out.read_text()


def test_report_never_replaces_a_page_silently(tmp_path):
    from facebank.embed.errors import RunFolderError

    run = tmp_path / "a"
    _run(run, "evaluate")
    page = write_report([run], out=tmp_path / "r.html")
    with pytest.raises(RunFolderError, match="already exists.*--overwrite"):
        write_report([run], out=page)
    assert write_report([run], out=page, overwrite=True) == page
