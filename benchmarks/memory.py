"""Peak extra memory of one call.

Definition: the highest memory in use during the call, minus what was in use just before it
(the inputs and anything else already resident), minus what the call returns and keeps (the
outputs for "fwd", the gradients for "fwd+bwd"). So it is the scratch the call needed on top
of data that any implementation must hold.

* CUDA: in-process, from torch.cuda.memory_allocated() before the call and
  torch.cuda.max_memory_allocated() during it (allocator caching does not blur it).
* CPU: in a fresh subprocess per case (``python -m benchmarks.memory SPEC``), from the
  resident set size: VmRSS before the call and VmHWM (the peak RSS) after it, with the
  peak counter reset through /proc/self/clear_refs just before the call. Compiled
  implementations run once first, so compilation is not counted.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def returned_bytes(result) -> int:
    """Bytes of the distinct storages behind the tensors in ``result`` (a tensor or a tuple)."""
    tensors = [result] if isinstance(result, torch.Tensor) else [t for t in result if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field))
    return int(line.split()[1]) * 1024


def peak_extra_cuda(call: Callable[[], object]) -> int:
    """Peak extra bytes of ``call()`` on the current CUDA device, measured in this process."""
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    kept = returned_bytes(result)
    del result
    return peak - before - kept


def peak_extra_cpu_here(call: Callable[[], object]) -> int:
    """Peak extra bytes of ``call()`` from this process's RSS; meaningful in a fresh process."""
    gc.collect()
    before = _proc_status_bytes("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    result = call()
    peak = _proc_status_bytes("VmHWM:")
    kept = returned_bytes(result)
    del result
    return peak - before - kept


def spec(task: str, name: str, shape: dict, mode: str, seed: int) -> dict:
    """What a subprocess needs to rebuild one case."""
    return {"task": task, "name": name, "shape": shape, "mode": mode, "seed": seed}


def peak_extra_cpu_subprocess(case: dict, timeout: float = 900.0) -> int:
    """Run one case in a fresh interpreter and return its peak extra bytes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", json.dumps(case)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {case}:\n{proc.stderr[-4000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"])


def _main(argv: list[str]) -> None:
    from .cases import Inputs, Shape
    from .peers import adapter

    case = json.loads(argv[0])
    device = torch.device("cpu")
    impl = adapter(case["task"], case["name"])
    inputs = Inputs(Shape.from_dict(case["shape"]), device, seed=case["seed"])
    if case["task"] in ("asymgrpo_loss", "grpo_loss"):
        inputs.old_logprobs, inputs.ref_logprobs  # noqa: B018 - built before the baseline
    state = impl.prepare(inputs)
    if impl.warmup:
        del_result = impl.call(inputs, state, case["mode"])
        del del_result
    extra = peak_extra_cpu_here(lambda: impl.call(inputs, state, case["mode"]))
    print(json.dumps({"extra_bytes": extra}))


if __name__ == "__main__":
    _main(sys.argv[1:])
