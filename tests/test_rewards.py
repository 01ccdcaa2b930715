"""Rewards: built-ins, dotted-path lookup, and SafeReward (failures score 0 and are counted; hung calls are killed)."""

import math
import os
import signal
import sys
import time
import types

import pytest
import reward_fns  # tests/ is on sys.path under pytest, and the worker processes inherit it

from asymgrpo.rewards import (
    RewardBatch,
    RewardFailure,
    RewardStats,
    SafeReward,
    exact_match,
    math_verify_reward,
    resolve_reward,
)


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


def behave(completions: list[str], **options) -> tuple[RewardBatch, list[str]]:
    """Score ``completions`` with reward_fns.behave on a fresh SafeReward; the batch and the warnings."""
    warnings: list[str] = []
    with SafeReward(reward_fns.behave, warn=warnings.append, **options) as reward:
        batch = reward.score([""] * len(completions), completions, [""] * len(completions), require_success=False)
    return batch, warnings


def test_failures_score_zero_are_counted_and_values_keep_input_order():
    completions = ["sleep:0.2", "1", "raise", "2", "return:nan", "return:inf", "return:none", "return:str", "3",
                   "return:-inf"]
    batch, _ = behave(completions, workers=2)
    assert batch.values == [1.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]
    assert batch.stats == RewardStats(calls=10, errors=3, timeouts=0, non_finite=3,
                                      first_failure="raised RuntimeError: checker crashed")
    assert batch.stats.failures == 6
    for completion, first_failure in (("return:nan", "returned nan"), ("return:-inf", "returned -inf"),
                                      ("return:none", "returned NoneType None, not a number"),
                                      ("return:str", "returned str 'x', not a number")):
        assert behave(["1", completion], workers=1)[0].stats.first_failure == first_failure


def test_a_hanging_call_is_killed_and_its_worker_replaced(tmp_path):
    hung = [tmp_path / "a", tmp_path / "b"]
    completions = ["1", f"hang:{hung[0]}", "2", f"hang:{hung[1]}", "3", "4"]
    with SafeReward(reward_fns.behave, timeout_s=0.5, workers=2, warn=lambda _: None) as reward:
        start = time.perf_counter()
        batch = reward.score([""] * 6, completions, [""] * 6)
        assert time.perf_counter() - start < 10
        assert batch.values == [1.0, 0.0, 2.0, 0.0, 3.0, 4.0]
        assert batch.stats == RewardStats(calls=6, timeouts=2, first_failure="ran past the 0.5 s timeout")
        for path in hung:
            with pytest.raises(ProcessLookupError):
                os.kill(int(path.read_text()), 0)
        assert reward.score(["", ""], ["5", "6"], ["", ""]).values == [5.0, 6.0]


def test_calls_run_in_parallel():
    with SafeReward(reward_fns.behave, workers=2) as reward:
        reward.score(["", ""], ["0", "0"], ["", ""])  # start the workers
        start = time.perf_counter()
        assert reward.score([""] * 4, ["sleep:1"] * 4, [""] * 4).values == [1.0] * 4
        assert time.perf_counter() - start < 3


def test_a_worker_that_dies_mid_call_is_an_error_and_is_replaced():
    with SafeReward(reward_fns.behave, workers=1, warn=lambda _: None) as reward:
        batch = reward.score([""] * 3, ["1", "exit", "2"], [""] * 3)
        assert batch.values == [1.0, 0.0, 2.0]
        assert batch.stats == RewardStats(calls=3, errors=1, first_failure="crashed its worker process (exit code 3)")
        assert reward.score([""], ["3"], [""]).values == [3.0]


def test_the_first_failure_of_each_kind_is_reported_once():
    warnings: list[str] = []
    with SafeReward(reward_fns.behave, timeout_s=0.3, workers=2, warn=warnings.append) as reward:
        reward.score([""] * 4, ["raise", "return:nan", "raise", "1"], [""] * 4)
        later = "later failures are only counted, in metrics.jsonl"
        assert warnings == [
            f"asymgrpo: reward 'reward_fns:behave' raised RuntimeError: checker crashed (first error; {later})",
            f"asymgrpo: reward 'reward_fns:behave' returned nan (first non-finite value; {later})",
        ]
        reward.score([""] * 4, ["return:none", "hang", "return:inf", "1"], [""] * 4)
        reward.score([""] * 3, ["raise", "hang", "1"], [""] * 3)
        assert len(warnings) == 3
        assert warnings[2].startswith("asymgrpo: reward 'reward_fns:behave' ran past the 0.3 s timeout (first timeout;")


