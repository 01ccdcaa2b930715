"""The ``asymgrpo`` advantage estimator, called as verl's ``compute_advantage`` calls a registered one."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from asymgrpo_kernels import group_advantages

from .config import advantage_options

#: verl's uid labels: a numpy object / str array, or any sequence or 1-D tensor of hashable labels.
Labels = np.ndarray | Sequence[Any] | torch.Tensor


def group_ids(index: Labels | None, batch: int, device: torch.device) -> torch.Tensor:
    """[B] int64 group ids on ``device`` from verl's uid labels (any hashable values), in first-seen order.

    Raises ValueError when ``index`` is missing or is not one label per completion.
    """
    if index is None:
        raise ValueError("index is required: the asymgrpo estimator groups completions by verl's uid array")
    labels = np.asarray(index.tolist() if isinstance(index, torch.Tensor) else index, dtype=object)
    if labels.shape != (batch,):
        raise ValueError(f"index must hold one uid per completion, shape [{batch}], got {list(labels.shape)}")
    codes: dict[Any, int] = {}
    return torch.tensor([codes.setdefault(label, len(codes)) for label in labels.tolist()], device=device)


def asymgrpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Labels | None = None,
    config: Mapping[str, Any] | None = None,
    reward_baselines: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AsymGRPO outcome advantages (docs/algorithm.md §2), registered in verl as ``asymgrpo``.

    Each completion's reward is its row sum of ``token_level_rewards`` (verl's outcome reward);
    the group's z uses verl's std convention by default (Bessel std + 1e-6, so beta 0.5 / 0.5 is
    verl's GRPO advantage) and is modulated per sign with beta_pos / beta_neg. A group of one gets
    advantage 0 (verl's GRPO gives it its raw reward).

    Args:
        token_level_rewards: [B, T] float rewards.
        response_mask: [B, T] 0/1 (bool, integer or float) mask of the response tokens.
        index: [B] group labels, verl's ``non_tensor_batch["uid"]`` (numpy object / str array);
            any hashable labels, in any order.
        config: verl's ``algorithm`` config (DictConfig); keys read: beta_pos, beta_neg,
            asymgrpo_std, asymgrpo_eps, norm_adv_by_std_in_grpo (``config.advantage_options``).
        reward_baselines: accepted because verl passes it whenever its batch has one; not used.

    Returns:
        (advantages, returns): both the same [B, T] float32 tensor, A[:, None] * response_mask.

    Raises:
        ValueError / TypeError: a bad config key or value (named), a missing or misshapen index,
            a non-finite reward (its group named), before anything is computed.
    """
    options = advantage_options(config)
    if token_level_rewards.dim() != 2 or response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"token_level_rewards and response_mask must both be [B, T], got {list(token_level_rewards.shape)} "
            f"and {list(response_mask.shape)}"
        )
    ids = group_ids(index, token_level_rewards.shape[0], token_level_rewards.device)
    scores = group_advantages(token_level_rewards.detach().sum(dim=-1), ids, options=options)
    advantages = scores[:, None] * response_mask
    return advantages, advantages
