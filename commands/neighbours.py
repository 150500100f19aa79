"""``facebank neighbours ...``: FAISS nearest-neighbour analysis of banks."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import OUT_HELP, Metric, default_out, show_progress

app = typer.Typer(help="FAISS nearest-neighbour analysis of banks.", no_args_is_help=True)


class _MapMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


_NbBanks = Annotated[
    list[Path], typer.Argument(help="Feature bank(s) (NAME.zarr) of one backbone; rows are pooled.")
]
_NbK = Annotated[
    int, typer.Option("-k", "--k", help="Neighbours per image (the image itself excluded).")
]
_NbFactory = Annotated[
    str,
    typer.Option(help="FAISS index factory string: 'Flat' (exact), 'IVF1024,Flat', 'HNSW32'..."),
]
_NbDevice = Annotated[
    str, typer.Option(help="FAISS device: auto (GPU when faiss-gpu sees one), cpu, cuda, cuda:N.")
]
_NbNprobe = Annotated[int | None, typer.Option(help="IVF runtime knob: lists visited per query.")]
_NbKFactor = Annotated[
    int | None,
    typer.Option(
        "--k-factor",
        help="Refine runtime knob (...,RFlat / ...,Refine(SQ8)): candidates re-ranked per "
        "neighbour.",
    ),
]
_NbIndex = Annotated[
    Path | None,
    typer.Option(
        "--index",
        help="Search an index written by `facebank neighbours index` over these banks "
        "(its factory and metric; --factory and --metric are then not used).",
    ),
]
_NbEf = Annotated[
    int | None, typer.Option("--ef-search", help="HNSW runtime knob: search beam width.")
]


@app.command("clusters")
def neighbours_clusters(
    banks: _NbBanks,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
    k: _NbK = 10,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for the purity intervals.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds bootstrap, subsamples and k-means.")] = 0,
    clusters: Annotated[
        int | None, typer.Option(help="k-means clusters (default: the number of engines).")
    ] = None,
    silhouette_max: Annotated[
        int, typer.Option(help="Silhouette on a seeded subsample of this many rows above it.")
    ] = 5000,
    factory: _NbFactory = "Flat",
    metric: Annotated[Metric, typer.Option(help="Neighbour metric.")] = Metric.cosine,
    device: _NbDevice = "auto",
    nprobe: _NbNprobe = None,
    ef_search: _NbEf = None,
    k_factor: _NbKFactor = None,
    index: _NbIndex = None,
) -> None:
    """Do engines cluster? kNN purity per engine, neighbour-engine confusion, silhouette,
    k-means NMI/ARI."""
    from facebank.analysis.neighbours import engine_clusters

    result = engine_clusters(
        _open_index(index, banks, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor),
        k=k,
        n_boot=n_boot,
        seed=seed,
        n_clusters=clusters,
        silhouette_max=silhouette_max,
        factory=factory,
        metric=metric.value,
        device=device,
        nprobe=nprobe,
        ef_search=ef_search,
        k_factor=k_factor,
        out=default_out("neighbours-clusters", out),
        progress=show_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(f"wrote {result.run_dir}")


def _open_index(folder: Path | None, banks: list[Path], **knobs: Any) -> Any:
    """The banks, or the index written in ``folder`` over them (``--index``)."""
    if folder is None:
        return [str(b) for b in banks]
    from facebank.analysis.neighbours import NeighbourIndex

    return NeighbourIndex.open(folder, [str(b) for b in banks], progress=show_progress(), **knobs)


@app.command("index")
def neighbours_index(
    banks: _NbBanks,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
    factory: _NbFactory = "Flat",
    metric: Annotated[Metric, typer.Option(help="Neighbour metric.")] = Metric.cosine,
    device: _NbDevice = "auto",
    nprobe: _NbNprobe = None,
    k_factor: _NbKFactor = None,
    on_disk: Annotated[
        bool,
        typer.Option(
            "--on-disk",
            help="IVF indexes: add rows partition by partition and keep the inverted lists "
            "in index/index.ivfdata (FAISS OnDiskInvertedLists, memory-mapped when read).",
        ),
    ] = False,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows read (and, with --on-disk, added) at a time.")
    ] = 65536,
    seed: Annotated[int, typer.Option(help="Seeds the training sample and k-means.")] = 0,
) -> None:
    """Build a FAISS index over the banks and write it (index/index.faiss)."""
    from facebank.analysis.neighbours import write_index

    made = write_index(
        [str(b) for b in banks],
        out=default_out("neighbours-index", out),
        factory=factory,
        metric=metric.value,
        device=device,
        nprobe=nprobe,
        k_factor=k_factor,
        on_disk=on_disk,
        chunk_rows=chunk_rows,
        seed=seed,
        progress=show_progress(),
    )
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in made.files.items())
    typer.echo(f"{made.ntotal} rows, {factory}, built in {made.build_s:.1f} s: {sizes}")
    typer.echo(f"wrote {made.index_file}")


@app.command("query")
def neighbours_query(
    bank: Annotated[
        list[Path], typer.Option("--bank", help="Bank(s) to search (repeat for several).")
    ],
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Query images: files, folders of images or CSV manifests, local, file:// "
            "or at fsspec URLs (embedded with the bank's backbone)."
        ),
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="Query banked rows instead of images, e.g. '3,17'.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query.")] = 8,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
    factory: _NbFactory = "Flat",
    metric: Annotated[Metric, typer.Option(help="Neighbour metric.")] = Metric.cosine,
    device: _NbDevice = "auto",
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file, when the query images need one.")
    ] = None,
) -> None:
    """Forensics: each query's nearest banked images (table, neighbours.csv, grid.png)."""
    from rich.console import Console

    from facebank.analysis.neighbours import NeighbourIndex, write_query
    from facebank.core.errors import DataError
    from facebank.embed.inputs.datasets import encode_path, list_images

    if bool(images) == bool(rows):
        raise DataError("give query IMAGE files or --rows 3,17 (exactly one of the two)")
    index = NeighbourIndex(
        [str(b) for b in bank],
        factory=factory,
        metric=metric.value,
        device=device,
        progress=show_progress(),
    )
    if rows:
        try:
            wanted = [int(r) for r in rows.replace(" ", "").split(",") if r]
        except ValueError:
            raise DataError(
                f"--rows {rows!r} is not a list of row numbers; use e.g. --rows 3,17"
            ) from None
        records = index.query_rows(wanted, k)
    else:
        found = list_images(images or [], banks=False)
        failures: list[tuple[str, str]] = []
        records = index.query(
            found.images,
            k,
            device=device,
            weights=str(weights) if weights else None,
            failures=failures,
        )
        for name, reason in failures:
            typer.echo(f"failed: {name}: {reason}", err=True)
        if not records:
            typer.echo(
                f"error: none of the {len(found.images)} query image(s) could be read (each "
                "failure is listed above); nothing was written",
                err=True,
            )
            raise typer.Exit(1)
    run = write_query(
        records,
        out=default_out("neighbours-query", out),
        config={
            "banks": [str(b) for b in bank],
            "k": k,
            "factory": factory,
            "metric": metric.value,
            "rows": rows,
            "images": [encode_path(p) for p in images or []],
        },
    )
    console = Console()
    for recs in records:
        console.print(_neighbour_table(recs, width=console.width, cosine=metric == Metric.cosine))
    typer.echo(f"wrote {run}")


