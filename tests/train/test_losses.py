"""Every loss against a value computed by hand (scalar math, not torch), and rDPO's unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch

from prefdata.train.losses import (
    EXTRA_ARGS,
    LOSSES,
    cdpo_loss,
    hinge_loss,
    ipo_loss,
    margin_loss,
    nll_term,
    preference_loss,
    rationale_term,
    robust_loss,
    sequence_logps,
    sigmoid_loss,
)
from prefdata.train.schedule import lr_at, warmup_steps
from prefdata.types import LossType

# Two pairs. Pair 0: policy prefers chosen more than the reference does; pair 1: less.
PC = torch.tensor([-10.0, -20.0], dtype=torch.float64)  # policy log pi(y+)
PR = torch.tensor([-12.0, -18.0], dtype=torch.float64)  # policy log pi(y-)
RC = torch.tensor([-11.0, -19.0], dtype=torch.float64)  # reference log ref(y+)
RR = torch.tensor([-11.5, -18.5], dtype=torch.float64)  # reference log ref(y-)
BETA = 0.5
# Delta = (pc - rc) - (pr - rr): pair 0: 1 - (-0.5) = 1.5; pair 1: -1 - 0.5 = -1.5
DELTA = [1.5, -1.5]


def ell(z: float) -> float:
    return math.log(1 + math.exp(-z))


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_rewards_are_beta_times_log_ratios():
    out = sigmoid_loss(PC, PR, RC, RR, beta=BETA)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * 1.0, 0.5 * -1.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.5 * -0.5, 0.5 * 0.5])


def test_sigmoid_dpo():
    out = sigmoid_loss(PC, PR, RC, RR, beta=BETA)
    assert out.losses.tolist() == pytest.approx([ell(0.75), ell(-0.75)], abs=1e-12)
    assert out.losses.tolist() == pytest.approx([0.3868710, 1.1368710], abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cdpo(eps):
    out = cdpo_loss(PC, PR, RC, RR, beta=BETA, epsilon=eps)
    expected = [(1 - eps) * ell(0.5 * d) + eps * ell(-0.5 * d) for d in DELTA]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    if eps == 0.1:
        assert out.losses.tolist() == pytest.approx([0.4618710, 1.0618710], abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust(eps):
    out = robust_loss(PC, PR, RC, RR, beta=BETA, epsilon=eps)
    expected = [((1 - eps) * ell(0.5 * d) - eps * ell(-0.5 * d)) / (1 - 2 * eps) for d in DELTA]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    if eps == 0.1:
        assert out.losses.tolist() == pytest.approx([0.2931210, 1.2306210], abs=1e-6)


def test_ipo_is_length_averaged():
    lc = torch.tensor([2.0, 4.0], dtype=torch.float64)
    lr = torch.tensor([5.0, 1.0], dtype=torch.float64)
    out = ipo_loss(PC, PR, RC, RR, beta=BETA, chosen_lengths=lc, rejected_lengths=lr)
    # pair 0: 1/2 - (-0.5)/5 = 0.6; pair 1: -1/4 - 0.5/1 = -0.75; target 1/(2*0.5) = 1
    assert out.losses.tolist() == pytest.approx([(0.6 - 1) ** 2, (-0.75 - 1) ** 2], abs=1e-12)


def test_hinge():
    out = hinge_loss(PC, PR, RC, RR, beta=BETA)
    assert out.losses.tolist() == pytest.approx([max(0, 1 - 0.75), max(0, 1 + 0.75)])
    big = hinge_loss(PC, PR, RC, RR, beta=2.0)  # h = 3 > 1: no loss for pair 0
    assert big.losses.tolist() == pytest.approx([0.0, 4.0])


def test_margin():
    m = torch.tensor([0.25, -1.0], dtype=torch.float64)
    out = margin_loss(PC, PR, RC, RR, beta=BETA, margin=m)
    assert out.losses.tolist() == pytest.approx([ell(0.75 - 0.25), ell(-0.75 + 1.0)], abs=1e-12)
    zero = margin_loss(PC, PR, RC, RR, beta=BETA, margin=torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(zero.losses, sigmoid_loss(PC, PR, RC, RR, beta=BETA).losses)


def test_rationale_nll_and_token_weights():
    rat = torch.tensor([-30.0, -2.0], dtype=torch.float64)
    assert rationale_term(rat, gamma=0.1).tolist() == pytest.approx([ell(-3.0), ell(-0.2)], abs=1e-12)
    assert nll_term(PC, torch.tensor([4.0, 5.0], dtype=torch.float64)).tolist() == pytest.approx([2.5, 4.0])
    per_token = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    weights = torch.tensor([[0.0, 1.0, 2.0, 1.0]])  # prompt token, response, edit-span token x2, response
    assert sequence_logps(per_token, weights).tolist() == [-(2.0 + 6.0 + 4.0)]


def test_every_loss_type_is_mapped_and_dispatched():
    assert set(LOSSES) == set(LossType)
    available = {"epsilon": 0.2, "margin": torch.zeros(2, dtype=torch.float64),
                 "chosen_lengths": torch.ones(2, dtype=torch.float64), "rejected_lengths": torch.ones(2, dtype=torch.float64)}
    for loss in LossType:
        direct = LOSSES[loss](PC, PR, RC, RR, beta=BETA, **{k: available[k] for k in EXTRA_ARGS.get(loss, ())})
        routed = preference_loss(loss, PC, PR, RC, RR, beta=BETA, **available)
        assert torch.equal(direct.losses, routed.losses)
    with pytest.raises(ValueError, match=r"loss 'robust' needs \['epsilon'\]"):
        preference_loss(LossType.ROBUST, PC, PR, RC, RR, beta=BETA)
    with pytest.raises(ValueError, match="in \\[0, 0.5\\)"):
        robust_loss(PC, PR, RC, RR, beta=BETA, epsilon=0.5)


def test_robust_expected_loss_under_symmetric_flips_equals_clean_dpo():
    """Labels flipped independently with probability eps: E[rDPO(observed)] = DPO(true), exactly
    (and by simulation); cDPO's expectation is biased. Synthetic: the true label is chosen > rejected."""
    torch.manual_seed(0)
    n, beta, eps = 4000, 0.3, 0.2
    pc, pr, rc, rr = (torch.randn(n, dtype=torch.float64) * 3 for _ in range(4))
    clean = sigmoid_loss(pc, pr, rc, rr, beta=beta).losses
    kept = robust_loss(pc, pr, rc, rr, beta=beta, epsilon=eps).losses
    flipped = robust_loss(pr, pc, rr, rc, beta=beta, epsilon=eps).losses  # the same pair with its label flipped
    expectation = (1 - eps) * kept + eps * flipped
    torch.testing.assert_close(expectation, clean, rtol=0, atol=1e-12)
    cdpo_expectation = (1 - eps) * cdpo_loss(pc, pr, rc, rr, beta=beta, epsilon=eps).losses \
        + eps * cdpo_loss(pr, pc, rr, rc, beta=beta, epsilon=eps).losses
    assert (cdpo_expectation - clean).abs().mean() > 0.05  # the check can tell a biased loss apart
    # Monte Carlo: draw the flips, average over 200 label draws per pair.
    draws = torch.rand(200, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) < eps
    observed = torch.where(draws, flipped, kept).mean(dim=0)
    assert abs(observed.mean().item() - clean.mean().item()) < 0.02


def test_schedule_warmup_then_cosine():
    peak, total = 1e-3, 10
    lrs = [lr_at(s, peak=peak, total=total, warmup=2) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 2) and lrs[1] == pytest.approx(peak)
    assert lrs[2] == pytest.approx(peak)  # cosine starts at the peak
    assert lrs[6] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lr_at(total, peak=peak, total=total, warmup=2, min_ratio=0.1) == pytest.approx(0.1 * peak)
    assert lr_at(0, peak=peak, total=1) == peak
    assert warmup_steps(10, 0.1) == 1 and warmup_steps(10, 0.0) == 0 and warmup_steps(3, 0.5) == 2
    with pytest.raises(ValueError):
        lr_at(0, peak=peak, total=0)
