"""The policy losses whose per-token inputs depend on the whole batch (docs/algorithm.md §8).

GSPO's sequence ratio, Clip-Cov's and KL-Cov's covariance selections and the high-entropy token
mask each read every scored token's log-prob (or entropy) before any token's gradient can be
formed. Once read, each becomes an ordinary per-token input of ``token_terms``:

    gspo                  old_logp_t <- logp_t - mean over t' of its sequence (logp_t' - old_logp_t'),
                          so r_t = s_i, GSPO's sequence ratio, and d r_t / d logp_t = s_i
    clip_cov              is_w_t <- 0 for clip_cov_ratio * n tokens (at least one) drawn at random
                          from the unclipped ones with clip_cov_lb < cov_t < clip_cov_ub
    kl_cov                penalty_t <- kl_cov_coef for the kl_cov_ratio * n tokens (at least one)
                          of largest cov_t
    top_entropy_quantile  is_w_t <- 0 where H_t is below the (1 - top_entropy_quantile) quantile
                          of the batch's entropies (linear interpolation, as torch.quantile)

with cov_t = (A_t - mean A) (logp_t - mean logp), means over the n scored tokens of the call.
The statistics are of detached values (stop-gradient, as in verl and TRL) and of one call: under
gradient accumulation, of one micro-batch, as verl computes them. Clip-Cov draws its tokens with
``torch.randperm`` from torch's global CPU generator, as verl does, so a seeded run is repeatable
and a test can draw the same tokens as verl.
"""

from __future__ import annotations

import dataclasses

import torch

from .token_terms import PolicyTokens


def batch_statistics(
    tokens: PolicyTokens, logprobs: torch.Tensor, entropy: torch.Tensor | None
) -> tuple[PolicyTokens, dict[str, torch.Tensor]]:
    """``tokens`` with the per-token inputs its options derive from the batch, and their metrics.

    logprobs, entropy: [n] of the tokens (entropy may be None unless top_entropy_quantile < 1).
    Metrics (0-dim float32): cov_frac, the share of scored tokens Clip-Cov cuts or KL-Cov
    penalizes; entropy_kept_frac, the share the entropy quantile keeps. Options without a batch
    statistic return ``tokens`` unchanged and no metrics.
    """
    options = tokens.options
    if not options.needs_batch_statistics:
        return tokens, {}
    dtype, valid = tokens.advantages.dtype, tokens.valid
    logprobs = logprobs.detach().to(dtype)
    old = logprobs if tokens.old_logprobs is None else tokens.old_logprobs
    changes: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    keep = None
    if options.policy_loss == "gspo":
        changes["old_logprobs"] = logprobs - sequence_means(torch.where(valid, logprobs - old, 0.0), valid, tokens.sequences)
    elif options.policy_loss in ("clip_cov", "kl_cov"):
        cov = covariance(tokens.advantages, logprobs, valid)
        if options.policy_loss == "clip_cov":
            chosen = clip_cov_tokens(cov, valid, unclipped(logprobs, old, tokens.advantages, options), options)
            keep = ~chosen
        else:
            chosen = largest_cov_tokens(cov, valid, options.kl_cov_ratio)
            changes["penalty"] = chosen.to(dtype) * options.kl_cov_coef
        metrics["cov_frac"] = _share(chosen, valid)
    if options.top_entropy_quantile < 1.0:
        high = high_entropy_tokens(entropy.detach(), valid, options.top_entropy_quantile)
        keep = high if keep is None else keep & high
        metrics["entropy_kept_frac"] = _share(high, valid)
    if keep is not None:
        weight = keep.to(dtype)
        changes["is_weights"] = weight if tokens.is_weights is None else tokens.is_weights * weight
    return dataclasses.replace(tokens, **changes), metrics


def sequence_means(values: torch.Tensor, valid: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """[n]: each token's mean of ``values`` over the valid tokens of its sequence (0 without any).

    ``sequences`` [n] int64 must be sorted (the tokens of a sequence are contiguous, as every
    caller lays them out); the sums are differences of a float64 running sum, with no host sync.
    """
    start = torch.searchsorted(sequences, sequences, right=False)
    end = torch.searchsorted(sequences, sequences, right=True)

    def segment_sums(x: torch.Tensor) -> torch.Tensor:
        running = torch.cat([x.new_zeros(1, dtype=torch.float64), x.double().cumsum(0)])
        return running[end] - running[start]

    counts = segment_sums(valid.to(torch.float64)).clamp(min=1.0)
    return (segment_sums(values) / counts).to(values.dtype)


def covariance(advantages: torch.Tensor, logprobs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[n] cov_t = (A_t - mean A)(logp_t - mean logp), means over ``valid``; -inf elsewhere."""
    if not bool(valid.any()):
        return torch.full_like(logprobs, float("-inf"))
    centred = [x - x[valid].mean() for x in (advantages, logprobs)]
    return torch.where(valid, centred[0] * centred[1], float("-inf"))


def unclipped(logprobs: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, options) -> torch.Tensor:
    """[n] bool: the PPO clip is not active (Clip-Cov draws only from these tokens)."""
    ratio = torch.exp(logprobs - old)
    return ~(((advantages < 0) & (ratio < 1.0 - options.clip_low)) | ((advantages > 0) & (ratio > 1.0 + options.clip_high)))


def clip_cov_tokens(cov: torch.Tensor, valid: torch.Tensor, allowed: torch.Tensor, options) -> torch.Tensor:
    """[n] bool: max(int(clip_cov_ratio * n_valid), 1) tokens drawn uniformly (``torch.randperm`` on
    the CPU generator) among the allowed valid ones with clip_cov_lb < cov < clip_cov_ub."""
    window = valid & allowed & (cov > options.clip_cov_lb) & (cov < options.clip_cov_ub)
    candidates = window.nonzero().flatten()
    count = max(int(options.clip_cov_ratio * int(valid.sum())), 1)
    drawn = candidates[torch.randperm(len(candidates))[:count].to(candidates.device)]
    return torch.zeros_like(valid).index_fill_(0, drawn, True)


def largest_cov_tokens(cov: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """[n] bool: the max(int(ratio * n_valid), 1) valid tokens of largest cov (none without valid tokens)."""
    positions = valid.nonzero().flatten()
    if len(positions) == 0:
        return torch.zeros_like(valid)
    count = max(int(len(positions) * ratio), 1)
    largest = positions[torch.topk(cov[positions], count, largest=True).indices]
    return torch.zeros_like(valid).index_fill_(0, largest, True)


def high_entropy_tokens(entropy: torch.Tensor, valid: torch.Tensor, top: float) -> torch.Tensor:
    """[n] bool: valid tokens whose entropy is >= the (1 - top) quantile of the valid entropies.

    The quantile is torch.quantile's linear interpolation in float32, computed from a sort so
    that it has no size limit.
    """
    values = entropy.float()
    ranked = values[valid].sort().values
    if len(ranked) == 0:
        return torch.zeros_like(valid)
    rank = torch.tensor(1.0 - top, dtype=torch.float32, device=values.device) * (len(ranked) - 1)
    below = rank.floor()
    above = torch.clamp(below + 1, max=len(ranked) - 1)
    threshold = torch.lerp(ranked[below.long()], ranked[above.long()], rank - below)
    return valid & (values >= threshold)


def _share(chosen: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return ((chosen & valid).sum() / valid.sum().clamp(min=1)).float()
