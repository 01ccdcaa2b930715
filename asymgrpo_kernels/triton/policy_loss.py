"""Per-token AsymGRPO loss and its derivatives in one elementwise pass (float32).

The Triton twin of ``asymgrpo_kernels.token_terms.token_terms``: same inputs, same
``TokenTerms`` outputs, same formulas (see that module's docstring), the surrogate chosen by a
constexpr. Optional inputs are switched off by constexpr flags, so a run without reference,
entropy, IS weights or KL-Cov penalty reads nothing for them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..options import LOG_RATIO_LIMIT, LossOptions
from ..token_terms import (
    CLIP_DUAL, CLIP_HIGH, CLIP_LOW, KL_ESTIMATOR_CODES, SURROGATE_CODES, TokenInputs, TokenTerms,
)

BLOCK = 1024


@triton.jit
def _policy_loss_kernel(
    logp_ptr, old_ptr, adv_ptr, valid_ptr, ref_ptr, ent_ptr, isw_ptr, penalty_ptr,
    loss_ptr, dlogp_ptr, dent_ptr, ratio_ptr, kl_ptr, clipped_ptr,
    n_tokens, clip_low, clip_high, dual_clip, kl_coef, entropy_coef,
    SURROGATE: tl.constexpr, HAS_PENALTY: tl.constexpr,
    HAS_REF: tl.constexpr, HAS_ENT: tl.constexpr, HAS_IS: tl.constexpr, HAS_DUAL: tl.constexpr,
    KL_EST: tl.constexpr, BIT_LOW: tl.constexpr, BIT_HIGH: tl.constexpr, BIT_DUAL: tl.constexpr,
    LIMIT: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_tokens
    valid = (tl.load(valid_ptr + offs, mask=inside, other=0) != 0) & inside
    logp = tl.load(logp_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0).to(tl.float32)

    log_ratio = logp - old
    unclamped = tl.abs(log_ratio) < LIMIT  # beyond the limit, the clamp carries no gradient
    log_ratio = tl.minimum(tl.maximum(log_ratio, -LIMIT), LIMIT)
    ratio = tl.exp(log_ratio)
    clipped_ratio = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    if SURROGATE == 0:  # the clipped ratio (ppo, gspo, clip_cov)
        low = (adv < 0) & (ratio < 1.0 - clip_low)
        high = (adv > 0) & (ratio > 1.0 + clip_high)
        pg = -tl.minimum(ratio * adv, clipped_ratio * adv)
        grad = tl.where(unclamped & ~(low | high), -ratio * adv, 0.0)
        code = tl.where(low, BIT_LOW, 0) | tl.where(high, BIT_HIGH, 0)
        if HAS_DUAL:
            dual = (adv < 0) & (pg > -adv * dual_clip)
            pg = tl.where(dual, -adv * dual_clip, pg)
            grad = tl.where(dual, 0.0, grad)
            code = code | tl.where(dual, BIT_DUAL, 0)
    elif SURROGATE == 1:  # CISPO: the clipped ratio is a stop-gradient weight of log p
        code = tl.where(ratio < 1.0 - clip_low, BIT_LOW, 0) | tl.where(ratio > 1.0 + clip_high, BIT_HIGH, 0)
        pg = -clipped_ratio * adv * logp
        grad = -clipped_ratio * adv
    else:  # KL-Cov: no clip; the selected tokens pay penalty * |log r|
        code = tl.zeros([BLOCK], dtype=tl.int32)
        pg = -ratio * adv
        grad = tl.where(unclamped, -ratio * adv, 0.0)
        if HAS_PENALTY:
            penalty = tl.load(penalty_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            pg = pg + penalty * tl.abs(log_ratio)
            sign = tl.where(log_ratio > 0, 1.0, tl.where(log_ratio < 0, -1.0, 0.0))
            grad = grad + tl.where(unclamped, penalty * sign, 0.0)
    if HAS_IS:
        weight = tl.load(isw_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        pg = pg * weight
        grad = grad * weight
    kl = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_REF:
        d = tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32) - logp
        if KL_EST == 0:
            kl = -d
            dkl = tl.full([BLOCK], 1.0, dtype=tl.float32)
        elif KL_EST == 1:
            kl = 0.5 * d * d
            dkl = -d
        else:
            clamped = tl.minimum(tl.maximum(d, -LIMIT), LIMIT)
            exp_d = tl.exp(clamped)
            kl = exp_d - clamped - 1.0
            dkl = tl.where(tl.abs(d) < LIMIT, 1.0 - exp_d, 0.0)
        pg = pg + kl_coef * kl
        grad = grad + kl_coef * dkl
    loss = pg
    if HAS_ENT:
        loss = loss - entropy_coef * tl.load(ent_ptr + offs, mask=valid, other=0.0).to(tl.float32)

    tl.store(loss_ptr + offs, tl.where(valid, loss, 0.0), mask=inside)
    tl.store(dlogp_ptr + offs, tl.where(valid, grad, 0.0), mask=inside)
    tl.store(dent_ptr + offs, tl.where(valid, -entropy_coef, 0.0), mask=inside)
    tl.store(ratio_ptr + offs, tl.where(valid, ratio, 0.0), mask=inside)
    tl.store(kl_ptr + offs, tl.where(valid, kl, 0.0), mask=inside)
    tl.store(clipped_ptr + offs, tl.where(valid, code, 0).to(tl.int8), mask=inside)


def token_terms_triton(inputs: TokenInputs, options: LossOptions) -> TokenTerms:
    """Same contract as ``token_terms.token_terms``; float32 [N] inputs and outputs."""
    n_tokens = inputs.logprobs.numel()
    device = inputs.logprobs.device
    out = [torch.empty(n_tokens, dtype=torch.float32, device=device) for _ in range(5)]
    clipped = torch.empty(n_tokens, dtype=torch.int8, device=device)
    if n_tokens == 0:
        return TokenTerms(*out, clipped)
    # the kernel reads flat memory: a broadcast [B] advantage has stride 0, so copy what is not dense
    logprobs, old_logprobs, advantages, valid, ref_logprobs, entropy, is_weights, penalty = (
        None if t is None else t.contiguous() for t in inputs
    )
    placeholder = logprobs  # never read: its constexpr flag is off
    _policy_loss_kernel[(triton.cdiv(n_tokens, BLOCK),)](
        logprobs, old_logprobs, advantages, valid.view(torch.uint8),
        placeholder if ref_logprobs is None else ref_logprobs,
        placeholder if entropy is None else entropy,
        placeholder if is_weights is None else is_weights,
        placeholder if penalty is None else penalty,
        *out, clipped,
        n_tokens, options.clip_low, options.clip_high, options.dual_clip or 0.0, options.kl_coef, options.entropy_coef,
        SURROGATE=SURROGATE_CODES[options.policy_loss], HAS_PENALTY=penalty is not None,
        HAS_REF=ref_logprobs is not None, HAS_ENT=entropy is not None, HAS_IS=is_weights is not None,
        HAS_DUAL=options.dual_clip is not None, KL_EST=KL_ESTIMATOR_CODES[options.kl_estimator],
        BIT_LOW=CLIP_LOW, BIT_HIGH=CLIP_HIGH, BIT_DUAL=CLIP_DUAL, LIMIT=LOG_RATIO_LIMIT, BLOCK=BLOCK,
    )
    return TokenTerms(*out, clipped)
