"""facebank command line: a thin typer shell over the library.

Each command parses options, calls one library function and prints. Library errors
(``FacebankError``) become one line on stderr and exit code 1; ``--verbose`` shows
the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional used by typer options)

import typer
from typer.core import TyperGroup

_STATE = {"verbose": False}


class _FacebankGroup(TyperGroup):
    """Turns library errors into one line on stderr and exit code 1 (tracebacks with -v)."""

    def invoke(self, ctx):  # noqa: D102
        from embed.errors import FacebankError

        try:
            return super().invoke(ctx)
        except FacebankError as exc:
            if _STATE["verbose"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_FacebankGroup,
    name="facebank",
    help="Find AI-generated faces: embed images once into Zarr feature banks, "
    "train heads in seconds, evaluate at 0.5% FPR, analyse neighbours with FAISS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Inspect and check feature banks.", no_args_is_help=True)
neighbours_app = typer.Typer(help="FAISS nearest-neighbour analysis of banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")
app.add_typer(neighbours_app, name="neighbours")


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")
    ] = False,
) -> None:
    _STATE["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# ---------------------------------------------------------------- backbones (issue 2)
# [section: backbones]
# [end section: backbones]

# ---------------------------------------------------------------- embed & bank (issue 2)
# [section: embed]
# [end section: embed]

# ---------------------------------------------------------------- heads (issue 3)
# [section: heads]
# [end section: heads]

# ---------------------------------------------------------------- analysis (issue 4)
# [section: analysis]
from enum import Enum as _Enum  # noqa: E402


class _Protocol(str, _Enum):
    in_engine = "in-engine"
    loeo = "loeo"


def _default_out(command: str) -> Path:
    import datetime as _dt

    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _parse_params(items: list[str] | None) -> dict:
    import json

    out = {}
    for item in items or []:
        if "=" not in item:
            from embed.errors import FacebankError

            raise FacebankError(f"--param {item!r} is not KEY=VALUE; e.g. --param C=0.5 --param hidden=256")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


_OUT_HELP = "Run folder to write (config.json, metrics.json, Markdown tables, PNGs); default runs/<command>-<time>."


@app.command("evaluate")
def evaluate_cmd(
    banks: Annotated[list[Path], typer.Argument(help="Feature banks (NAME.zarr) to evaluate on, same backbone as the head.")],
    head: Annotated[Path, typer.Option("--head", help="Run folder of a trained head (facebank train --out).")],
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for the 95% intervals (0 = none).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """Metrics at the head's validation-chosen threshold, per-engine TPR/FPR, ROC and DET curves."""
    from analysis.evaluation import evaluate

    res = evaluate(head, banks, out=out or _default_out("evaluate"), n_boot=n_boot, seed=seed)
    m = res.metrics
    typer.echo(
        f"{res.n_rows} rows ({m.n_real} real, {m.n_fake} AI; {sum(res.n_excluded.values())} train/val rows of the run excluded), "
        f"view {', '.join(sorted(set(res.views)))}"
    )
    typer.echo(f"threshold {res.threshold:.4g} ({res.threshold_source})")
    typer.echo(f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}  AP {m.ap:.4f}  EER {m.eer:.2%}")
    for r in res.per_engine:
        warn = f"  ! {r['warning']}" if r["warning"] else ""
        typer.echo(f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]  n={r['n']}{warn}")
    typer.echo(f"run folder: {res.run_dir}")


@app.command("protocol")
def protocol_cmd(
    protocol: Annotated[_Protocol, typer.Argument(help="in-engine (seeded stratified split) or loeo (leave-one-engine-out).")],
    banks: Annotated[list[Path], typer.Argument(help="Feature banks of one backbone and one view (reals + >= 2 AI engines).")],
    head: Annotated[str, typer.Option("--head", help="Head to train (facebank heads lists them).")] = "linear",
    param: Annotated[list[str] | None, typer.Option("--param", help="Head parameter KEY=VALUE (repeatable, JSON values).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split seed (banks without a split column).")] = 0,
    fpr: Annotated[float, typer.Option("--fpr", help="Target FPR on validation reals for the threshold.")] = 0.005,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples (in-engine).")] = 1000,
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
) -> None:
    """Train/test protocols: in-engine split, or leave-one-engine-out (in- vs out-of-engine TPR at FPR 0.5%)."""
    from analysis.protocols import in_engine, leave_one_engine_out

    params = _parse_params(param)
    out = out or _default_out(f"protocol-{protocol.value}")
    if protocol is _Protocol.in_engine:
        res = in_engine(banks, head=head, params=params, seed=seed, fpr=fpr, out=out, n_boot=n_boot)
        m = res.metrics
        typer.echo(f"in-engine {head}: threshold {res.threshold:.4g} from {res.n_val_reals} val reals; test n={res.n_test}")
        typer.echo(f"TPR {m.recall:.1%}  FPR {m.fpr:.2%}  AUC {m.auc:.4f}")
        for r in res.per_engine:
            typer.echo(f"  {r['engine']:<16} {r['metric'].upper()} {r['rate']:7.1%}  n={r['n']}")
    else:
        res = leave_one_engine_out(banks, head=head, params=params, seed=seed, fpr=fpr, out=out, progress=True)
        typer.echo(f"{'engine':<16} {'in-engine':>10} {'out-of-engine':>14}")
        for r in res.table:
            typer.echo(f"{r['engine']:<16} {r['tpr_in']:>10.1%} {r['tpr_out']:>14.1%}")
        typer.echo(f"{'average':<16} {res.average['tpr_in']:>10.1%} {res.average['tpr_out']:>14.1%}")
    typer.echo(f"run folder: {res.run_dir}")


