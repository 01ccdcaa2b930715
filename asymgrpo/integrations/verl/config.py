"""Reading verl's configs: the ``algorithm`` keys of the estimator, the actor keys of the policy loss.

Every value goes through the kernels' own option checks (``AdvantageOptions``, ``LossOptions``);
an error names the verl key it came from (``algorithm.beta_pos``, ``actor.clip_ratio_c``, ...),
never only the option field it maps to.

The estimator's keys, at the top level of verl's ``algorithm`` config (``+algorithm.beta_pos=0.9``):

    beta_pos                 exponent of the positive channel, >= 0 (default 0.9)
    beta_neg                 exponent of the negative channel, >= 0 (default 0.4)
    asymgrpo_std             std convention, a name of ``STD_CONVENTIONS`` (default "verl":
                             Bessel std + eps, verl's own GRPO denominator)
    asymgrpo_eps             eps, >= 0 (default: the convention's, 1e-6 for "verl")
    norm_adv_by_std_in_grpo  verl's own key: False divides by nothing (Dr. GRPO, normalize="none")

A key that is neither one of these nor an ``AlgoConfig`` field but looks like one of ours (it
starts with ``asymgrpo`` or is a close spelling of one, e.g. ``beta_poss``) raises.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

import torch
from verl.trainer.config import AlgoConfig

from asymgrpo_kernels import PRESETS, STD_CONVENTIONS, AdvantageOptions, LossOptions

KEY_PREFIX = "asymgrpo"
DEFAULT_STD = "verl"
#: Our algorithm keys that map to an ``AdvantageOptions`` field, with that field.
FIELD_KEYS = {"beta_pos": "beta_pos", "beta_neg": "beta_neg", "asymgrpo_eps": "eps"}
ALGORITHM_KEYS = (*FIELD_KEYS, "asymgrpo_std")
#: verl's clip_ratio_c default: its vanilla loss always applies the dual clip with it.
DEFAULT_DUAL_CLIP = 3.0


def _checked(cls: type, field: str, value: Any, key: str, **context: Any) -> Any:
    """``value`` as ``cls(field=value, **context)`` (an options class) normalizes it; errors name ``key``."""
    try:
        return getattr(cls(**context, **{field: value}), field)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{key}: {err}") from err


def check_algorithm_keys(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming a key of ``config`` that looks like a misspelling of ours.

    A key is ours if it is in ``ALGORITHM_KEYS``, verl's if it is an ``AlgoConfig`` field; any
    other key that starts with ``asymgrpo`` or is a close spelling of one of ours is an error,
    and the rest (other plugins' keys) are left alone.
    """
    known = {f.name for f in dataclasses.fields(AlgoConfig)} | set(ALGORITHM_KEYS)
    for key in config.keys():
        if key in known:
            continue
        if str(key).startswith(KEY_PREFIX) or difflib.get_close_matches(str(key), ALGORITHM_KEYS, n=1, cutoff=0.8):
            raise ValueError(
                f"algorithm.{key} is not a key of the asymgrpo advantage estimator; "
                f"its keys are {', '.join(ALGORITHM_KEYS)} (and verl's norm_adv_by_std_in_grpo)"
            )


def advantage_options(config: Mapping[str, Any] | None) -> AdvantageOptions:
    """The ``AdvantageOptions`` that verl's ``algorithm`` config (a DictConfig, or None) describes.

    Raises ValueError / TypeError naming the ``algorithm.<key>`` of a bad value or a misspelled key.
    """
    config = {} if config is None else config
    check_algorithm_keys(config)
    std = config.get("asymgrpo_std", DEFAULT_STD)
    if not isinstance(std, str) or std not in STD_CONVENTIONS:
        raise ValueError(f"algorithm.asymgrpo_std must be one of {', '.join(map(repr, STD_CONVENTIONS))}; got {std!r}")
    by_std = config.get("norm_adv_by_std_in_grpo", True)
    if not isinstance(by_std, bool):
        raise TypeError(f"algorithm.norm_adv_by_std_in_grpo must be a bool, got {type(by_std).__name__}")
    fields = {**PRESETS["asymgrpo"], **STD_CONVENTIONS[std], "normalize": "std" if by_std else "none"}
    for key, field in FIELD_KEYS.items():
        if key in config:
            fields[field] = _checked(AdvantageOptions, field, config[key], f"algorithm.{key}")
    return AdvantageOptions(**fields)


