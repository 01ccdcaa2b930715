"""asym_policy_loss: the clipped AsymGRPO policy loss on per-token log-probs (docs/algorithm.md §3-4).

The per-token loss and its derivatives d loss / d logp and d loss / d H come from the chosen
backend's ``token_terms`` (``token_terms.py``: torch; ``triton/policy_loss.py``: Triton), and the
autograd Function ``functions.PolicyLoss`` hands backward only those [N] gradients times the
aggregation weights. Fed by ``fused_linear_logprob_entropy`` this is the whole fused backward:
the kernel core receives float32 [N] gradients for log-probs and entropy, nothing [N x V].
"""

from __future__ import annotations

from typing import Mapping

import torch

from .batch_statistics import batch_statistics
from .dispatch import get_backend
from .functions import PolicyLoss
from .options import LOG_RATIO_LIMIT, LossKeywords, LossOptions, Unpack
from .token_terms import CLIP_DUAL, CLIP_HIGH, CLIP_LOW, PolicyTokens
from .validate import (
    ValueChecks,
    check_advantages,
    check_mask,
    check_num_items,
    check_tensor,
    check_token_tensor,
    host_values,
)


def token_weights(
    valid: torch.Tensor, loss_agg: str, max_len: int | None, num_items: float | torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """[B, T] weights w with batch loss = sum(w * token_loss) under ``loss_agg`` (docs/algorithm.md §3).

    ``num_items`` replaces the number of items averaged over: tokens for "token-mean",
    sequences for the "seq-mean-*" modes (the optimizer step's count under gradient
    accumulation), and divides the sum of "token-sum" (default 1). Empty denominators count
    as 1, so an all-masked batch gives loss 0. Fully masked sequences still count among the
    B sequences of the "seq-mean-*" modes.
    """
    m = valid.to(dtype)
    batch, seq_len = valid.shape
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(device=m.device, dtype=dtype)
    if loss_agg == "token-mean":
        return m / (num_items if num_items is not None else m.sum().clamp(min=1.0))
    if loss_agg == "token-sum":
        return m / num_items if num_items is not None else m
    sequences = num_items if num_items is not None else float(max(batch, 1))
    if loss_agg == "seq-mean-token-mean":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1.0) * sequences)
    if loss_agg == "seq-mean-token-sum":
        return m / sequences
    return m / (sequences * (max_len if max_len is not None else seq_len))


def policy_tokens(
    valid: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    is_weights: torch.Tensor | None,
    options: LossOptions,
    num_items: float | torch.Tensor | None,
    entropy_num_items: float | torch.Tensor | None,
    dtype: torch.dtype,
    rows: torch.Tensor | None = None,
) -> PolicyTokens:
    """The per-token data of a checked [B, T] batch (valid bool, advantages [B, T]) as ``PolicyTokens``.

    Everything is flattened to [B * T], or to the positions ``rows`` ([n] int64 flat indices,
    the fused loss's scored rows), detached and cast to ``dtype``. The aggregation weights
    come from ``options.loss_agg`` and ``num_items``, the entropy term's from
    ``options.entropy_agg`` and ``entropy_num_items`` when it is set.
    """
    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach().reshape(-1)
        return t if rows is None else t.index_select(0, rows)

    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    weights = token_weights(valid, options.loss_agg, options.max_len, num_items, dtype)
    entropy_weights = None
    if options.entropy_agg is not None:
        entropy_weights = token_weights(valid, options.entropy_agg, options.max_len, entropy_num_items, dtype)
    sequences = torch.arange(valid.shape[0], device=valid.device).repeat_interleave(valid.shape[1])
    return PolicyTokens(
        valid=flat(valid), sequences=flat(sequences), advantages=cast(flat(advantages)), old_logprobs=cast(flat(old_logprobs)),
        ref_logprobs=cast(flat(ref_logprobs)), is_weights=cast(flat(is_weights)), weights=flat(weights),
        entropy_weights=flat(entropy_weights), options=options,
    )


def check_entropy_num_items(entropy_num_items, options: LossOptions) -> float | torch.Tensor | None:
    """``entropy_num_items`` as ``check_num_items`` returns it; it needs ``options.entropy_agg``."""
    if entropy_num_items is not None and options.entropy_agg is None:
        raise ValueError("entropy_num_items applies only with entropy_agg set (LossOptions.entropy_agg)")
    return check_num_items(entropy_num_items, "entropy_num_items")


