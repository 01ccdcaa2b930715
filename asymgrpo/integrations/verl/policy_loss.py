"""The ``asymgrpo`` policy loss, called as verl's ``ppo_loss`` calls a registered one."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from asymgrpo_kernels import asym_policy_loss, metric_values
from asymgrpo_kernels.options import LOG_RATIO_LIMIT
from asymgrpo_kernels.policy_loss import masked_mean

from .config import loss_options, num_items

#: Our metrics (docs/algorithm.md §4) reported beside verl's, as ``actor/<name>``.
OWN_METRICS = ("clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean", "ratio_max")


def verl_metrics(
    metrics: Mapping[str, torch.Tensor], old_log_prob: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """verl's vanilla-loss metrics and ours, as 0-dim tensors, from ``asym_policy_loss``'s metrics.

    actor/pg_clipfrac: share of tokens whose ratio clip is active (low + high);
    actor/ppo_kl: mean of old - new log-prob (the log-ratio clamped to +-20, as verl does);
    actor/pg_clipfrac_lower: share of tokens where the dual clip caps the loss;
    actor/<name> for ``OWN_METRICS``.
    """
    log_ratio = (old_log_prob.detach() - log_prob.detach()).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return {
        "actor/pg_clipfrac": metrics["clip_frac_low"] + metrics["clip_frac_high"],
        "actor/ppo_kl": masked_mean(log_ratio, mask != 0),
        "actor/pg_clipfrac_lower": metrics["clip_frac_dual"],
        **{f"actor/{name}": metrics[name] for name in OWN_METRICS},
    }


def asymgrpo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Mapping[str, Any] | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped AsymGRPO policy loss (docs/algorithm.md §3) with verl's vanilla-loss semantics.

    Registered in verl as ``asymgrpo`` (``actor.policy_loss.loss_mode=asymgrpo``). The math is
    ``asym_policy_loss`` (backend "auto"): the ratio clip [1 - clip_ratio_low, 1 + clip_ratio_high],
    the dual clip clip_ratio_c for A < 0, ``rollout_is_weights`` on the policy term, and the
    aggregation of verl's ``agg_loss`` for every loss_agg_mode, global_batch_info included (the
    ``num_items`` of this package's ``config`` module). Advantages come from the estimator already modulated, so this is
    verl's vanilla loss computed by our kernels, with our metrics besides verl's.

    Args:
        old_log_prob: [B, T] float log-probs of the policy that sampled (data).
        log_prob: [B, T] float log-probs of the current policy; differentiable.
        advantages: [B, T] float (or [B]) advantages.
        response_mask: [B, T] bool or 0/1 float mask of the response tokens.
        loss_agg_mode: "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum" or
            "seq-mean-token-sum-norm".
        config: verl's ``ActorConfig`` (or its DictConfig): clip_ratio, clip_ratio_low,
            clip_ratio_high, clip_ratio_c, global_batch_info.
        rollout_is_weights: None or [B, T] float importance weights (data).

    Returns:
        loss: 0-dim float32 tensor, differentiable with respect to log_prob.
        metrics: Python floats: actor/pg_clipfrac, actor/ppo_kl, actor/pg_clipfrac_lower (verl's
            names and meaning) and actor/clip_frac_low, actor/clip_frac_high, actor/approx_kl,
            actor/ratio_mean, actor/ratio_max (docs/algorithm.md §4), read in one transfer.

    Raises:
        ValueError / TypeError: a missing config, a bad key or value (named), a bad tensor (named),
            before any kernel runs.
    """
    if config is None:
        raise ValueError("config is required: the asymgrpo policy loss reads verl's actor config")
    options = loss_options(config, loss_agg_mode)
    for name, value in (("old_log_prob", old_log_prob), ("response_mask", response_mask)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name} must be a [B, T] tensor")
    loss, metrics = asym_policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        is_weights=rollout_is_weights,
        num_items=num_items(config, loss_agg_mode, response_mask),
        options=options,
    )
    return loss, metric_values(verl_metrics(metrics, old_log_prob, log_prob, response_mask))
