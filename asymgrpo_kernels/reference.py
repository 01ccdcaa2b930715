"""Materialized, obviously-correct PyTorch: the ground truth for tests and benchmarks.

These functions build the full [tokens x vocab] logits exactly as plain PyTorch user code
would, and let autograd produce the gradients. Cast the inputs to float64 to get a float64
ground truth. Bias clamping, the log-ratio limit and the other conventions of
docs/algorithm.md §3 and §6 are the caller's or spelled out here, so that every backend is
checked against the same definition.
"""

from __future__ import annotations

import torch

from .options import IGNORE_INDEX, LOG_RATIO_LIMIT


def logprob_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(target) and entropy from materialized logits.

    hidden [..., H], weight [V, H], bias [V] or None, targets [...] int.
    Returns (logprobs, entropy) shaped like targets, in float32 (float64 if hidden is float64);
    ignored positions hold 0. Differentiable through autograd. The logits are computed in the
    input dtype and then upcast, as user code does, except for float16, whose logits can
    exceed its range (65,504): float16 operands are upcast before the matmul.
    """
    if hidden.dtype == torch.float16:
        hidden, weight = hidden.float(), weight.float()
        bias = None if bias is None else bias.float()
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    scaled = logits.to(out_dtype) / temperature
    logp_all = torch.log_softmax(scaled, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprobs = logp_all.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=out_dtype, device=hidden.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)


def group_advantages_reference(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    beta_pos: float = 0.9,
    beta_neg: float = 0.4,
    normalize: str = "std",
    std: str = "population",
    eps: float = 1e-6,
) -> torch.Tensor:
    """docs/algorithm.md §2, one group at a time in float64 Python-level torch. Returns [B] float64.

    NaN rewards are left out of their group and get 0 (``nan_rewards="exclude"``).
    """
    rewards = rewards.double()
    out = torch.zeros_like(rewards)
    for label in torch.unique(group_ids):
        rows = ((group_ids == label) & ~torch.isnan(rewards)).nonzero().flatten()
        r = rewards[rows]
        if r.numel() <= 1 or bool((r == r[0]).all()):
            continue
        z = r - r.mean()
        if normalize == "std":
            z = z / (r.std(unbiased=True) + eps if std == "unbiased" else max(r.std(unbiased=False).item(), eps))
        beta = torch.where(z > 0, beta_pos, beta_neg).double()
        out[rows] = torch.sign(z) * z.abs() ** (2 * beta)
    return out


def policy_loss_reference(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
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
    num_items: float | None = None,
    entropy_agg: str | None = None,
    entropy_num_items: float | None = None,
    policy_loss: str = "ppo",
    top_entropy_quantile: float = 1.0,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    kl_cov_ratio: float = 2e-4,
    kl_cov_coef: float = 1.0,
) -> torch.Tensor:
    """The policy loss of docs/algorithm.md §3 and §8 written out plainly; autograd does the rest.

    [B, T] tensors, advantages [B] or [B, T]; returns the 0-dim aggregated loss. Inputs must
    be finite everywhere (masked positions are multiplied by 0, not skipped). With
    ``entropy_agg`` the entropy term is aggregated on its own, over ``entropy_num_items``.
    ``policy_loss`` picks the surrogate; Clip-Cov draws its tokens with ``torch.randperm`` from
    the CPU generator, so a test seeds it before each implementation.
    """
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(logprobs)
    scored = mask != 0
    log_ratio = logprobs - old_logprobs
    if policy_loss == "gspo":  # s_i from the sequence's mean log-ratio; d s_i,t / d logp_t = s_i,t
        lengths = scored.sum(-1, keepdim=True).clamp(min=1)
        sequence = (log_ratio * scored).sum(-1, keepdim=True) / lengths
        log_ratio = logprobs - logprobs.detach() + sequence.detach()
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    if policy_loss == "cispo":
        pg = -clipped_ratio.detach() * adv * logprobs
    elif policy_loss == "kl_cov":
        pg = -ratio * adv
        chosen = _top_cov_reference(adv, logprobs.detach(), scored, kl_cov_ratio)
        pg = torch.where(chosen, pg + kl_cov_coef * log_ratio.abs(), pg)
    else:
        pg = -torch.min(ratio * adv, clipped_ratio * adv)
        if dual_clip is not None:
            pg = torch.where(adv < 0, torch.min(pg, -adv * dual_clip), pg)
        if policy_loss == "clip_cov":
            clipped = (ratio * adv).detach() > (clipped_ratio * adv).detach()
            pg = torch.where(_clip_cov_reference(adv, logprobs.detach(), scored & ~clipped, scored, clip_cov_ratio,
                                                 clip_cov_lb, clip_cov_ub), 0.0, pg)
    if top_entropy_quantile < 1:
        threshold = torch.quantile(entropy.detach()[scored].float(), 1 - top_entropy_quantile)
        pg = torch.where(entropy.detach().float() >= threshold, pg, 0.0)
    if is_weights is not None:
        pg = pg * is_weights
    loss = pg
    if ref_logprobs is not None:
        d = ref_logprobs - logprobs
        d3 = d.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        kl = {"k1": -d, "k2": d**2 / 2, "k3": torch.exp(d3) - d3 - 1}[kl_estimator]
        loss = loss + kl_coef * kl
    bonus = torch.zeros_like(loss) if entropy is None else -entropy_coef * entropy
    m = mask.to(loss.dtype)
    if entropy_agg is None:
        return aggregate_reference(loss + bonus, m, loss_agg, max_len, num_items)
    return (aggregate_reference(loss, m, loss_agg, max_len, num_items)
            + aggregate_reference(bonus, m, entropy_agg, max_len, entropy_num_items))


def _covariance_reference(adv: torch.Tensor, logprobs: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """cov = (A - mean A)(logp - mean logp) over the scored tokens, [B, T] (anything where not scored)."""
    return (adv - adv[scored].mean()) * (logprobs - logprobs[scored].mean())


def _clip_cov_reference(adv, logprobs, allowed, scored, share, lb, ub) -> torch.Tensor:
    """[B, T] bool: max(int(share * n), 1) tokens drawn by randperm among the allowed ones with lb < cov < ub."""
    cov = _covariance_reference(adv, logprobs, scored)
    candidates = (allowed & (cov > lb) & (cov < ub)).nonzero()
    drawn = candidates[torch.randperm(len(candidates))[: max(int(share * int(scored.sum())), 1)]]
    chosen = torch.zeros_like(scored)
    chosen[drawn[:, 0], drawn[:, 1]] = True
    return chosen


def _top_cov_reference(adv, logprobs, scored, share) -> torch.Tensor:
    """[B, T] bool: the max(int(share * n), 1) scored tokens of largest covariance."""
    cov = _covariance_reference(adv, logprobs, scored)[scored]
    chosen = torch.zeros(int(scored.sum()), dtype=torch.bool, device=scored.device)
    if len(cov):
        chosen[torch.topk(cov, max(int(len(cov) * share), 1)).indices] = True
    out = torch.zeros_like(scored)
    out[scored] = chosen
    return out


def aggregate_reference(
    loss: torch.Tensor, m: torch.Tensor, loss_agg: str, max_len: int | None, num_items: float | None
) -> torch.Tensor:
    """The batch loss of [B, T] token losses under ``loss_agg`` (docs/algorithm.md §3), m the 0/1 mask."""
    batch, seq_len = m.shape
    if loss_agg == "token-mean":
        return (loss * m).sum() / (num_items if num_items is not None else m.sum().clamp(min=1))
    if loss_agg == "token-sum":
        return (loss * m).sum() / (num_items if num_items is not None else 1)
    sequences = num_items if num_items is not None else batch
    if loss_agg == "seq-mean-token-mean":
        return ((loss * m).sum(1) / m.sum(1).clamp(min=1)).sum() / sequences
    if loss_agg == "seq-mean-token-sum":
        return (loss * m).sum() / sequences
    if loss_agg == "seq-mean-token-sum-norm":
        return (loss * m).sum() / (sequences * (max_len if max_len is not None else seq_len))
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


def asymgrpo_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    **loss_kwargs,
) -> torch.Tensor:
    """Materialized logits -> log_softmax -> entropy -> policy loss, the whole AsymGRPO loss.

    hidden [B, T, H], weight [V, H], targets [B, T] int, mask [B, T] 0/1, advantages [B] or
    [B, T]; ``loss_kwargs`` as in ``policy_loss_reference``. old_logprobs=None means
    on-policy (the detached current log-probs). Returns the 0-dim loss; [B, T, V] logits are
    held in memory, which is the point of comparison for the fused path.
    """
    scored = mask != 0
    targets = torch.where(scored, targets, torch.full_like(targets, IGNORE_INDEX))
    logprobs, entropy = logprob_entropy_reference(hidden, weight, targets, bias, temperature, IGNORE_INDEX)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    return policy_loss_reference(logprobs, old, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy, **loss_kwargs)
