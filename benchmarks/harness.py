"""Run one benchmark case: availability, agreement with ours, timing, peak extra memory, one row.

Order for each case: skip with the reason if the implementation cannot run here; check its
outputs and gradients against ours as shipped on this device (normwise relative error,
tolerance below; the first check call also warms up / compiles); time it with
pytest-benchmark (median of the rounds); measure its peak extra memory (memory.py); record
the row. A disagreement fails the test after the row is recorded with status "mismatch".

An exception fails the test (row status "error"), except out of memory (status "oom") and
an exception a peer raises inside its own code (status "peer_error", with the error and
where it was raised): those are that implementation's result at this case,
recorded and skipped, so a peer's own bug does not fail a run that measures ours.
"""

from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from . import memory
from .cases import Inputs, Shape, impl_runs_at, modes_for, shapes_for
from .peers import TASK_DESCRIPTIONS, Adapter, adapter, adapters, baseline_name, objective
from .results import Recorder

# Normwise relative error allowed between an implementation and ours: float32 agrees to
# rounding; bf16/fp16 materialized paths round the logits to 8 (or 11) bits first.
TOLERANCE = {"float32": 2e-4, "bfloat16": 3e-2, "float16": 1e-2}
MODES = ("fwd+bwd", "fwd")
SEED = 0


@dataclass(frozen=True)
class Case:
    suite: str
    task: str
    name: str
    shape: Shape
    mode: str

    @property
    def id(self) -> str:
        return f"{self.shape.id}-{self.task}-{self.name}-{self.mode}"


def cases(suite: str, preset: str, tasks: tuple[str, ...]) -> list[Case]:
    """Every case of a suite: shape outermost (inputs are built once per shape), floor first.

    Prompt shapes run only the implementations and modes ``cases.impl_runs_at`` and
    ``cases.modes_for`` allow.
    """
    return [
        Case(suite, task, impl.name, shape, mode)
        for shape in shapes_for(suite, preset)
        for task in ("floor",) + tasks
        for impl in adapters(task)
        if impl_runs_at(shape, impl.name)
        for mode in modes_for(shape, preset, MODES)
    ]


class _ShapeCache:
    """Inputs and baseline results of the current shape only (GPU memory is finite)."""

    def __init__(self):
        self.key, self.inputs, self.baselines, self.checks = None, None, {}, {}

    def inputs_for(self, shape: Shape, device: torch.device) -> Inputs:
        key = (shape, device.type)
        if key != self.key:
            self.key, self.inputs, self.baselines, self.checks = None, None, {}, {}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.inputs, self.key = Inputs(shape, device, seed=SEED), key
        return self.inputs


