"""The per-token AsymGRPO loss and its derivatives (torch), and the types its Triton twin shares.

Per scored token, with A the advantage, l = clamp(logp - old_logp, -20, 20) and r = exp(l)
(docs/algorithm.md §3, §8), the policy term pg of each ``LossOptions.policy_loss``:

    ppo, gspo, clip_cov   pg = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)
                          pg = min(pg, -A * dual_clip)          where A < 0 (when dual_clip is set)
    cispo                 pg = -sg(clip(r, 1 - clip_low, 1 + clip_high)) A logp
    kl_cov                pg = -r A + penalty |l|

    loss = is_w * pg + kl_coef * k(ref_logp - logp) - entropy_coef * H

GSPO, Clip-Cov, KL-Cov and the entropy quantile differ from PPO only in their per-token inputs
(GSPO's old log-prob, the IS weight that cuts a token, KL-Cov's penalty), which
``batch_statistics`` derives from the whole batch first; here every token is on its own.
``token_terms`` returns the loss with d loss / d logp and d loss / d H, so that backward needs
only those two [N] vectors; ``triton/policy_loss.py`` computes the same ``TokenTerms`` in one
Triton pass. This module imports nothing else of the package but the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .options import LOG_RATIO_LIMIT, LossOptions

CLIP_LOW, CLIP_HIGH, CLIP_DUAL = 1, 2, 4  # bits of TokenTerms.clipped
KL_ESTIMATOR_CODES = {"k1": 0, "k2": 1, "k3": 2}
#: The per-token formula of each policy_loss: 0 the clipped ratio, 1 CISPO, 2 the unclipped ratio.
SURROGATE_CODES = {"ppo": 0, "gspo": 0, "clip_cov": 0, "cispo": 1, "kl_cov": 2}


class TokenTerms(NamedTuple):
    """Per-token results, all [N]; every entry is 0 where ``valid`` is False.

    loss, grad_logprobs (d loss / d logp), grad_entropy (d loss / d H), ratio and kl
    (the KL estimate to the reference, 0 without one) in the compute dtype; clipped is
    int8 with bits CLIP_LOW / CLIP_HIGH / CLIP_DUAL set where that clip is active.
    """

    loss: torch.Tensor
    grad_logprobs: torch.Tensor
    grad_entropy: torch.Tensor
    ratio: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor


class TokenInputs(NamedTuple):
    """Per-token inputs of ``token_terms``: [N] tensors in one floating dtype (the compute dtype),
    valid bool [N]; ref_logprobs, entropy, is_weights and penalty (KL-Cov's |log r| weight) may be None."""

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    valid: torch.Tensor
    ref_logprobs: torch.Tensor | None
    entropy: torch.Tensor | None
    is_weights: torch.Tensor | None
    penalty: torch.Tensor | None = None


def token_terms(inputs: TokenInputs, options: LossOptions) -> TokenTerms:
    """The per-token loss and its derivatives, torch implementation."""
    logprobs, old_logprobs, advantages, valid, ref_logprobs, entropy, is_weights, penalty = inputs
    zero = torch.zeros_like(logprobs)
    log_ratio = torch.where(valid, logprobs - old_logprobs, zero)
    unclamped = log_ratio.abs() < LOG_RATIO_LIMIT  # beyond the limit, the clamp carries no gradient
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages, zero)
    clipped_ratio = ratio.clamp(min=1.0 - options.clip_low, max=1.0 + options.clip_high)
    dual = torch.zeros_like(valid)
    surrogate = SURROGATE_CODES[options.policy_loss]
    if surrogate == 0:
        # -min(rA, clip(r)A): the clipped branch is the minimum, and carries no gradient,
        # exactly where r has left the clip range in the direction that A rewards.
        low = (adv < 0) & (ratio < 1.0 - options.clip_low)
        high = (adv > 0) & (ratio > 1.0 + options.clip_high)
        pg = -torch.minimum(ratio * adv, clipped_ratio * adv)
        grad = torch.where(unclamped & ~(low | high), -ratio * adv, zero)
        if options.dual_clip is not None:
            dual = (adv < 0) & (pg > -adv * options.dual_clip)
            pg = torch.where(dual, -adv * options.dual_clip, pg)
            grad = torch.where(dual, zero, grad)
    elif surrogate == 1:  # CISPO: the clipped ratio is a stop-gradient weight of log p
        low, high = ratio < 1.0 - options.clip_low, ratio > 1.0 + options.clip_high
        pg = -clipped_ratio * adv * torch.where(valid, logprobs, zero)
        grad = -clipped_ratio * adv
    else:  # KL-Cov: no clip; the selected tokens pay penalty * |log r|
        low = high = torch.zeros_like(valid)
        pg = -ratio * adv
        grad = torch.where(unclamped, -ratio * adv, zero)
        if penalty is not None:
            weight = torch.where(valid, penalty, zero)
            pg = pg + weight * log_ratio.abs()
            grad = grad + torch.where(unclamped, weight * torch.sign(log_ratio), zero)
    if is_weights is not None:
        weight = torch.where(valid, is_weights, zero)
        pg, grad = pg * weight, grad * weight
    kl = zero
    if ref_logprobs is not None:
        d = torch.where(valid, ref_logprobs - logprobs, zero)
        if options.kl_estimator == "k1":
            kl, dkl = -d, torch.ones_like(d)
        elif options.kl_estimator == "k2":
            kl, dkl = 0.5 * d * d, -d
        else:
            clamped = d.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
            exp_d = torch.exp(clamped)
            kl = exp_d - clamped - 1.0
            dkl = torch.where(d.abs() < LOG_RATIO_LIMIT, 1.0 - exp_d, zero)
        pg, grad = pg + options.kl_coef * kl, grad + options.kl_coef * dkl
    loss = pg
    if entropy is not None:
        loss = loss - options.entropy_coef * torch.where(valid, entropy, zero)
    clipped = (low.to(torch.int8) * CLIP_LOW) | (high.to(torch.int8) * CLIP_HIGH) | (dual.to(torch.int8) * CLIP_DUAL)
    return TokenTerms(
        loss=torch.where(valid, loss, zero),
        grad_logprobs=torch.where(valid, grad, zero),
        grad_entropy=torch.where(valid, torch.full_like(logprobs, -options.entropy_coef), zero),
        ratio=torch.where(valid, ratio, zero),
        kl=torch.where(valid, kl, zero),
        clipped=torch.where(valid, clipped, torch.zeros_like(clipped)),
    )


