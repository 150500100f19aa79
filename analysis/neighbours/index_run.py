"""``facebank neighbours index``: build a :class:`NeighbourIndex` over banks into a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .index import DEFAULT_CHUNK_ROWS, NeighbourIndex

__all__ = ["IndexRun", "write_index"]


@dataclass(frozen=True)
class IndexRun:
    """What ``facebank neighbours index`` wrote: the run folder and the index in it."""

    run_dir: Path
    index_file: Path
    ntotal: int
    build_s: float
    files: dict[str, int]


def write_index(
    data: Any,
    *,
    out: str | Path,
    factory: str = "Flat",
    metric: str = "cosine",
    device: str = "auto",
    nprobe: int | None = None,
    k_factor: int | None = None,
    on_disk: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    seed: int = 0,
    progress: bool = False,
) -> IndexRun:
    """Build a :class:`NeighbourIndex` over banks and write it into a run folder.

    ``out/index/index.faiss`` holds the index (``faiss.read_index`` reads it); with
    ``on_disk`` the IVF lists are added partition by partition and merged into
    ``out/index/index.ivfdata`` (``faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)``
    reads it from the folder it is in: the lists stay on disk, memory-mapped).
    ``config.json`` records the options, ``metrics.json`` the rows, the build time and
    the file sizes.
    """
    import time

    from facebank.core.runs import start_run, write_json

    run = start_run(
        out,
        command="neighbours index",
        config={
            "factory": factory,
            "metric": metric,
            "on_disk": bool(on_disk),
            "nprobe": nprobe,
            "k_factor": k_factor,
            "chunk_rows": int(chunk_rows),
            "seed": int(seed),
        },
    )
    folder = run / "index"
    t0 = time.perf_counter()
    index = NeighbourIndex(
        data,
        factory=factory,
        metric=metric,
        device="cpu" if on_disk and device == "auto" else device,
        nprobe=nprobe,
        k_factor=k_factor,
        chunk_rows=chunk_rows,
        seed=seed,
        on_disk=folder if on_disk else None,
        progress=progress,
    )
    path = index.save(folder)
    build_s = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    write_json(
        run / "metrics.json",
        {
            "ntotal": index.ntotal,
            "dim": index.dim,
            "factory": index.factory,
            "metric": index.metric,
            "on_disk": bool(on_disk),
            "banks": index._source.bank_paths,
            "build_s": round(build_s, 3),
            "files": files,
        },
    )
    return IndexRun(run_dir=run, index_file=path, ntotal=index.ntotal, build_s=build_s, files=files)
