"""asym_policy_loss: the clipped AsymGRPO policy loss on per-token log-probs (ALGORITHM.md 3-4).

Per completion token, with A the advantage and r = exp(logp - old_logp):

    pg   = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)
    pg   = min(pg, -A * dual_clip)                     where A < 0 (when dual_clip is set)
    loss = is_w * pg + kl_coef * k(ref_logp - logp) - entropy_coef * H

and the batch loss is sum_t w_t * loss_t with aggregation weights w (``token_weights``).

The per-token loss and its derivatives d loss / d logp and d loss / d H are computed in one
place (``token_terms``: torch here, Triton in ``triton/policy_loss.py``), and the autograd
Function ``PolicyLossFunction`` hands backward only those [N] gradients times the upstream
[N] gradient. Fed by ``fused_linear_logprob_entropy`` this is the whole fused backward: the
kernel core receives float32 [N] gradients for log-probs and entropy, nothing [N x V].
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import resolve_backend
from .validate import (
    BACKENDS,
    check_advantages,
    check_choice,
    check_mask,
    check_policy_loss_options,
    check_tensor,
    check_token_tensor,
)

CLIP_LOW, CLIP_HIGH, CLIP_DUAL = 1, 2, 4  # bits of TokenTerms.clipped
KL_ESTIMATOR_CODES = {"k1": 0, "k2": 1, "k3": 2}


class TokenTerms(NamedTuple):
    """Per-token results, all [N]; every entry is 0 where the mask is 0.

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


def token_terms(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    entropy: torch.Tensor | None,
    is_weights: torch.Tensor | None,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_coef: float,
    kl_estimator: str,
    entropy_coef: float,
) -> TokenTerms:
    """Torch implementation: all tensors [N] in one floating dtype, ``valid`` bool [N]."""
    zero = torch.zeros_like(logprobs)
    log_ratio = torch.where(valid, logprobs - old_logprobs, zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages, zero)
    # -min(rA, clip(r)A): the clipped branch is the minimum, and carries no gradient,
    # exactly where r has left the clip range in the direction that A rewards.
    low = (adv < 0) & (ratio < 1.0 - clip_low)
    high = (adv > 0) & (ratio > 1.0 + clip_high)
    clipped_ratio = ratio.clamp(min=1.0 - clip_low, max=1.0 + clip_high)
    pg = -torch.minimum(ratio * adv, clipped_ratio * adv)
    grad = torch.where(low | high, zero, -ratio * adv)
    dual = torch.zeros_like(valid)
    if dual_clip is not None:
        dual = (adv < 0) & (pg > -adv * dual_clip)
        pg = torch.where(dual, -adv * dual_clip, pg)
        grad = torch.where(dual, zero, grad)
    if is_weights is not None:
        weight = torch.where(valid, is_weights, zero)
        pg, grad = pg * weight, grad * weight
    kl = zero
    if ref_logprobs is not None:
        d = torch.where(valid, ref_logprobs - logprobs, zero)
        if kl_estimator == "k1":
            kl, dkl = -d, torch.ones_like(d)
        elif kl_estimator == "k2":
            kl, dkl = 0.5 * d * d, -d
        else:
            exp_d = torch.exp(d)
            kl, dkl = exp_d - d - 1.0, 1.0 - exp_d
        pg, grad = pg + kl_coef * kl, grad + kl_coef * dkl
    loss = pg
    if entropy is not None:
        loss = loss - entropy_coef * torch.where(valid, entropy, zero)
    grad_entropy = torch.full_like(logprobs, -entropy_coef)
    clipped = (low.to(torch.int8) * CLIP_LOW) | (high.to(torch.int8) * CLIP_HIGH) | (dual.to(torch.int8) * CLIP_DUAL)
    return TokenTerms(
        loss=torch.where(valid, loss, zero),
        grad_logprobs=torch.where(valid, grad, zero),
        grad_entropy=torch.where(valid, grad_entropy, zero),
        ratio=torch.where(valid, ratio, zero),
        kl=torch.where(valid, kl, zero),
        clipped=torch.where(valid, clipped, torch.zeros_like(clipped)),
    )


