"""Chronological protocol: would a head trained on older generators catch the newer ones?

Engines carry a release date (an ``engine,date`` table: a CSV given by the user, a
manifest's ``date`` column, or ``data/engine_dates.csv`` shipped with facebank for the
public generators). Engines are grouped into windows (one per release date, or one per
year) in time order. For each cut-off after window i, as AI-GenBench does: the head is
trained on the **train** split of every engine released up to the cut-off (and the
train reals), the threshold is set on **validation reals** at ``fpr``, and TPR is
measured on every engine released **after** the cut-off (all of its rows: no image of
it was trained on) and, for reference, on the **test** split of the engines trained on.
The FPR is measured on the **test** reals. Reals carry no date; they are in every window.

Which split chose what: nothing is searched; params are used as given; thresholds from
validation reals; every rate on rows no fit saw.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facebank.core.errors import DataError
from facebank.core.runs import markdown_table
from facebank.embed.bank.types import BanksLike

from ._evalcommon import md_section
from ._protocol_core import ProtocolData, load_protocol_data, protocol_config, train_and_test
from .metrics import fpr_label
from .runfolder import RunContents, write_run

__all__ = ["ChronoResult", "chronological", "read_engine_dates", "SHIPPED_ENGINE_DATES"]

#: Release dates of public generators shipped with facebank (engine,date,what the date is).
SHIPPED_ENGINE_DATES = Path(__file__).resolve().parent.parent / "data" / "engine_dates.csv"

Window = Literal["release", "year"]


def read_engine_dates(path: str | Path) -> dict[str, _dt.date]:
    """Read an ``engine,date`` table (extra columns ignored: a manifest with ``date`` works).

    Engine names are lower-cased; ISO dates (``2023-07-26``; ``2023-07`` and ``2023``
    are read as the first day). Rows of one engine must agree.

    Raises:
        DataError: missing file or columns, a date that is not ISO, conflicting rows.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"engine dates file {str(p)!r} does not exist; give a CSV with columns engine,date "
            "(ISO dates, e.g. sdxl,2023-07-26)"
        )
    out: dict[str, _dt.date] = {}
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if not {"engine", "date"} <= set(cols):
            raise DataError(
                f"{str(p)!r} has columns {reader.fieldnames!r}; it needs engine and date "
                "(e.g. a header `engine,date` and rows like `sdxl,2023-07-26`)"
            )
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            engine, text = row["engine"].lower(), row["date"]
            if not engine or not text:
                continue
            date = _parse_date(text, where=f"{p.name} line {line}")
            if engine in out and out[engine] != date:
                raise DataError(
                    f"{p.name} gives engine {engine!r} two dates ({out[engine]} and {date}); "
                    "keep one date per engine"
                )
            out[engine] = date
    return out


def _parse_date(text: str, *, where: str) -> _dt.date:
    parts = text.split("-")
    try:
        nums = [int(x) for x in parts] + [1] * (3 - len(parts))
        return _dt.date(*nums[:3])
    except (ValueError, TypeError):
        raise DataError(
            f"{where}: date {text!r} is not an ISO date; write YYYY-MM-DD (or YYYY-MM, YYYY)"
        ) from None


@dataclasses.dataclass
class ChronoResult:
    """``chronological`` result.

    Attributes:
        windows: one dict per window in time order: ``window`` (label), ``start``
            (earliest date), ``engines``.
        table: one dict per cut-off: ``cutoff`` (last window trained on), ``trained``
            (engines), ``n_train``, ``tpr_next`` (mean TPR over the next window's engines),
            ``tpr_future`` (mean over every later engine), ``tpr_past`` (mean over the
            trained engines' test rows), ``fpr_test_reals``, ``threshold``.
        matrix: (n_cutoffs, n_engines) TPR; engines in date order; trained engines'
            cells are on their test split, later engines' on all their rows.
        trained_mask: (n_cutoffs, n_engines) True where the engine was trained on.
        per_cell: one dict per matrix cell (``cutoff``, ``engine``, ``tpr``, ``n``,
            ``ci``, ``trained``).
        engines: AI engines in date order; dates: engine -> ISO date.
    """

    windows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    matrix: np.ndarray
    trained_mask: np.ndarray
    per_cell: list[dict[str, Any]]
    engines: list[str]
    dates: dict[str, str]
    window: str
    head: str
    params: dict[str, Any]
    seed: int
    fpr: float
    split_source: str
    seconds: float
    run_dir: Path | None = None