@app.command("robustness")
def robustness_cmd(
    banks: Annotated[list[Path], typer.Argument(help="One bank per view of the same images (facebank embed --view ...).")],
    head: Annotated[Path, typer.Option("--head", help="Run folder of a trained head.")],
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for AUC intervals.")] = 1000,
    strict: Annotated[bool, typer.Option("--strict", help="Fail when the banks do not hold the same images.")] = False,
) -> None:
    """TPR/FPR at the frozen threshold and AUC per view (JPEG quality, resize, flips)."""
    from analysis.robustness import robustness

    res = robustness(head, banks, out=out or _default_out("robustness"), n_boot=n_boot, allow_mismatch=not strict)
    typer.echo(f"{res.n_matched} images matched by sha256 in every view; threshold {res.threshold:.4g}")
    for r in res.views:
        typer.echo(f"  {r['view']:<24} TPR {r['tpr']:6.1%}  FPR {r['fpr']:6.2%}  AUC {r['auc']:.4f}")
    for n in res.notes:
        typer.echo(f"note: {n}")
    typer.echo(f"run folder: {res.run_dir}")


@app.command("ood")
def ood_cmd(
    head: Annotated[Path, typer.Option("--head", help="Run folder of a trained head (prototype: its ood_score; others: kNN).")],
    known: Annotated[list[Path], typer.Option("--known", help="Bank(s) of the engines the head was trained on (repeatable).")],
    new: Annotated[list[Path], typer.Option("--new", help="Bank(s) of engines the head never saw (repeatable).")],
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    k: Annotated[int, typer.Option("--k", help="Neighbour rank of the kNN OOD score (heads without ood_score).")] = 10,
    flag_fpr: Annotated[float, typer.Option("--flag-fpr", help="Fraction of known-engine validation images the flag threshold flags.")] = 0.05,
) -> None:
    """AUROC and FPR at 95% TPR of new-engine vs known-engine images, per-image OOD flags."""
    from analysis.ood import ood

    res = ood(head, known=known, new=new, out=out or _default_out("ood"), k=k, flag_fpr=flag_fpr)
    typer.echo(f"score {res.method}; threshold {res.threshold:.4g} set on {res.n_known_val} known val images; flags {res.known_flag_rate:.1%} of known test")
    for r in res.per_engine:
        typer.echo(f"  {r['engine']:<16} AUROC {r['auroc']:.3f}  FPR@95%TPR {r['fpr_at_95tpr']:.1%}  flagged {r['flag_rate']:.1%}  n={r['n']}")
    typer.echo(f"per-image CSV: {res.csv_path}")


