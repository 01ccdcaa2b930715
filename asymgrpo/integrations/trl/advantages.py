"""From TRL's per-function rewards to this process's AsymGRPO advantages (docs/algorithm.md §2)."""

from __future__ import annotations

import torch

from asymgrpo_kernels import AdvantageOptions, group_advantages


def weighted_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N] float32 reward of each completion: the weighted sum over reward functions, as TRL forms it.

    Args:
        rewards_per_func: [N, F] float, NaN where a function returned None.
        weights: [F] float, the reward weights.

    Returns:
        The NaN-skipping weighted sum; NaN where every function returned None (such a completion is
        left out of its group and gets advantage 0, ``nan_rewards="exclude"``).
    """
    rewards_per_func = rewards_per_func.float()
    total = (rewards_per_func * weights.to(rewards_per_func.device, torch.float32)).nansum(dim=1)
    unscored = torch.isnan(rewards_per_func).all(dim=1)
    return torch.where(unscored, torch.full_like(total, float("nan")), total)


def completion_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, *, group_size: int,
                          options: AdvantageOptions) -> torch.Tensor:
    """[N] float32 advantages of the gathered completions, groups of ``group_size`` in a row.

    ``rewards_per_func`` [N, F] holds every process's completions (TRL gathers them before
    normalizing), so each group is whole; slice the result with ``process_slice``.
    """
    return group_advantages(weighted_rewards(rewards_per_func, weights), group_size=group_size, options=options)


def process_slice(values: torch.Tensor, process_index: int, local_size: int) -> torch.Tensor:
    """The rows of ``values`` (gathered over processes in process order) that belong to ``process_index``."""
    return values[process_index * local_size:(process_index + 1) * local_size]
