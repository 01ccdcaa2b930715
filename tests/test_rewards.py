"""Rewards: built-ins, dotted-path lookup, and failures that score 0 and are counted."""

import math
import time

import pytest

from asymgrpo.rewards import SafeReward, exact_match, math_verify_reward, resolve_reward


def test_exact_match():
    assert exact_match("2+3=", "5", "5") == 1.0
    assert exact_match("2+3=", " 5 ", "5") == 1.0
    assert exact_match("2+3=", "50", "5") == 0.0


def test_math_verify_reward():
    pytest.importorskip("math_verify", reason="math-verify is not installed (the cpu or gpu extra installs it)")
    assert math_verify_reward("", "so the answer is \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert math_verify_reward("", "the answer is $x = 7$", "7") == 1.0
    assert math_verify_reward("", "the answer is \\boxed{8}", "7") == 0.0


def test_resolve_reward():
    assert resolve_reward("exact") is exact_match
    assert resolve_reward("math") is math_verify_reward
    assert resolve_reward("math:sqrt") is math.sqrt
    assert resolve_reward("os.path.join") is not None
    with pytest.raises(ValueError, match="could not be loaded"):
        resolve_reward("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="not callable"):
        resolve_reward("math:pi")


def _raises(prompt, completion, answer):
    raise RuntimeError("broken checker")


def test_raising_nan_and_junk_score_zero_and_are_counted():
    reward = SafeReward(_raises, timeout_s=1.0)
    assert reward("p", "c", "a") == 0.0
    assert reward.stats.errors == 1
    for value, counter in ((float("nan"), "non_finite"), (float("inf"), "non_finite"), ("x", "errors"), (None, "errors")):
        reward = SafeReward(lambda p, c, a, v=value: v, timeout_s=1.0)
        assert reward("p", "c", "a") == 0.0
        assert getattr(reward.stats, counter) == 1 and reward.stats.failures == 1


def test_hanging_call_times_out_and_the_next_call_works():
    calls = []

    def sometimes_hangs(prompt, completion, answer):
        calls.append(completion)
        if completion == "hang":
            time.sleep(30)
        return 1.0

    reward = SafeReward(sometimes_hangs, timeout_s=0.2)
    start = time.perf_counter()
    scores = reward.score(["p"] * 3, ["ok", "hang", "ok"], ["a"] * 3)
    assert scores == [1.0, 0.0, 1.0]
    assert reward.stats.timeouts == 1 and reward.stats.failures == 1
    assert time.perf_counter() - start < 5
    reward.stats.reset()
    assert reward.stats.failures == 0


def test_safe_reward_arguments():
    with pytest.raises(TypeError, match="fn must be callable"):
        SafeReward(3)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        SafeReward(exact_match, timeout_s=0)