def _left_cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` from the left, so a path keeps its file name."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


_LABELS = {1: "AI", 0: "real", -1: "?"}


def _neighbour_table(recs: list, *, width: int, cosine: bool) -> Any:
    """One query's neighbours as a rich table that fits ``width`` columns without wrapping
    a word: every cell stays on one line, and paths are cut from the left to the room left.
    A neighbour that is the query itself is marked ``*`` beside its rank, explained below."""
    from rich.markup import escape
    from rich.table import Table

    first = recs[0] if recs else None
    # names are printed as written (a name holding "[b]" is not rich markup)
    title = "query" if first is None else escape(_left_cut(f"query: {first.query}", width))
    reasons = sorted({r.self_match for r in recs if r.self_match})
    caption = (
        "* the query itself (" + ", ".join(reasons) + ")" if reasons else None
    )  # words wrap at spaces, never inside one
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    cols: dict[str, list[str]] = {
        "#": [f"{r.rank}*" if r.self_match else str(r.rank) for r in recs],
        "similarity" if cosine else "sq. dist": [
            f"{r.similarity if r.similarity is not None else r.distance:.4f}" for r in recs
        ],
        "engine": [r.engine or "-" for r in recs],
        "label": [_LABELS.get(r.label, str(r.label)) for r in recs],
        "split": [r.split or "-" for r in recs],
    }
    if len({r.bank for r in recs}) > 1:
        cols["bank"] = [r.bank for r in recs]
    used = sum(max(len(name), *(len(v) for v in vals)) for name, vals in cols.items())
    # each column pads one space a side and draws one border; one more closes the row
    room = max(12, width - used - 3 * (len(cols) + 1) - 1)
    cols["path"] = [escape(_left_cut(r.path, room)) for r in recs]
    for name in cols:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for i in range(len(recs)):
        table.add_row(*(cols[name][i] for name in cols))
    return table


@app.command("leaks")
def neighbours_leaks(
    banks: _NbBanks,
    threshold: Annotated[
        float,
        typer.Option(help="Cosine similarity at or above which two images are near-duplicates."),
    ] = 0.95,
    k: _NbK = 10,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Training run folder: check the splits its splits.csv lists (matched by "
            "sha256) instead of the banks' own split column.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
    factory: _NbFactory = "Flat",
    device: _NbDevice = "auto",
    nprobe: _NbNprobe = None,
    k_factor: _NbKFactor = None,
    index: _NbIndex = None,
) -> int:
    """Near-duplicates (cosine) and exact duplicates (sha256) across splits and banks.

    Exit code 2 when a train/test pair is found, so it can gate an experiment. Without
    split information (no split column, no --run) it says that no split pair was checked.
    """
    from facebank.analysis.neighbours import find_leaks

    result = find_leaks(
        _open_index(index, banks, nprobe=nprobe, k_factor=k_factor),
        threshold=threshold,
        k=k,
        splits=run,
        factory=factory,
        device=device,
        nprobe=nprobe,
        k_factor=k_factor,
        out=default_out("neighbours-leaks", out),
        progress=show_progress(),
    )
    typer.echo(result.markdown())
    typer.echo(_leaks_summary(result))
    if not result.split_checked:
        typer.echo(f"warning: {result.split_note}", err=True)
    if result.groups:
        typer.echo(f"{len(result.groups)} group(s) lie in more than one split", err=True)
    if result.has_train_test_leak:
        typer.echo(
            f"leak: {result.train_test} train/test pair(s) at cosine >= {threshold} or same sha256",
            err=True,
        )
        return 2
    return 0


def _leaks_summary(result: Any) -> str:
    """The last line of ``leaks``: what was compared, what was found, what was written."""
    wrote = f"wrote {result.run_dir / 'pairs.csv'}"
    n = len(result.pairs)
    if result.split_checked:
        return f"{n} pairs across splits or banks ({result.train_test} train/test); {wrote}"
    if len(result.banks) < 2:
        return (
            f"nothing checked: {result.n_rows} rows of one bank with no split, so no two "
            f"sides to compare (pass --run RUN_DIR or a second bank); {wrote} (empty)"
        )
    return f"{n} pairs across {len(result.banks)} banks (splits not checked); {wrote}"


@app.command("map")
def neighbours_map(
    banks: _NbBanks,
    method: Annotated[
        list[_MapMethod] | None,
        typer.Option(help="Projection(s); repeat for several (default: both)."),
    ] = None,
    max_points: Annotated[
        int, typer.Option(help="Above this many rows, draw a seeded random subsample.")
    ] = 5000,
    seed: Annotated[int, typer.Option(help="Seeds the subsample, PCA and t-SNE.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=OUT_HELP)] = None,
) -> None:
    """2-D PCA / t-SNE scatter of the banks, coloured by engine (map_<method>.png)."""
    from facebank.analysis.neighbours import write_maps

    methods = [m.value for m in method] if method else ["pca", "tsne"]
    run, maps = write_maps(
        [str(b) for b in banks],
        out=default_out("neighbours-map", out),
        methods=methods,
        max_points=max_points,
        seed=seed,
    )
    for m in maps:
        shown = (
            f"{len(m.rows)} of {m.n_total} rows (seed {m.seed})"
            if m.subsampled
            else f"{m.n_total} rows"
        )
        typer.echo(f"{m.method}: {shown} -> {run / f'map_{m.method}.png'}")
