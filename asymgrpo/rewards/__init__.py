"""Rewards: any callable (prompt, completion, answer) -> float.

Built in: ``exact`` (the embedded task's checker) and ``math`` (math-verify). A user function
is named by its dotted path, ``package.module:function`` (or ``package.module.function``).
``SafeReward`` wraps any of them so that a call that raises, hangs or returns a non-finite
number scores 0 and is counted.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .builtin import exact_match, math_verify_reward
from .safe import RewardStats, SafeReward

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


__all__ = ["BUILTIN", "RewardFn", "RewardStats", "SafeReward", "exact_match", "math_verify_reward", "resolve_reward"]
