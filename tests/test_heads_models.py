"""Each head's own behaviour: linear vs sklearn, the mlp recipe, prototype likelihood/OOD, knn."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from facebank.core.errors import DataError
from facebank.heads import create_head, threshold_at_fpr
from facebank.heads.mlp import MLPHead, augment_gaussian

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RNG = np.random.default_rng(1)


def two_classes(n=300, d=24, shift=1.0, noise_flip=0.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    direction = (
        np.random.default_rng(123).standard_normal(d).astype(np.float32)
    )  # same for every seed
    X[y == 1] += shift * direction / math.sqrt(d) * 3
    flip = rng.random(n) < noise_flip
    y[flip] = 1 - y[flip]
    return X, y


# ------------------------------------------------------------------ threshold rule
def test_threshold_rule_with_200_reals_puts_exactly_one_above():
    s = np.arange(200, dtype=float)
    t = threshold_at_fpr(s, 0.005)
    assert t == 198.0 and (s > t).sum() == 1


def test_threshold_rule_small_samples_and_ties():
    assert threshold_at_fpr(np.array([3.0, 1.0, 2.0]), 0.005) == 3.0  # k = 0: the max, none above
    s = np.array([5.0, 5.0, 5.0, 1.0] * 50)  # 200 reals, ties at the top
    t = threshold_at_fpr(s, 0.005)
    assert (s > t).sum() == 0  # ties never push the FPR above the target
    assert threshold_at_fpr(np.arange(1000.0), 0.01) == 989.0


def test_small_calibration_set_warns():
    X, y = two_classes()
    h = create_head("linear", device="cpu").fit(X, y)
    with pytest.warns(UserWarning, match="only 20 reals"):
        h.calibrate(X[y == 0][:20], fpr=0.005)


# ------------------------------------------------------------------ linear
@pytest.mark.parametrize("flip, shift", [(0.0, 3.0), (0.2, 0.6)], ids=["separable", "noisy"])
def test_linear_auc_matches_sklearn(flip, shift):
    X, y = two_classes(n=600, d=32, shift=shift, noise_flip=flip)
    Xt, yt = two_classes(n=600, d=32, shift=shift, noise_flip=flip, seed=7)
    ours = create_head("linear", device="cpu").fit(X, y)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
    for A, b in ((X, y), (Xt, yt)):
        assert (
            abs(
                roc_auc_score(b, ours.decision_function(A))
                - roc_auc_score(b, ref.decision_function(A))
            )
            <= 0.005
        )
    if flip:  # well-posed problem: the same minimiser
        assert np.allclose(ours.coef_, ref.coef_, atol=2e-3)


def test_linear_warm_start_reaches_the_same_minimiser():
    X, y = two_classes(n=3000, d=16, shift=0.5, noise_flip=0.1)
    warm = create_head("linear", device="cpu", warm_start_rows=256).fit(X, y)
    cold = create_head("linear", device="cpu", warm_start_rows=0).fit(X, y)
    assert warm.n_iter_warm_ > 0 and cold.n_iter_warm_ == 0
    assert np.allclose(warm.coef_, cold.coef_, atol=2e-3)


@pytest.mark.parametrize("warm_start_rows", [0, 256])
@pytest.mark.filterwarnings("ignore:.*line search")  # sklearn's newton-cg reference at tol 1e-10
def test_linear_whitening_copes_with_badly_scaled_constant_and_duplicated_features(warm_start_rows):
    # an embedding-like spectrum (scales 1e-3 .. 1), an offset, a constant column and a
    # copied column: the whitened solver must still reach sklearn's minimiser
    X, y = two_classes(n=2000, d=16, shift=0.5, noise_flip=0.1)
    X = X * np.logspace(-3, 0, 16, dtype=np.float32) + 5.0
    X = np.hstack([X, np.full((len(X), 1), 2.0, np.float32), X[:, -1:]])
    ours = create_head(
        "linear", device="cpu", warm_start_rows=warm_start_rows, dtype="float64"
    ).fit(X, y)
    # newton-cg converges on this ill-conditioned problem (lbfgs stops in its flat valley)
    ref = LogisticRegression(C=1.0, solver="newton-cg", tol=1e-10, max_iter=10_000).fit(X, y)
    s, X64 = np.where(y == 1, 1.0, -1.0), X.astype(np.float64)

    def objective(w, b):
        return 0.5 * w @ w + np.logaddexp(0, -s * (X64 @ w + b)).sum()

    assert objective(ours.coef_[0], ours.intercept_[0]) <= objective(
        ref.coef_[0], ref.intercept_[0]
    ) * (1 + 1e-7)
    assert np.allclose(ours.decision_function(X), ref.decision_function(X), atol=1e-2)
    assert abs(ours.coef_[0, 16]) < 1e-3  # a constant column: the free intercept takes its part
    assert ours.n_iter_ < 30


def test_linear_balanced_class_weight_moves_the_boundary():
    X, y = two_classes(n=400, shift=0.5, noise_flip=0.1)
    keep = (y == 0) | (np.arange(len(y)) % 5 == 0)  # few AI
    plain = create_head("linear", device="cpu").fit(X[keep], y[keep])
    bal = create_head("linear", device="cpu", class_weight="balanced").fit(X[keep], y[keep])
    assert bal.intercept_[0] > plain.intercept_[0]


# ------------------------------------------------------------------ mlp
def test_mlp_has_three_linear_batchnorm_relu_dropout_blocks():
    X, y = two_classes()
    h = MLPHead(device="cpu", max_steps=2, hidden=(32, 16, 8), dropout=0.3).fit(X, y)
    kinds = [type(m).__name__ for m in h.model_.body]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 3 + ["Linear"]
    assert h.model_.body[3].p == 0.3


def test_mlp_paper_preset_and_explicit_params():
    cfg = MLPHead(preset="paper").resolved_config()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.batch_size, cfg.epochs) == (
        "adamw",
        1e-5,
        6e-5,
        "cosine",
        256,
        100,
    )
    assert (
        cfg.sam
        and cfg.sam_rho == 0.1
        and cfg.alpha == 0.9
        and cfg.gamma == 0.6
        and cfg.loss == "paper"
    )
    assert cfg.max_steps is None
    assert MLPHead(preset="paper", lr=3e-4).resolved_config().lr == 3e-4  # explicit wins
    fast = MLPHead().resolved_config()
    assert fast.max_steps is not None and not fast.sam
    with pytest.raises(DataError, match="preset"):
        MLPHead(preset="fast").resolved_config()


def test_mlp_unknown_loss_term_is_refused():
    X, y = two_classes()
    with pytest.raises(DataError, match="unknown term"):
        MLPHead(loss="hinge", device="cpu").fit(X, y)


def test_gaussian_augmentation_draws_sigma_uniform_per_row():
    torch.manual_seed(0)
    x = torch.zeros(4000, 256)
    out = augment_gaussian(x, beta=2.0)
    row_sigma = (out / 2.0).std(dim=1)
    assert row_sigma.max() < 1.1 and row_sigma.min() < 0.1  # sigma in (0, 1), varies by row
    assert row_sigma.mean().item() == pytest.approx(0.5, abs=0.03)  # E[U(0,1)] = 0.5
    assert torch.equal(augment_gaussian(x, beta=0.0), x)


@pytest.mark.parametrize(
    "kw",
    [
        dict(loss="bce"),
        dict(loss="vs"),
        dict(loss="cvar-vs"),
        dict(loss="cvar-bce"),
        dict(loss="auc"),
        dict(loss="paper"),
        dict(loss="bce+auc", augment=False),
        dict(sam=True),
        dict(optimizer="sgd", lr=0.05),
        dict(schedule="constant"),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_mlp_each_part_trains(kw):
    X, y = two_classes(n=300, shift=2.0)
    Xt, yt = two_classes(n=300, shift=2.0, seed=5)
    h = MLPHead(device="cpu", max_steps=60, batch_size=64, hidden=(32, 16, 8), **kw).fit(X, y)
    assert h.config_["loss"] == kw.get("loss", "paper")
    assert roc_auc_score(yt, h.decision_function(Xt)) > 0.85


def test_mlp_step_budget_and_log():
    X, y = two_classes(n=300)
    h = MLPHead(device="cpu", epochs=3, batch_size=100, max_steps=None, hidden=(8, 8, 8)).fit(X, y)
    assert h.train_log_["steps"] == 9
    h = MLPHead(device="cpu", epochs=3, batch_size=100, max_steps=4, hidden=(8, 8, 8)).fit(X, y)
    assert h.train_log_["steps"] == 4


# ------------------------------------------------------------------ prototype
@pytest.mark.parametrize("embedding", ["identity", "learned"])
def test_prototype_density_integrates_to_one(embedding):
    X, y = two_classes(n=300, d=2, shift=1.0)
    h = create_head(
        "prototype", device="cpu", embedding=embedding, embed_dim=1, n_prototypes=2, max_steps=30
    ).fit(X, y)
    g = np.linspace(-12, 12, 481)
    xx, yy = np.meshgrid(g, g)
    grid = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)
    cell = (g[1] - g[0]) ** 2
    ll = h.class_log_likelihood(grid)
    for c in (0, 1):
        assert np.exp(ll[:, c]).sum() * cell == pytest.approx(1.0, abs=0.01)
    assert np.exp(h.score_samples(grid)).sum() * cell == pytest.approx(1.0, abs=0.01)


def test_prototype_identity_k1_is_a_gaussian_logpdf():
    from scipy.stats import multivariate_normal

    X, y = two_classes(n=200, d=3)
    h = create_head(
        "prototype", device="cpu", embedding="identity", n_prototypes=1, max_steps=5
    ).fit(X, y)
    m = h.model_
    for c in (0, 1):
        mean = (m.mean + m.std * m.mu[c, 0]).numpy()
        var = (m.std**2 * torch.exp(2 * m.log_sigma[c, 0])).numpy()
        ref = multivariate_normal(mean, np.diag(var)).logpdf(X[:5])
        assert np.allclose(h.class_log_likelihood(X[:5])[:, c], ref, atol=1e-3)


def test_prototype_decision_is_posterior_log_odds():
    X, y = two_classes(n=200, d=6)
    h = create_head("prototype", device="cpu", max_steps=10, embed_dim=3).fit(X, y)
    ll = h.class_log_likelihood(X)
    prior = np.log(np.bincount(y) / len(y))
    assert np.allclose(h.decision_function(X), ll[:, 1] - ll[:, 0] + prior[1] - prior[0], atol=1e-4)
    assert np.allclose(h.ood_score(X), -h.score_samples(X))
    assert np.allclose(h.outlier_decision_function(X), h.score_samples(X) - h.offset_)
    assert (h.outlier_decision_function(X) < 0).mean() == pytest.approx(0.01, abs=0.01)


@pytest.mark.parametrize("name", ["prototype", "knn"])
def test_far_cluster_gets_the_highest_ood_scores(name):
    # training data in a cone around (3, ..., 3) as real embeddings share a mean direction;
    # the new cluster sits on the opposite side: far in l2 and in cosine
    X, y = two_classes(n=400, d=16, shift=1.0)
    X += 3.0
    far = (np.random.default_rng(3).standard_normal((30, 16)) * 0.5 - 6.0).astype(np.float32)
    near = two_classes(n=100, d=16, shift=1.0, seed=9)[0] + 3.0
    h = create_head(name, device="cpu", **({"max_steps": 40} if name == "prototype" else {})).fit(
        X, y
    )
    scores = h.ood_score(np.vstack([near, far]))
    top = np.argsort(-scores)[:30]
    assert set(top.tolist()) == set(range(100, 130))
    assert (h.outlier_decision_function(far) < 0).all()


# ------------------------------------------------------------------ knn
def test_knn_cosine_ignores_row_length_and_votes():
    X, y = two_classes(n=300, d=16, shift=2.0)
    h = create_head("knn", k=7, device="cpu").fit(X, y)
    Q = X[:20]
    assert np.allclose(h.decision_function(Q), h.decision_function(Q * 5.0))
    D, I = h.kneighbors(Q[:1], k=7)  # noqa: E741 - FAISS names
    a = (y[I[0]] == 1).sum()
    assert h.decision_function(Q[:1])[0] == pytest.approx(math.log((a + 0.5) / (7 - a + 0.5)))
    assert D[0, 0] == pytest.approx(1.0, abs=1e-5)  # a training row finds itself


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat"])
def test_knn_factory_string_is_configurable(factory):
    X, y = two_classes(n=300, d=16, shift=2.0)
    h = create_head("knn", factory=factory, nprobe=4, device="cpu").fit(X, y)
    assert roc_auc_score(y, h.decision_function(X)) > 0.9


def test_knn_bad_factory_and_metric():
    X, y = two_classes()
    with pytest.raises(DataError, match="factory string"):
        create_head("knn", factory="NotAnIndex", device="cpu").fit(X, y)
    with pytest.raises(DataError, match="metric"):
        create_head("knn", metric="manhattan", device="cpu").fit(X, y)


def test_knn_l2_and_similarity_weights():
    X, y = two_classes(n=300, d=16, shift=2.0)
    for kw in (
        dict(metric="l2"),
        dict(weights="similarity"),
        dict(metric="l2", weights="similarity"),
    ):
        h = create_head("knn", device="cpu", **kw).fit(X, y)
        assert roc_auc_score(y, h.decision_function(X)) > 0.9


def test_knn_auto_factory_is_exact_for_small_banks_and_ivf_above():
    from facebank.heads.knn import AUTO_EXACT_ROWS, auto_factory

    assert auto_factory(AUTO_EXACT_ROWS - 1) == ("Flat", None)
    assert auto_factory(100_000) == ("IVF256,Flat", 64)
    assert auto_factory(1_000_000) == ("IVF1024,Flat", 256)
    X, y = two_classes(n=300, d=16, shift=2.0)
    h = create_head("knn", device="cpu").fit(X, y)
    assert (h.factory, h.factory_, h.nprobe_) == ("auto", "Flat", None)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_auto_switches_to_ivf_and_keeps_the_choice_when_saved(metric, monkeypatch, tmp_path):
    import facebank.heads.knn as knn
    from facebank.heads import load_head

    monkeypatch.setattr(knn, "AUTO_EXACT_ROWS", 500)
    X, y = two_classes(n=2000, d=16, shift=2.0)
    h = create_head("knn", metric=metric, device="cpu").fit(X, y)
    assert (h.factory_, h.nprobe_) == ("IVF32,Flat", 8)
    exact = create_head("knn", metric=metric, factory="Flat", device="cpu").fit(X, y)
    Q = two_classes(n=400, d=16, shift=2.0, seed=5)[0]
    _, I = h.kneighbors(Q)  # noqa: E741
    _, I_exact = exact.kneighbors(Q)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_exact, strict=True)])
    assert recall > 0.9
    h.save(tmp_path / "knn")
    back = load_head(tmp_path / "knn")
    assert (back.factory_, back.nprobe_) == ("IVF32,Flat", 8)
    assert np.array_equal(back.decision_function(Q), h.decision_function(Q))
