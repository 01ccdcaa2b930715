"""Rewards: any callable (prompt, completion, answer) -> float.

Built in: ``exact`` (the embedded task's checker) and ``math`` (math-verify). A user function
is named by its dotted path, ``package.module:function`` (or ``package.module.function``), and
must be defined at module level. ``SafeReward`` runs any of them on a pool of worker processes
with a per-call timeout: a call that raises, hangs, crashes its worker or returns a non-finite
number scores 0 and is counted; a batch in which every call fails raises ``RewardFailure``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .builtin import exact_match, math_verify_reward
from .safe import RewardBatch, RewardFailure, RewardStats, SafeReward

RewardFn = Callable[[str, str, str], float]
BUILTIN: dict[str, RewardFn] = {"exact": exact_match, "math": math_verify_reward}


def resolve_reward(name: str) -> RewardFn:
    """The reward function for a built-in name or a dotted path; raise ValueError if it cannot be found."""
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"reward must be one of {', '.join(BUILTIN)} or 'package.module:function', got {name!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward {name!r} could not be loaded: {error}") from error
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


__all__ = [
    "BUILTIN", "RewardBatch", "RewardFailure", "RewardFn", "RewardStats", "SafeReward", "exact_match",
    "math_verify_reward", "resolve_reward",
]