class PolicyLossFunction(torch.autograd.Function):
    """(logprobs [N], entropy [N] | None) -> (loss [N], ratio [N], kl [N], clipped [N] int8).

    Only logprobs and entropy are differentiable; old/ref log-probs, advantages and IS
    weights are data. Backward multiplies the upstream [N] gradient of the per-token loss
    by the saved d loss / d logp and d loss / d H.
    """

    @staticmethod
    def forward(ctx, logprobs, entropy, old_logprobs, advantages, valid, ref_logprobs, is_weights, options, backend):
        dtype = old_logprobs.dtype  # the compute dtype
        terms = _terms_backend(backend)(
            logprobs.detach().to(dtype), old_logprobs, advantages, valid, ref_logprobs,
            None if entropy is None else entropy.detach().to(dtype), is_weights, **options,
        )
        ctx.save_for_backward(terms.grad_logprobs, terms.grad_entropy)
        ctx.logprobs_dtype = logprobs.dtype
        ctx.entropy_dtype = None if entropy is None else entropy.dtype
        ctx.mark_non_differentiable(terms.ratio, terms.kl, terms.clipped)
        return terms.loss, terms.ratio, terms.kl, terms.clipped

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad_logprobs, grad_entropy = ctx.saved_tensors
        g_logp = (grad_loss * grad_logprobs).to(ctx.logprobs_dtype) if ctx.needs_input_grad[0] else None
        g_ent = None
        if ctx.entropy_dtype is not None and ctx.needs_input_grad[1]:
            g_ent = (grad_loss * grad_entropy).to(ctx.entropy_dtype)
        return g_logp, g_ent, None, None, None, None, None, None, None


def _terms_backend(backend: str):
    if backend == "triton":
        from .triton.policy_loss import token_terms_triton

        return token_terms_triton
    return token_terms


def token_weights(
    valid: torch.Tensor, loss_agg: str, max_len: int | None, num_items: float | None, dtype: torch.dtype
) -> torch.Tensor:
    """[B, T] weights w with batch loss = sum(w * token_loss) (ALGORITHM.md section 3).

    ``num_items`` replaces the number of items averaged over: tokens for "token-mean",
    sequences for the "seq-mean-*" modes (the optimizer step's count under gradient
    accumulation). Empty denominators count as 1, so an all-masked batch gives loss 0.
    Fully masked sequences still count among the B sequences of the "seq-mean-*" modes.
    """
    m = valid.to(dtype)
    batch, seq_len = valid.shape
    if loss_agg == "token-mean":
        return m / (num_items if num_items is not None else m.sum().clamp(min=1.0))
    sequences = num_items if num_items is not None else float(max(batch, 1))
    if loss_agg == "seq-mean-token-mean":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1.0) * sequences)
    if loss_agg == "seq-mean-token-sum":
        return m / sequences
    return m / (sequences * (max_len if max_len is not None else seq_len))


