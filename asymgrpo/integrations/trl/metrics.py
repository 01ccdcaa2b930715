"""TRL's loss metrics (and ours, by channel) from one micro-batch, reduced over processes at once.

Every metric is a ratio of global sums, or an extreme over every process's sequences, so one
``accelerator.reduce(..., "sum")`` of a stacked vector and one host read give them all:

    [tokens, entropy sum, KL sum, low-clip sum, high-clip sum, entropy sum A>0, tokens A>0,
     entropy sum A<0, tokens A<0, policy loss, clip count, low-clip min per process (W slots),
     high-clip max per process (W slots)]

Each process writes its extremes into its own slot and zeros elsewhere, so the sum over processes
is the vector of every process's extreme. The clip shares count tokens, or, with TRL's
``importance_sampling_level="sequence"``, sequences (every one, as TRL counts its [B, 1] flags).
TRL's names and values: ``entropy``, ``kl``, ``clip_ratio/{low_mean, high_mean, region_mean,
low_min, high_max}`` (``cispo_clip_ratio`` instead with loss_type "cispo"), ``policy_loss``; ours:
``entropy_pos`` / ``entropy_neg``, the token-weighted mean entropy of each channel (docs/algorithm.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

SUMS = ("tokens", "entropy", "kl", "clip_low", "clip_high", "entropy_pos", "tokens_pos", "entropy_neg",
        "tokens_neg", "policy_loss", "clip_count")


def clip_flags(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
               mask: torch.Tensor, clip_low: float, clip_high: float, *,
               sequence: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] bool (low, high): tokens whose ratio is clipped below (A < 0) / above (A > 0), as TRL counts them.

    ``logprobs`` [B, T] are the current log-probs (0 off the mask), ``old_logprobs`` [B, T] or
    None (on-policy: ratio 1, nothing clipped), ``advantages`` [B], ``mask`` [B, T] 0/1.
    ``sequence``: [B, 1] flags of GSPO's sequence ratio exp(mean of the scored log-ratios) (TRL's
    importance_sampling_level="sequence"), to be counted over ``torch.ones_like(low)``.
    """
    scored = mask.bool()
    if sequence:
        scored = torch.ones(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
    if old_logprobs is None:
        nothing = torch.zeros_like(scored)
        return nothing, nothing
    log_ratio = logprobs - old_logprobs.float()
    if sequence:
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    sign = advantages.reshape(-1, 1)
    low = (ratio < 1 - clip_low) & (sign < 0) & scored
    high = (ratio > 1 + clip_high) & (sign > 0) & scored
    return low, high


def local_vector(metrics: Mapping[str, torch.Tensor], entropy: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                 mask: torch.Tensor, policy_loss: torch.Tensor, *, num_processes: int,
                 process_index: int, clip_mask: torch.Tensor | None = None) -> torch.Tensor:
    """This process's float32 vector of sums and extreme slots (module docstring), on the loss's device.

    Args:
        metrics: the fused loss's metrics (``tokens``, ``ref_kl`` when present, ``entropy_pos`` /
            ``entropy_neg`` with ``tokens_pos`` / ``tokens_neg``).
        entropy: [B, T] float32 per-token entropy, 0 off the mask.
        low, high: [B, T] bool clip flags (``clip_flags``; [B, 1] sequence flags).
        mask: [B, T] 0/1 scored tokens.
        policy_loss: 0-dim, TRL's ``policy_loss`` value of this micro-batch.
        num_processes, process_index: W and this process's rank.
        clip_mask: what the clip flags are counted over (None: ``mask``; for [B, 1] sequence
            flags, ones of their shape).
    """
    clip_mask = mask if clip_mask is None else clip_mask
    tokens = metrics["tokens"]
    zero = torch.zeros_like(tokens)
    sums = torch.stack([
        tokens,
        entropy.sum(),
        metrics["ref_kl"] * tokens if "ref_kl" in metrics else zero,
        low.sum().float(),
        high.sum().float(),
        metrics["entropy_pos"] * metrics["tokens_pos"],
        metrics["tokens_pos"],
        metrics["entropy_neg"] * metrics["tokens_neg"],
        metrics["tokens_neg"],
        policy_loss.detach().float().reshape(()),
        clip_mask.sum().float(),
    ])
    extremes = torch.zeros(2, num_processes, dtype=torch.float32, device=tokens.device)
    extremes[0, process_index] = _sequence_extreme(low, clip_mask, torch.amin)
    extremes[1, process_index] = _sequence_extreme(high, clip_mask, torch.amax)
    return torch.cat([sums.float(), extremes.reshape(-1)])


def _sequence_extreme(flags: torch.Tensor, mask: torch.Tensor, reduce) -> torch.Tensor:
    """``reduce`` over the sequences with scored tokens of their flagged share; NaN when there are none."""
    counts = mask.sum(dim=1).float()
    share = flags.sum(dim=1).float() / counts.clamp(min=1.0)
    has_tokens = counts > 0
    filler = torch.inf if reduce is torch.amin else -torch.inf
    extreme = reduce(torch.where(has_tokens, share, torch.full_like(share, filler)))
    return torch.where(has_tokens.any(), extreme, torch.full_like(extreme, float("nan")))


def global_metrics(values: list[float], *, num_processes: int, kl: bool, policy_loss: bool,
                   cispo: bool = False) -> dict[str, float]:
    """The logged metrics from the reduced vector (``local_vector`` summed over processes).

    ``cispo``: TRL's CISPO metric ``cispo_clip_ratio`` (the high-clip share) replaces ``clip_ratio/*``.
    """
    sums = dict(zip(SUMS, values[:len(SUMS)], strict=True))
    lows, highs = values[len(SUMS):len(SUMS) + num_processes], values[len(SUMS) + num_processes:]
    tokens = max(sums["tokens"], 1.0)
    out = {"entropy": sums["entropy"] / tokens}
    if kl:
        out["kl"] = sums["kl"] / tokens
    clip_count = max(sums["clip_count"], 1.0)
    if cispo:
        out["cispo_clip_ratio"] = sums["clip_high"] / clip_count
    else:
        out["clip_ratio/low_mean"] = sums["clip_low"] / clip_count
        out["clip_ratio/high_mean"] = sums["clip_high"] / clip_count
        out["clip_ratio/region_mean"] = (sums["clip_low"] + sums["clip_high"]) / clip_count
        out["clip_ratio/low_min"] = _nan_extreme(lows, min)
        out["clip_ratio/high_max"] = _nan_extreme(highs, max)
    out["entropy_pos"] = sums["entropy_pos"] / max(sums["tokens_pos"], 1.0)
    out["entropy_neg"] = sums["entropy_neg"] / max(sums["tokens_neg"], 1.0)
    if policy_loss:
        out["policy_loss"] = sums["policy_loss"] / num_processes
    return out


def _nan_extreme(values: list[float], reduce) -> float:
    present = [v for v in values if not math.isnan(v)]
    return reduce(present) if present else math.nan
