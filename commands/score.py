"""``facebank score``: a trained head's scores, probabilities and verdicts for banks or images."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from facebank.core.options import DEFAULT_SCORE_BATCH_SIZE, DEFAULT_SCORE_PARTITION_ROWS

from ._common import (
    StorageOptionsOption,
    parse_storage_options,
    show_progress,
    split_list,
)


class _Engine(str, Enum):
    local = "local"
    ray = "ray"


class _Format(str, Enum):
    parquet = "parquet"
    csv = "csv"


def score_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Feature banks (NAME.zarr), image files, folders of images, or CSV manifests "
            "(path,label,engine[,split]), local or at fsspec URLs (s3://bucket/photos); "
            "images are embedded with the head's backbone(s), "
            "banks of a head of several backbones are joined by image sha256."
        ),
    ],
    head: Annotated[
        str,
        typer.Option(
            "--head",
            help="Run folder of a trained head (facebank train --out); local or an fsspec URL "
            "such as s3://bucket/runs/linear.",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="CSV to write (path,score,decision,probability,verdict,...); '-' = stdout. "
            "With --engine ray, a name not ending in .csv is a folder (local or URL) of "
            "resumable partitions scores/part-NNNNN.parquet (or .csv, see --format).",
        ),
    ] = "-",
    views: Annotated[
        list[str] | None,
        typer.Option(
            "--views",
            help="Also score each image under these views (comma-separated or repeated, e.g. "
            "jpeg:q=75,resize:256); the verdict is 'unsure' when the views disagree.",
        ),
    ] = None,
    prevalence: Annotated[
        float | None,
        typer.Option(
            "--prevalence",
            help="Base rate of AI images (e.g. 0.01): adds each image's probability at that "
            "rate and the precision of the head's thresholds.",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Backbone weights file, for embedding images offline."),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="auto, cpu, cuda or cuda:N (embedding images); with --engine ray, cpu or "
            "cuda actors.",
        ),
    ] = "auto",
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, help="Images per forward pass when embedding."),
    ] = DEFAULT_SCORE_BATCH_SIZE,
    engine: Annotated[
        _Engine,
        typer.Option(
            "--engine",
            help="local (this machine, the default) or ray (images embedded on a Ray cluster; "
            "needs pip install 'facebank[ray]').",
        ),
    ] = _Engine.local,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster: auto (a running one) or ray://HOST:10001; default: start a "
            "local one.",
        ),
    ] = None,
    format_: Annotated[
        _Format,
        typer.Option("--format", help="With --engine ray and --out DIR: partition file format."),
    ] = _Format.parquet,
    partition_rows: Annotated[
        int,
        typer.Option(
            "--partition-rows",
            min=1,
            help="With --engine ray and --out DIR: images per partition (unit of commit and "
            "resume).",
        ),
    ] = DEFAULT_SCORE_PARTITION_ROWS,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="With --engine ray: encoder actors (default one per GPU of the cluster, else 1).",
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-worker",
            min=0,
            help="With --engine ray: GPUs per encoder actor (default 1 where the cluster has "
            "GPUs, else 0).",
        ),
    ] = None,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Score banks or images: raw score (higher = AI), calibrated probability, decision, verdict.

    Exits 1 when nothing could be scored; with some failures it exits 0 and lists them.
    """
    from facebank.core.options import ScoreOptions
    from facebank.heads import score_run

    options = ScoreOptions(
        views=split_list(views, ()),
        prevalence=prevalence,
        weights=weights,
        device=device,
        batch_size=batch_size,
        progress=show_progress(),
        storage_options=parse_storage_options(storage_options),
        address=address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        fmt=format_.value,
        partition_rows=partition_rows,
    )
    common = {
        "inputs": [str(p) for p in inputs],
        "out": out,
        "views": list(options.views),
        "prevalence": options.prevalence,
        "weights": options.weights,
        "batch_size": options.batch_size,
        "progress": options.progress,
        "measure": _measure_calibration,
    }
    partitioned = out != "-" and not out.lower().endswith(".csv")
    partitions = "it applies to --engine ray with --out DIR (partitioned scores)"
    if engine is _Engine.local:
        ray = "it applies to --engine ray"
        options.refuse(
            {"address": ray, "workers": ray, "gpus_per_worker": ray, "fmt": partitions,
             "partition_rows": partitions},
            engine="local",
        )  # fmt: skip
        res = score_run(head, device=options.device, **common)
    else:
        from facebank.ray_engine.embedding import RayOptions, ray_options_for_device

        if not partitioned:
            options.refuse(
                {"fmt": partitions, "partition_rows": partitions}, engine="ray (--out FILE)"
            )

        ray_options = ray_options_for_device(
            options.device,
            RayOptions(
                address=options.address,
                workers=options.workers,
                gpus_per_worker=options.gpus_per_worker,
            ),
        )
        if partitioned:
            _score_partitioned(head, common, options=options, ray_options=ray_options)
            return
        from facebank.ray_engine.scoring import score_images_ray

        res = score_images_ray(
            head,
            ray_options=ray_options,
            # the session made them fsspec's defaults here; Ray's workers need them passed
            storage_options=options.storage_options,
            **common,
        )
    _report(res.failures, len(res.ignored), res.operating_points, res.calibration)
    counts = res.verdict_counts()
    verdict = ", ".join(f"{counts[v]} {v}" for v in ("ai", "real", "unsure"))
    views_note = f" under {len(res.views)} views" if len(res.views) > 1 else ""
    typer.echo(
        f"scored {res.n_scored}{views_note}: {verdict} (threshold {res.threshold:.4g}, chosen on "
        f"val reals); {len(res.failures)} failed" + ("" if out == "-" else f"; wrote {out}"),
        err=True,
    )
    if res.n_scored == 0:
        typer.echo(
            f"error: nothing could be scored ({len(res.failures)} input(s) failed); "
            "check the failures above",
            err=True,
        )
        raise typer.Exit(1)