#: ``token_terms`` and its Triton twin.
TokenTermsFn = Callable[[TokenInputs, LossOptions], TokenTerms]


@dataclass(frozen=True)
class PolicyTokens:
    """The policy loss's per-token data, [n] each in the compute dtype and detached, and its options.

    valid is bool; sequences int64, the sequence (row of the [B, T] batch) of each token;
    old_logprobs None means on-policy (the current log-probs); weights are the aggregation
    weights w of loss = sum(w * token loss) (``policy_loss.token_weights``), and
    entropy_weights, when set (``LossOptions.entropy_agg``), those of the entropy term instead;
    penalty: KL-Cov's per-token |log r| weight (``batch_statistics``), None elsewhere.
    """

    valid: torch.Tensor
    sequences: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    is_weights: torch.Tensor | None
    weights: torch.Tensor
    entropy_weights: torch.Tensor | None
    options: LossOptions
    penalty: torch.Tensor | None = None

    def terms(
        self, logprobs: torch.Tensor, entropy: torch.Tensor | None, compute: TokenTermsFn, part: slice = slice(None)
    ) -> TokenTerms:
        """``compute``'s TokenTerms of the tokens in ``part`` given their log-probs and entropies."""
        pick = lambda t: None if t is None else t[part]  # noqa: E731
        old = logprobs if self.old_logprobs is None else self.old_logprobs[part]
        inputs = TokenInputs(
            logprobs, old, self.advantages[part], self.valid[part], pick(self.ref_logprobs), entropy,
            pick(self.is_weights), pick(self.penalty),
        )
        return compute(inputs, self.options)

    def weighted(
        self, terms: TokenTerms, entropy: torch.Tensor | None, part: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tokens in ``part``'s contributions to the aggregated loss: (w * loss, w * d loss / d logp,
        w * d loss / d H), [part] each, with the entropy term weighted by ``entropy_weights`` when set.

        The entropy term is linear in H, -entropy_coef * H = grad_entropy * H, so moving it to
        other weights is one correction of the loss and a reweighted entropy gradient.
        """
        weights = self.weights[part]
        loss, grad_entropy = terms.loss * weights, terms.grad_entropy * weights
        if self.entropy_weights is not None and entropy is not None:
            entropy_weights = self.entropy_weights[part]
            loss = loss + (entropy_weights - weights) * terms.grad_entropy * entropy
            grad_entropy = terms.grad_entropy * entropy_weights
        return loss, terms.grad_logprobs * weights, grad_entropy
