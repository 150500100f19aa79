"""Explanations: what in an image (or in a feature vector) drives a head's score.

Two attributions:

- **Pixel attribution**, ``explain_images``: integrated gradients (Captum's
  ``IntegratedGradients``) of the head's score through the frozen backbone and the
  head, on the image as the backbone sees it (its own preprocessing: resize, crop,
  normalisation). IG integrates the gradient along the straight path from a *baseline*
  image to the input; its attributions sum to ``score(input) - score(baseline)`` up
  to the *convergence delta* Captum reports (the error of the Riemann sum; more
  ``n_steps`` makes it smaller). Two baselines:

  - ``black``: an all-black image (the usual IG baseline: "nothing there").
  - ``blur``: the same image under a Gaussian blur (radius ``blur_radius`` pixels of
    the backbone's input): keeps colour and layout, removes high frequencies; the
    attribution then shows which *details* (texture, edges, generator artefacts)
    move the score, rather than which regions are bright.

  The heatmap is the per-pixel sum of the attributions over the colour channels,
  ``|.|``, scaled to its 99th percentile, drawn over the image and saved as PNG.
- **Feature attribution**, ``explain_features``: the head alone, on stored features of
  any bank row: ``(x - baseline) * gradient`` integrated along the path (exact for the
  ``linear`` head: ``w * (x - baseline)``), with the baseline the **mean real feature**
  (rows labelled 0 of the given bank, or a mean given). Cheap: no backbone, no image.

Heads that are differentiable functions of the features: ``linear``, ``mlp``,
``wide-mlp``, ``prototype`` (its posterior log-odds). ``knn`` votes are not
differentiable: explaining it is an error that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facebank.core.errors import DataError, FacebankWarning, HeadError, ImageDecodeError
from facebank.core.runs import markdown_table, start_run, write_json
from facebank.embed.inputs.datasets import encode_path
from facebank.embed.inputs.images import read_image

__all__ = [
    "BASELINES",
    "ImageExplanation",
    "FeatureExplanation",
    "explain_images",
    "explain_features",
    "head_forward",
    "overlay_figure",
    "feature_figure",
]

Baseline = Literal["black", "blur"]
BASELINES: tuple[str, ...] = ("black", "blur")


@dataclasses.dataclass
class ImageExplanation:
    """Integrated gradients of one image under one baseline.

    Attributes:
        path: the image file, as ``embed.inputs.datasets.encode_path`` writes names.
        baseline: ``"black"`` or ``"blur"``.
        score: the head's score of the image (higher = AI-generated).
        baseline_score: the head's score of the baseline image.
        attribution_sum: the attributions' sum (IG's completeness: ``score - baseline_score``).
        delta: Captum's convergence delta (``attribution_sum - (score - baseline_score)``).
        heatmap: (H, W) ``|sum over channels|`` of the attributions at the backbone's input size.
        image: (H, W, 3) uint8 image as the backbone saw it (after its resize and crop).
        attributions: (3, H, W) float32 attributions.
        n_steps: IG steps; seconds: time for this attribution; png: the saved overlay.
    """

    path: str
    baseline: str
    score: float
    baseline_score: float
    attribution_sum: float
    delta: float
    heatmap: np.ndarray
    image: np.ndarray
    attributions: np.ndarray
    n_steps: int
    seconds: float
    png: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "baseline": self.baseline,
            "score": self.score,
            "baseline_score": self.baseline_score,
            "attribution_sum": self.attribution_sum,
            "delta": self.delta,
            "n_steps": self.n_steps,
            "seconds": self.seconds,
            "png": str(self.png) if self.png else None,
        }


@dataclasses.dataclass
class FeatureExplanation:
    """Feature-space attribution of stored rows.

    Attributes:
        attributions: (n_rows, D) per-feature attributions.
        scores: (n_rows,) the head's scores; baseline_score: score of the baseline.
        delta: (n_rows,) ``attributions.sum(1) - (scores - baseline_score)``.
        baseline: (D,) the baseline feature (mean real feature unless given).
        baseline_source: where the baseline came from.
    """

    attributions: np.ndarray
    scores: np.ndarray
    baseline_score: float
    delta: np.ndarray
    baseline: np.ndarray
    baseline_source: str

    def top(self, row: int = 0, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` features of ``row`` with the largest |attribution|."""
        a = self.attributions[row]
        idx = np.argsort(-np.abs(a))[:k]
        return [{"feature": int(i), "attribution": float(a[i])} for i in idx]


