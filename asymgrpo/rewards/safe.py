"""Run a reward function so that one bad call cannot stop training.

A call that raises, returns something that is not a finite number, or takes longer than
``timeout_s`` scores 0.0 and is counted in ``RewardStats``. Calls run one at a time on a
daemon worker thread; when a call hangs, that worker is abandoned (Python cannot kill a
thread: it stays blocked in the background and does not keep the process alive) and a fresh
worker serves the next call.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable


@dataclass
class RewardStats:
    """Counts of failed reward calls since the last ``reset``."""

    errors: int = 0
    timeouts: int = 0
    non_finite: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts + self.non_finite


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True, name="reward-worker").start()

    def _serve(self) -> None:
        while True:
            fn, args, reply = self.jobs.get()
            try:
                reply.put((True, fn(*args)))
            except BaseException as error:  # noqa: BLE001 -- any failure of user code scores 0
                reply.put((False, error))


class SafeReward:
    """Wraps ``fn(prompt, completion, answer) -> float`` with a timeout and failure counting."""

    def __init__(self, fn: Callable[[str, str, str], Any], timeout_s: float = 5.0) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.timeout_s = fn, float(timeout_s)
        self.stats = RewardStats()
        self._worker = _Worker()

    def __call__(self, prompt: str, completion: str, answer: str) -> float:
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._worker.jobs.put((self.fn, (prompt, completion, answer), reply))
        try:
            ok, value = reply.get(timeout=self.timeout_s)
        except queue.Empty:
            self.stats.timeouts += 1
            self._worker = _Worker()
            return 0.0
        if not ok:
            self.stats.errors += 1
            return 0.0
        try:
            value = float(value)
        except (TypeError, ValueError):
            self.stats.errors += 1
            return 0.0
        if not math.isfinite(value):
            self.stats.non_finite += 1
            return 0.0
        return value

    def score(self, prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
        """One reward per (prompt, completion, answer) triple."""
        return [self(p, c, a) for p, c, a in zip(prompts, completions, answers, strict=True)]
