"""``prototype``: learned isotropic Gaussian prototypes per class (after TrueFake, 2504.20658).

Density model (a true log-likelihood of the input features, in nats):

    x_c = (x - m) / s                          standardised input (training mean m, std s), D dims
    z   = W x_c,  r = x_c - W^T z              W (d x D) with orthonormal rows (a learned
                                               projection: the sign-fixed QR factor of an
                                               unconstrained matrix, PCA-initialised) or
                                               W = I (``embedding="identity"``)
    log p(x | c) = logsumexp_k [ log pi_ck - d/2 log(2 pi sigma_ck^2)
                                 - ||z - mu_ck||^2 / (2 sigma_ck^2) ]
                   - (D - d)/2 log(2 pi tau^2) - ||r||^2 / (2 tau^2)
                   - sum_j log s_j

``(z, r)`` is an orthogonal change of coordinates of ``x_c`` (Jacobian 1), ``tau`` is a
learned isotropic scale for the part of the space the projection drops (shared by the
classes, so it cancels in the log-odds but still counts for out-of-distribution
inputs), and ``- sum_j log s_j`` is the Jacobian of the standardisation, so
``log p(x | c)`` integrates to 1 over R^D. (The public R50-TF code's score is a
distance, not this likelihood.)

- ``decision_function(X) = log p(x|AI) - log p(x|real) + log(pi_AI / pi_real)``: the
  posterior log-odds of AI-generated (class priors = training frequencies).
- ``score_samples(X) = log p(x) = logsumexp_c [log pi_c + log p(x|c)]``: higher = more
  normal (sklearn ``EllipticEnvelope`` convention); ``ood_score(X) = -score_samples(X)``;
  ``outlier_decision_function(X) = score_samples(X) - offset_`` (negative = outlier),
  ``offset_`` = the ``ood_contamination`` quantile of the training rows' scores.

Fit: prototypes start from k-means in the embedding (PCA directions when learned), then
Adam minimises ``CE(log-odds, y) + nll_weight * NLL(x | y) / D`` on mini-batches.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from facebank.core.errors import DataError
from facebank.core.types import Device

from ._torch import as_tensor, batches, cached_copy, float64_copy, predict_blocks
from .base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SEED, BaseHead

__all__ = ["PrototypeHead"]

_LOG2PI = math.log(2 * math.pi)
# Rows for the PCA/k-means initialisation and for offset_: enough for 64 directions and
# a 1% quantile, few enough that the SVD stays a fraction of a second at 768-d.
_INIT_ROWS = 8192


class _ProtoModel(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor
    log_prior: torch.Tensor

    def __init__(self, dim: int, embed_dim: int | None, k: int) -> None:
        super().__init__()
        self.dim = dim
        self.d = dim if embed_dim is None else embed_dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        # unconstrained (d, D); its QR factor gives the orthonormal rows actually used
        self.proj = nn.Parameter(torch.zeros(embed_dim, dim)) if embed_dim is not None else None
        self.mu = nn.Parameter(torch.zeros(2, k, self.d))
        self.log_sigma = nn.Parameter(torch.zeros(2, k))
        self.mix_logits = nn.Parameter(torch.zeros(2, k))
        self.log_tau = nn.Parameter(torch.zeros(()))
        self.register_buffer("log_prior", torch.log(torch.tensor([0.5, 0.5])))

    def class_loglik(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """(n, D) raw features -> (n, 2) log p(x | c) for c in (real, AI).

        ``W``: ``projection()`` when the caller computed it already (scoring many blocks
        with frozen parameters); ``None`` computes it here (training, one batch per step).
        """
        xc = (x - self.mean) / self.std
        if self.proj is not None:
            z = xc @ (self.projection() if W is None else W).T
            r2 = (xc * xc).sum(1) - (z * z).sum(1)  # ||x_c||^2 - ||W x_c||^2 (orthonormal rows)
            r2 = r2.clamp_min(0)
            extra = self.dim - self.d
            resid = -0.5 * extra * (_LOG2PI + 2 * self.log_tau) - r2 / (
                2 * torch.exp(2 * self.log_tau)
            )
        else:
            z = xc
            resid = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        d2 = (
            (z * z).sum(1)[:, None, None]
            - 2 * torch.einsum("nd,ckd->nck", z, self.mu)
            + (self.mu * self.mu).sum(-1)[None]
        ).clamp_min(0)
        var = torch.exp(2 * self.log_sigma)[None]
        comp = -0.5 * self.d * (_LOG2PI + 2 * self.log_sigma[None]) - d2 / (2 * var)
        log_mix = torch.log_softmax(self.mix_logits, dim=1)[None]
        ll = torch.logsumexp(comp + log_mix, dim=2) + resid[:, None]
        return ll - torch.log(self.std).sum()

    def projection(self) -> torch.Tensor:
        """(d, D) orthonormal rows spanning the same space as ``proj`` (sign-fixed QR)."""
        assert self.proj is not None, "callers check proj (embedding='learned')"
        q, r = torch.linalg.qr(self.proj.T)
        sign = torch.sign(torch.diagonal(r))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        return (q * sign).T

    def log_odds(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        ll = self.class_loglik(x, W)
        return ll[:, 1] - ll[:, 0] + self.log_prior[1] - self.log_prior[0]

    def log_density(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        return torch.logsumexp(self.class_loglik(x, W) + self.log_prior[None], dim=1)


def _scoring_copy(model: _ProtoModel, device: str) -> tuple[_ProtoModel, torch.Tensor | None]:
    """The float64 copy that scores blocks and its ``projection()``, factorised once for
    every block (and every call while the head's parameters are unchanged, through
    ``cached_copy``) rather than once per 256-row block: the same QR of the same matrix,
    so the scores are the same to the last bit."""
    model64 = float64_copy(model, device)
    return model64, None if model64.proj is None else model64.projection()


def _kmeans(Z: torch.Tensor, k: int, gen: torch.Generator, iters: int = 15) -> torch.Tensor:
    """Plain Lloyd k-means (seeded init from rows); returns (k, d) centres."""
    n = Z.shape[0]
    centres = Z[torch.randperm(n, generator=gen)[: min(k, n)].to(Z.device)].clone()
    while centres.shape[0] < k:  # fewer rows than prototypes: duplicate with jitter
        centres = torch.cat([centres, centres[:1] + 1e-3 * torch.randn_like(centres[:1])])
    for _ in range(iters):
        assign = torch.cdist(Z, centres).argmin(1)
        for j in range(k):
            members = Z[assign == j]
            if members.shape[0]:
                centres[j] = members.mean(0)
    return centres


class PrototypeHead(BaseHead):
    """K learned isotropic Gaussian prototypes per class; classifier and OOD detector.

    See the module docstring for the exact log-likelihood.

    Parameters
    ----------
    n_prototypes : int, default=4
        K, Gaussian components per class, >= 1.
    embedding : {"learned", "identity"}, default="learned"
        ``"learned"``: an orthonormal projection to ``embed_dim``, trained;
        ``"identity"``: prototypes live in the standardised input space.
    embed_dim : int, default=64
        Projection size for ``"learned"`` (capped at the input width), >= 1.
    nll_weight : float, default=1.0
        Weight of the generative term (keeps the scores likelihoods, not just a
        classifier), >= 0.
    epochs : int, default=10
        Passes over the training rows, >= 1.
    max_steps : int, default=300
        Cap on Adam steps, >= 1.
    batch_size : int, default=1024
        Rows per step, >= 1.
    lr : float, default=1e-2
        Adam's learning rate, > 0.
    ood_contamination : float, default=0.01
        Fraction of training rows below ``offset_`` (as EllipticEnvelope), in [0, 0.5].
    device : str, default="auto"
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed : int, default=0
        Seeds the initialisation and the batches (CPU training is reproducible).

    Attributes
    ----------
    model_ : torch.nn.Module
        The standardisation, projection and Gaussian mixtures, on the CPU in eval mode.
    n_steps_ : int
        Adam steps taken.
    offset_ : float
        ``score_samples`` quantile of the training rows at ``ood_contamination``:
        ``outlier_decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during ``fit``.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: 0 = real, 1 = AI-generated.
    n_train_ : int
        Training rows used (rows labelled -1 are left out).
    threshold_ : float
        Flag rows with ``decision_function(X) > threshold_``; 0.0 after ``fit``, set on
        validation reals by ``calibrate``.
    calibration_ : dict or None
        How ``threshold_`` was set (``fpr``, ``n_reals``, ``split``, ``n_above``); ``None``
        until ``calibrate``.
    score_calibration_ : dict or None
        The probability calibration ``heads.calibration.calibrate_head`` fitted on
        validation rows; ``None`` until then.

    Examples
    --------
    >>> import numpy as np
    >>> from facebank.heads.prototype import PrototypeHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 8)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)  # 1 = AI-generated, 0 = real
    >>> head = PrototypeHead(n_prototypes=2, embed_dim=4, max_steps=50, device="cpu").fit(X, y)
    >>> head.n_steps_  # 10 epochs of one batch (200 rows < batch_size)
    10
    >>> bool((head.predict(X) == y).mean() > 0.8)
    True
    >>> far = head.ood_score(X[:5] + 20.0) > head.ood_score(X[:5])  # higher = less known
    >>> bool(far.all())
    True
    """

    name = "prototype"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_prototypes": [AT_LEAST_ONE],
        "embedding": [StrOptions({"learned", "identity"})],
        "embed_dim": [AT_LEAST_ONE],
        "nll_weight": [NON_NEGATIVE],
        "epochs": [AT_LEAST_ONE],
        "max_steps": [AT_LEAST_ONE],
        "batch_size": [AT_LEAST_ONE],
        "lr": [POSITIVE],
        "ood_contamination": [Interval(Real, 0, 0.5, closed="both")],
        "device": [str],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        n_prototypes: int = 4,
        embedding: str = "learned",
        embed_dim: int = 64,
        nll_weight: float = 1.0,
        epochs: int = 10,
        max_steps: int = 300,
        batch_size: int = 1024,
        lr: float = 1e-2,
        ood_contamination: float = 0.01,
        device: Device = "auto",
        seed: int = 0,
    ) -> None:
        self.n_prototypes = n_prototypes
        self.embedding = embedding
        self.embed_dim = embed_dim
        self.nll_weight = nll_weight
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.ood_contamination = ood_contamination
        self.device = device
        self.seed = seed

    def _embed_dim(self, dim: int) -> int | None:
        if self.embedding == "identity":
            return None
        if self.embedding != "learned":
            raise DataError(f"embedding={self.embedding!r} is not 'learned' or 'identity'")
        return None if int(self.embed_dim) >= dim else int(self.embed_dim)

    def _build(self, dim: int) -> _ProtoModel:
        return _ProtoModel(dim, self._embed_dim(dim), int(self.n_prototypes))

    def _fit(self, X: np.ndarray, y: np.ndarray, engines: Any) -> None:
        if int(self.n_prototypes) < 1:
            raise DataError(f"n_prototypes={self.n_prototypes!r} must be >= 1")
        device = self._device()
        n, dim = X.shape
        model = self._build(dim).to(device)
        gen = torch.Generator().manual_seed(int(self.seed))
        Xt = as_tensor(X, device)
        yt = torch.from_numpy(y).to(device)
        with torch.no_grad():
            model.mean.copy_(Xt.mean(0))
            model.std.copy_(Xt.std(0).clamp_min(1e-6))
            counts = np.bincount(y, minlength=2).astype(np.float64)
            model.log_prior.copy_(torch.from_numpy(np.log(counts / counts.sum())).float())
            # initialise on a subsample: PCA directions and k-means centres
            sub = torch.randperm(n, generator=gen)[: min(n, _INIT_ROWS)].to(device)
            xs = (Xt[sub] - model.mean) / model.std
            if model.proj is not None:
                xs0 = xs - xs.mean(0)
                _, evecs = torch.linalg.eigh(xs0.T @ xs0)  # ascending: top-d are the last columns
                top = evecs[:, -model.d :].flip(1).T.contiguous()
                model.proj.copy_(top)
                zs = xs @ top.T
                r2 = ((xs * xs).sum(1) - (zs * zs).sum(1)).clamp_min(0)
                model.log_tau.fill_(0.5 * math.log(max(float(r2.mean()) / (dim - model.d), 1e-8)))
            else:
                zs = xs
            ys = yt[sub]
            for c in (0, 1):
                zc = zs[ys == c]
                centres = _kmeans(zc, int(self.n_prototypes), gen)
                model.mu[c].copy_(centres)
                d2 = torch.cdist(zc, centres).pow(2).min(1).values.mean()
                model.log_sigma[c].fill_(0.5 * math.log(max(float(d2) / model.d, 1e-8)))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=float(self.lr))
        bs = min(int(self.batch_size), n)
        total = max(1, min(int(self.epochs) * math.ceil(n / bs), int(self.max_steps)))
        step = 0
        ce = nn.BCEWithLogitsLoss()
        while step < total:
            for idx in batches(n, bs, generator=gen, device=device):
                xb, yb = Xt[idx], yt[idx]
                ll = model.class_loglik(xb)
                logit = ll[:, 1] - ll[:, 0] + model.log_prior[1] - model.log_prior[0]
                nll = -ll.gather(1, yb[:, None]).mean() / dim
                loss = ce(logit, yb.float()) + float(self.nll_weight) * nll
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step >= total:
                    break
        for p in model.parameters():
            p.requires_grad_(False)
        self.model_ = model.cpu().eval()
        self.n_steps_ = step
        ref = self._score(
            X[torch.randperm(n, generator=gen)[: min(n, _INIT_ROWS)].numpy()], "density"
        )
        self.offset_ = float(np.quantile(ref, float(self.ood_contamination)))

    # --------------------------------------------------------------- inference
    def _score(self, X: np.ndarray, what: str) -> np.ndarray:
        device = self._device()
        model, W = cached_copy(self.model_, device, _scoring_copy)
        fn = {"odds": model.log_odds, "density": model.log_density, "classes": model.class_loglik}
        return predict_blocks(lambda t: fn[what](t, W), X, device)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return self._score(X, "odds")

    def class_log_likelihood(self, X: Any) -> np.ndarray:
        """(n, 2) ``log p(x | real), log p(x | AI)`` in nats."""
        return self._score(self._check_X(X), "classes")

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density ``log p(x)`` under the fitted mixture.

        Returns:
            (n_samples,) float64; higher = more normal (EllipticEnvelope convention).
        """
        return self._score(self._check_X(X), "density")

    def ood_score(self, X: Any) -> np.ndarray:
        """(n_samples,) ``-log p(x)``: higher = further from every known class/prototype."""
        return -self.score_samples(X)

    def outlier_decision_function(self, X: Any) -> np.ndarray:
        """(n_samples,) ``score_samples(X) - offset_``: negative = outlier.

        EllipticEnvelope's ``decision_function`` convention.
        """
        return self.score_samples(X) - self.offset_

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sd = {k: v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        return sd, {"offset": self.offset_, "n_steps": self.n_steps_}

    def _set_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        model = self._build(self.n_features_in_)
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True
        )
        for p in model.parameters():
            p.requires_grad_(False)
        self.model_ = model.eval()
        self.offset_ = float(meta["offset"])
        self.n_steps_ = int(meta.get("n_steps", 0))