def _clip_ratio(config: Mapping[str, Any], side: str) -> tuple[str, Any]:
    """(key, value) of actor.clip_ratio_<side>, or of actor.clip_ratio when that one is None."""
    value = config.get(f"clip_ratio_{side}")
    if value is None:
        return "actor.clip_ratio", config.get("clip_ratio")
    return f"actor.clip_ratio_{side}", value


def loss_options(config: Mapping[str, Any], loss_agg_mode: str) -> LossOptions:
    """The ``LossOptions`` of verl's actor config (``ActorConfig`` or a DictConfig) and loss_agg_mode.

    clip_low / clip_high are clip_ratio_low / clip_ratio_high, each falling back to clip_ratio when
    None; the dual clip is clip_ratio_c (default 3.0), which verl's vanilla loss always applies;
    max_len is global_batch_info["loss_scale_factor"] in "seq-mean-token-sum-norm" (None: T).
    verl's loss_agg_mode names are ours (docs/algorithm.md §3, §7). Raises ValueError / TypeError
    naming the key of a bad value, or the bad loss_agg_mode.
    """
    loss_agg = _checked(LossOptions, "loss_agg", loss_agg_mode, "loss_agg_mode")
    dual_clip = config.get("clip_ratio_c", DEFAULT_DUAL_CLIP)
    if dual_clip is None:
        raise TypeError("actor.clip_ratio_c must be a number > 1 (verl always applies the dual clip), got None")
    sources = {
        "clip_low": _clip_ratio(config, "low"),
        "clip_high": _clip_ratio(config, "high"),
        "dual_clip": ("actor.clip_ratio_c", dual_clip),
    }
    fields = {field: _checked(LossOptions, field, value, key) for field, (key, value) in sources.items()}
    scale = batch_info(config).get("loss_scale_factor")
    if loss_agg == "seq-mean-token-sum-norm" and scale is not None:
        key = "actor.loss_scale_factor (global_batch_info['loss_scale_factor'])"
        fields["max_len"] = _checked(LossOptions, "max_len", scale, key, loss_agg=loss_agg)
    return LossOptions(loss_agg=loss_agg, **fields)


def batch_info(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """verl's ``config.global_batch_info`` (filled by its ``ppo_loss``), or {} when absent."""
    info = config.get("global_batch_info")
    return {} if info is None else info


def _dp_size(info: Mapping[str, Any]) -> int:
    dp_size = info.get("dp_size", 1)
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"global_batch_info['dp_size'] must be an int >= 1, got {dp_size!r}")
    return dp_size


def _global_count(info: Mapping[str, Any], key: str, dp_size: int) -> float | torch.Tensor | None:
    """info[key] / dp_size, an empty count taken as 1; None when absent (then dp_size must be 1)."""
    count = info.get(key)
    if count is None:
        if dp_size > 1:
            raise ValueError(f"global_batch_info['{key}'] is required when dp_size > 1 (dp_size={dp_size})")
        return None
    if isinstance(count, torch.Tensor):
        return count.reshape(()).clamp(min=1) / dp_size
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
        raise ValueError(f"global_batch_info['{key}'] must be a finite number >= 0, got {count!r}")
    return max(count, 1) / dp_size


def num_items(config: Mapping[str, Any], loss_agg_mode: str, mask: torch.Tensor) -> float | torch.Tensor | None:
    """The ``num_items`` of ``asym_policy_loss`` that reproduces verl's ``agg_loss`` (docs/algorithm.md §3, §7).

    From ``global_batch_info`` (dp_size D, batch_num_tokens N, global_batch_size S):
    token-mean N / D (None: the micro-batch's tokens), token-sum 1 / D, the seq-mean modes S / D
    (None: the micro-batch's sequences that have tokens, as verl counts them). N or S may be
    absent only when D == 1, as in verl.

    Args:
        config: verl's actor config.
        loss_agg_mode: a ``LossOptions.loss_agg`` mode (checked by ``loss_options``).
        mask: [B, T] response mask (bool or 0/1), for the count of sequences with tokens.
    """
    info = batch_info(config)
    dp_size = _dp_size(info)
    if loss_agg_mode == "token-sum":
        return 1.0 / dp_size
    if loss_agg_mode == "token-mean":
        return _global_count(info, "batch_num_tokens", dp_size)
    sequences = _global_count(info, "global_batch_size", dp_size)
    if sequences is None:
        return (mask != 0).any(dim=-1).sum().clamp(min=1)
    return sequences