def head_forward(head: Any) -> Callable[[Any], Any]:
    """The head's score as a differentiable torch function ``(n, D) -> (n,)``.

    Raises:
        HeadError: a head whose score is not differentiable (``knn``) or not fitted.
    """
    import torch

    head._check_fitted()
    name = getattr(head, "name", type(head).__name__)
    if hasattr(head, "coef_") and hasattr(head, "intercept_"):
        w = torch.as_tensor(np.asarray(head.coef_, dtype=np.float32).reshape(-1))
        b = float(np.asarray(head.intercept_).reshape(-1)[0])
        return lambda f: f @ w.to(f.device) + b
    model = getattr(head, "model_", None)
    if model is not None and hasattr(model, "log_odds"):
        model = model.cpu().eval()
        return lambda f: model.log_odds(f).reshape(-1)
    if model is not None and hasattr(model, "norm"):
        model = model.cpu().eval()
        return lambda f: model(model.norm(f)).reshape(-1)
    raise HeadError(
        f"the {name!r} head's score is not a differentiable function of the features, so it "
        "cannot be attributed; explain a linear, mlp, wide-mlp or prototype head"
    )


def _pil_to_uint8(x: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    img = x.detach().cpu().numpy() * s + m
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def explain_images(
    images: Sequence[str | Path],
    head: Any,
    *,
    baselines: Sequence[Baseline] = BASELINES,
    n_steps: int = 32,
    internal_batch_size: int = 8,
    blur_radius: float = 4.0,
    weights: str | Path | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    backbone: Any = None,
) -> tuple[list[ImageExplanation], list[tuple[str, str]]]:
    """Integrated gradients of a head's score for image files, through the frozen backbone.

    Args:
        images: image files or URLs (one that cannot be read or decoded is a failure,
            as in ``embed``; names are written as ``encode_path`` writes them).
        head: a fitted head with a stored backbone (``load_head(run)``), or a run folder.
        baselines: ``"black"`` and/or ``"blur"`` (module docstring).
        n_steps: IG's quadrature steps (Captum's Gauss-Legendre); the cost is linear in
            them. The convergence delta at 32 steps is backbone-dependent: a few % of the
            score change on small CNNs, often larger on ``efficientnet-lite1``
            (docs/protocols.md gives measured figures); read each map with its delta.
        internal_batch_size: path points per backward pass (memory bound).
        blur_radius: Gaussian radius, in pixels of the backbone's input, of ``blur``.
        weights: backbone weights file (as ``facebank embed --weights``).
        device: where the backbone runs (``"cpu"`` default: seconds for small backbones).
        out: run folder for ``explain.json``, ``explain.md`` and one PNG per image and
            baseline; ``None`` writes nothing.
        backbone: an already built ``Backbone`` (else rebuilt from the head's spec).

    Returns:
        ``(explanations, failures)``; failures are ``(path, reason)``.

    Warns:
        TestOnlyBackboneWarning: the head rests on a test-only (``tiny-*``) backbone.
    """
    import torch
    from captum.attr import IntegratedGradients

    from facebank.heads import load_head
    from facebank.heads.scoring import warn_if_test_only

    if isinstance(head, (str, Path)):
        head = load_head(head)
    warn_if_test_only(head)
    bad = [b for b in baselines if b not in BASELINES]
    if bad or not baselines:
        raise DataError(f"baselines {list(baselines)!r}: valid ones are {list(BASELINES)}")
    if int(n_steps) < 2:
        raise DataError(f"n_steps={n_steps!r} must be >= 2 (IG's Riemann steps; 32 is a default)")
    spec = getattr(head, "backbone_", None)
    if backbone is None:
        if not spec:
            raise HeadError(
                "this head was saved without a backbone spec, so images cannot be explained "
                "through "
                "it; use explain_features on bank rows, or re-train with `facebank train` on a bank"
            )
        from facebank.embed import backbone_from_spec

        backbone = backbone_from_spec(spec, device=device, weights=weights)
    score_fn = head_forward(head)
    module = backbone.module
    l2 = bool(getattr(backbone.spec, "l2_normalised", False))

    def forward(x: torch.Tensor) -> torch.Tensor:
        f = module(x).float()
        if l2:
            f = torch.nn.functional.normalize(f, dim=-1)
        return score_fn(f)

    ig = IntegratedGradients(forward)
    # channels-last activations let oneDNN use its fast (NHWC) depthwise and pointwise
    # convolutions on the CPU: the same numbers, markedly less time per IG step for
    # EfficientNets; the module is put back as it was on the way out
    with _channels_last(module):
        results, failures, run = _explain_each(
            images,
            ig=ig,
            forward=forward,
            backbone=backbone,
            baselines=baselines,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            blur_radius=blur_radius,
            head=head,
            out=out,
        )
    if run is not None:
        _write_images(run, results, failures, head)
    return results, failures


@contextlib.contextmanager
def _channels_last(module: Any) -> Iterator[None]:
    import torch

    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def _explain_each(
    images: Sequence[str | Path],
    *,
    ig: Any,
    forward: Callable[[Any], Any],
    backbone: Any,
    baselines: Sequence[Baseline],
    n_steps: int,
    internal_batch_size: int,
    blur_radius: float,
    head: Any,
    out: str | Path | None,
) -> tuple[list[ImageExplanation], list[tuple[str, str]], Path | None]:
    import torch
    from PIL import ImageFilter

    nhwc = torch.channels_last
    mean, std = backbone.spec.mean, backbone.spec.std
    results: list[ImageExplanation] = []
    failures: list[tuple[str, str]] = []
    run = None
    if out is not None:
        run = start_run(
            out,
            command="explain",
            config={
                "images": [encode_path(p) for p in images],
                "head": getattr(head, "path_", None),
                "baselines": list(baselines),
                "n_steps": n_steps,
                "blur_radius": blur_radius,
                "method": "integrated gradients (captum) through the frozen backbone and the head",
            },
        )
    for path in images:
        name = encode_path(path)  # printable on one line, the bytes recoverable
        try:
            img = read_image(path)
        except ImageDecodeError as exc:
            failures.append((name, str(exc)))
            continue
        x = backbone.transform(img).unsqueeze(0).to(backbone.device, memory_format=nhwc)
        seen = _pil_to_uint8(x[0], mean, std)
        for b in baselines:
            t0 = time.perf_counter()
            if b == "black":
                base = backbone.transform(img.point(lambda _: 0)).unsqueeze(0)
            else:
                from PIL import Image

                side = Image.fromarray(seen).filter(ImageFilter.GaussianBlur(blur_radius))
                base = _normalise(side, mean, std)
            base = base.to(backbone.device, memory_format=nhwc)
            attr, delta = ig.attribute(
                x,
                baselines=base,
                n_steps=int(n_steps),
                internal_batch_size=int(internal_batch_size),
                return_convergence_delta=True,
            )
            with torch.no_grad():
                s, s0 = float(forward(x)[0]), float(forward(base)[0])
            a = attr[0].detach().cpu().float().numpy()
            d = float(delta.reshape(-1)[0])
            if abs(d) > 0.1 * abs(s - s0) + 1e-6:
                warnings.warn(
                    f"integrated gradients of {Path(name).name} ({b} baseline) did not converge: "
                    f"convergence delta {d:.3g} against a score change of {s - s0:.3g}; the map "
                    f"is unreliable - raise n_steps (now {n_steps}, --steps) or use the blur "
                    "baseline",
                    FacebankWarning,
                    stacklevel=2,
                )
            results.append(
                ImageExplanation(
                    path=name,
                    baseline=b,
                    score=s,
                    baseline_score=s0,
                    attribution_sum=float(a.astype(np.float64).sum()),
                    delta=d,
                    heatmap=np.abs(a.sum(axis=0)),
                    image=seen,
                    attributions=a,
                    n_steps=int(n_steps),
                    seconds=time.perf_counter() - t0,
                )
            )
    return results, failures, run


def _normalise(img: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    import torch

    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy((arr - m) / s).unsqueeze(0)


def overlay_figure(ex: ImageExplanation, *, threshold: float | None = None):
    """Image, heatmap over it, side by side (a matplotlib figure)."""
    import matplotlib.pyplot as plt

    hm = ex.heatmap / (np.percentile(ex.heatmap, 99) or 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(ex.image)
    axes[0].set_title(Path(ex.path).name, fontsize=9)
    axes[1].imshow(ex.image)
    im = axes[1].imshow(np.clip(hm, 0, 1), cmap="inferno", alpha=0.6)
    verdict = ""
    if threshold is not None:
        verdict = " (flagged)" if ex.score > threshold else " (not flagged)"
    axes[1].set_title(
        f"IG, {ex.baseline} baseline: score {ex.score:.3g}{verdict}\n"
        f"sum {ex.attribution_sum:.3g} = {ex.score:.3g} - {ex.baseline_score:.3g} "
        f"(delta {ex.delta:.2g})",
        fontsize=8,
    )
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="|attribution| / p99")
    fig.tight_layout()
    return fig


def _write_images(run: Path, results, failures, head) -> None:
    from .plots import save_figure

    threshold = getattr(head, "threshold_", None)
    # numbered by image (two images may share a stem), then a plain ASCII stem
    order = {p: k for k, p in enumerate(dict.fromkeys(ex.path for ex in results))}
    for ex in results:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ex.path).stem)[:60]
        name = f"{order[ex.path]:03d}-{stem}-{ex.baseline}.png"
        ex.png = run / name
        save_figure(overlay_figure(ex, threshold=threshold), ex.png)
    rows = [ex.summary() for ex in results]
    write_json(
        run / "metrics.json",
        {"explanations": rows, "failures": [{"path": p, "reason": r} for p, r in failures]},
    )
    table = [
        {
            "image": Path(r["path"]).name,
            "baseline": r["baseline"],
            "score": r["score"],
            "baseline score": r["baseline_score"],
            "sum of attributions": r["attribution_sum"],
            "convergence delta": r["delta"],
            "seconds": r["seconds"],
        }
        for r in rows
    ]
    text = "# Integrated gradients\n\n"
    text += (
        "Attributions of the head's score through the frozen backbone; they sum to the "
        "score minus the baseline's score, up to the convergence delta.\n\n"
    )
    text += markdown_table(table, digits=4)
    if failures:
        text += "\nFailed:\n\n" + "".join(f"- {p}: {r}\n" for p, r in failures)
    (run / "explain.md").write_text(text)


