"""group_advantages: asymmetric group-normalized advantages (docs/algorithm.md §2).

Per group g of rewards r_i:

    z_i = (r_i - mean_g) / d_g                      normalize="std"
    z_i =  r_i - mean_g                             normalize="none"
    A_i = sign(z_i) * |z_i| ** (2 * beta_pos)       where z_i > 0
    A_i = sign(z_i) * |z_i| ** (2 * beta_neg)       where z_i < 0

with the denominator d_g chosen by ``unbiased_std``:

    unbiased_std=False (default):  d_g = max(std_pop_g, eps)
        The population std. For 0/1 rewards std_pop >= sqrt(G - 1) / G, far above eps, so
        the closed forms ((1-p)/p)**beta_pos and -(p/(1-p))**beta_neg hold exactly; eps only
        keeps differences at noise level (std below eps) from being blown up to unit size.
    unbiased_std=True:             d_g = std_unbiased_g + eps
        The TRL / verl convention (torch.std, Bessel-corrected), so beta = 0.5 gives their
        advantage exactly: verl's default eps is 1e-6, TRL's GRPOTrainer uses 1e-4.

Groups where every reward is equal, and groups of one, carry no signal: advantage 0.
(verl returns the raw reward for a group of one and TRL returns NaN; we return 0.)

Group statistics are accumulated in float64; the power is taken in float32, as
exp2(e * log2|z|) (e == 1 passes |z| through unchanged). The torch and Triton paths run
the same formula.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import get_backend
from .options import AdvantageKeywords, AdvantageOptions, Unpack
from .validate import check_group_inputs, host_values


class Segments(NamedTuple):
    """The groups of a batch: inverse [B] int64 (dense group index in [0, K)), counts [K] int64,
    and the largest group's size."""

    inverse: torch.Tensor
    counts: torch.Tensor
    largest: int


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    backend: str = "auto",
    options: AdvantageOptions | None = None,
    **advantage_options: Unpack[AdvantageKeywords],
) -> torch.Tensor:
    """Asymmetric group advantages, one per completion.

    Args:
        rewards: [B] floating-point, finite (a NaN or inf raises ValueError naming its group).
        group_ids: [B] integer labels, any order, groups of any size. Or pass ``group_size``.
        group_size: G, for B = (number of prompts) * G contiguous completions. Exactly one of
            ``group_ids`` and ``group_size`` must be given.
        backend: "auto" (triton on CUDA, torch elsewhere), "triton" or "torch"
            ("reference" is accepted and means torch).
        options: an ``AdvantageOptions`` (default: ``AdvantageOptions()``, AsymGRPO's 0.9 / 0.4).
        **advantage_options: its fields as keywords, replacing those of ``options``:
            ``beta_pos`` (0.9) and ``beta_neg`` (0.4), the exponents (>= 0) of the positive and
            negative channel (0.5 / 0.5 is GRPO, 0 / 0 is +1 / -1); ``normalize`` ("std" or
            "none"); ``unbiased_std`` (False: max(population std, eps); True: Bessel std + eps,
            the TRL / verl convention); ``eps`` (1e-6). See the module docstring.

    Returns:
        [B] float32 advantages, not differentiable (rewards are data).
    """
    group_size = check_group_inputs(rewards, group_ids, group_size)
    options = AdvantageOptions.build(options, advantage_options)
    chosen = get_backend(backend, rewards.device)
    rewards = rewards.detach()
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    segments = _segments(rewards, group_ids, group_size)
    return chosen.group_advantages(rewards, segments, options)


def _segments(rewards: torch.Tensor, group_ids: torch.Tensor | None, group_size: int | None) -> Segments:
    """The batch's groups; raises ValueError naming the group of a non-finite reward (one host sync)."""
    batch = rewards.shape[0]
    if group_size is not None:
        inverse = torch.arange(batch, device=rewards.device) // group_size
        counts = torch.full((batch // group_size,), group_size, dtype=torch.int64, device=rewards.device)
    else:
        _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    bad = ~torch.isfinite(rewards)
    n_bad, largest = host_values(bad.sum(), counts.max())
    if n_bad:
        index = int(bad.nonzero()[0, 0])
        group = f"group_ids={int(group_ids[index])}" if group_ids is not None else f"group {int(inverse[index])}"
        raise ValueError(
            f"rewards must be finite; {group} has {rewards[index].item()} at index {index} "
            f"({int(n_bad)} non-finite rewards in all)"
        )
    return Segments(inverse, counts, int(largest))


def modulate(z: torch.Tensor, beta_pos: float, beta_neg: float) -> torch.Tensor:
    """sign(z) * |z| ** (2 * beta_sign(z)) in float32 (0 where z == 0), via exp2(e * log2|z|)."""
    z = z.float()
    exponent = torch.where(z > 0, 2.0 * beta_pos, 2.0 * beta_neg)
    magnitude = z.abs()
    powered = torch.exp2(exponent * torch.log2(torch.where(z == 0, torch.ones_like(z), magnitude)))
    powered = torch.where(exponent == 1.0, magnitude, powered)
    return torch.where(z == 0, torch.zeros_like(z), torch.copysign(powered, z))


def group_advantages_torch(rewards: torch.Tensor, segments: Segments, options: AdvantageOptions) -> torch.Tensor:
    """The torch path: float64 group statistics by index_add / scatter_reduce, float32 power."""
    inverse, counts = segments.inverse, segments.counts
    n_groups = counts.numel()
    r = rewards.double()
    n = counts.double()
    mean = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r) / n
    dev = r - mean[inverse]
    lo = torch.full_like(mean, float("inf")).scatter_reduce_(0, inverse, r, "amin")
    hi = torch.full_like(mean, float("-inf")).scatter_reduce_(0, inverse, r, "amax")
    silent = (counts == 1) | (lo == hi)
    if options.normalize == "std":
        ssq = torch.zeros_like(mean).index_add_(0, inverse, dev * dev)
        if options.unbiased_std:
            denom = torch.sqrt(ssq / (n - 1).clamp(min=1)) + options.eps
        else:
            denom = torch.sqrt(ssq / n).clamp(min=options.eps)
        z = dev / torch.where(silent, torch.ones_like(denom), denom)[inverse]
    else:
        z = dev
    z = torch.where(silent[inverse], torch.zeros_like(z), z)
    return modulate(z, options.beta_pos, options.beta_neg)