def check_policy_loss_inputs(
    shape: tuple[int, int],
    device: torch.device,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    is_weights: torch.Tensor | None,
    entropy: torch.Tensor | bool | None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Validate everything ``asym_policy_loss`` takes besides logprobs, for a [B, T] = ``shape`` batch.

    ``entropy`` may be True to say "an entropy tensor will be supplied" (the fused path checks
    before computing it). Returns (valid [B, T] bool, advantages as [B, T], normalized options).
    """
    if old_logprobs is not None:
        check_token_tensor(old_logprobs, "old_logprobs", shape, device)
    adv = check_advantages(advantages, shape[0], shape[1], device)
    valid = check_mask(mask, shape, device)
    tensors = {"ref_logprobs": ref_logprobs, "is_weights": is_weights}
    if isinstance(entropy, torch.Tensor):
        tensors["entropy"] = entropy
    for name, value in tensors.items():
        if value is not None:
            check_token_tensor(value, name, shape, device)
    backend = options.pop("backend")
    checked = check_policy_loss_options(**options)
    if checked["entropy_coef"] != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs the per-token entropy: pass entropy=[B, T]")
    if checked["kl_coef"] != 0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs the reference log-probs: pass ref_logprobs=[B, T]")
    check_choice(backend, "backend", BACKENDS)
    return valid, adv, checked


def asym_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    is_weights: torch.Tensor | None = None,
    loss_agg: str = "token-mean",
    max_len: int | None = None,
    num_items: float | torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped AsymGRPO policy loss over a [B, T] batch of completion tokens, with metrics.

    Args:
        logprobs: [B, T] float, log p(token) under the current policy; differentiable.
        old_logprobs: [B, T] float, under the policy that sampled (data). None means
            on-policy: ``logprobs.detach()`` (ratio 1, gradient A).
        advantages: [B] (one per sequence) or [B, T] (one per token), float.
        mask: [B, T] of 0/1 (bool, integer or float); 0 marks prompt and padding tokens,
            whose values (even NaN) never reach the loss, the gradients or the metrics.
        clip_low, clip_high: >= 0; the ratio is clipped to [1 - clip_low, 1 + clip_high]
            (clip_high > clip_low is DAPO's clip-higher).
        dual_clip: None or c > 1; for A < 0 the token loss is capped at -A * c.
        ref_logprobs: [B, T] float, reference-policy log-probs (data) for the KL term.
        kl_coef: weight of the KL term; kl_estimator: "k1", "k2" or "k3" of
            d = ref_logp - logp (k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1).
        entropy: [B, T] float per-token entropy (differentiable) for the bonus and the
            per-channel entropy metrics; entropy_coef: the loss gets -entropy_coef * H.
        is_weights: [B, T] float importance weights multiplying the clipped term (data).
        loss_agg: "token-mean", "seq-mean-token-mean", "seq-mean-token-sum" or
            "seq-mean-token-sum-norm" (sum / (B * max_len), Dr. GRPO).
        max_len: Dr. GRPO's constant for "seq-mean-token-sum-norm" (default T).
        num_items: overrides the count averaged over: tokens for "token-mean", sequences
            for the "seq-mean-*" modes; pass the optimizer step's count under gradient
            accumulation. A number or a one-element tensor.
        backend: "auto" (triton on CUDA for float32 math, torch elsewhere), "torch",
            "triton" ("reference" means torch here).

    Returns:
        loss: 0-dim tensor, float32 (float64 when logprobs is float64), differentiable
            with respect to logprobs and entropy.
        metrics: dict of detached 0-dim float32 tensors, over mask == 1 tokens:
            clip_frac_low, clip_frac_high (and clip_frac_dual with dual_clip): share of
            tokens whose clip is active; approx_kl: mean of r - 1 - log r, KL(old || current);
            ratio_mean, ratio_max; ref_kl (with ref_logprobs): mean KL estimate to the
            reference; entropy_pos / entropy_neg (with entropy): mean entropy over tokens with
            A > 0 / A < 0, and tokens_pos / tokens_neg their counts; tokens: the mask count.
            Means over zero tokens are 0.
    """
    check_tensor(logprobs, "logprobs")
    if not logprobs.dtype.is_floating_point:
        raise TypeError(f"logprobs must be a floating-point tensor, got {logprobs.dtype}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must have shape [B, T], got {list(logprobs.shape)}")
    shape, device = tuple(logprobs.shape), logprobs.device
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    valid, adv, options = check_policy_loss_inputs(
        shape, device, old_logprobs, advantages, mask, ref_logprobs, is_weights, entropy,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef, kl_estimator=kl_estimator,
        entropy_coef=entropy_coef, loss_agg=loss_agg, max_len=max_len, num_items=num_items, backend=backend,
    )
    compute_dtype = torch.float64 if logprobs.dtype == torch.float64 else torch.float32
    backend = resolve_backend(backend, device)
    if backend == "triton" and compute_dtype == torch.float64:
        backend = "torch"

    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(compute_dtype).reshape(-1).contiguous()

    term_options = {k: options[k] for k in ("clip_low", "clip_high", "dual_clip", "kl_coef", "kl_estimator", "entropy_coef")}
    token_loss, ratio, kl, clipped = PolicyLossFunction.apply(
        logprobs.reshape(-1), None if entropy is None else entropy.reshape(-1),
        flat(old_logprobs), flat(adv), valid.reshape(-1).contiguous(), flat(ref_logprobs), flat(is_weights),
        term_options, backend,
    )
    weights = token_weights(valid, options["loss_agg"], options["max_len"], options["num_items"], compute_dtype)
    loss = (token_loss.reshape(shape) * weights).sum()
    with torch.no_grad():
        metrics = loss_metrics(valid, adv, logprobs, old_logprobs, ratio.reshape(shape), kl.reshape(shape),
                           clipped.reshape(shape), entropy, ref_logprobs is not None, dual_clip is not None)
    return loss, metrics


def _masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    count = where.sum()
    total = torch.where(where, values, torch.zeros_like(values)).sum()
    return (total / count.clamp(min=1)).float()


def loss_metrics(valid, adv, logprobs, old_logprobs, ratio, kl, clipped, entropy, has_ref, has_dual) -> dict[str, torch.Tensor]:
    tokens = valid.sum()
    metrics = {
        "tokens": tokens.float(),
        "clip_frac_low": _masked_mean((clipped & CLIP_LOW) != 0, valid),
        "clip_frac_high": _masked_mean((clipped & CLIP_HIGH) != 0, valid),
    }
    if has_dual:
        metrics["clip_frac_dual"] = _masked_mean((clipped & CLIP_DUAL) != 0, valid)
    log_ratio = torch.where(valid, logprobs.detach().double() - old_logprobs.detach().double(), 0.0)
    metrics["approx_kl"] = _masked_mean(torch.expm1(log_ratio) - log_ratio, valid)
    metrics["ratio_mean"] = _masked_mean(ratio, valid)
    metrics["ratio_max"] = (
        torch.where(valid, ratio, torch.zeros_like(ratio)).amax().float() if ratio.numel() else torch.zeros((), device=ratio.device)
    )
    if has_ref:
        metrics["ref_kl"] = _masked_mean(kl, valid)
    if entropy is not None:
        ent = entropy.detach()
        for name, channel in (("pos", valid & (adv > 0)), ("neg", valid & (adv < 0))):
            metrics[f"entropy_{name}"] = _masked_mean(ent, channel)
            metrics[f"tokens_{name}"] = channel.sum().float()
    return metrics
