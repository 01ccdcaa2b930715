"""Putting the estimator and the policy loss into verl's registries under one name, ``asymgrpo``."""

from __future__ import annotations

from typing import Any, Callable

from verl.trainer.ppo import core_algos

from .estimator import asymgrpo_advantage
from .policy_loss import asymgrpo_policy_loss

NAME = "asymgrpo"


def _qualified(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _install(registry: dict[str, Any], decorator: Callable[[str], Callable], function: Callable, kind: str) -> None:
    """``decorator(NAME)(function)``, replacing an earlier version of the same function (a reload).

    Raises RuntimeError when another function already holds the name.
    """
    current = registry.get(NAME)
    if current is not None and _qualified(current) != _qualified(function):
        raise RuntimeError(f"verl's {kind} registry already holds {NAME!r}: {_qualified(current)}, not asymgrpo's")
    registry.pop(NAME, None)
    decorator(NAME)(function)


def register() -> None:
    """Register ``asymgrpo`` as verl's advantage estimator and policy loss. Idempotent."""
    _install(core_algos.ADV_ESTIMATOR_REGISTRY, core_algos.register_adv_est, asymgrpo_advantage, "advantage estimator")
    _install(core_algos.POLICY_LOSS_REGISTRY, core_algos.register_policy_loss, asymgrpo_policy_loss, "policy loss")