@app.command("report")
def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (nested sub-runs are included).")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "facebank report",
) -> None:
    """One self-contained HTML page (figures inlined) with every table and figure of the runs."""
    from analysis.report import write_report

    path = write_report(run_dirs, out=out, title=title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


# [end section: analysis]

# ---------------------------------------------------------------- neighbours (issue 5)
# [section: neighbours]
from enum import Enum  # noqa: E402


class _NbMetric(str, Enum):
    cosine = "cosine"
    l2 = "l2"


class _MapMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


_NbBanks = Annotated[
    list[Path], typer.Argument(help="Feature bank(s) (NAME.zarr) of one backbone; rows are pooled.")
]
_NbK = Annotated[int, typer.Option("-k", "--k", help="Neighbours per image (the image itself excluded).")]
_NbFactory = Annotated[
    str,
    typer.Option(help="FAISS index factory string: 'Flat' (exact), 'IVF1024,Flat', 'HNSW32'..."),
]
_NbDevice = Annotated[
    str, typer.Option(help="FAISS device: auto (GPU when faiss-gpu sees one), cpu, cuda, cuda:N.")
]
_NbNprobe = Annotated[int | None, typer.Option(help="IVF runtime knob: lists visited per query.")]
_NbEf = Annotated[int | None, typer.Option("--ef-search", help="HNSW runtime knob: search beam width.")]


def _nb_progress() -> bool:
    return sys.stderr.isatty()


@neighbours_app.command("clusters")
def neighbours_clusters(
    banks: _NbBanks,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-clusters"),
    k: _NbK = 10,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the purity intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds bootstrap, subsamples and k-means.")] = 0,
    clusters: Annotated[
        int | None, typer.Option(help="k-means clusters (default: the number of engines).")
    ] = None,
    silhouette_max: Annotated[
        int, typer.Option(help="Silhouette on a seeded subsample of this many rows above it.")
    ] = 5000,
    factory: _NbFactory = "Flat",
    metric: Annotated[_NbMetric, typer.Option(help="Neighbour metric.")] = _NbMetric.cosine,
    device: _NbDevice = "auto",
    nprobe: _NbNprobe = None,
    ef_search: _NbEf = None,
) -> None:
    """Do engines cluster? kNN purity per engine, neighbour-engine confusion, silhouette, k-means NMI/ARI."""
    from analysis.neighbours import engine_clusters

    result = engine_clusters(
        [str(b) for b in banks], k=k, n_boot=n_boot, seed=seed, n_clusters=clusters,
        silhouette_max=silhouette_max, factory=factory, metric=metric.value, device=device,
        nprobe=nprobe, ef_search=ef_search, out=out, progress=_nb_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(f"wrote {result.run_dir}")


@neighbours_app.command("query")
def neighbours_query(
    bank: Annotated[list[Path], typer.Option("--bank", help="Bank(s) to search (repeat for several).")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Query image files (embedded with the bank's backbone).")
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="Query banked rows instead of images, e.g. '3,17'.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query.")] = 8,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-query"),
    factory: _NbFactory = "Flat",
    metric: Annotated[_NbMetric, typer.Option(help="Neighbour metric.")] = _NbMetric.cosine,
    device: _NbDevice = "auto",
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file, when the query images need one.")
    ] = None,
) -> None:
    """Forensics: each query's nearest banked images (table, neighbours.csv, grid.png)."""
    from rich.console import Console
    from rich.table import Table

    from analysis.neighbours import NeighbourIndex, write_query
    from embed.errors import DataError

    if bool(images) == bool(rows):
        raise DataError("give query IMAGE files or --rows 3,17 (exactly one of the two)")
    index = NeighbourIndex(
        [str(b) for b in bank], factory=factory, metric=metric.value, device=device,
        progress=_nb_progress(),
    )
    if rows:
        try:
            wanted = [int(r) for r in rows.replace(" ", "").split(",") if r]
        except ValueError:
            raise DataError(f"--rows {rows!r} is not a list of row numbers; use e.g. --rows 3,17") from None
        records = index.query_rows(wanted, k)
    else:
        records = index.query([str(p) for p in images], k, device=device,
                              weights=str(weights) if weights else None)
    run = write_query(records, out=out, config={
        "banks": [str(b) for b in bank], "k": k, "factory": factory, "metric": metric.value,
        "rows": rows, "images": [str(p) for p in images or []],
    })
    console = Console()
    for recs in records:
        table = Table(title=f"query: {recs[0].query}" if recs else "query", title_justify="left")
        for col in ("rank", "similarity" if metric == _NbMetric.cosine else "sq. distance",
                    "engine", "label", "split", "bank", "path"):
            table.add_column(col, overflow="fold")
        for r in recs:
            score = r.similarity if r.similarity is not None else r.distance
            table.add_row(str(r.rank), f"{score:.4f}", r.engine, str(r.label), r.split or "-",
                          r.bank, r.path)
        console.print(table)
    typer.echo(f"wrote {run}")


@neighbours_app.command("leaks")
def neighbours_leaks(
    banks: _NbBanks,
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity at or above which two images are near-duplicates.")
    ] = 0.95,
    k: _NbK = 10,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-leaks"),
    factory: _NbFactory = "Flat",
    device: _NbDevice = "auto",
) -> None:
    """Near-duplicates (cosine) and exact duplicates (sha256) across splits and banks.

    Exit code 2 when a train/test pair is found, so it can gate an experiment.
    """
    from analysis.neighbours import find_leaks

    result = find_leaks(
        [str(b) for b in banks], threshold=threshold, k=k, factory=factory, device=device,
        out=out, progress=_nb_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(f"{len(result.pairs)} pairs; wrote {result.run_dir / 'pairs.csv'}")
    if result.has_train_test_leak:
        typer.echo(
            f"leak: {result.train_test} train/test pair(s) at cosine >= {threshold} or same sha256",
            err=True,
        )
        raise typer.Exit(2)


@neighbours_app.command("map")
def neighbours_map(
    banks: _NbBanks,
    method: Annotated[
        list[_MapMethod] | None, typer.Option(help="Projection(s); repeat for several (default: both).")
    ] = None,
    max_points: Annotated[
        int, typer.Option(help="Above this many rows, draw a seeded random subsample.")
    ] = 5000,
    seed: Annotated[int, typer.Option(help="Seeds the subsample, PCA and t-SNE.")] = 0,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/neighbours-map"),
) -> None:
    """2-D PCA / t-SNE scatter of the banks, coloured by engine (map_<method>.png)."""
    from analysis.neighbours import write_maps

    methods = [m.value for m in method] if method else ["pca", "tsne"]
    run, maps = write_maps([str(b) for b in banks], out=out, methods=methods,
                           max_points=max_points, seed=seed)
    for m in maps:
        shown = f"{len(m.rows)} of {m.n_total} rows (seed {m.seed})" if m.subsampled else f"{m.n_total} rows"
        typer.echo(f"{m.method}: {shown} -> {run / f'map_{m.method}.png'}")


# [end section: neighbours]

# ---------------------------------------------------------------- experiment & demo (issue 6)
# [section: experiment]
def _print_experiment(result) -> None:
    from rich.console import Console

    console = Console()
    for table in result.rich_tables():
        console.print(table)
    total = result.seconds.get("total", 0.0)
    console.print(f"report: [bold]{result.report}[/]  ({total:.0f} s; run folder {result.run_dir})")


@app.command("experiment")
def experiment(
    source: Annotated[
        Path, typer.Argument(help="Dataset: folder SOURCE/<engine>/... (or SOURCE/<split>/<engine>/...) "
                                  "or a CSV manifest path,label,engine[,split].")
    ],
    backbone: Annotated[str, typer.Option(help="Backbone (see `facebank backbones`).")] = "clip-vit-l-14",
    out: Annotated[Path, typer.Option(help="Run folder; re-running on it reuses its banks.")] = Path(
        "runs/experiment"
    ),
    views: Annotated[
        list[str] | None,
        typer.Option("--views", help="Views to embed besides original; repeat or comma-separate "
                                     "(default jpeg:q=50, resize:128, vflip; 'none' for no views)."),
    ] = None,
    heads: Annotated[
        list[str] | None,
        typer.Option("--heads", help="Heads to train; repeat or comma-separate (default linear, mlp, prototype)."),
    ] = None,
    new_engine: Annotated[
        str | None,
        typer.Option(help="AI engine held out as new for the OOD test (default: the smallest)."),
    ] = None,
    real: Annotated[
        list[str] | None,
        typer.Option("--real", help="Folder name(s) holding real images (default: real)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (embedding).")] = "auto",
    weights: Annotated[
        Path | None,
        typer.Option(help="Backbone checkpoint file (open_clip / timm), overrides the cache."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds splits, training and bootstraps.")] = 0,
) -> None:
    """Embed a dataset under several views, train the default heads, evaluate at 0.5% FPR,
    leave-one-engine-out, robustness, OOD of a held-out engine, neighbours: one HTML report."""
    from analysis.experiment import DEFAULT_HEADS, DEFAULT_VIEWS, run_experiment

    def _split(values, default):
        if values is None:
            return default
        items = [v.strip() for item in values for v in item.split(",") if v.strip()]
        return () if items == ["none"] else tuple(items)

    result = run_experiment(
        source, backbone=backbone, out=out, views=_split(views, DEFAULT_VIEWS),
        heads=_split(heads, DEFAULT_HEADS), new_engine=new_engine, device=device,
        weights=weights, seed=seed, real_names=tuple(real or ("real",)),
        progress=sys.stderr.isatty(),
    )
    _print_experiment(result)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (stand-in data + run).")] = Path("facebank-demo"),
    small: Annotated[
        bool, typer.Option("--small", help="60 instead of 200 images per class (about a minute).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (embedding).")] = "auto",
) -> None:
    """Offline demo: a stand-in dataset from photos bundled with matplotlib/scikit-image
    (simulated artifacts, not real AI faces), then `facebank experiment` with efficientnet-lite1."""
    from rich.console import Console
    from rich.markdown import Markdown

    from analysis.experiment import demo_note, run_demo

    Console(stderr=True).print(Markdown(demo_note()))
    result = run_demo(out, small=small, device=device, progress=sys.stderr.isatty())
    _print_experiment(result)
    typer.echo("Reminder: simulated artifacts on a handful of photos, not real AI-generated faces "
               "(see NOTE.md in the run folder and the top of the report).")
# [end section: experiment]


def main() -> None:
    """Console-script entry point (``facebank``)."""
    app()


if __name__ == "__main__":
    main()
