"""analysis.report: one self-contained HTML page from run folders (structure checks)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facebank.analysis.report import ReportError, render_markdown, write_report
from facebank.core.runs import markdown_table, start_run, write_json


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
    from facebank.core.errors import RunFolderError

    run = tmp_path / "a"
    _run(run, "evaluate")
    page = write_report([run], out=tmp_path / "r.html")
    with pytest.raises(RunFolderError, match="already exists.*--overwrite"):
        write_report([run], out=page)
    assert write_report([run], out=page, overwrite=True) == page


# ---------------------------------------------------------------- reading order, caveats, print
def _exp_tree(root):
    """An experiment folder laid out as run_experiment writes it (alphabetical != reading)."""
    exp = _run(root / "exp", "experiment", png=False)
    for sub, command in [
        ("train/linear", "train"),
        ("evaluate/linear", "evaluate"),
        ("evaluate/mlp", "evaluate"),
        ("loeo", "protocol loeo"),
        ("robustness/linear", "robustness"),
        ("ood", "ood"),
        ("neighbours/clusters", "neighbours clusters"),
    ]:
        run = _run(exp / sub, command, png=False)
        (run / "metrics.md").write_text(
            "# Result\n\n"
            + markdown_table(
                [
                    {
                        "engine": "tiny",
                        "n": 3,
                        "warning": "only 3 images: the rate moves in "
                        "steps of 33%; read the interval",
                    },
                    {
                        "engine": "small",
                        "n": 5,
                        "warning": "only 5 images: the rate moves in "
                        "steps of 20%; read the interval",
                    },
                ]
            )
            + "\n## Notes\n\n- calibrating at fpr=0.005 with only 45 reals\n"
        )
    return exp


def test_sections_come_in_reading_order_with_plain_labels(tmp_path):
    exp = _exp_tree(tmp_path)
    page = write_report([exp], out=tmp_path / "r.html").read_text()
    labels = re.findall(r'<li style="[^"]*"><a href="#[^"]+">([^<]+)</a>', page)
    order = [
        "Summary: exp",
        "Heads: training",
        "linear",
        "Heads: test rows",
        "linear",
        "mlp",
        "Protocols: leave-one-engine-out",
        "Robustness",
        "linear",
        "Out-of-distribution (new engines)",
        "Neighbours",
        "Engine clusters",
    ]
    assert labels[: len(order)] == order
    assert not [x for x in labels if " - " in x]  # no "ood - ood"


def test_repeated_caveats_are_listed_once_and_linked(tmp_path):
    exp = _exp_tree(tmp_path)
    page = write_report([exp], out=tmp_path / "r.html").read_text()
    # 7 sub-runs x 2 small-sample cells + 7 notes: two items, not 21 repeats
    items = re.findall(r'<li id="caveat-(\d+)">', page)
    assert len(items) == 2
    assert page.count("moves in steps") == 1 and page.count("calibrating at fpr") == 1
    assert "raised 14 times" in page and "raised 7 times" in page
    assert page.count('href="#caveat-1"') == 14
    assert "Heads: test rows / mlp" in page  # where each was raised, unambiguous


def test_headings_are_larger_than_the_text():
    from facebank.analysis.report import _CSS

    screen = _CSS.split("@media print")[0]
    body = float(re.search(r"body \{[^}]*font:(\d+(?:\.\d+)?)px", screen).group(1))
    sizes = [
        float(x) for x in re.findall(r"h[1-6][^{}]*\{[^}]*font-size:(\d+(?:\.\d+)?)px", screen)
    ]
    assert sizes and min(sizes) > body


def test_figures_are_shown_at_the_size_they_were_drawn(tmp_path):
    run = _run(tmp_path / "a", "evaluate")  # roc.png: 2 in x 1.5 in at 40 dpi = 80 px
    page = write_report([run], out=tmp_path / "r.html").read_text()
    assert 'style="width:51px"' in page  # 80 px * 96 / 150


def _wide_run(root):
    run = root / "wide"
    start_run(run, command="evaluate", config={})
    row = {f"column number {i}": f"value-{i}-of-a-long-row" for i in range(14)}
    row["last"] = "ENDOFTHEWIDEROW"
    (run / "metrics.md").write_text("# Wide\n\n" + markdown_table([row]))
    return run


def print_check():
    """``tests/benchmarks/check_report.check``, or a skip naming what is missing.

    ``.ci/run`` installs both (Debian's ``chromium`` and ``poppler-utils``), so in CI this
    never skips.
    """
    import importlib.util
    import shutil

    missing = [b for b in ("chromium", "pdfinfo", "pdftotext") if not shutil.which(b)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install chromium poppler-utils; "
            ".ci/run does)"
        )
    script = Path(__file__).parent / "benchmarks" / "check_report.py"
    spec = importlib.util.spec_from_file_location("check_report", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.check


@pytest.mark.slow
def test_report_prints_in_headless_chromium_without_clipping(tmp_path):
    """A 15-column table and a nested experiment print on A4 with every last cell shown."""
    check = print_check()
    run = _wide_run(tmp_path)
    page = write_report([run, _exp_tree(tmp_path)], out=tmp_path / "r.html")
    got = check(page, tmp_path / "check")
    assert 1 <= got["pages"] <= 4, got["pages"]  # two small runs and a nested tree
    assert got["clipped"] == [], got["clipped"]
    for shot in got["screenshots"]:
        assert Path(shot).stat().st_size > 5000


def test_reference_tables_are_collapsed_and_left_out_of_print():
    page = render_markdown(
        "## Summary\n\n| a |\n|---|\n| 1 |\n\n## All metrics (bootstrap)\n\n| m |\n|---|\n| 2 |\n"
    )
    assert "<details><summary>All metrics (bootstrap)</summary>" in page
    assert page.index("<details>") > page.index(">1<") and page.rstrip().endswith("</details>")


def test_one_figure_style_fonts_by_role_and_legends_outside_the_data(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facebank.analysis._plotstyle import FONT_SIZES, apply_style, save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, size in ((a, 22), (b, 5)):  # two authors, two ideas of a font size
        ax.plot([0, 1], [0, 1], label="sdxl")
        ax.set_title("t", fontsize=size)
        ax.set_xlabel("x", fontsize=size)
        ax.text(0.5, 0.5, "cell", fontsize=size)
        ax.legend(loc="best", fontsize=size)
    apply_style(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in (a, b):
        assert ax.title.get_fontsize() == FONT_SIZES["title"]
        assert ax.xaxis.label.get_fontsize() == FONT_SIZES["label"]
        assert ax.texts[0].get_fontsize() in FONT_SIZES["text"]
        leg = ax.get_legend()
        assert leg.get_texts()[0].get_fontsize() == FONT_SIZES["legend"]
        assert leg.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
