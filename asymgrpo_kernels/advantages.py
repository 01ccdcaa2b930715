"""group_advantages: asymmetric group-normalized advantages (docs/algorithm.md §2).

Per group g of rewards r_i:

    z_i = (r_i - mean_g) / d_g                      normalize="std"
    z_i =  r_i - mean_g                             normalize="none"
    A_i = sign(z_i) * |z_i| ** (2 * beta_pos)       where z_i > 0
    A_i = sign(z_i) * |z_i| ** (2 * beta_neg)       where z_i < 0

with the denominator d_g chosen by the std convention ``std``:

    std="population" (default):  d_g = max(std_pop_g, eps)
        For 0/1 rewards std_pop >= sqrt(G - 1) / G, far above eps, so the closed forms
        ((1-p)/p)**beta_pos and -(p/(1-p))**beta_neg hold exactly; eps only keeps
        differences at noise level (std below eps) from being blown up to unit size.
    std="unbiased":              d_g = std_unbiased_g + eps
        The TRL / verl convention (torch.std, Bessel-corrected), so beta = 0.5 gives their
        advantage exactly: verl's default eps is 1e-6, TRL's GRPOTrainer uses 1e-4
        (``options.STD_CONVENTIONS``).

Groups where every reward is equal, and groups of one, carry no signal: advantage 0.
(verl returns the raw reward for a group of one and TRL returns NaN; we return 0.)
With ``nan_rewards="exclude"`` a NaN reward (an unscorable completion) is left out of its
group: mean, std and size are those of the group's other rewards, and its advantage is 0.

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
        rewards: [B] floating-point, finite (a NaN or inf raises ValueError naming its group;
            with ``nan_rewards="exclude"`` NaN marks a reward to leave out).
        group_ids: [B] integer labels, any order, groups of any size. Or pass ``group_size``.
        group_size: G, for B = (number of prompts) * G contiguous completions. Exactly one of
            ``group_ids`` and ``group_size`` must be given.
        backend: "auto" (triton on CUDA, torch elsewhere), "triton" or "torch"
            ("reference" is accepted and means torch).
        options: an ``AdvantageOptions`` (default: ``AdvantageOptions()``, AsymGRPO's 0.9 / 0.4).
        **advantage_options: its fields as keywords, replacing those of ``options``:
            ``beta_pos`` (0.9) and ``beta_neg`` (0.4), the exponents (>= 0) of the positive and
            negative channel (0.5 / 0.5 is GRPO, 0 / 0 is +1 / -1); ``normalize`` ("std" or
            "none"); ``std`` ("population": max(population std, eps); "unbiased": Bessel std +
            eps, the TRL / verl convention); ``eps`` (1e-6); ``nan_rewards`` ("raise" or
            "exclude"). See the module docstring.

    Returns:
        [B] float32 advantages, not differentiable (rewards are data).
    """
    group_size = check_group_inputs(rewards, group_ids, group_size)
    options = AdvantageOptions.build(options, advantage_options)
    chosen = get_backend(backend, rewards.device)
    rewards = rewards.detach()
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    segments = _segments(rewards, group_ids, group_size, options.nan_rewards)
    return chosen.group_advantages(rewards, segments, options)


