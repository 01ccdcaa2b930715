"""Argument checks shared by every public entry point.

Every check runs before any kernel launch and raises ``TypeError`` (wrong kind of
value) or ``ValueError`` (right kind, impossible value) with a message that names the
argument and says what was expected.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "triton", "torch", "reference")


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_dtype(tensor: torch.Tensor, name: str, allowed=FLOAT_DTYPES) -> None:
    if tensor.dtype not in allowed:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(allowed)}), got {tensor.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    present = {k: t for k, t in tensors.items() if t is not None}
    devices = {k: t.device for k, t in present.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_integer_dtype(tensor: torch.Tensor, name: str) -> None:
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64), got {tensor.dtype}")


def check_scored_targets(targets: torch.Tensor, scored: torch.Tensor, vocab_size: int, where: str) -> None:
    """Raise if a target at a scored position (``scored`` bool, targets' shape) is outside [0, V)."""
    if targets.numel():
        bad = scored & ((targets < 0) | (targets >= vocab_size))
        if bool(bad.any()):
            raise ValueError(
                f"targets must lie in [0, {vocab_size}) {where}; "
                f"found {targets[bad].flatten()[0].item()} ({int(bad.sum())} such positions)"
            )


def check_targets_in_range(targets: torch.Tensor, vocab_size: int, ignore_index: int) -> torch.Tensor:
    """Return the boolean mask of positions to score; raise if a scored target is outside [0, V)."""
    valid = targets != ignore_index
    check_scored_targets(targets, valid, vocab_size, f"or equal ignore_index={ignore_index}")
    return valid


def check_logprob_entropy_inputs(
    hidden, weight, targets, bias, temperature, ignore_index, backend
) -> float:
    """Validate the arguments of ``fused_linear_logprob_entropy``; return the temperature as float.

    Shapes: hidden [..., H], weight [V, H], bias [V] or None, targets [...] (= hidden.shape[:-1]).
    """
    check_tensor(hidden, "hidden")
    check_tensor(weight, "weight")
    check_tensor(targets, "targets")
    check_float_dtype(hidden, "hidden")
    check_float_dtype(weight, "weight")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have the dtype of hidden ({hidden.dtype}), got {weight.dtype}")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H] with at least one dimension, got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, H], got {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must have V > 0 and H > 0, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias must have the dtype of hidden ({hidden.dtype}), got {bias.dtype}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    check_integer_dtype(targets, "targets")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_choice(backend, "backend", BACKENDS)
    check_same_device(hidden=hidden, weight=weight, bias=bias, targets=targets)
    return check_positive_finite(temperature, "temperature")


# --- AsymGRPO objective: advantages, policy loss, fused loss -------------------------------

NORMALIZE_MODES = ("std", "none")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def check_nonnegative_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value}")
    return value


def check_group_inputs(rewards, group_ids, group_size) -> int | None:
    """Validate ``group_advantages`` grouping arguments; return group_size (or None).

    rewards [B] float; exactly one of group_ids [B] (integer, any order) or group_size (int
    dividing B). Finiteness of the rewards is checked by the caller, which knows the groups.
    """
    check_tensor(rewards, "rewards")
    if not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards must be a floating-point tensor, got {rewards.dtype}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape [B], got {tuple(rewards.shape)}")
    if (group_ids is None) == (group_size is None):
        raise ValueError("pass exactly one of group_ids ([B] integer tensor) or group_size (int dividing B)")
    if group_size is not None:
        group_size = check_positive_int(group_size, "group_size")
        if rewards.shape[0] % group_size:
            raise ValueError(f"group_size must divide B = {rewards.shape[0]}, got {group_size}")
        return group_size
    check_tensor(group_ids, "group_ids")
    check_integer_dtype(group_ids, "group_ids")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids must have the shape of rewards [B] = {tuple(rewards.shape)}, got {tuple(group_ids.shape)}")
    check_same_device(rewards=rewards, group_ids=group_ids)
    return None


def check_token_tensor(value, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A floating-point tensor of exactly ``shape`` on ``device``."""
    check_tensor(value, name)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on {device} like the log-probs, got {value.device}")
    return value


def check_mask(mask, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """mask [B, T] of 0/1 (bool, integer or floating dtype); returns it as bool."""
    check_tensor(mask, "mask")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape [B, T] = {list(shape)}, got {list(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask must be on {device} like the log-probs, got {mask.device}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex:
        raise TypeError(f"mask must be a bool, integer or floating tensor of 0/1, got {mask.dtype}")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
        raise ValueError(f"mask must hold only 0 and 1, found {bad}")
    return mask != 0


def check_advantages(advantages, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """advantages [B] (one per sequence) or [B, T] (one per token); returns a [B, T] view."""
    check_tensor(advantages, "advantages")
    if not advantages.dtype.is_floating_point:
        raise TypeError(f"advantages must be a floating-point tensor, got {advantages.dtype}")
    if advantages.device != device:
        raise ValueError(f"advantages must be on {device} like the log-probs, got {advantages.device}")
    if tuple(advantages.shape) == (batch,):
        return advantages[:, None].expand(batch, seq_len)
    if tuple(advantages.shape) == (batch, seq_len):
        return advantages
    raise ValueError(f"advantages must have shape [B] = [{batch}] or [B, T] = [{batch}, {seq_len}], got {list(advantages.shape)}")


def check_policy_loss_options(
    clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, loss_agg, max_len, num_items
) -> dict:
    """Validate the scalar options of ``asym_policy_loss``; return them normalized.

    num_items may be a Python number or a 0-dim tensor (e.g. an all-reduced token count);
    it is returned as a float.
    """
    out = {
        "clip_low": check_nonnegative_finite(clip_low, "clip_low"),
        "clip_high": check_nonnegative_finite(clip_high, "clip_high"),
        "kl_coef": check_finite_number(kl_coef, "kl_coef"),
        "entropy_coef": check_finite_number(entropy_coef, "entropy_coef"),
        "kl_estimator": check_choice(kl_estimator, "kl_estimator", KL_ESTIMATORS),
        "loss_agg": check_choice(loss_agg, "loss_agg", LOSS_AGG_MODES),
    }
    if dual_clip is not None:
        dual_clip = check_finite_number(dual_clip, "dual_clip")
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    out["dual_clip"] = dual_clip
    if max_len is not None:
        check_positive_int(max_len, "max_len")
        if loss_agg != "seq-mean-token-sum-norm":
            raise ValueError(f"max_len applies only to loss_agg='seq-mean-token-sum-norm', got loss_agg={loss_agg!r}")
    out["max_len"] = max_len
    if num_items is not None:
        if isinstance(num_items, torch.Tensor):
            if num_items.numel() != 1:
                raise ValueError(f"num_items must be a number or a one-element tensor, got shape {list(num_items.shape)}")
            num_items = float(num_items.item())
        elif isinstance(num_items, bool) or not isinstance(num_items, (int, float)):
            raise TypeError(f"num_items must be a number or a one-element tensor, got {type(num_items).__name__}")
        if not math.isfinite(num_items) or num_items <= 0:
            raise ValueError(f"num_items must be a finite number > 0, got {num_items}")
        num_items = float(num_items)
    out["num_items"] = num_items
    return out
