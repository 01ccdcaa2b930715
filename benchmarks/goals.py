"""The targets the GPU benchmarks are held against, judged on the suites' JSON rows.

    python -m benchmarks.goals FILES...    # Markdown: each goal, what was measured, met or not

Each goal reads one case of one suite (task, shape, mode) and says "met", "not met" or "not
measured" (the case is missing, skipped, out of memory, or a peer failed; the reason is
given). Where both of our backends ran, the goal is judged on the faster one, the path
``backend="auto"`` should take there, and the other is shown beside it. ``plot.py`` appends
this table to its Markdown whenever at least one goal was measured.

The targets:

* the fused loss, forward + backward, within 1.45x the three-matmul floor at N = 16,384,
  H = 4096, V = 151,936 (bf16), with peak extra memory at most 2% of the float32 logits;
* the GRPO loss at that shape at least 2.5x faster than Liger's LigerFusedLinearGRPOLoss and
  3x faster than eager PyTorch (peer suite);
* log-prob + entropy forward + backward at N = 4096, H = 4096, V = 131,072 faster than the
  figure published for verl's Triton kernel on an H200, and how far from the one published
  for Liger's CuTe kernel (``PUBLISHED``; those two are quoted, not measured here, and their
  memory may be counted differently from our peak extra memory).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cases import PUBLISHED_KERNEL_SHAPE, tokens

GIB = 2**30
TARGET_SHAPE = tokens(16_384, 4096, 151_936, "bfloat16").id
PUBLISHED_SHAPE = PUBLISHED_KERNEL_SHAPE.id
FWD_BWD = "fwd+bwd"
#: Log-prob + entropy forward + backward at PUBLISHED_SHAPE on an H200, as published by each
#: project (seconds, peak bytes). Quoted figures: they were not measured by this project.
PUBLISHED = {"verl's Triton kernel": (50.9e-3, 4.0 * GIB), "Liger's CuTe kernel": (24.9e-3, 1.3 * GIB)}
OURS = ("ours_triton", "ours_torch", "ours")
MEASURED = ("ok", "mismatch")


@dataclass(frozen=True)
class Verdict:
    """What a goal found: the figures as text, and whether it is met (None: not measured)."""

    figure: str
    met: bool | None


@dataclass(frozen=True)
class Goal:
    text: str
    judge: Callable[["Rows"], Verdict]


class Rows:
    """The rows of several suite files, looked up by (suite, task, shape id, mode, implementation)."""

    def __init__(self, docs: list[dict]):
        self.rows = {(d["suite"], r["task"], r["shape_id"], r["mode"], r["impl"]): r for d in docs for r in d["rows"]}

    def get(self, suite: str, task: str, shape: str, impl: str, mode: str = FWD_BWD) -> dict | None:
        return self.rows.get((suite, task, shape, mode, impl))

    def measured(self, suite: str, task: str, shape: str, impl: str) -> dict | None:
        row = self.get(suite, task, shape, impl)
        return row if row and row["status"] in MEASURED else None

    def ours(self, suite: str, task: str, shape: str) -> list[dict]:
        """Our measured rows of a case, fastest first."""
        found = [r for r in (self.measured(suite, task, shape, impl) for impl in OURS) if r]
        return sorted(found, key=lambda r: r["time_s"])

    def why_missing(self, suite: str, task: str, shape: str, impl: str) -> str:
        row = self.get(suite, task, shape, impl)
        if row is None:
            return f"no {impl} row for {suite} {task} {shape} {FWD_BWD}"
        return f"{row['label']}: {row['status']} ({row.get('reason', '')[:160]})"


def _ms(row: dict) -> str:
    return f"{row['time_s'] * 1e3:.1f} ms"


def _name(row: dict) -> str:
    return row.get("backend") or row["impl"]


def _not_measured(rows: Rows, suite: str, task: str, shape: str, impls: tuple[str, ...] = ("ours_triton",)) -> Verdict:
    return Verdict("not measured: " + "; ".join(rows.why_missing(suite, task, shape, i) for i in impls), None)


def _floor_ratio(rows: Rows) -> Verdict:
    ours = rows.ours("loss", "asymgrpo_loss", TARGET_SHAPE)
    if not ours or ours[0].get("time_vs_floor") is None:
        return _not_measured(rows, "loss", "asymgrpo_loss", TARGET_SHAPE)
    figure = ", ".join(f"{_name(r)} {r['time_vs_floor']:.2f}x floor ({_ms(r)})" for r in ours)
    return Verdict(figure, ours[0]["time_vs_floor"] <= 1.45)


def _memory_share(rows: Rows) -> Verdict:
    ours = rows.ours("loss", "asymgrpo_loss", TARGET_SHAPE)
    if not ours:
        return _not_measured(rows, "loss", "asymgrpo_loss", TARGET_SHAPE)
    figure = ", ".join(
        f"{_name(r)} {r['peak_extra_bytes'] / GIB:.2f} GiB = {100 * r['memory_vs_fp32_logits']:.2f}% of the logits"
        for r in ours
    )
    return Verdict(figure, ours[0]["memory_vs_fp32_logits"] <= 0.02)


def _speedup_over(peer: str, target: float) -> Callable[[Rows], Verdict]:
    def judge(rows: Rows) -> Verdict:
        ours = rows.measured("peers", "grpo_loss", TARGET_SHAPE, "ours")
        other = rows.measured("peers", "grpo_loss", TARGET_SHAPE, peer)
        if not (ours and other):
            return _not_measured(rows, "peers", "grpo_loss", TARGET_SHAPE, ("ours", peer))
        speedup = other["time_s"] / ours["time_s"]
        figure = f"{speedup:.2f}x ({other['label']} {_ms(other)}, ours ({_name(ours)}) {_ms(ours)})"
        return Verdict(figure, speedup >= target)

    return judge


def _published(rows: Rows) -> Verdict:
    ours = rows.ours("logprob_entropy", "logprob_entropy", PUBLISHED_SHAPE)
    if not ours:
        return _not_measured(rows, "logprob_entropy", "logprob_entropy", PUBLISHED_SHAPE)
    best = ours[0]
    figure = ", ".join(f"{_name(r)} {_ms(r)}, {r['peak_extra_bytes'] / GIB:.2f} GiB" for r in ours) + "; " + ", ".join(
        f"{best['time_s'] / seconds:.2f}x the time and {best['peak_extra_bytes'] / peak:.2f}x the memory of "
        f"{name} ({seconds * 1e3:.1f} ms, {peak / GIB:.1f} GiB)"
        for name, (seconds, peak) in PUBLISHED.items()
    )
    return Verdict(figure, best["time_s"] < PUBLISHED["verl's Triton kernel"][0])


GOALS = [
    Goal(f"fused loss fwd+bwd <= 1.45x the 3-matmul floor at {TARGET_SHAPE}", _floor_ratio),
    Goal(f"fused loss peak extra memory <= 2% of the float32 logits at {TARGET_SHAPE}", _memory_share),
    Goal(f">= 2.5x faster than Liger's LigerFusedLinearGRPOLoss (GRPO loss, {TARGET_SHAPE})",
         _speedup_over("liger_fused_linear", 2.5)),
    Goal(f">= 3x faster than eager PyTorch (GRPO loss, {TARGET_SHAPE})", _speedup_over("reference", 3.0)),
    Goal(f"log-prob + entropy fwd+bwd at {PUBLISHED_SHAPE} faster than verl's kernel (published figure)", _published),
]


def verdicts(docs: list[dict]) -> list[tuple[Goal, Verdict]]:
    """Every goal judged on the suite documents ``docs`` (the parsed JSON files)."""
    rows = Rows([d for d in docs if "suite" in d])
    return [(goal, goal.judge(rows)) for goal in GOALS]


def goals_table(docs: list[dict]) -> str:
    """Markdown: one row per goal with the figures and the verdict."""
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = ["### Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {goal.text} | {v.figure} | {mark[v.met]} |" for goal, v in verdicts(docs)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(goals_table([json.loads(path.read_text()) for path in args.files]))


if __name__ == "__main__":
    main()
