"""group_advantages: asymmetric group-normalized advantages (ALGORITHM.md section 2).

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

import torch

from .dispatch import resolve_backend
from .validate import (
    BACKENDS,
    NORMALIZE_MODES,
    check_choice,
    check_group_inputs,
    check_nonnegative_finite,
)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    beta_pos: float = 0.9,
    beta_neg: float = 0.4,
    normalize: str = "std",
    unbiased_std: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """Asymmetric group advantages, one per completion.

    Args:
        rewards: [B] floating-point, finite (a NaN or inf raises ValueError naming its group).
        group_ids: [B] integer labels, any order, groups of any size. Or pass ``group_size``.
        group_size: G, for B = (number of prompts) * G contiguous completions. Exactly one of
            ``group_ids`` and ``group_size`` must be given.
        beta_pos, beta_neg: exponents (>= 0) of the positive and negative channel; 0.5 and
            0.5 is GRPO, 0 and 0 is +1 / -1.
        normalize: "std" (divide by the group's std) or "none" (only subtract the mean).
        unbiased_std: False for the population std (exact closed forms), True for the
            Bessel-corrected std plus eps (TRL / verl); see the module docstring.
        eps: >= 0; how it enters depends on ``unbiased_std`` (module docstring).
        backend: "auto" (triton on CUDA, torch elsewhere), "triton" or "torch"
            ("reference" is accepted and means torch).

    Returns:
        [B] float32 advantages, not differentiable (rewards are data).
    """
    group_size = check_group_inputs(rewards, group_ids, group_size)
    beta_pos = check_nonnegative_finite(beta_pos, "beta_pos")
    beta_neg = check_nonnegative_finite(beta_neg, "beta_neg")
    eps = check_nonnegative_finite(eps, "eps")
    check_choice(normalize, "normalize", NORMALIZE_MODES)
    if not isinstance(unbiased_std, bool):
        raise TypeError(f"unbiased_std must be a bool, got {type(unbiased_std).__name__}")
    backend = resolve_backend(check_choice(backend, "backend", BACKENDS), rewards.device)

    rewards = rewards.detach()
    inverse, counts = _segments(rewards, group_ids, group_size)
    _check_finite(rewards, inverse, group_ids)
    options = dict(beta_pos=beta_pos, beta_neg=beta_neg, std=normalize == "std", unbiased=unbiased_std, eps=eps)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    if backend == "triton":
        from .triton.advantages import group_advantages_triton

        order = torch.argsort(inverse, stable=True)
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=rewards.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return group_advantages_triton(rewards, order, offsets, **options)
    return _group_advantages_torch(rewards, inverse, counts, **options)


def _segments(
    rewards: torch.Tensor, group_ids: torch.Tensor | None, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse [B] int64 dense group index in [0, K), counts [K] int64)."""
    batch = rewards.shape[0]
    if group_size is not None:
        inverse = torch.arange(batch, device=rewards.device) // group_size
        counts = torch.full((batch // group_size,), group_size, dtype=torch.int64, device=rewards.device)
        return inverse, counts
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return inverse, counts


def _check_finite(rewards: torch.Tensor, inverse: torch.Tensor, group_ids: torch.Tensor | None) -> None:
    bad = ~torch.isfinite(rewards)
    if rewards.numel() and bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        group = f"group_ids={int(group_ids[index])}" if group_ids is not None else f"group {int(inverse[index])}"
        raise ValueError(
            f"rewards must be finite; {group} has {rewards[index].item()} at index {index} "
            f"({int(bad.sum())} non-finite rewards in all)"
        )


def modulate(z: torch.Tensor, beta_pos: float, beta_neg: float) -> torch.Tensor:
    """sign(z) * |z| ** (2 * beta_sign(z)) in float32 (0 where z == 0), via exp2(e * log2|z|)."""
    z = z.float()
    exponent = torch.where(z > 0, 2.0 * beta_pos, 2.0 * beta_neg)
    magnitude = z.abs()
    powered = torch.exp2(exponent * torch.log2(torch.where(z == 0, torch.ones_like(z), magnitude)))
    powered = torch.where(exponent == 1.0, magnitude, powered)
    return torch.where(z == 0, torch.zeros_like(z), torch.copysign(powered, z))


def _group_advantages_torch(
    rewards: torch.Tensor,
    inverse: torch.Tensor,
    counts: torch.Tensor,
    *,
    beta_pos: float,
    beta_neg: float,
    std: bool,
    unbiased: bool,
    eps: float,
) -> torch.Tensor:
    n_groups = counts.numel()
    r = rewards.double()
    n = counts.double()
    mean = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r) / n
    dev = r - mean[inverse]
    lo = torch.full_like(mean, float("inf")).scatter_reduce_(0, inverse, r, "amin")
    hi = torch.full_like(mean, float("-inf")).scatter_reduce_(0, inverse, r, "amax")
    silent = (counts == 1) | (lo == hi)
    if std:
        ssq = torch.zeros_like(mean).index_add_(0, inverse, dev * dev)
        if unbiased:
            denom = torch.sqrt(ssq / (n - 1).clamp(min=1)) + eps
        else:
            denom = torch.sqrt(ssq / n).clamp(min=eps)
        z = dev / torch.where(silent, torch.ones_like(denom), denom)[inverse]
    else:
        z = dev
    z = torch.where(silent[inverse], torch.zeros_like(z), z)
    return modulate(z, beta_pos, beta_neg)
