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


def check_targets_in_range(targets: torch.Tensor, vocab_size: int, ignore_index: int, name: str = "targets") -> torch.Tensor:
    """Return the boolean mask of positions to score; raise if a scored target is outside [0, V)."""
    valid = targets != ignore_index
    if targets.numel():
        bad = valid & ((targets < 0) | (targets >= vocab_size))
        if bool(bad.any()):
            first = targets[bad].flatten()[0].item()
            raise ValueError(
                f"{name} must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}; "
                f"found {first} ({int(bad.sum())} such positions)"
            )
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
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor (int64), got {targets.dtype}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_choice(backend, "backend", BACKENDS)
    check_same_device(hidden=hidden, weight=weight, bias=bias, targets=targets)
    return check_positive_finite(temperature, "temperature")