def _report(
    failures: list[tuple[str, str]],
    n_ignored: int,
    operating_points: list[dict],
    calibration: dict[str, Any] | None,
) -> None:
    """The lines every engine's ``score`` prints before its verdict line (stderr)."""
    for path, reason in failures:
        typer.echo(f"failed: {path}: {reason}", err=True)
    if n_ignored:
        typer.echo(f"ignored {n_ignored} non-image file(s) under the input folders", err=True)
    for line in _operating_lines(operating_points):
        typer.echo(line, err=True)
    measured = _calibration_line(calibration)
    if measured:
        typer.echo(measured, err=True)


def _measure_calibration(y: Any, probability: Any, prior: float) -> dict[str, Any]:
    """The calibration measures of ``score`` (both engines): NLL, Cllr, Brier, ECE,
    class-balanced ECE, EER and Pd at 0.5 % on the labelled rows, as a dict."""
    from facebank.analysis.calibration_metrics import calibration_metrics

    return calibration_metrics(
        y, probability, prior=prior, source="the head's probability (fitted on its validation rows)"
    ).to_dict()


def _calibration_line(m: dict[str, Any] | None) -> str | None:
    """The measures of :func:`_measure_calibration` in one line (``None``: none measured)."""
    if not m:
        return None
    return (
        f"calibration on the {m['n_real'] + m['n_fake']} labelled rows ({m['n_real']} real, "
        f"{m['n_fake']} AI; the banks' labels): NLL {m['nll']:.3f}, Cllr {m['cllr_bits']:.3f} "
        f"bits, Brier {m['brier']:.3f}, ECE {m['ece']:.3f} and class-balanced ECE "
        f"{m['ece_class_balanced']:.3f} ({m['bins']} bins), EER {m['eer']:.1%}, Pd "
        f"{m['pd_at_false_alarm']:.1%} at false-alarm rate {m['false_alarm']:.1%}"
    )


def _operating_lines(points: list[dict]) -> list[str]:
    """One line per operating point; with --prevalence, what the precisions rest on."""
    lines = []
    for pt in points:
        line = (
            f"threshold at FPR {pt['fpr']:.1%} (val reals): {pt['threshold']:.4g}, "
            f"val TPR {pt['tpr_val']:.1%} (n={pt['n_ai']})"
        )
        if "precision_at_prevalence" in pt:
            line += (
                f", precision {pt['precision_at_prevalence']:.1%} if {pt['prevalence']:.2%} are AI"
            )
        lines.append(line)
    priced = [pt for pt in points if "precision_at_prevalence" in pt]
    if not priced:
        return lines
    n_real = priced[0].get("n_real")
    fprs = ", ".join(f"{pt['fpr']:.1%}" for pt in priced)
    above = ", ".join(str(pt.get("n_real_above", "?")) for pt in priced)
    lines.append(
        f"each precision rests on the target FPR ({fprs}), not a measured one: it is val TPR "
        "x prevalence / (val TPR x prevalence + target FPR x (1 - prevalence)); measured, "
        f"{above} of the {n_real} val reals lie above these thresholds"
    )
    if len({pt["threshold"] for pt in priced}) < len(priced):
        lowest = min(pt["fpr"] for pt in priced)
        lines.append(
            f"thresholds coincide: {n_real} val reals cannot tell these FPRs apart, so the "
            "precisions differ only by the FPR assumed; about "
            f"{round(1 / lowest):,} val reals resolve FPR {lowest:.1%}"
        )
    return lines


def _score_partitioned(head: str, common: dict, *, options: Any, ray_options: Any) -> None:
    """``--engine ray --out DIR``: partitions under DIR, then one summary line."""
    from facebank.ray_engine.scoring import score_partitioned

    res = score_partitioned(
        head,
        common["inputs"],
        out=common["out"],
        fmt=options.fmt,
        partition_rows=options.partition_rows,
        views=common["views"],
        prevalence=common["prevalence"],
        weights=common["weights"],
        batch_size=common["batch_size"],
        progress=common["progress"],
        ray_options=ray_options,
        storage_options=options.storage_options,
        measure=common["measure"],
    )
    _report(res.failures, res.n_ignored, res.operating_points, res.calibration)
    verdict = ", ".join(f"{res.verdicts.get(v, 0)} {v}" for v in ("ai", "real", "unsure"))
    typer.echo(
        f"scored {res.n_scored}: {verdict} (threshold {res.threshold:.4g}, chosen on val "
        f"reals); {len(res.failures)} failed; {len(res.files)} partitions in {res.out} "
        f"({res.written} written now, {res.skipped} committed before)",
        err=True,
    )
    if res.n_scored == 0:
        typer.echo("error: nothing could be scored; check the failures above", err=True)
        raise typer.Exit(1)
