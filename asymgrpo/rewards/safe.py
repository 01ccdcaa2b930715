"""Run a reward function so that one bad call cannot stop training.

``SafeReward`` scores a batch in parallel on a pool of worker processes (``pool.py``). A call
that raises, returns something that is not a finite number, runs past ``timeout_s`` (its
worker is killed and replaced) or whose worker dies scores 0.0 and is counted in the batch's
``RewardStats``. The first failure of each kind is reported once through ``warn``. A batch in
which every call fails raises ``RewardFailure``; it stops early, once the first few calls in
batch order have all failed.
"""

from __future__ import annotations

import os
import pickle
import sys
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .pool import Outcome, StartError, WorkerPool

MAX_AUTO_WORKERS = 8
_KINDS = {"error": "error", "timeout": "timeout", "non_finite": "non-finite value"}  # kind: how warnings name it


@dataclass
class RewardStats:
    """Counts of one batch's reward calls."""

    calls: int = 0
    errors: int = 0  # raised, returned something that is not a number, or the worker process died
    timeouts: int = 0  # ran past timeout_s (the worker was killed and replaced)
    non_finite: int = 0  # returned NaN or +-inf
    first_failure: str | None = None  # the first failed call in batch order, e.g. "ran past the 5 s timeout"

    @property
    def failures(self) -> int:
        """The number of calls that scored 0.0 because they failed."""
        return self.errors + self.timeouts + self.non_finite

    def merge(self, other: RewardStats) -> RewardStats:
        """New stats with the counts of both; ``first_failure`` is this one's, else the other's."""
        return RewardStats(
            self.calls + other.calls, self.errors + other.errors, self.timeouts + other.timeouts,
            self.non_finite + other.non_finite, self.first_failure or other.first_failure,
        )


@dataclass(frozen=True)
class RewardBatch:
    """One batch's rewards, one per call in input order (a failed call scores 0.0), and its counts."""

    values: list[float]
    stats: RewardStats


class RewardFailure(RuntimeError):
    """Every call of a batch failed (or the reward could not start): the reward is broken, training cannot learn."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SafeReward:
    """Scores ``fn(prompt, completion, answer) -> float`` on worker processes, each call for at most ``timeout_s``.

    ``workers=0`` uses one worker per CPU this process may run on, at most 8. ``fn`` must be
    picklable by reference (a module-level function or a picklable callable object). ``name``
    is what messages call the reward (default ``module:qualname``); ``warn`` receives the
    one-line report of each kind's first failure (default: print to stderr). The workers start
    on the first ``score`` and stop on ``close``, at the end of a ``with`` block, or at exit.
    """

    def __init__(self, fn: Callable[[str, str, str], Any], timeout_s: float = 5.0, *, workers: int = 0,
                 name: str | None = None, warn: Callable[[str], None] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU, at most {MAX_AUTO_WORKERS}), got {workers}")
        self.name = name or f"{getattr(fn, '__module__', None)}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        try:
            fn_bytes = pickle.dumps(fn)
        except Exception as error:
            raise TypeError(
                f"reward {self.name!r} cannot be sent to a worker process ({error}); rewards run in worker "
                "processes, so the function must be importable by name: define it at module level"
            ) from error
        self.timeout_s = float(timeout_s)
        self.workers = workers or min(_usable_cpus(), MAX_AUTO_WORKERS)
        self._warn = warn or _print_warning
        self._warned: set[str] = set()
        self._pool = WorkerPool(fn_bytes, self.workers, self.timeout_s)
        self._close = weakref.finalize(self, self._pool.close)

    def score(self, prompts: list[str], completions: list[str], answers: list[str], *,
              require_success: bool = True) -> RewardBatch:
        """The reward of each (prompt, completion, answer) triple, in input order, and the batch's counts.

        With ``require_success``, raises RewardFailure when every call fails, as soon as the first
        ``min(n, max(8, 2 * workers))`` calls in batch order have all failed (the rest are not run).
        Raises RewardFailure if the reward cannot start in a worker process.
        """
        if not self._close.alive:
            raise RuntimeError(f"reward {self.name!r} is closed")
        calls = list(zip(prompts, completions, answers, strict=True))
        if not calls:
            return RewardBatch([], RewardStats())
        done: dict[int, Outcome] = {}
        probe, probe_failures = min(len(calls), max(8, 2 * self.workers)), 0
        results = self._pool.imap(calls)
        try:
            for index, outcome in results:
                done[index] = outcome
                if require_success and index < probe and outcome.kind != "ok":
                    probe_failures += 1
                    if probe_failures == probe:
                        raise RewardFailure(self._all_failed(probe, len(calls), done[0].detail))
        except StartError as error:
            raise RewardFailure(f"reward {self.name!r} could not start in a worker process: {error}") from None
        finally:
            results.close()
        outcomes = [done[index] for index in range(len(calls))]
        self._report_first_failures(outcomes)
        counts = Counter(outcome.kind for outcome in outcomes)
        first_failure = next((outcome.detail for outcome in outcomes if outcome.kind != "ok"), None)
        stats = RewardStats(len(calls), counts["error"], counts["timeout"], counts["non_finite"], first_failure)
        return RewardBatch([outcome.value for outcome in outcomes], stats)

    def close(self) -> None:
        """Stop the worker processes; the reward cannot score after this. Safe to call more than once."""
        self._close()

    def __enter__(self) -> SafeReward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _all_failed(self, probe: int, n: int, first_failure: str) -> str:
        calls = f"every one of the {n} calls"
        if probe < n:
            calls = f"each of the first {probe} of {n} calls (the rest were not run)"
        return f"reward {self.name!r} failed on {calls}; the first {first_failure}"

    def _report_first_failures(self, outcomes: list[Outcome]) -> None:
        for kind, label in _KINDS.items():
            first = next((outcome for outcome in outcomes if outcome.kind == kind), None)
            if first is not None and kind not in self._warned:
                self._warned.add(kind)
                self._warn(f"asymgrpo: reward {self.name!r} {first.detail} "
                           f"(first {label}; later failures are only counted, in metrics.jsonl)")
