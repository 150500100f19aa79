"""Losses and SAM of the mlp head (arXiv 2505.02182), each against a hand-computed value."""

import math

import pytest
import torch

from facebank.heads import losses as L
from facebank.heads.sam import SAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sp(a: float) -> float:  # softplus by hand
    return math.log(1.0 + math.exp(a))


def test_bce_matches_hand_value():
    logits = torch.tensor([2.0, -1.0])
    y = torch.tensor([1, 0])
    assert L.bce_loss(logits, y).item() == pytest.approx((sp(-2.0) + sp(-1.0)) / 2, rel=1e-6)


def test_vs_loss_matches_hand_value_in_our_label_convention():
    # ours: 1 = AI. The paper's fake constants (zeta 1.2, Delta +0.05) belong to our class 1.
    logits = torch.tensor([1.0, 0.5])
    y = torch.tensor([1, 0])
    got = L.vs_loss(logits, y, weights=(2.0, 3.0))
    ai = 3.0 * math.log(1 + math.exp(0.05) * math.exp(-1.2 * (+1) * 1.0))
    real = 2.0 * math.log(1 + math.exp(-0.05) * math.exp(-0.8 * (-1) * 0.5))
    assert got.tolist() == pytest.approx([ai, real], rel=1e-6)
    assert L.PAPER_VS == {"zeta": (0.8, 1.2), "delta": (-0.05, 0.05)}


def test_vs_class_weights_from_the_class_ratio():
    assert L.vs_class_weights(torch.tensor([1, 0, 0, 0])) == pytest.approx((4 / 6, 2.0))
    assert L.vs_class_weights(torch.tensor([1, 0])) == pytest.approx((1.0, 1.0))


def test_vs_with_unit_constants_is_bce():
    logits = torch.tensor([0.3, -2.0, 1.5])
    y = torch.tensor([1, 0, 0])
    vs = L.vs_loss(logits, y, zeta=(1.0, 1.0), delta=(0.0, 0.0))
    assert torch.allclose(vs, L.bce_loss(logits, y, reduction="none"))


def test_auc_loss_is_mean_pairwise_logistic():
    logits = torch.tensor([2.0, 0.0, 1.0])
    y = torch.tensor([1, 0, 0])
    assert L.auc_loss(logits, y).item() == pytest.approx((sp(-2.0) + sp(-1.0)) / 2, rel=1e-6)
    assert L.auc_loss(logits, torch.tensor([1, 1, 1])).item() == 0.0  # no pairs


@pytest.mark.parametrize(
    "alpha, expected", [(0.4, (10 + 4) / 2), (0.5, (10 + 4 + 0.5 * 3) / 2.5), (1.0, 4.0)]
)
def test_cvar_is_mean_of_worst_alpha_fraction(alpha, expected):
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    assert L.cvar(losses, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)
    # lambda* is exact: no value of lambda on a fine grid does better
    grid = torch.linspace(0, 11, 2201)
    obj = grid + torch.relu(losses[None] - grid[:, None]).sum(1) / (alpha * 5)
    assert L.cvar(losses, alpha=alpha).item() <= obj.min().item() + 1e-5


def test_cvar_gradient_falls_only_on_the_worst_samples():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 0.5, 7.0, 2.5, 9.0, 0.1], requires_grad=True)
    L.cvar(losses, alpha=0.3).backward()
    worst = torch.topk(losses.detach(), 3).indices
    g = losses.grad
    assert torch.all(g[worst] > 0)
    mask = torch.ones(10, dtype=torch.bool)
    mask[worst] = False
    assert torch.all(g[mask] == 0)
    assert g.sum().item() == pytest.approx(1.0)  # a weighted mean
    # fractional boundary: alpha*m = 2.5 -> the 3rd worst gets weight 0.5/2.5
    losses.grad = None
    L.cvar(losses, alpha=0.25).backward()
    assert sorted(losses.grad.tolist(), reverse=True)[:3] == pytest.approx([0.4, 0.4, 0.2])


def test_paper_loss_is_cvar_vs_plus_gamma_auc():
    logits = torch.tensor([1.0, -0.5, 0.2, 2.0, -1.0])
    y = torch.tensor([1, 0, 0, 1, 0])
    w = L.vs_class_weights(y)
    expected = L.cvar(L.vs_loss(logits, y, weights=w), alpha=0.9) + 0.6 * L.auc_loss(logits, y)
    assert L.paper_loss(logits, y, weights=w).item() == pytest.approx(expected.item())


def test_sam_step_uses_gradient_at_the_perturbed_point():
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    opt = SAM(torch.optim.SGD([theta], lr=0.1), rho=0.1)

    def closure():
        loss = (theta**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(1.0)  # reported at the unperturbed point
    # g = 2 -> eps = 0.1 -> gradient at 1.1 is 2.2 -> theta = 1 - 0.1 * 2.2
    assert theta.item() == pytest.approx(0.78)


def test_sam_wraps_any_optimiser_and_restores_parameters():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    before = [p.detach().clone() for p in lin.parameters()]
    opt = SAM(torch.optim.Adam(lin.parameters(), lr=0.0), rho=0.5)  # lr 0: only the SAM detour

    def closure():
        loss = lin(torch.ones(2, 4)).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    for a, b in zip(before, lin.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    with pytest.raises(ValueError):
        SAM(torch.optim.SGD(lin.parameters(), lr=0.1), rho=0.0)
