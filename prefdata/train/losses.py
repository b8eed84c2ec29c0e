"""Preference losses as pure functions over log-probability tensors.

Every loss takes the summed log-probabilities of the chosen and rejected responses under the
policy and the reference, each a float tensor of shape [B] (one value per pair), and returns a
`LossOutput`: the per-pair losses [B] and the implicit rewards r = beta * (log pi - log ref) of
each side [B] (Rafailov et al. 2023, Sec. 5). Notation: Delta = (log pi(y+) - log ref(y+)) -
(log pi(y-) - log ref(y-)), h = beta * Delta, ell(z) = -log sigma(z).

| name | paper | per-pair loss |
|---|---|---|
| `sigmoid` | DPO: Rafailov et al. 2023, *Direct Preference Optimization* (arXiv 2305.18290), Eq. 7 | ell(h) |
| `cdpo` | conservative DPO: Mitchell 2023, *A note on DPO with noisy preferences*; the label-smoothed loss that Chowdhury et al. 2024 (arXiv 2403.00409) compare against | (1-eps) ell(h) + eps ell(-h) |
| `robust` | rDPO: Chowdhury et al. 2024, *Provably Robust DPO* (arXiv 2403.00409), the de-biased loss of Sec. 3 | [(1-eps) ell(h) - eps ell(-h)] / (1-2eps) |
| `ipo` | IPO: Azar et al. 2023, *A General Theoretical Paradigm to Understand Learning from Human Preferences* (arXiv 2310.12036), Eq. 17 | (Delta_avg - 1/(2 beta))^2 |
| `hinge` | SLiC-HF: Zhao et al. 2023 (arXiv 2305.10425), the rank-calibration hinge with margin 1 | max(0, 1 - h) |
| `margin` | adaptive margin: Wang et al. 2024, *Secrets of RLHF in LLMs Part II: Reward Modeling* (arXiv 2401.06080) | ell(h - m) |

Additive terms, each a pure function too:
* `rationale_term`: RDPO, Just et al. 2024, *Data-Centric Human Preference Optimization with
  Rationales* (arXiv 2407.14477): -log sigma(gamma * log pi(r | x_rat)),
  the policy's summed log-probability of the rationale r given the rationale prompt (no reference);
* `nll_term`: the NLL on the chosen response that RISE (Xu et al. 2024, arXiv 2410.06638) adds
  with weight lambda, averaged over the chosen tokens (as RPO, Pang et al. 2024, arXiv 2404.19733).
* `sequence_logps`: the (optionally token-weighted) sum of per-token log-probabilities; RISE's
  edit-span weighting enters here as per-token weights.

Decisions (all match TRL 1.16's `DPOTrainer` where TRL defines the loss; tests check it):
* IPO uses the length-averaged log-ratios, as TRL does (confirmed there with the IPO authors); the
  paper's Eq. 17 on summed log-probs scales with response length.
* cDPO is its own loss: TRL >= 0.29 no longer applies `label_smoothing` to `sigmoid`; in TRL 1.16 the
  same formula is `aot` with `label_smoothing` on one-pair batches (where AOT's sort is the identity).
* `margin`: m is the per-pair margin (the voting filter's strength mean, or any column) times a
  scale; the paper writes the loss for reward models, -log sigma(r+ - r- - m), and with DPO's implicit
  reward r = beta * log ratio this is ell(h - m).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from prefdata.citations import CITATIONS
from prefdata.types import LossType

CITATION = "\n\n".join(CITATIONS.values())


class LossOutput(NamedTuple):
    losses: Tensor  # [B] per-pair loss
    chosen_rewards: Tensor  # [B] beta * (log pi(y+|x) - log ref(y+|x))
    rejected_rewards: Tensor  # [B] beta * (log pi(y-|x) - log ref(y-|x))


def _rewards(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor, Tensor]:
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios  # Delta
    return delta, beta * chosen_logratios, beta * rejected_logratios


def _ell(z: Tensor) -> Tensor:
    """ell(z) = -log sigma(z), computed stably."""
    return -F.logsigmoid(z)


def sigmoid_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, *, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023, Eq. 7): ell(beta * Delta)."""
    delta, chosen_r, rejected_r = _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                           ref_rejected_logps, beta)
    return LossOutput(_ell(beta * delta), chosen_r, rejected_r)


def cdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """Conservative DPO (label smoothing, Mitchell 2023): (1-eps) ell(h) + eps ell(-h).

    Biased under label noise (its minimiser is not the clean DPO minimiser), unlike `robust_loss`."""
    if not 0.0 <= epsilon <= 0.5:
        raise ValueError(f"cdpo: epsilon must be in [0, 0.5], got {epsilon}")
    delta, chosen_r, rejected_r = _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                           ref_rejected_logps, beta)
    h = beta * delta
    return LossOutput((1 - epsilon) * _ell(h) + epsilon * _ell(-h), chosen_r, rejected_r)


def robust_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """rDPO (Chowdhury et al. 2024, Sec. 3): [(1-eps) ell(h) - eps ell(-h)] / (1 - 2 eps), eps < 1/2.

    Unbiased: averaged over labels flipped independently with probability eps, it equals the
    clean DPO loss ell(h) of the true label."""
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"robust: epsilon (the flip rate) must be in [0, 0.5), got {epsilon}")
    delta, chosen_r, rejected_r = _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                           ref_rejected_logps, beta)
    h = beta * delta
    return LossOutput(((1 - epsilon) * _ell(h) - epsilon * _ell(-h)) / (1 - 2 * epsilon), chosen_r, rejected_r)


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float, chosen_lengths: Tensor, rejected_lengths: Tensor) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17) with tau = beta on length-averaged log-ratios (TRL's form):
    (Delta_c/|y+| - Delta_r/|y-| - 1/(2 beta))^2."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    avg_delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    losses = (avg_delta - 1 / (2 * beta)) ** 2
    return LossOutput(losses, beta * chosen_logratios, beta * rejected_logratios)


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, *, beta: float) -> LossOutput:
    """Hinge (SLiC-HF, Zhao et al. 2023, with the reference-normalised ratio as in TRL):
    max(0, 1 - beta * Delta)."""
    delta, chosen_r, rejected_r = _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                           ref_rejected_logps, beta)
    return LossOutput(torch.relu(1 - beta * delta), chosen_r, rejected_r)


def margin_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float, margin: Tensor) -> LossOutput:
    """DPO with a per-pair margin (Secrets of RLHF II's adaptive margin on DPO's implicit reward): ell(h - m).

    A larger m (a stronger, more certain preference) asks for a larger implicit-reward gap."""
    delta, chosen_r, rejected_r = _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                           ref_rejected_logps, beta)
    return LossOutput(_ell(beta * delta - margin), chosen_r, rejected_r)


LossFn = Callable[..., LossOutput]

# The one mapping the trainer indexes. EXTRA_ARGS names the keyword arguments each loss needs
# beyond the four log-prob tensors and beta.
LOSSES: dict[LossType, LossFn] = {
    LossType.SIGMOID: sigmoid_loss,
    LossType.CDPO: cdpo_loss,
    LossType.ROBUST: robust_loss,
    LossType.IPO: ipo_loss,
    LossType.HINGE: hinge_loss,
    LossType.MARGIN: margin_loss,
}
EXTRA_ARGS: dict[LossType, tuple[str, ...]] = {
    LossType.CDPO: ("epsilon",),
    LossType.ROBUST: ("epsilon",),
    LossType.IPO: ("chosen_lengths", "rejected_lengths"),
    LossType.MARGIN: ("margin",),
}


def preference_loss(loss: LossType, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, *, beta: float, **available: object) -> LossOutput:
    """Call `LOSSES[loss]` with the extra arguments it needs, taken from `available`."""
    missing = [name for name in EXTRA_ARGS.get(loss, ()) if available.get(name) is None]
    if missing:
        raise ValueError(f"loss {loss.value!r} needs {missing}")
    extras = {name: available[name] for name in EXTRA_ARGS.get(loss, ())}
    return LOSSES[loss](policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta=beta, **extras)


def rationale_term(rationale_logps: Tensor, *, gamma: float) -> Tensor:
    """RDPO's rationale term (Just et al. 2024): -log sigma(gamma * log pi(r | x_rat)), per pair [B].

    `rationale_logps` is the policy's summed log-probability of the rationale tokens."""
    return _ell(gamma * rationale_logps)


def nll_term(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Per-token NLL of the chosen response, -log pi(y+|x) / |y+|, per pair [B] (RISE's extra term)."""
    return -chosen_logps / chosen_lengths.clamp(min=1)


def sequence_logps(per_token_logps: Tensor, weights: Tensor) -> Tensor:
    """sum_t w_t log pi(y_t | x, y_<t) over each row [N, T] -> [N]; w_t = 0 off the response, 1 on it,
    and RISE's edit-span weight on tokens inside an edit span."""
    return (per_token_logps * weights).sum(dim=-1)