def explain_features(
    X: Any,
    head: Any,
    *,
    baseline: Any = None,
    bank: Any = None,
    n_steps: int = 64,
) -> FeatureExplanation:
    """Feature-space attribution of stored rows (head only; no backbone, no image).

    Args:
        X: (n_rows, D) features (e.g. ``bank.load_features(rows)``).
        head: a fitted differentiable head (see the module docstring).
        baseline: (D,) baseline feature; default the mean of ``bank``'s real rows.
        bank: the bank whose reals give the baseline (required without ``baseline``).
        n_steps: IG steps for non-linear heads (the linear head is exact).

    Returns:
        ``FeatureExplanation``.
    """
    import torch

    X = np.atleast_2d(np.asarray(X, dtype=np.float32))
    if baseline is None:
        if bank is None:
            raise DataError(
                "give baseline=(D,) features or bank=... whose real rows (label 0) give the mean"
            )
        reals = np.flatnonzero(np.asarray(bank.labels) == 0)
        if reals.size == 0:
            raise DataError(
                f"bank {getattr(bank, 'name', bank)!r} has no real rows for the mean-real baseline"
            )
        baseline = bank.load_features(reals).astype(np.float64).mean(0).astype(np.float32)
        source = f"mean of {reals.size} real rows of bank {getattr(bank, 'name', '')}"
    else:
        baseline = np.asarray(baseline, dtype=np.float32).reshape(-1)
        source = "given"
    if baseline.shape[0] != X.shape[1]:
        raise DataError(f"baseline has {baseline.shape[0]} features, X has {X.shape[1]}")
    fn = head_forward(head)
    xt, bt = torch.from_numpy(X), torch.from_numpy(baseline)[None, :]
    if hasattr(head, "coef_"):
        w = np.asarray(head.coef_, dtype=np.float64).reshape(-1)
        attr = (X.astype(np.float64) - baseline.astype(np.float64)) * w
    else:
        from captum.attr import IntegratedGradients

        attr = (
            IntegratedGradients(fn)
            .attribute(xt, baselines=bt.expand_as(xt), n_steps=int(n_steps))
            .detach()
            .double()
            .numpy()
        )
    with torch.no_grad():
        scores = fn(xt).double().numpy()
        s0 = float(fn(bt).double().numpy()[0])
    return FeatureExplanation(
        attributions=attr,
        scores=scores,
        baseline_score=s0,
        delta=attr.sum(1) - (scores - s0),
        baseline=baseline,
        baseline_source=source,
    )


def feature_figure(fx: FeatureExplanation, row: int = 0, *, k: int = 15):
    """Bar chart of one row's ``k`` largest feature attributions."""
    import matplotlib.pyplot as plt

    top = fx.top(row, k)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    vals = [t["attribution"] for t in top]
    ax.barh(
        [f"f{t['feature']}" for t in top][::-1],
        vals[::-1],
        color=["#e76f51" if v > 0 else "#2a9d8f" for v in vals[::-1]],
    )
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("attribution to the score (vs mean real feature)")
    ax.set_title(
        f"score {fx.scores[row]:.3g} vs baseline {fx.baseline_score:.3g}: top {k} features",
        fontsize=9,
    )
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    fig.tight_layout()
    return fig
