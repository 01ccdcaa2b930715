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
) -> torch.Tensor:
    """The clipped policy loss of docs/algorithm.md §3 written out plainly; autograd does the rest.

    [B, T] tensors, advantages [B] or [B, T]; returns the 0-dim aggregated loss. Inputs must
    be finite everywhere (masked positions are multiplied by 0, not skipped). With
    ``entropy_agg`` the entropy term is aggregated on its own, over ``entropy_num_items``.
    """
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    pg = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.min(pg, -adv * dual_clip), pg)
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
