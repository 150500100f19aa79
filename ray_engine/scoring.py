"""Scoring images with a saved head on a Ray cluster (``facebank score ... --engine ray``).

The images are embedded by :func:`embed.ray_engine.encode_images_ray` (decode tasks
-> encoder actors, the models loaded once per actor, GPUs where the cluster has
them); everything else - inputs (banks, files, folders, manifests), views and
verdicts, calibration, operating points, the columns and the summary - is
:func:`heads.scoring.score_run`'s, so a Ray score equals a local one.

Every head the local engine scores, the Ray engine scores: a head of one backbone, a
``fusion`` head over per-backbone heads and a head on several banks' features joined
side by side (each image read and decoded once by a decode task, each member's own
transform applied to it, every member backbone loaded once per encoder actor and
their features put side by side in the member order), and a head on a range of
``--layer blocks`` taps (every block tapped, the range kept). The backbones are
built as the local engine builds them (:func:`embed.multi.member_backbones`): the
same weights resolution, the same one-line errors (a member missing offline,
``--weights`` for several backbones), on the driver before any image is embedded.

``storage_options`` reach the store everywhere a run touches it: the decode tasks
(images at URLs), and on the driver the inputs, the head and ``out``.

Two outputs:

- :func:`score_images_ray`: one CSV (or stdout), exactly as ``score_run`` writes it.
- :func:`score_partitioned`: a folder (local or an fsspec URL) of independently
  committed partitions, for millions of images::

      OUT/score.json                        what was scored (checked on resume)
      OUT/scores/part-00000.parquet         rows of partition 0 (or .csv)
      OUT/scores/_committed/part-00000.json commit marker: rows, verdicts, failures
      OUT/summary.json                      the run's counts, threshold, operating
                                            points, calibration measures

  Partition ``k`` is the ``k``-th slice of ``partition_rows`` images in input order
  (each input bank is a partition of its own, first). A partition's file is written
  whole (temp file + rename on a local disk, one PUT on an object store), then its
  marker - one small object - commits it, as the bank's partitions are committed
  (:mod:`embed.partitions`). A reader (and a resumed run) follows markers only: a
  file without a marker (a run killed mid-partition) is rewritten, never read. The
  same command on the same ``OUT`` skips committed partitions; ``OUT`` holding a
  different scoring (another head, other inputs, views or partition size) is refused.
  All images left are embedded by one Ray pipeline (the encoder actors start once per
  run), cut into partitions on the driver; with extra ``views`` each partition and
  view runs its own pipeline.
  Columns are ``score_run``'s CSV columns, typed in parquet (``path``, ``verdict``:
  string; ``score``, ``probability``...: float64, empty = null; ``decision``: int64).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facebank.core.errors import DataError, TestOnlyBackboneWarning
from facebank.core.options import DEFAULT_SCORE_PARTITION_ROWS
from facebank.core.stores import Location, store_defaults
from facebank.embed import FeatureBank
from facebank.embed.inputs.views import parse_view
from facebank.embed.runner.writer import EncodedImages
from facebank.heads.base import BaseHead
from facebank.heads.persistence import load_head
from facebank.heads.scoring import (
    VERDICTS,
    CalibrationMeasure,
    ScoreResult,
    collect_inputs,
    measure_calibration,
    score_run,
    warn_if_test_only,
)
from facebank.ray_engine.embedding import (
    RayOptions,
    encode_images_ray,
    import_ray,
    iter_encoded_ray,
    ray_cluster,
)

__all__ = [
    "SCORE_FORMATS",
    "DEFAULT_SCORE_PARTITION_ROWS",
    "PartitionedScores",
    "score_images_ray",
    "score_partitioned",
    "read_scores",
]

SCORE_FORMATS = ("parquet", "csv")
_CONFIG = "score.json"
_SUMMARY = "summary.json"
_PARTS = "scores"
_MARKERS = f"{_PARTS}/_committed"


def score_images_ray(
    head_dir: str | Path | BaseHead,
    inputs: Sequence[str | os.PathLike],
    *,
    out: str | Path = "-",
    views: Sequence[str] | None = None,
    prevalence: float | None = None,
    weights: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    ray_options: RayOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
    measure: CalibrationMeasure | None = None,
) -> ScoreResult:
    """:func:`heads.scoring.score_run` with the images embedded on a Ray cluster.

    Which split chose what: as :func:`~heads.scoring.score_run` (threshold and
    calibration fixed on the head's validation rows; nothing is fitted here).

    Args:
        head_dir: a run folder / head directory (or a fitted head); any kind of head
            (module docstring).
        inputs: banks, image files, folders, CSV manifests.
        out, views, prevalence, weights, batch_size, progress, measure: as for
            ``score_run``.
        ray_options: cluster address, encoder actors, GPUs per actor.
        storage_options: fsspec options for inputs and a head at URLs; passed to the
            decode tasks too (never recorded).

    Raises:
        FacebankError: Ray is not installed, or the cluster cannot be reached; a
            member backbone that cannot be built (the local engine's message).
    """
    opts = ray_options or RayOptions()
    ray = import_ray()
    encode: Any = functools.partial(
        encode_images_ray, ray_options=opts, storage_options=storage_options
    )
    with ray_cluster(ray, opts.address), store_defaults(storage_options, _urls(head_dir, inputs)):
        head = head_dir if isinstance(head_dir, BaseHead) else load_head(head_dir)
        spec = getattr(head, "backbone_", None)
        if spec and _only_original(views):
            # score_run asks for the images in blocks (of 256 with a progress bar): one
            # pipeline serves them all, so the encoder actors start once, not per block
            files = [str(f) for f in collect_inputs(inputs).images]
            if files:
                encode = _Stream(
                    iter_encoded_ray(
                        files, backbone=spec, weights=weights, batch_size=batch_size,
                        ray_options=opts, storage_options=storage_options,
                    ),
                    files,
                )  # fmt: skip
        try:
            return score_run(
                head,
                inputs=inputs,
                out=out,
                views=views,
                prevalence=prevalence,
                weights=weights,
                batch_size=batch_size,
                progress=progress,
                encode=encode,
                measure=measure,
            )
        finally:
            if isinstance(encode, _Stream):
                encode.close()  # inside the cluster (see _Stream.close)


@dataclass
class PartitionedScores:
    """What :func:`score_partitioned` holds in ``out`` after the run.

    Attributes:
        out: the folder (local path or URL without credentials).
        files: every committed partition file, relative to ``out``, in partition order.
        written: partitions this run wrote. skipped: partitions committed before it.
        n_scored: rows over all committed partitions. verdicts: their counts.
        failures: ``(path, reason)`` of inputs that could not be scored.
        n_ignored: non-image files under the input folders.
        threshold: the head's threshold (chosen on validation reals).
        operating_points: the head's thresholds at 0.1/0.5/1% FPR (validation reals).
        warnings: calibration caveats, one line each.
        probability_prior: the AI share the probabilities are calibrated at (the head's
            validation split), or ``None``.
        calibration: calibration measures on the committed rows whose label is known
            (``score_partitioned``'s ``measure``), or ``None``.
    """

    out: str
    files: list[str]
    written: int
    skipped: int
    n_scored: int
    verdicts: dict[str, int]
    failures: list[tuple[str, str]]
    n_ignored: int
    threshold: float
    operating_points: list[dict[str, Any]]
    prevalence: float | None = None
    warnings: list[str] = field(default_factory=list)
    probability_prior: float | None = None
    calibration: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The run's figures, as written to ``OUT/summary.json``."""
        return {
            "out": self.out,
            "files": self.files,
            "n_scored": self.n_scored,
            "n_failed": len(self.failures),
            "verdicts": self.verdicts,
            "threshold": self.threshold,
            "threshold_source": "the head's, chosen on validation reals",
            "operating_points": self.operating_points,
            "prevalence": self.prevalence,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "n_ignored": self.n_ignored,
            "warnings": self.warnings,
            "calibration": self.calibration,
        }


def _urls(head_dir: Any, inputs: Sequence[Any]) -> list[str]:
    return [str(x) for x in [head_dir, *inputs] if isinstance(x, str | os.PathLike)]


def _only_original(views: Sequence[str] | None) -> bool:
    """No view but ``original``: then one Ray pipeline can serve every image of a run."""
    return {parse_view(v).name for v in views or []} <= {"original"}


def _plan(inputs: Sequence[str | os.PathLike], rows: int) -> tuple[list[tuple[str, Any]], int]:
    found = collect_inputs(inputs)
    plan: list[tuple[str, Any]] = [("bank", b) for b in found.banks]
    imgs = found.images
    plan += [("images", imgs[a : a + rows]) for a in range(0, len(imgs), rows)]
    return plan, len(found.ignored)


def _digest(head: BaseHead, plan: list[tuple[str, Any]], what: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dict(what), sort_keys=True, default=str).encode())
    h.update(str(getattr(head, "path_", "")).encode())
    h.update(repr(float(head.threshold_)).encode())
    for kind, part in plan:
        h.update(kind.encode())
        for p in [part] if kind == "bank" else part:
            h.update(b"\0" + str(p).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _part_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{fmt}"


def _table_bytes(csv_file: Path, fmt: str) -> bytes:
    """``score_run``'s CSV as the partition file: the same bytes, or typed parquet."""
    if fmt == "csv":
        return csv_file.read_bytes()
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    header = csv_file.read_text().splitlines()[0].split(",")
    types: dict[str, Any] = {}
    for col in header:
        if col in ("path", "verdict"):
            types[col] = pa.string()
        elif col == "decision" or col.startswith("decision["):
            types[col] = pa.int64()
        else:
            types[col] = pa.float64()
    table = pacsv.read_csv(csv_file, convert_options=pacsv.ConvertOptions(column_types=types))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def score_partitioned(
    head_dir: str | Path | BaseHead,
    inputs: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    fmt: str = "parquet",
    partition_rows: int = DEFAULT_SCORE_PARTITION_ROWS,
    views: Sequence[str] | None = None,
    prevalence: float | None = None,
    weights: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    ray_options: RayOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
    encode: Callable[..., Any] | None = None,
    measure: CalibrationMeasure | None = None,
) -> PartitionedScores:
    """Score inputs into the partitioned folder ``out`` (module docstring); resumable.

    Which split chose what: as :func:`~heads.scoring.score_run` (threshold and
    calibration fixed on the head's validation rows; nothing is fitted here).

    Args:
        head_dir: a run folder / head directory (local or a URL), or a fitted head.
        inputs: banks, image files, folders, CSV manifests.
        out: the output folder, local or an fsspec URL (``s3://bucket/scores``).
        fmt: ``"parquet"`` (default) or ``"csv"``.
        partition_rows: images per partition (the unit of commit and of resume).
        views, prevalence, weights, batch_size, progress: as for ``score_run``.
        ray_options: cluster address, encoder actors, GPUs per actor.
        storage_options: fsspec options for ``out``, inputs and a head at URLs, passed to
            the decode tasks too (never recorded).
        encode: the embedding function; default :func:`encode_images_ray` on the cluster
            (``embed.encode_images`` scores the same partitions on this machine).
        measure: measures the calibrated probability on the committed rows whose label
            is known (the input banks' rows), as ``score_run``'s ``measure`` does for one
            CSV (:func:`~heads.scoring.measure_calibration`); ``None``: not measured.

    Returns:
        :class:`PartitionedScores` over every committed partition (this run's and earlier).

    Raises:
        DataError: bad format or partition size, or ``out`` holds another scoring.
        FacebankError: Ray missing or its cluster unreachable; an unreachable store.
    """
    if fmt not in SCORE_FORMATS:
        raise DataError(f"--format {fmt!r} is not valid; use one of {list(SCORE_FORMATS)}")
    if partition_rows < 1:
        raise DataError(f"--partition-rows {partition_rows!r} is not valid; give 1 or more")
    ray = import_ray() if encode is None else None  # (missing Ray: one line, before any work)
    loc = Location(out, storage_options=storage_options)
    loc.check_reachable()  # one line before any work
    head = (
        head_dir
        if isinstance(head_dir, BaseHead)
        else load_head(head_dir, storage_options=storage_options)
    )
    warn_if_test_only(head, stacklevel=2)  # once, before any work (and when resuming)
    urls = _urls(head_dir, inputs)
    with store_defaults(storage_options, urls):
        plan, n_ignored = _plan(inputs, partition_rows)
    what = {
        "views": list(views or []),
        "prevalence": prevalence,
        "format": fmt,
        "partition_rows": partition_rows,
    }
    config = {"head": getattr(head, "path_", None), **what, "partitions": len(plan)}
    config["digest"] = _digest(head, plan, what)
    fresh = _check_resumable(loc, str(config["digest"]))
    markers = set() if fresh else set(loc.list(_MARKERS))
    todo = [k for k in range(len(plan)) if f"{_part_name(k, fmt)}.json" not in markers]
    one_pipeline = _only_original(views)
    files = [str(f) for k in todo if plan[k][0] == "images" for f in plan[k][1]]
    spec = getattr(head, "backbone_", None)
    stream: Iterator[Any] = iter(())
    if encode is None and one_pipeline and files and spec:
        # the backbones are built here: one that cannot be loaded stops the run before
        # anything is written to out (the pipeline itself starts inside the cluster)
        stream = iter_encoded_ray(
            files, backbone=spec, weights=weights, batch_size=batch_size,
            ray_options=ray_options or RayOptions(), storage_options=storage_options,
        )  # fmt: skip
    if fresh:
        loc.write_json(_CONFIG, config)

    def run_all(enc: Callable[..., Any]) -> None:
        for k in todo:
            _score_partition(
                loc, head, plan[k], k, fmt=fmt, encode=enc,
                views=views, prevalence=prevalence, weights=weights,
                batch_size=batch_size, progress=progress,
            )  # fmt: skip

    if encode is not None:
        with store_defaults(storage_options, urls):
            run_all(encode)
    elif todo:
        opts = ray_options or RayOptions()
        with (
            ray_cluster(ray, opts.address),
            store_defaults(storage_options, urls),
        ):
            if one_pipeline:  # one pipeline over every image left: the actors start once
                served = _Stream(stream, files)
                try:
                    run_all(served)
                finally:
                    served.close()  # inside the cluster (see _Stream.close)
            else:  # one pipeline per partition and view
                run_all(
                    functools.partial(
                        encode_images_ray, ray_options=opts, storage_options=storage_options
                    )
                )
    with store_defaults(storage_options, urls):  # (input banks at URLs: their labels)
        result = _gather(loc, fmt, plan, n_ignored, prevalence, measure)
    result.written, result.skipped = len(todo), len(plan) - len(todo)
    loc.write_json(_SUMMARY, result.summary())
    return result


def _check_resumable(loc: Location, digest: str) -> bool:
    """True for a fresh ``out``; an ``out`` holding this scoring resumes; else ``DataError``."""
    fresh = not loc.is_file(_CONFIG)
    if not fresh:
        before = loc.read_json(_CONFIG)
        if before.get("digest") != digest:
            raise DataError(
                f"--out {loc.url!r} holds scores of another run (other head, inputs, views, "
                "format or partition size); give a new --out, or the same arguments to resume"
            )
    elif loc.list():
        raise DataError(
            f"--out {loc.url!r} is not empty and holds no scores ({_CONFIG} missing); give a "
            "new or empty folder"
        )
    return fresh


def _score_partition(
    loc: Location,
    head: Any,
    planned: tuple[str, Any],
    k: int,
    *,
    fmt: str,
    encode: Callable[..., Any],
    views: Sequence[str] | None,
    prevalence: float | None,
    weights: str | Path | None,
    batch_size: int,
    progress: bool,
) -> None:
    """Score partition ``k`` with ``score_run``, write its table, then its commit marker."""
    kind, part = planned
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # score_partitioned said it once for the whole run
        warnings.simplefilter("ignore", TestOnlyBackboneWarning)
        csv_file = Path(tmp) / "part.csv"
        res = score_run(
            head,
            inputs=[part] if kind == "bank" else None,
            images=part if kind == "images" else None,
            out=csv_file,
            views=views,
            prevalence=prevalence,
            weights=weights,
            batch_size=batch_size,
            progress=progress,
            encode=encode,
        )
        name = _part_name(k, fmt)
        loc.write_bytes(f"{_PARTS}/{name}", _table_bytes(csv_file, fmt))
    loc.write_json(  # the commit
        f"{_MARKERS}/{name}.json",
        {
            "index": k,
            "file": f"{_PARTS}/{name}",
            "rows": res.n_scored,
            "verdicts": res.verdict_counts(),
            "failures": [{"path": p, "reason": r} for p, r in res.failures],
            "threshold": res.threshold,
            "operating_points": res.operating_points,
            "probability_prior": res.probability_prior,
            "warnings": res.warnings,
        },
    )


class _Stream:
    """``score_run``'s ``encode``, served in order from one running pipeline.

    ``score_run`` asks for each partition's images (or each progress block's) in turn;
    the answer is cut from :func:`~embed.ray_engine.iter_encoded_ray` over all of them,
    so the encoder actors start once per run instead of once per partition or block.
    """

    def __init__(self, batches: Iterator[tuple[list[int], EncodedImages]], files: list[str]):
        self.batches = batches
        self.files = files
        self.pos = 0
        self.held: dict[int, tuple[str, Any, str] | tuple[str, str]] = {}

    def close(self) -> None:
        """Stop the pipeline now, while the cluster is up: a generator left to the
        garbage collector runs its cleanup after ``ray.shutdown()`` and prints a "Ray is
        not initialized" traceback on a run that succeeded."""
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()

    def __call__(self, part: Sequence[str], *, view: str, **_: Any) -> EncodedImages:
        n = len(part)
        want = self.files[self.pos : self.pos + n]
        if view != "original" or [str(p) for p in part] != want:
            raise RuntimeError("scoring asked for images out of order")  # a bug
        while any(i not in self.held for i in range(self.pos, self.pos + n)):
            positions, enc = next(self.batches)
            by_path = {p: j for j, p in enumerate(enc.paths)}
            failed = dict(enc.failures)
            for i in positions:
                f = self.files[i]
                if f in failed:
                    self.held[i] = (f, failed[f])
                else:
                    j = by_path[f]
                    self.held[i] = (f, enc.features[j], enc.sha256[j])
        rows = [self.held.pop(i) for i in range(self.pos, self.pos + n)]
        self.pos += n
        ok = [r for r in rows if len(r) == 3]
        dim = next((len(r[1]) for r in ok), 0)
        return EncodedImages(
            features=np.stack([r[1] for r in ok]) if ok else np.zeros((0, dim), np.float32),
            paths=[r[0] for r in ok],
            failures=[(r[0], r[1]) for r in rows if len(r) == 2],
            sha256=[r[2] for r in ok],
        )


def _gather(
    loc: Location,
    fmt: str,
    plan: list[tuple[str, Any]],
    n_ignored: int,
    prevalence: float | None,
    measure: CalibrationMeasure | None,
) -> PartitionedScores:
    """The committed partitions' figures, and ``measure`` on their labelled rows."""
    files: list[str] = []
    counts = dict.fromkeys(VERDICTS, 0)
    failures: list[tuple[str, str]] = []
    threshold, points, notes = float("nan"), [], []
    prior = None
    n = 0
    docs = [_marker(loc, k, fmt) for k in range(len(plan))]
    for doc in docs:
        if doc is None:
            continue
        files.append(doc["file"])
        n += int(doc["rows"])
        for v, c in doc["verdicts"].items():
            counts[v] = counts.get(v, 0) + int(c)
        failures += [(f["path"], f["reason"]) for f in doc["failures"]]
        threshold, points = float(doc["threshold"]), doc["operating_points"]
        prior = doc.get("probability_prior")
        notes += [w for w in doc.get("warnings", []) if w not in notes]
    return PartitionedScores(
        out=loc.url,
        files=files,
        written=0,
        skipped=0,
        n_scored=n,
        verdicts=counts,
        failures=failures,
        n_ignored=n_ignored,
        threshold=threshold,
        operating_points=points,
        prevalence=prevalence,
        warnings=notes,
        probability_prior=prior,
        calibration=_measure(loc, plan, docs, fmt, prior, measure),
    )


def _marker(loc: Location, k: int, fmt: str) -> dict[str, Any] | None:
    """Partition ``k``'s commit marker, or ``None`` where it is not committed."""
    try:
        return loc.read_json(f"{_MARKERS}/{_part_name(k, fmt)}.json")
    except FileNotFoundError:
        return None


def _read_part(loc: Location, file: str, fmt: str, columns: list[str] | None = None) -> Any:
    """One committed partition file as a ``pyarrow.Table`` (``columns``: only those)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = io.BytesIO(loc.read_bytes(file))
    if fmt == "parquet":
        return pq.read_table(data, columns=columns)
    return pacsv.read_csv(data, convert_options=pacsv.ConvertOptions(include_columns=columns))


def _measure(
    loc: Location,
    plan: list[tuple[str, Any]],
    docs: list[dict[str, Any] | None],
    fmt: str,
    prior: float | None,
    measure: CalibrationMeasure | None,
) -> dict[str, Any] | None:
    """``measure`` on every committed row whose label is known, as ``score_run`` does.

    Only an input bank's rows carry labels (its label column; a scored image has none,
    as in ``score_run``), and each bank is a partition of its own: its labels are read
    from the bank, its probabilities from its committed partition file, in the same
    row order. ``docs``: each partition's commit marker (``None``: not committed).
    """
    if measure is None or prior is None:
        return None
    labels, proba = [], []
    for (kind, bank), doc in zip(plan, docs, strict=True):
        if kind != "bank" or doc is None:
            continue
        y = np.asarray(FeatureBank.open(bank).labels, dtype=np.int64)
        p = _read_part(loc, doc["file"], fmt, ["probability"])["probability"]
        if len(y) != len(p):
            raise DataError(
                f"bank {str(bank)!r} holds {len(y)} rows but its committed scores "
                f"{doc['file']!r} {len(p)}: the bank changed after it was scored; give a new --out"
            )
        labels.append(y)
        proba.append(p.to_numpy(zero_copy_only=False).astype(np.float64))
    if not labels:
        return None
    return measure_calibration(measure, np.concatenate(labels), np.concatenate(proba), prior=prior)


def read_scores(out: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Every committed partition of a :func:`score_partitioned` folder as one
    ``pyarrow.Table`` (partition order = input order); uncommitted files are not read."""
    import pyarrow as pa

    loc = Location(out, storage_options=storage_options)
    config = loc.read_json(_CONFIG)
    fmt = config["format"]
    docs = [_marker(loc, k, fmt) for k in range(int(config["partitions"]))]
    tables = [_read_part(loc, doc["file"], fmt) for doc in docs if doc is not None]
    return pa.concat_tables(tables) if tables else pa.table({})
