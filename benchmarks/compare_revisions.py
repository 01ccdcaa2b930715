"""Time ``asymgrpo_kernels`` at a git revision against the working tree's, in one process.

    python benchmarks/compare_revisions.py [--base REV] [--size tiny|cpu] [--rounds K] [--out PATH]
                                           [--memory | --no-memory] [--device cpu|cuda]

The base is ``git archive REV asymgrpo_kernels`` extracted into a temporary folder and
imported as the package ``asymgrpo_kernels_base`` (the package imports its own modules
relatively, so the copy never touches the working tree's modules; the script checks that
every loaded module comes from the folder it should). The new side is the
``asymgrpo_kernels`` of the repository holding this script, uncommitted edits included.

Cases, each forward + backward with the torch backend (gradients of hidden and weight), on
the inputs of ``cases.Inputs`` (same seed, same tensors for both sides):

* ``logprob_entropy``: ``fused_linear_logprob_entropy``, objective sum(g1 logp + g2 H);
* ``asymgrpo_loss``: ``fused_linear_asymgrpo_loss`` with the loss suite's configuration
  (clip 0.2 / 0.28, k3 KL 0.04, entropy bonus 0.01, token-mean);

each at the plain shape of the size (``cpu``: N=4096, H=512, V=32,768, float32; ``tiny``:
N=16 as 2 x 8, H=32, V=300) and at its prompt variant (first half of every sequence prompt:
mask 0, kernel target -100).

Per case: one warm-up call of each side (its outputs and gradients are compared: normwise
relative error of new against base), then K rounds; in each round both sides run once, base
first in even rounds and new first in odd ones, so machine noise hits both alike. Reported:
the median (and min) time of each side, new / base, and with ``--memory`` (default on at the
cpu size) the peak extra memory of one call of each side, measured as in the suites: on the
CPU the peak RSS of a fresh subprocess per (case, side) (``memory.py``), on CUDA
``max_memory_allocated`` after the timed rounds. Writes JSON to ``--out`` (default
``benchmarks/results/compare-<device>.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import memory  # noqa: E402
from benchmarks.cases import PROMPT_PCT, Inputs, Shape, tokens  # noqa: E402
from benchmarks.harness import TOLERANCE, relative_error  # noqa: E402
from benchmarks.peers import ASYMGRPO_LOSS_CONFIG, objective  # noqa: E402
from benchmarks.plot import compare_table  # noqa: E402
from benchmarks.results import device_slug, metadata  # noqa: E402

PACKAGE = "asymgrpo_kernels"
BASE_PACKAGE = "asymgrpo_kernels_base"
SIDES = ("base", "new")
TASKS = ("logprob_entropy", "asymgrpo_loss")
SEED = 0
SIZES = {
    "tiny": tokens(16, 32, 300, "float32", seq=8),
    "cpu": tokens(4096, 512, 32_768, "float32"),
}
DEFAULT_ROUNDS = 5


# --------------------------------------------------------------------------- the two packages


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout.strip()


def resolve(rev: str) -> str:
    """The full commit hash ``rev`` names in this repository."""
    return git("rev-parse", "--verify", f"{rev}^{{commit}}")


def extract(commit: str, dest: Path) -> Path:
    """``git archive commit asymgrpo_kernels | tar -x -C dest``; returns dest/asymgrpo_kernels."""
    archive = subprocess.run(["git", "archive", commit, PACKAGE], cwd=REPO_ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / PACKAGE


def load_base(package_dir: Path) -> ModuleType:
    """Import the package in ``package_dir`` as ``asymgrpo_kernels_base``."""
    if BASE_PACKAGE in sys.modules:
        return sys.modules[BASE_PACKAGE]
    spec = importlib.util.spec_from_file_location(
        BASE_PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[BASE_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[BASE_PACKAGE]
        raise
    return module


def load_new() -> ModuleType:
    """The working tree's ``asymgrpo_kernels`` (the repository holding this script)."""
    module = importlib.import_module(PACKAGE)
    where = Path(module.__file__).resolve().parent
    if where != REPO_ROOT / PACKAGE:
        raise RuntimeError(f"imported {PACKAGE} from {where}, not from this repository ({REPO_ROOT / PACKAGE})")
    return module