def test_require_success_raises_when_every_call_fails():
    with SafeReward(reward_fns.behave, workers=2, name="checker") as reward:
        with pytest.raises(RewardFailure, match=r"reward 'checker' failed on every one of the 5 calls; "
                                                 r"the first raised RuntimeError: checker crashed"):
            reward.score([""] * 5, ["raise"] * 5, [""] * 5)
        # Only the first max(8, 2 * workers) calls in batch order decide, so the outcome does not depend on timing.
        with pytest.raises(RewardFailure, match="each of the first 8 of 9 calls"):
            reward.score([""] * 9, ["raise"] * 8 + ["1"], [""] * 9)
        assert reward.score([""] * 9, ["raise"] * 7 + ["1", "raise"], [""] * 9).stats.errors == 8
        assert reward.score([""] * 5, ["raise"] * 5, [""] * 5, require_success=False).stats.errors == 5


def test_a_hopeless_batch_fails_fast_and_the_pool_still_works():
    with SafeReward(reward_fns.behave, timeout_s=0.3, workers=2) as reward:
        start = time.perf_counter()
        with pytest.raises(RewardFailure, match="each of the first 8 of 200 calls .* ran past the 0.3 s timeout"):
            reward.score([""] * 200, ["hang"] * 200, [""] * 200)
        assert time.perf_counter() - start < 6  # running all 200 would take 200 * 0.3 / 2 = 30 s
        assert reward.score([""] * 2, ["1", "2"], [""] * 2).values == [1.0, 2.0]
    batch, _ = behave(["hang"] * 3, timeout_s=0.3, workers=3)
    assert batch.values == [0.0] * 3 and batch.stats.timeouts == 3


def test_a_reward_the_worker_cannot_import_raises(monkeypatch):
    def fn(prompt, completion, answer):
        return 1.0

    module = types.ModuleType("asymgrpo_test_vanishing_module")
    fn.__module__, fn.__qualname__, module.reward = module.__name__, "reward", fn
    monkeypatch.setitem(sys.modules, module.__name__, module)
    reward = SafeReward(fn)  # picklable by reference while the module is in sys.modules
    monkeypatch.delitem(sys.modules, module.__name__)
    with reward, pytest.raises(RewardFailure, match=(
            r"reward 'asymgrpo_test_vanishing_module:reward' could not start in a worker process: "
            r"ModuleNotFoundError: No module named 'asymgrpo_test_vanishing_module'")):
        reward.score(["p"], ["c"], ["a"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; torchrun's SIGTERM to the group
def test_workers_ignore_the_jobs_signals(signum):
    with SafeReward(reward_fns.behave, workers=1) as reward:
        pid = reward.score([""], ["pid"], [""]).values[0]
        os.kill(int(pid), signum)
        time.sleep(0.2)
        batch = reward.score([""] * 2, ["pid", "1"], [""] * 2)
        assert batch.values == [pid, 1.0] and batch.stats.errors == 0  # the same worker, still alive


def test_empty_batch_auto_workers_and_close():
    reward = SafeReward(exact_match)
    assert reward.name == "asymgrpo.rewards.builtin:exact_match"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert reward.workers == min(cpus, 8)
    assert reward.score([], [], []) == RewardBatch([], RewardStats())
    assert reward.score(["2+3="] * 2, ["5", "6"], ["5"] * 2).values == [1.0, 0.0]
    reward.close()
    reward.close()
    with pytest.raises(RuntimeError, match="is closed"):
        reward.score(["p"], ["c"], ["a"])


def test_reward_stats_merge():
    first = RewardStats(calls=4, errors=1, first_failure="returned nan")
    second = RewardStats(calls=2, timeouts=1, non_finite=1, first_failure="ran past the 5 s timeout")
    assert first.merge(second) == RewardStats(6, 1, 1, 1, "returned nan")
    assert RewardStats().merge(second) == RewardStats(2, 0, 1, 1, "ran past the 5 s timeout")
    assert first.merge(second) is not first and first.calls == 4


def _local_reward_factory():
    def local(prompt, completion, answer):
        return 1.0
    return local


def test_safe_reward_arguments():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        SafeReward(3)
    with pytest.raises(ValueError, match="timeout_s must be > 0, got 0"):
        SafeReward(exact_match, timeout_s=0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        SafeReward(exact_match, workers=-1)
    for fn in (lambda p, c, a: 1.0, _local_reward_factory()):
        with pytest.raises(TypeError, match="importable by name: define it at module level"):
            SafeReward(fn)
