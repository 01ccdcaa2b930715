"""Argument checks of the public entry points, run at the boundary before any kernel launch.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, impossible
value) with a message that names the argument and says what was expected. Checks of kinds,
shapes, dtypes and devices cost nothing on the device. Checks that read tensor contents (mask
values, target ranges, a tensor ``num_items``) are gathered in ``ValueChecks`` and read back
with the values the call needs anyway (the scored-row count) in one device-to-host transfer:
one sync per public call. Under ``torch.compile`` they are skipped, so they never break a graph.
The scalar options are checked where their objects are built (``options.py``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from .options import BACKENDS, choice, positive

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_integer_dtype(tensor: torch.Tensor, name: str) -> None:
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64), got {tensor.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_workspace(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"workspace_bytes must be a positive int, got {value!r}")
    return value


def check_call_scalars(temperature, backend, workspace_bytes) -> float:
    """The kernel-call scalars a module stores: temperature (returned as float), backend name, workspace."""
    choice(backend, "backend", BACKENDS)
    check_workspace(workspace_bytes)
    return positive(temperature, "temperature")


def check_lm_head(hidden, weight, bias, temperature, vocab_shard: bool = False) -> float:
    """hidden [..., H] and weight [V, H] of one float dtype, bias [V] or None; returns the temperature.

    ``vocab_shard``: weight is one rank's vocabulary shard, which may be empty (V = 0).
    """
    check_tensor(hidden, "hidden")
    check_tensor(weight, "weight")
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype in ({_dtype_names(FLOAT_DTYPES)}), got {tensor.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have the dtype of hidden ({hidden.dtype}), got {weight.dtype}")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H] with at least one dimension, got a scalar")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if (weight.shape[0] == 0 and not vocab_shard) or weight.shape[1] == 0:
        raise ValueError(f"weight must have V > 0 and H > 0, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias must have the dtype of hidden ({hidden.dtype}), got {bias.dtype}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    check_same_device(hidden=hidden, weight=weight, bias=bias)
    return positive(temperature, "temperature")


def check_targets(targets, hidden: torch.Tensor) -> torch.Tensor:
    """An integer tensor of shape hidden.shape[:-1], on hidden's device."""
    check_tensor(targets, "targets")
    check_integer_dtype(targets, "targets")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape hidden.shape[:-1] = {list(hidden.shape[:-1])}, got {list(targets.shape)}")
    check_same_device(hidden=hidden, targets=targets)
    return targets


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
        if isinstance(group_size, bool) or not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
        if group_size <= 0:
            raise ValueError(f"group_size must be an int > 0, got {group_size}")
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


def check_mask(mask, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """mask [B, T] of 0/1 (bool, integer or floating dtype); returns ``mask != 0`` (bool).

    That its values are 0 or 1 is a value check: ``ValueChecks.mask``.
    """
    check_tensor(mask, "mask")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape [B, T] = {list(shape)}, got {list(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask must be on {device} like the log-probs, got {mask.device}")
    if mask.dtype.is_complex:
        raise TypeError(f"mask must be a bool, integer or floating tensor of 0/1, got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_num_items(num_items, name: str = "num_items") -> float | torch.Tensor | None:
    """None, a number > 0 (returned as float) or a one-element tensor (checked by ``ValueChecks``)."""
    if num_items is None:
        return None
    if isinstance(num_items, torch.Tensor):
        if num_items.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {list(num_items.shape)}")
        if not (num_items.dtype.is_floating_point or num_items.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a floating-point or integer tensor, got {num_items.dtype}")
        return num_items.reshape(())
    if isinstance(num_items, bool) or not isinstance(num_items, (int, float)):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(num_items).__name__}")
    if not math.isfinite(num_items) or num_items <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {num_items}")
    return float(num_items)


def host_values(*tensors: torch.Tensor) -> list[float]:
    """The values of 0-dim tensors as Python numbers, in one device-to-host transfer."""
    if not tensors:
        return []
    return torch.stack([t.detach().reshape(()).double().to(tensors[0].device) for t in tensors]).tolist()


class ValueChecks:
    """Checks that read tensor contents, read back together with one device-to-host transfer.

    Each check is a 0-dim count of offending entries and a function building the error message
    (run only on failure, it may read more). ``run(*needed)`` reads the counts and the values
    of ``needed`` (0-dim tensors the call needs on the host anyway) at once, raises the first
    failing check's ValueError, and returns the needed values. Under ``torch.compile`` the
    checks are skipped, so that they never break a graph.
    """

    def __init__(self) -> None:
        self._checks: list[tuple[torch.Tensor, Callable[[], str]]] = []

    def add(self, count: torch.Tensor, message: Callable[[], str]) -> None:
        self._checks.append((count, message))

    def mask(self, mask: torch.Tensor) -> None:
        """Every entry of ``mask`` is 0 or 1."""
        if mask.dtype == torch.bool or mask.numel() == 0:
            return
        bad = (mask != 0) & (mask != 1)
        self.add(bad.sum(), lambda: f"mask must hold only 0 and 1, found {mask[bad].flatten()[0].item()}")

    def targets(self, targets: torch.Tensor, scored: torch.Tensor, vocab_size: int, where: str) -> None:
        """Every target at a scored position (``scored`` bool, targets' shape) lies in [0, V)."""
        if targets.numel() == 0:
            return
        bad = scored & ((targets < 0) | (targets >= vocab_size))
        self.add(bad.sum(), lambda: (
            f"targets must lie in [0, {vocab_size}) {where}; "
            f"found {targets[bad].flatten()[0].item()} ({int(bad.sum())} such positions)"
        ))

    def num_items(self, num_items: float | torch.Tensor | None, name: str = "num_items") -> None:
        """A tensor num_items is finite and > 0."""
        if isinstance(num_items, torch.Tensor):
            bad = ~(torch.isfinite(num_items) & (num_items > 0))
            self.add(bad.sum(), lambda: f"{name} must be a finite number > 0, got {num_items.item()}")

    def run(self, *needed: torch.Tensor) -> list[float]:
        checks = [] if torch.compiler.is_compiling() else self._checks
        values = host_values(*(count for count, _ in checks), *needed)
        for (_, message), count in zip(checks, values):
            if count:
                raise ValueError(message())
        return values[len(checks):]
