"""The sweep's statistics: pure functions of numbers and metrics rows (numpy only).

    interval            mean and percentile-bootstrap 95% interval of a per-seed quantity
    paired_difference   method - baseline on the seeds both have: mean, interval, sign counts
    run_summary         one run's metrics.jsonl rows -> its per-run quantities (end accuracy, ...)

A bootstrap interval from a handful of seeds is a rough guide, not a test: it is too narrow when
the seeds are few (it only resamples what was seen). With one seed it is the point itself.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

RESAMPLES = 10_000
RNG_SEED = 0
LEVEL = 0.95
WINDOW = 0.2  # entropy early / late: the first / last 20% of the steps (at least one)
PASS_KS = (1, 8, 32)
PASS_KEY = "eval_pass@{k}"

#: The per-run quantities, in report order (a run's summary holds each, None when the run lacks it).
QUANTITIES = ("end_accuracy", "best_accuracy", "initial_accuracy", *(f"pass@{k}" for k in PASS_KS),
              "entropy_early", "entropy_late", "entropy_pos_early", "entropy_pos_late",
              "entropy_neg_early", "entropy_neg_late")


def interval(values: Iterable[float], *, resamples: int = RESAMPLES, seed: int = RNG_SEED,
             level: float = LEVEL) -> dict[str, Any] | None:
    """Mean and percentile-bootstrap interval of ``values`` (one per seed); None when there are none.

    Returns ``{"mean", "low", "high", "n", "note"}``. The interval resamples the values with
    replacement ``resamples`` times (a fixed RNG seed: the same values give the same interval) and
    takes the central ``level`` share of the resampled means. With one value, or equal values, the
    interval is the point, and ``note`` says so.
    """
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        mean = float(data[0])
        note = "one seed: no interval" if data.size == 1 else "all seeds equal"
        return {"mean": mean, "low": mean, "high": mean, "n": int(data.size), "note": note}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), "n": int(data.size), "note": None}


def paired_difference(values: Mapping[int, float | None], baseline: Mapping[int, float | None], *,
                      resamples: int = RESAMPLES, seed: int = RNG_SEED, level: float = LEVEL) -> dict[str, Any] | None:
    """``values[s] - baseline[s]`` over the seeds ``s`` both have (a value, not None); None when there are none.

    Returns ``interval``'s keys plus ``seeds`` (the paired seeds, sorted), ``positive`` /
    ``negative`` / ``zero`` (how many differences are > 0, < 0, == 0) and ``differences``.
    """
    seeds = sorted(s for s in values if s in baseline and values[s] is not None and baseline[s] is not None)
    differences = [float(values[s]) - float(baseline[s]) for s in seeds]
    summary = interval(differences, resamples=resamples, seed=seed, level=level)
    if summary is None:
        return None
    return {**summary, "seeds": seeds, "differences": differences,
            "positive": sum(d > 0 for d in differences), "negative": sum(d < 0 for d in differences),
            "zero": sum(d == 0 for d in differences)}


def window_size(steps: int, fraction: float = WINDOW) -> int:
    """Steps in the early / late window of a run with ``steps`` values: floor(fraction * steps), at least 1."""
    return max(1, math.floor(fraction * steps + 1e-9)) if steps > 0 else 0


def early_late(rows: Sequence[Mapping[str, Any]], key: str, fraction: float = WINDOW) -> tuple[float | None, float | None]:
    """Mean of ``key`` over the first and over the last ``window_size`` training steps that have it.

    Training steps are rows with step >= 1 (step 0 is the starting evaluation); rows where the key
    is missing or None are left out. (None, None) when no row has it.
    """
    values = [float(r[key]) for r in sorted(rows, key=lambda r: r.get("step", 0))
              if r.get("step", 0) >= 1 and r.get(key) is not None]
    if not values:
        return None, None
    width = window_size(len(values), fraction)
    return float(np.mean(values[:width])), float(np.mean(values[-width:]))


def run_summary(rows: Sequence[Mapping[str, Any]], pass_ks: Sequence[int] = PASS_KS) -> dict[str, Any]:
    """A run's quantities from its metrics rows (``metrics.jsonl``): every name in ``QUANTITIES``.

    initial / end / best_accuracy: the first, last and largest held-out greedy accuracy (rows whose
    ``accuracy`` is not None); pass@k: ``eval_pass@k`` of the last row (temperature 1, written by
    runs with ``eval_pass_k`` >= k), None when absent; entropy[_pos|_neg]_early / _late: ``early_late``
    of the per-step mean entropy (all tokens, positive- and negative-advantage tokens).
    Also ``steps`` (the last step) and ``pass_at_k`` (every ``eval_pass@k`` of the last row, by k).
    """
    ordered = sorted(rows, key=lambda r: r.get("step", 0))
    accuracy = [float(r["accuracy"]) for r in ordered if r.get("accuracy") is not None]
    last = ordered[-1] if ordered else {}
    pass_at_k = {}
    for key, value in last.items():
        if key.startswith("eval_pass@") and value is not None:
            try:
                pass_at_k[int(key.removeprefix("eval_pass@"))] = float(value)
            except ValueError:
                continue
    summary: dict[str, Any] = {
        "steps": int(last.get("step", 0)) if ordered else 0,
        "end_accuracy": accuracy[-1] if accuracy else None,
        "best_accuracy": max(accuracy) if accuracy else None,
        "initial_accuracy": accuracy[0] if accuracy else None,
        **{f"pass@{k}": pass_at_k.get(k) for k in pass_ks},
    }
    for key in ("entropy", "entropy_pos", "entropy_neg"):
        summary[f"{key}_early"], summary[f"{key}_late"] = early_late(ordered, key)
    summary["pass_at_k"] = {str(k): v for k, v in sorted(pass_at_k.items())}
    return summary


def curve(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in metrics rows, leaving out rows where it is missing or None."""
    points = sorted((int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None and "step" in r)
    return [s for s, _ in points], [v for _, v in points]


def band(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> dict[str, list[float]]:
    """Per step over several runs' curves: ``steps``, ``mean``, ``low`` (min), ``high`` (max), ``n`` (runs).

    A step enters with the runs that have a value there.
    """
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for step, value in zip(steps, values):
            by_step.setdefault(int(step), []).append(float(value))
    steps = sorted(by_step)
    return {"steps": steps, "mean": [float(np.mean(by_step[s])) for s in steps],
            "low": [min(by_step[s]) for s in steps], "high": [max(by_step[s]) for s in steps],
            "n": [len(by_step[s]) for s in steps]}