def _segments(
    rewards: torch.Tensor, group_ids: torch.Tensor | None, group_size: int | None, nan_rewards: str
) -> Segments:
    """The batch's groups; raises ValueError naming the group of a reward the policy does not
    accept (inf, or NaN unless ``nan_rewards="exclude"``), with one host sync."""
    batch = rewards.shape[0]
    if group_size is not None:
        inverse = torch.arange(batch, device=rewards.device) // group_size
        counts = torch.full((batch // group_size,), group_size, dtype=torch.int64, device=rewards.device)
    else:
        _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    bad = torch.isinf(rewards) if nan_rewards == "exclude" else ~torch.isfinite(rewards)
    n_bad, largest = host_values(bad.sum(), counts.max())
    if n_bad:
        index = int(bad.nonzero()[0, 0])
        group = f"group_ids={int(group_ids[index])}" if group_ids is not None else f"group {int(inverse[index])}"
        allowed = "finite or NaN (nan_rewards='exclude')" if nan_rewards == "exclude" else "finite"
        raise ValueError(
            f"rewards must be {allowed}; {group} has {rewards[index].item()} at index {index} "
            f"({int(n_bad)} such rewards in all)"
        )
    return Segments(inverse, counts, int(largest))


def modulate_advantages(z: torch.Tensor, beta_pos: float, beta_neg: float) -> torch.Tensor:
    """The asymmetric modulation on its own: standardized rewards z -> advantages.

    A = sign(z) * |z| ** (2 * beta_pos) where z > 0, sign(z) * |z| ** (2 * beta_neg) where
    z < 0, and 0 where z == 0 (docs/algorithm.md §2): for a trainer that computes its own z
    (its own baseline or normalization) and wants AsymGRPO's channels on top.

    Args:
        z: floating-point tensor of any shape (data: the result is not differentiable).
        beta_pos: exponent of the positive channel, >= 0 (0.5 leaves z unchanged).
        beta_neg: exponent of the negative channel, >= 0.

    Returns:
        float32 tensor shaped like z, computed as in ``group_advantages`` (exp2(e * log2|z|),
        with |z| passed through where the exponent is 1). NaN stays NaN.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.dtype.is_floating_point:
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}")
    options = AdvantageOptions(beta_pos=beta_pos, beta_neg=beta_neg)
    return modulate(z.detach(), options.beta_pos, options.beta_neg)


def modulate(z: torch.Tensor, beta_pos: float, beta_neg: float) -> torch.Tensor:
    """sign(z) * |z| ** (2 * beta_sign(z)) in float32 (0 where z == 0), via exp2(e * log2|z|)."""
    z = z.float()
    exponent = torch.where(z > 0, 2.0 * beta_pos, 2.0 * beta_neg)
    magnitude = z.abs()
    powered = torch.exp2(exponent * torch.log2(torch.where(z == 0, torch.ones_like(z), magnitude)))
    powered = torch.where(exponent == 1.0, magnitude, powered)
    return torch.where(z == 0, torch.zeros_like(z), torch.copysign(powered, z))


def group_advantages_torch(rewards: torch.Tensor, segments: Segments, options: AdvantageOptions) -> torch.Tensor:
    """The torch path: float64 group statistics by index_add / scatter_reduce, float32 power.

    NaN rewards (present only under ``nan_rewards="exclude"``) count nowhere and get 0.
    """
    inverse, n_groups = segments.inverse, segments.counts.numel()
    r = rewards.double()
    scored = ~torch.isnan(r)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    n = zeros.index_add(0, inverse, scored.double())
    mean = zeros.index_add(0, inverse, torch.where(scored, r, 0.0)) / n.clamp(min=1)
    dev = torch.where(scored, r - mean[inverse], 0.0)
    lo = torch.full_like(mean, float("inf")).scatter_reduce_(0, inverse, torch.where(scored, r, float("inf")), "amin")
    hi = torch.full_like(mean, float("-inf")).scatter_reduce_(0, inverse, torch.where(scored, r, float("-inf")), "amax")
    silent = (n <= 1) | (lo == hi)
    if options.normalize == "std":
        ssq = zeros.index_add(0, inverse, dev * dev)
        if options.std == "unbiased":
            denom = torch.sqrt(ssq / (n - 1).clamp(min=1)) + options.eps
        else:
            denom = torch.sqrt(ssq / n.clamp(min=1)).clamp(min=options.eps)
        z = dev / torch.where(silent, torch.ones_like(denom), denom)[inverse]
    else:
        z = dev
    z = torch.where(silent[inverse] | ~scored, torch.zeros_like(z), z)
    return modulate(z, options.beta_pos, options.beta_neg)