def check_policy_batch(
    shape: tuple[int, int],
    device: torch.device,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    is_weights: torch.Tensor | None,
    has_entropy: bool,
    options: LossOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check everything the policy loss takes besides log-probs and entropy, for a [B, T] batch.

    Returns (valid [B, T] bool, advantages as [B, T]). Mask values are a value check
    (``ValueChecks.mask``), left to the caller.
    """
    for name, value in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("is_weights", is_weights)):
        if value is not None:
            check_token_tensor(value, name, shape, device)
    adv = check_advantages(advantages, shape[0], shape[1], device)
    valid = check_mask(mask, shape, device)
    if options.entropy_coef != 0 and not has_entropy:
        raise ValueError("entropy_coef != 0 needs the per-token entropy: pass entropy=[B, T]")
    if options.top_entropy_quantile < 1 and not has_entropy:
        raise ValueError("top_entropy_quantile < 1 needs the per-token entropy: pass entropy=[B, T]")
    if options.kl_coef != 0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs the reference log-probs: pass ref_logprobs=[B, T]")
    return valid, adv


def asym_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    num_items: float | torch.Tensor | None = None,
    entropy_num_items: float | torch.Tensor | None = None,
    backend: str = "auto",
    options: LossOptions | None = None,
    **loss_options: Unpack[LossKeywords],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped AsymGRPO policy loss over a [B, T] batch of completion tokens, with metrics.

    Args:
        logprobs: [B, T] float, log p(token) under the current policy; differentiable.
        old_logprobs: [B, T] float, under the policy that sampled (data). None means
            on-policy: ``logprobs.detach()`` (ratio 1, gradient A).
        advantages: [B] (one per sequence) or [B, T] (one per token), float.
        mask: [B, T] of 0/1 (bool, integer or float); 0 marks prompt and padding tokens,
            whose values (even NaN) never reach the loss, the gradients or the metrics.
        ref_logprobs: [B, T] float, reference-policy log-probs (data) for the KL term.
        entropy: [B, T] float per-token entropy (differentiable) for the bonus and the
            per-channel entropy metrics.
        is_weights: [B, T] float importance weights multiplying the clipped term (data).
        num_items: overrides the count averaged over: tokens for "token-mean", sequences
            for the "seq-mean-*" modes, the divisor of "token-sum" (default 1); pass the
            optimizer step's count under gradient accumulation. A number or a one-element tensor.
        entropy_num_items: the same for the entropy term, when ``entropy_agg`` is set.
        backend: "auto" (triton on CUDA for float32 math, torch elsewhere), "torch",
            "triton" ("reference" means torch here).
        options: a ``LossOptions`` (default: ``LossOptions()``).
        **loss_options: its fields as keywords, replacing those of ``options``:
            ``clip_low`` (0.2) and ``clip_high`` (0.2), the ratio clip [1 - clip_low,
            1 + clip_high]; ``dual_clip`` (None); ``kl_coef`` (0) and ``kl_estimator`` ("k3");
            ``entropy_coef`` (0); ``loss_agg`` ("token-mean"), ``max_len`` (None) and
            ``entropy_agg`` (None). See ``LossOptions``.

    Returns:
        loss: 0-dim tensor, float32 (float64 when logprobs is float64), differentiable
            with respect to logprobs and entropy.
        metrics: dict of detached 0-dim float32 tensors, over mask == 1 tokens:
            clip_frac_low, clip_frac_high (and clip_frac_dual with dual_clip): share of
            tokens whose clip is active; approx_kl: mean of r - 1 - log r, KL(old || current);
            ratio_mean, ratio_max; ref_kl (with ref_logprobs): mean KL estimate to the
            reference; entropy (with entropy): mean entropy, and entropy_pos / entropy_neg:
            mean entropy over tokens with A > 0 / A < 0, with tokens_pos / tokens_neg their
            counts; tokens: the mask count. ``metric_values`` reads them all in one transfer.
            Means over zero tokens are 0.

    Raises:
        TypeError: an argument of the wrong kind (named in the message), before any kernel runs.
        ValueError: an impossible value (named in the message), before any kernel runs.
    """
    options = LossOptions.build(options, loss_options)
    check_tensor(logprobs, "logprobs")
    if not logprobs.dtype.is_floating_point:
        raise TypeError(f"logprobs must be a floating-point tensor, got {logprobs.dtype}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must have shape [B, T], got {list(logprobs.shape)}")
    shape, device = tuple(logprobs.shape), logprobs.device
    if entropy is not None:
        check_token_tensor(entropy, "entropy", shape, device)
    valid, adv = check_policy_batch(
        shape, device, old_logprobs, advantages, mask, ref_logprobs, is_weights, entropy is not None, options
    )
    num_items = check_num_items(num_items)
    entropy_num_items = check_entropy_num_items(entropy_num_items, options)
    chosen = get_backend(backend, device)
    checks = ValueChecks()
    checks.mask(mask)
    checks.num_items(num_items)
    checks.num_items(entropy_num_items, "entropy_num_items")
    checks.run()

    dtype = torch.float64 if logprobs.dtype == torch.float64 else torch.float32
    tokens = policy_tokens(
        valid, adv, old_logprobs, ref_logprobs, is_weights, options, num_items, entropy_num_items, dtype
    )
    flat_entropy = None if entropy is None else entropy.reshape(-1)
    tokens, selection = batch_statistics(tokens, logprobs.reshape(-1), flat_entropy)
    with torch.autocast(device.type, enabled=False):
        loss, ratio, kl, clipped = PolicyLoss.apply(logprobs.reshape(-1), flat_entropy, tokens, chosen.token_terms)
    metrics = loss_metrics(tokens, logprobs.reshape(-1), ratio, kl, clipped, entropy)
    return loss, {**metrics, **selection}


def masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """float32 mean of ``values`` where ``where`` (bool, same shape) holds; 0 over no entries."""
    count = where.sum()
    total = torch.where(where, values, torch.zeros_like(values)).sum()
    return (total / count.clamp(min=1)).float()


@torch.no_grad()
def loss_metrics(
    tokens: PolicyTokens,
    logprobs: torch.Tensor,
    ratio: torch.Tensor,
    kl: torch.Tensor,
    clipped: torch.Tensor,
    entropy: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The metrics of docs/algorithm.md §4 from [n] per-token results, over ``tokens.valid``."""
    valid, adv = tokens.valid, tokens.advantages
    metrics = {
        "tokens": valid.sum().float(),
        "clip_frac_low": masked_mean((clipped & CLIP_LOW) != 0, valid),
        "clip_frac_high": masked_mean((clipped & CLIP_HIGH) != 0, valid),
    }
    if tokens.options.dual_clip is not None:
        metrics["clip_frac_dual"] = masked_mean((clipped & CLIP_DUAL) != 0, valid)
    if tokens.old_logprobs is None:
        log_ratio = torch.zeros_like(ratio, dtype=torch.float64)
    else:
        log_ratio = (logprobs.detach().double() - tokens.old_logprobs.double()).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    log_ratio = torch.where(valid, log_ratio, 0.0)
    metrics["approx_kl"] = masked_mean(torch.expm1(log_ratio) - log_ratio, valid)
    metrics["ratio_mean"] = masked_mean(ratio, valid)
    metrics["ratio_max"] = ratio.amax().float() if ratio.numel() else torch.zeros((), device=ratio.device)
    if tokens.ref_logprobs is not None:
        metrics["ref_kl"] = masked_mean(kl, valid)
    if entropy is not None:
        ent = entropy.detach().reshape(-1)
        metrics["entropy"] = masked_mean(ent, valid)
        for name, channel in (("pos", valid & (adv > 0)), ("neg", valid & (adv < 0))):
            metrics[f"entropy_{name}"] = masked_mean(ent, channel)
            metrics[f"tokens_{name}"] = channel.sum().float()
    return metrics


def metric_values(metrics: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The loss metrics (0-dim tensors) as Python floats, read in one device-to-host transfer.

    ``{name: value.item() for ...}`` would synchronize with the device once per metric.
    """
    return dict(zip(metrics, host_values(*metrics.values())))