def _resolve_dates(
    ai: list[str], engine_dates: str | Path | Mapping[str, Any] | None, shipped: bool
) -> tuple[dict[str, _dt.date], str]:
    table: dict[str, _dt.date] = {}
    source = []
    if shipped and SHIPPED_ENGINE_DATES.is_file():
        table.update(read_engine_dates(SHIPPED_ENGINE_DATES))
        source.append("data/engine_dates.csv")
    if isinstance(engine_dates, Mapping):
        given = {
            str(k).lower(): v
            if isinstance(v, _dt.date)
            else _parse_date(str(v), where="engine_dates")
            for k, v in engine_dates.items()
        }
        table.update(given)
        source.append("engine_dates given")
    elif engine_dates is not None:
        table.update(read_engine_dates(engine_dates))
        source.append(str(engine_dates))
    missing = [e for e in ai if e not in table]
    if missing:
        raise DataError(
            f"engines {missing} have no release date "
            f"(looked in: {', '.join(source) or 'nothing'}); "
            "give --engine-dates CSV with columns engine,date listing them (ISO dates), "
            "or a manifest with a date column"
        )
    return {e: table[e] for e in ai}, " + ".join(source)


def _windows(dates: dict[str, _dt.date], window: Window) -> list[dict[str, Any]]:
    if window not in ("release", "year"):
        raise DataError(f"window {window!r} is not known; valid: 'release', 'year'")
    groups: dict[str, list[str]] = {}
    for e in sorted(dates, key=lambda e: (dates[e], e)):
        key = dates[e].isoformat() if window == "release" else str(dates[e].year)
        groups.setdefault(key, []).append(e)
    return [
        {"window": k, "start": min(dates[e] for e in v).isoformat(), "engines": v}
        for k, v in groups.items()
    ]


def chronological(
    banks: BanksLike,
    *,
    engine_dates: str | Path | Mapping[str, Any] | None = None,
    shipped_dates: bool = True,
    window: Window = "release",
    head: str = "linear",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    fpr: float = 0.005,
    out: str | Path | None = None,
    progress: bool = False,
) -> ChronoResult:
    """Train on engines released up to each cut-off, test on the ones released after.

    Args:
        banks: banks of one backbone and one view: reals and AI engines of >= 2 windows.
        engine_dates: ``engine,date`` CSV (or a manifest with a ``date`` column), or a
            mapping engine -> date; wins over the shipped table.
        shipped_dates: also use ``data/engine_dates.csv`` for engines not given.
        window: ``"release"`` (one window per release date) or ``"year"``.
        head, params, seed, fpr: as for ``leave_one_engine_out``.
        out: run folder (config.json, metrics.json, chrono.md, chrono.png).
        progress: show a progress bar.

    Returns:
        ``ChronoResult``.

    Raises:
        DataError: an engine without a date (the message names every one), fewer than
            two windows, or no test reals.
    """
    t0 = time.perf_counter()
    d = load_protocol_data(banks, seed)
    ai = d.ai_engines
    dates, date_source = _resolve_dates(ai, engine_dates, shipped_dates)
    wins = _windows(dates, window)
    if len(wins) < 2:
        raise DataError(
            f"all AI engines {ai} fall in one window ({wins[0]['window'] if wins else 'none'}); "
            "the chronological protocol needs engines of at least two release dates"
        )
    order = [e for w in wins for e in w["engines"]]
    d.require_test_reals("the test FPR")
    tr, te = d.train, d.test
    # a trained engine is rated on its test rows, a later one on all its rows
    X_test = {e: d.X[te & (d.engines == e)] for e in order}
    X_all = {e: d.X[d.engines == e] for e in order}

    from rich.progress import Progress

    n_cut = len(wins) - 1
    matrix = np.full((n_cut, len(order)), np.nan)
    trained_mask = np.zeros((n_cut, len(order)), dtype=bool)
    table: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    previous = None  # each cut-off's fit starts from the one before (heads with warm_start)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("chronological", total=n_cut)
        for i in range(n_cut):
            past = [e for w in wins[: i + 1] for e in w["engines"]]
            nxt = wins[i + 1]["engines"]
            fit_rows = tr & ((d.y == 0) | np.isin(d.engines, past))
            fitted = train_and_test(
                d,
                *d.rows(fit_rows),
                head=head,
                params=params,
                fpr=fpr,
                warm_from=previous,
            )
            previous = fitted.estimator
            row, row_cells = _rate_cutoff(
                fitted, wins[i]["window"], past=past, order=order, X_test=X_test, X_all=X_all
            )
            matrix[i], trained_mask[i] = row, np.isin(order, past)
            cells += row_cells
            col = {e: j for j, e in enumerate(order)}
            future = [e for e in order if e not in past]
            table.append(
                {
                    "cutoff": wins[i]["window"],
                    "trained": past,
                    "next": nxt,
                    "n_train": int(fit_rows.sum()),
                    "tpr_next": float(np.nanmean([row[col[e]] for e in nxt])),
                    "tpr_future": float(np.nanmean([row[col[e]] for e in future])),
                    "tpr_past": float(np.nanmean([row[col[e]] for e in past])),
                    "fpr_test_reals": fitted.fpr_test_reals,
                    "n_test_reals": fitted.n_test_reals,
                    "threshold": fitted.threshold,
                }
            )
            bar.advance(task)
    res = ChronoResult(
        windows=wins,
        table=table,
        matrix=matrix,
        trained_mask=trained_mask,
        per_cell=cells,
        engines=order,
        dates={e: dates[e].isoformat() for e in order},
        window=window,
        head=head,
        params=dict(params or {}),
        seed=seed,
        fpr=fpr,
        split_source=d.split_source,
        seconds=time.perf_counter() - t0,
    )
    if out is not None:
        res.run_dir = write_run(out, _contents(res, d, date_source))
    return res