_cache = _ShapeCache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def outputs_and_grads(impl: Adapter, inputs: Inputs, state: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs (detached) and d objective / d (hidden, weight) of one call."""
    outputs = impl.forward(inputs, state)
    grads = torch.autograd.grad(objective(impl.task, outputs, inputs), inputs.params)
    return [o.detach() for o in outputs], list(grads)


def relative_error(value: torch.Tensor, expected: torch.Tensor, block: int = 1 << 24) -> float:
    """||value - expected|| / ||expected|| (for a 0-dim loss: / max(|expected|, 1)).

    Summed in float64 over blocks of ``block`` elements, so a [262144, 4096] gradient needs
    no full-size float64 copy.
    """
    v, e = value.reshape(-1), expected.reshape(-1)
    diff2 = norm2 = 0.0
    for start in range(0, e.numel(), block):
        a, b = v[start:start + block].double(), e[start:start + block].double()
        diff2 += (a - b).square().sum().item()
        norm2 += b.square().sum().item()
    diff, norm = diff2**0.5, norm2**0.5
    return diff / (max(norm, 1.0) if expected.dim() == 0 else max(norm, 1e-30))


def check_against_ours(case: Case, impl: Adapter, inputs: Inputs, state: dict, device: torch.device) -> dict:
    """Agreement of ``impl`` with ours as shipped here: errors per output / gradient, tolerance, verdict."""
    if case.task == "floor":
        return {"verdict": "n/a (not the same quantity)"}
    base_name = baseline_name(case.task, device)
    if impl.name == base_name:
        return {"verdict": "baseline (checked against float64 in tests/)"}
    if case.task not in _cache.baselines:
        base = adapter(case.task, base_name)
        reason = base.unavailable(device)
        try:
            expected = None if reason else outputs_and_grads(base, inputs, base.prepare(inputs))
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # re-raised from this frame: never taken for the peer's own failure
            raise RuntimeError(f"the baseline {base_name} failed: {type(exc).__name__}: {exc}") from exc
        _cache.baselines[case.task] = (reason, expected)
    reason, expected = _cache.baselines[case.task]
    if reason:
        return {"verdict": f"unchecked: baseline {base_name} unavailable ({reason})"}
    got = outputs_and_grads(impl, inputs, state)
    names = [f"output{i}" for i in range(len(got[0]))] + ["grad_hidden", "grad_weight"]
    errors = {n: relative_error(v, e) for n, v, e in zip(names, got[0] + got[1], expected[0] + expected[1])}
    tol = TOLERANCE[case.shape.dtype]
    ok = all(err <= tol for err in errors.values())
    return {"verdict": "agrees" if ok else "MISMATCH", "baseline": base_name, "tolerance": tol, "errors": errors}


def _base_row(case: Case, impl: Adapter, device: torch.device) -> dict:
    backend = impl.backend
    if backend == "auto":
        from .peers import ours_backend

        backend = ours_backend(device)
    return {
        "suite": case.suite, "task": case.task, "task_description": TASK_DESCRIPTIONS[case.task],
        "impl": impl.name, "label": impl.label, "backend": backend, "entropy": impl.entropy, "notes": impl.notes,
        "shape_id": case.shape.id, "shape": case.shape.as_dict(), "n_tokens": case.shape.n_tokens,
        "hidden": case.shape.hidden, "vocab": case.shape.vocab, "dtype": case.shape.dtype, "mode": case.mode,
        "prompt_pct": case.shape.prompt_pct,
    }


def run_case(case: Case, benchmark, *, recorder: Recorder, device: torch.device, rounds: int, warmup_rounds: int,
             isolate_memory: bool = True) -> None:
    """Check, time and measure one case; record its row (or why it was skipped).

    ``isolate_memory=False`` measures CPU memory in this process (fast, but only a smoke
    test of the measurement: earlier cases have already raised the process's RSS).
    """
    impl = adapter(case.task, case.name)
    row = _base_row(case, impl, device)
    reason = impl.unavailable(device)
    if reason:
        recorder.add(case.suite, {**row, "status": "skipped", "reason": reason})
        pytest.skip(reason)
    status = reason = None
    try:
        _measure(case, impl, row, benchmark, recorder, device, rounds, warmup_rounds, isolate_memory)
    except torch.OutOfMemoryError as exc:
        status, reason = "oom", f"out of memory: {str(exc).splitlines()[0]}"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        site = outside_project_raise_site(exc) if impl.peer else None
        if site is None:
            recorder.add(case.suite, {**row, "status": "error", "reason": reason})
            raise
        status, reason = "peer_error", f"raised inside the peer's own code, at {site}: {reason}"
    if reason:  # outside the except block, so the failed call's tensors can be freed
        _cache.checks.pop((case.task, case.name), None)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        recorder.add(case.suite, {**row, "status": status, "reason": reason})
        pytest.skip(f"{impl.label}: {reason}")


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def outside_project_raise_site(exc: BaseException) -> str | None:
    """``file:line`` (cut after ``site-packages/``) where ``exc`` was raised, if that innermost
    frame lies outside this repository; None if it lies inside.

    A peer adapter that calls the peer with a wrong signature raises in its own frame
    (benchmarks/peers.py), and a failing baseline of ours is re-raised from this module, so
    those stay failures of ours; a peer that breaks inside its own code does not.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or Path(frames[-1].filename).resolve().is_relative_to(PROJECT_ROOT):
        return None
    return f"{frames[-1].filename.rpartition('site-packages/')[2]}:{frames[-1].lineno}"


def _measure(case, impl, row, benchmark, recorder, device, rounds, warmup_rounds, isolate_memory) -> None:
    inputs = _cache.inputs_for(case.shape, device)
    if case.task in ("asymgrpo_loss", "grpo_loss"):
        inputs.old_logprobs, inputs.ref_logprobs  # noqa: B018 - built before any baseline is taken
    state = impl.prepare(inputs)
    check_key = (case.task, case.name)
    checked_now = check_key not in _cache.checks
    if checked_now:
        _cache.checks[check_key] = check_against_ours(case, impl, inputs, state, device)
        gc.collect()
    check = _cache.checks[check_key]

    def timed():
        result = impl.call(inputs, state, case.mode)
        _sync(device)
        return result

    warmed = checked_now and "errors" in check and case.mode == "fwd+bwd"  # the check ran this very call
    if warmup_rounds == 0 and not warmed:
        timed()  # first call of this mode: compiles, or initialises the matmul libraries
    benchmark.group = f"{case.suite} {case.shape.id} {case.mode}"
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    stats = benchmark.stats.stats
    if device.type == "cuda":
        extra = memory.peak_extra_cuda(lambda: impl.call(inputs, state, case.mode))
        method = "torch.cuda.max_memory_allocated, in-process"
    elif not isolate_memory:
        extra = memory.peak_extra_cpu_here(lambda: impl.call(inputs, state, case.mode))
        method = "RSS in the benchmark process (smoke only: the heap is already warm)"
    else:
        del state
        gc.collect()
        extra = memory.peak_extra_cpu_subprocess(memory.spec(case.task, case.name, case.shape.as_dict(), case.mode, SEED))
        method = "peak RSS (VmHWM) in a fresh subprocess"
    row.update({
        "memory_method": method,
        "status": "ok" if check["verdict"] != "MISMATCH" else "mismatch",
        "time_s": stats.median, "time_min_s": stats.min, "rounds": stats.rounds,
        "peak_extra_bytes": int(extra), "check": check, "scored_tokens": inputs.scored_tokens(case.task),
    })
    benchmark.extra_info.update({k: row[k] for k in ("task", "impl", "mode", "peak_extra_bytes")})
    recorder.add(case.suite, row)
    if check["verdict"] == "MISMATCH":
        pytest.fail(f"{impl.label} disagrees with {check['baseline']}: {check['errors']} (tolerance {check['tolerance']})")