def check_isolation(base_dir: Path) -> dict:
    """Every loaded module of each package comes from its own folder; returns the counts."""
    counts = {"base": 0, "new": 0}
    for name, module in list(sys.modules.items()):
        for side, prefix, folder in (("base", BASE_PACKAGE, base_dir), ("new", PACKAGE, REPO_ROOT / PACKAGE)):
            if name != prefix and not name.startswith(prefix + "."):
                continue
            path = getattr(module, "__file__", None)
            if path is None or not Path(path).resolve().is_relative_to(folder.resolve()):
                raise RuntimeError(f"module {name} was loaded from {path}, expected under {folder}")
            counts[side] += 1
    return counts


def working_tree_state() -> dict:
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", PACKAGE)
    return {"head": head, "uncommitted_changes": bool(dirty), "changed_files": dirty.splitlines()}


# --------------------------------------------------------------------------- one call


def call(module: ModuleType, task: str, inputs: Inputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward + backward of ``task`` with ``module``'s torch backend: (outputs, grads of hidden and weight)."""
    if task == "logprob_entropy":
        outputs = module.fused_linear_logprob_entropy(inputs.hidden, inputs.weight, inputs.kernel_targets, backend="torch")
    else:
        loss, _ = module.fused_linear_asymgrpo_loss(
            inputs.hidden, inputs.weight, inputs.targets, inputs.mask, inputs.advantages,
            old_logprobs=inputs.old_logprobs, ref_logprobs=inputs.ref_logprobs, backend="torch",
            **ASYMGRPO_LOSS_CONFIG,
        )
        outputs = (loss,)
    grads = torch.autograd.grad(objective(task, tuple(outputs), inputs), inputs.params)
    return [o.detach() for o in outputs], list(grads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(module: ModuleType, task: str, inputs: Inputs) -> float:
    gc.collect()
    _sync(inputs.device)
    start = time.perf_counter()
    result = call(module, task, inputs)
    _sync(inputs.device)
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def compare_outputs(base, new, dtype: str) -> dict:
    names = [f"output{i}" for i in range(len(base[0]))] + ["grad_hidden", "grad_weight"]
    errors = {n: relative_error(v, e) for n, v, e in zip(names, new[0] + new[1], base[0] + base[1])}
    tol = TOLERANCE[dtype]
    return {"verdict": "agrees" if max(errors.values()) <= tol else "MISMATCH", "tolerance": tol, "errors": errors}


def build_inputs(shape: Shape, device: torch.device) -> Inputs:
    inputs = Inputs(shape, device, seed=SEED)
    inputs.old_logprobs, inputs.ref_logprobs  # noqa: B018 - built once, before anything is timed
    return inputs


# --------------------------------------------------------------------------- memory (CPU: a subprocess per call)


def memory_subprocess(base_dir: Path, side: str, task: str, shape: Shape, timeout: float = 900.0) -> int:
    spec = {"base_dir": str(base_dir), "side": side, "task": task, "shape": shape.as_dict()}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-subprocess", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {spec}:\n{proc.stderr[-4000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"])


def _memory_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    module = load_base(Path(spec["base_dir"])) if spec["side"] == "base" else load_new()
    inputs = build_inputs(Shape.from_dict(spec["shape"]), torch.device("cpu"))
    extra = memory.peak_extra_cpu_here(lambda: call(module, spec["task"], inputs)[1])
    print(json.dumps({"extra_bytes": extra}))


# --------------------------------------------------------------------------- the comparison


def run(args) -> dict:
    device = torch.device(args.device)
    commit = resolve(args.base)
    shapes = [SIZES[args.size], SIZES[args.size].with_prompt(PROMPT_PCT)]
    tmp = Path(tempfile.mkdtemp(prefix="asymgrpo-base-"))
    try:
        base_dir = extract(commit, tmp)
        modules = {"base": load_base(base_dir), "new": load_new()}
        isolation = check_isolation(base_dir)
        doc = {
            "kind": "compare_revisions",
            "meta": metadata(device, args.size),
            "base": {"rev": args.base, "commit": commit, "source": f"git archive {commit[:12]} {PACKAGE}"},
            "new": {"path": str(REPO_ROOT / PACKAGE), **working_tree_state()},
            "modules_loaded": isolation,
            "size": args.size, "rounds": args.rounds, "device": device.type,
            "backend": "torch", "mode": "fwd+bwd", "loss_config": ASYMGRPO_LOSS_CONFIG,
            "order": "alternating: base first in even rounds, new first in odd rounds",
            "rows": [],
        }
        print(f"base: {args.base} = {commit[:12]} (extracted to {base_dir}); "
              f"new: {REPO_ROOT / PACKAGE} (HEAD {doc['new']['head'][:12]}"
              f"{', uncommitted changes' if doc['new']['uncommitted_changes'] else ''})", flush=True)
        for shape in shapes:
            inputs = build_inputs(shape, device)
            for task in TASKS:
                doc["rows"].append(run_case(args, modules, base_dir, task, shape, inputs))
                write(doc, args.out)
            del inputs
            gc.collect()
        return doc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_case(args, modules: dict, base_dir: Path, task: str, shape: Shape, inputs: Inputs) -> dict:
    # Warm-up: one call of each side, outputs and gradients compared.
    results = {side: call(modules[side], task, inputs) for side in SIDES}
    check = compare_outputs(results["base"], results["new"], shape.dtype)
    del results
    times = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            times[side].append(timed_call(modules[side], task, inputs))
    row = {
        "task": task, "shape_id": shape.id, "shape": shape.as_dict(), "n_tokens": shape.n_tokens,
        "prompt_pct": shape.prompt_pct, "scored_tokens": inputs.scored_tokens(task), "rounds": args.rounds,
        "check": check,
    }
    for side in SIDES:
        row[f"{side}_time_s"] = statistics.median(times[side])
        row[f"{side}_time_min_s"] = min(times[side])
        row[f"{side}_times_s"] = times[side]
    row["time_ratio"] = row["new_time_s"] / row["base_time_s"]
    if args.memory:
        for side in SIDES:
            if inputs.device.type == "cuda":
                extra = memory.peak_extra_cuda(lambda: call(modules[side], task, inputs)[1])
            else:
                extra = memory_subprocess(base_dir, side, task, shape)
            row[f"{side}_peak_extra_bytes"] = int(extra)
        base_mem = row["base_peak_extra_bytes"]
        row["memory_ratio"] = row["new_peak_extra_bytes"] / base_mem if base_mem > 0 else None
        row["memory_method"] = ("torch.cuda.max_memory_allocated, in-process" if inputs.device.type == "cuda"
                                else "peak RSS (VmHWM) in a fresh subprocess per (case, side)")
    print(f"{task} {shape.id}: base {row['base_time_s']:.4f} s, new {row['new_time_s']:.4f} s, "
          f"new/base {row['time_ratio']:.3f} ({check['verdict']}, max err {max(check['errors'].values()):.1e})",
          flush=True)
    return row


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-subprocess"]:
        _memory_main(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision of the base (default: main)")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"timed rounds per case (default {DEFAULT_ROUNDS})")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/compare-<device>.json")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure peak extra memory (default: on at --size cpu, off at tiny)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.memory is None:
        args.memory = args.size != "tiny"
    if args.out is None:
        args.out = REPO_ROOT / "benchmarks" / "results" / f"compare-{device_slug(torch.device(args.device))}.json"
    doc = run(args)
    write(doc, args.out)
    print()
    print(compare_table(doc))
    print(f"\nwrote {args.out}")
    return 1 if any(r["check"]["verdict"] == "MISMATCH" for r in doc["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