def _rate_cutoff(
    fitted: Any,
    cutoff: str,
    *,
    past: list[str],
    order: list[str],
    X_test: Mapping[str, np.ndarray],
    X_all: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """TPR of one cut-off's head on every engine: a trained engine on its test rows, a
    later one on all its rows. Returns the matrix row and one cell record per engine."""
    row = np.full(len(order), np.nan)
    cells = []
    for j, e in enumerate(order):
        trained = e in past
        r = fitted.rate(X_test[e] if trained else X_all[e])
        row[j] = r.rate
        cells.append(
            {
                "cutoff": cutoff,
                "engine": e,
                "tpr": r.rate,
                "n": r.n,
                "ci": list(r.ci),
                "trained": trained,
                "rows": "test split" if trained else "all rows",
            }
        )
    return row, cells


def _contents(res: ChronoResult, d: ProtocolData, date_source: str) -> RunContents:
    config = protocol_config(
        res,
        d,
        window=res.window,
        engine_dates=res.dates,
        engine_dates_source=date_source,
        fit_split="train, engines released up to the cut-off",
        test_split="later engines: all rows; trained engines and reals: test",
    )
    metrics = {
        "protocol": "chrono",
        "fpr": res.fpr,
        "windows": res.windows,
        "table": res.table,
        "cells": res.per_cell,
        "engines": res.engines,
        "dates": res.dates,
        "matrix": res.matrix,
        "seconds": res.seconds,
    }
    fl = fpr_label(res.fpr)
    text = f"# Chronological protocol ({res.head}, view {', '.join(d.views)})\n\n"
    text += (
        f"Windows by {res.window}; release dates from {date_source}. At each cut-off the head "
        f"is trained on the engines released up to it, thresholded on validation reals at FPR "
        f"{fl}, and tested on the engines released after it (all their rows). Splits: "
        f"{res.split_source}.\n\n"
    )
    win_rows = [{"window": w["window"], "engines": ", ".join(w["engines"])} for w in res.windows]
    text += md_section("Windows", markdown_table(win_rows))
    rows = [
        {
            "trained up to": r["cutoff"],
            "engines trained": len(r["trained"]),
            f"TPR next window @ FPR {fl}": r["tpr_next"],
            "TPR all later": r["tpr_future"],
            "TPR trained (test split)": r["tpr_past"],
            "test FPR (reals)": r["fpr_test_reals"],
        }
        for r in res.table
    ]
    text += md_section("Per cut-off", markdown_table(rows, digits=3))
    return RunContents(
        command="protocol chrono",
        config=config,
        metrics=metrics,
        pages={"chrono.md": text},
        figures={"chrono.png": lambda: _figure(res)},
    )


def _figure(res: ChronoResult):
    import matplotlib.pyplot as plt

    n_cut, n_eng = res.matrix.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * n_eng + 3), max(3, 0.45 * n_cut + 2)))
    im = ax.imshow(res.matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(n_cut):
        for j in range(n_eng):
            v = res.matrix[i, j]
            txt = "" if np.isnan(v) else f"{v:.0%}"
            style = "normal" if res.trained_mask[i, j] else "italic"
            ink = "black" if not np.isnan(v) and v > 0.6 else "white"  # viridis is light at 1
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color=ink, style=style)
    ax.set_xticks(range(n_eng), [f"{e}\n{res.dates[e]}" for e in res.engines], fontsize=7)
    ax.set_yticks(range(n_cut), [f"up to {r['cutoff']}" for r in res.table], fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    # cells left of the staircase were trained on; right of it are the future
    for i in range(n_cut):
        j = int(res.trained_mask[i].sum())
        ax.plot([j - 0.5, j - 0.5], [i - 0.5, i + 0.5], color="red", lw=2)
    ax.set_title(
        f"TPR at FPR {fpr_label(res.fpr)}: trained up to a cut-off (rows), tested on each engine"
    )
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig
