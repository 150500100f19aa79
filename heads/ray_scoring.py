"""Scoring images with a saved head on a Ray cluster (``facebank score ... --engine ray``).

The images are embedded by :func:`embed.ray_engine.encode_images_ray` (decode tasks
-> encoder actors, the model loaded once per actor, GPUs where the cluster has
them); everything else - inputs (banks, files, folders, manifests), views and
verdicts, calibration, operating points, the CSV and the summary - is
:func:`heads.scoring.score_run`'s, so a Ray score equals a local one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facebank.embed.ray_engine import RayOptions, encode_images_ray, import_ray, ray_cluster

from .base import BaseHead
from .scoring import ScoreResult, score_run

__all__ = ["score_images_ray"]


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
) -> ScoreResult:
    """:func:`heads.scoring.score_run` with the images embedded on a Ray cluster.

    Which split chose what: as :func:`~heads.scoring.score_run` (threshold and
    calibration fixed on the head's validation rows; nothing is fitted here).

    Args:
        head_dir: a run folder / head directory (or a fitted head).
        inputs: banks, image files, folders, CSV manifests.
        out, views, prevalence, weights, batch_size, progress: as for ``score_run``.
        ray_options: cluster address, encoder actors, GPUs per actor.

    Raises:
        FacebankError: Ray is not installed, or the cluster cannot be reached.
    """
    opts = ray_options or RayOptions()
    ray = import_ray()
    encode: Any = functools.partial(encode_images_ray, ray_options=opts)
    with ray_cluster(ray, opts.address):
        return score_run(
            head_dir,
            inputs=inputs,
            out=out,
            views=views,
            prevalence=prevalence,
            weights=weights,
            batch_size=batch_size,
            progress=progress,
            encode=encode,
        )
