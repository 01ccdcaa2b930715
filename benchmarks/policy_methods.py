"""What each policy loss of docs/algorithm.md §8 costs: the fused loss's forward + backward per method.

    python -m benchmarks.policy_methods                              # CPU, torch backend
    python -m benchmarks.policy_methods --tokens 2048 --out results/x.json

One shape (N tokens, a quarter of them prompt, H, V, float32), the trainer's options otherwise
(token-mean, clip 0.2 / 0.28, off-policy old log-probs). Per method (``asymgrpo.methods.METHODS``'s
loss options):

* time: median of ``--repeats`` calls, all methods timed in this one process, round-robin (so
  a slow moment of the machine spreads over all of them), as a ratio to "ppo" and to the
  three-matmul floor (h W^T, g W, g^T h on the scored rows);
* peak extra memory: in a fresh subprocess per method (``benchmarks.memory``'s definition), and
  as a share of the float32 [n, V] logits the fused path never holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.memory import REPO_ROOT, peak_extra_cpu_here

RESULTS = Path(__file__).resolve().parent / "results"
LOSS_KEYS = ("clip_low", "clip_high", "policy_loss", "top_entropy_quantile", "clip_cov_ratio", "kl_cov_ratio",
             "kl_cov_coef", "loss_agg", "entropy_coef")
METHOD_NAMES = ("ppo", "cispo", "gspo", "clip_cov", "kl_cov", "top_entropy")


def method_options(name: str) -> dict:
    """The loss options of a method; "ppo" is the registry's grpo (the default surrogate)."""
    from asymgrpo.methods import METHODS

    keys = METHODS["grpo" if name == "ppo" else name]
    return {k: v for k, v in keys.items() if k in LOSS_KEYS}


def inputs(tokens: int, hidden: int, vocab: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    seq = 64
    batch = tokens // seq
    mask = torch.ones(batch, seq)
    mask[:, : seq // 4] = 0
    return dict(
        hidden=torch.randn(batch, seq, hidden, generator=gen).requires_grad_(),
        weight=(torch.randn(vocab, hidden, generator=gen) / hidden**0.5).requires_grad_(),
        targets=torch.randint(vocab, (batch, seq), generator=gen),
        mask=mask,
        advantages=torch.randn(batch, generator=gen),
        old_logprobs=-5 * torch.rand(batch, seq, generator=gen),
    )


def call(data: dict, options: dict):
    """One forward + backward; returns the gradients (what the call keeps)."""
    from asymgrpo_kernels import fused_linear_asymgrpo_loss

    data["hidden"].grad = data["weight"].grad = None
    loss, _ = fused_linear_asymgrpo_loss(data["hidden"], data["weight"], data["targets"], data["mask"],
                                         data["advantages"], old_logprobs=data["old_logprobs"], backend="torch",
                                         **options)
    loss.backward()
    return data["hidden"].grad, data["weight"].grad


def floor(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    rows = data["hidden"].detach().reshape(-1, data["hidden"].shape[-1])[data["mask"].reshape(-1) != 0]
    weight = data["weight"].detach()
    logits = rows @ weight.T
    return logits @ weight, logits.T @ rows


def timings(args) -> dict[str, float]:
    data = inputs(args.tokens, args.hidden, args.vocab)
    runs = {name: (lambda o=method_options(name): call(data, o)) for name in METHOD_NAMES}
    runs["floor (3 matmuls)"] = lambda: floor(data)
    for run in runs.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def memory(args, name: str) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "benchmarks.policy_methods", "--memory-of", name, "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess of {name} failed:\n{proc.stderr[-4000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "policy_methods-cpu.json")
    parser.add_argument("--memory-of", choices=METHOD_NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.memory_of:
        data = inputs(args.tokens, args.hidden, args.vocab)
        options = method_options(args.memory_of)
        call(data, options)  # first call outside the measurement
        print(json.dumps({"extra_bytes": peak_extra_cpu_here(lambda: call(data, options))}))
        return
    times = timings(args)
    scored = args.tokens * 3 // 4
    logits_bytes = scored * args.vocab * 4
    rows = []
    for name in METHOD_NAMES:
        extra = memory(args, name)
        rows.append({"method": name, "options": method_options(name), "time_s": times[name],
                     "vs_ppo": times[name] / times["ppo"], "vs_floor": times[name] / times["floor (3 matmuls)"],
                     "peak_extra_bytes": extra, "vs_logits": extra / logits_bytes})
    result = {"device": "cpu", "threads": torch.get_num_threads(), "tokens": args.tokens, "scored": scored,
              "hidden": args.hidden, "vocab": args.vocab, "dtype": "float32", "backend": "torch",
              "repeats": args.repeats, "floor_time_s": times["floor (3 matmuls)"], "rows": rows,
              "command": "python -m benchmarks.policy_methods " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"N={args.tokens} ({scored} scored), H={args.hidden}, V={args.vocab}, float32, torch backend, "
             f"{result['threads']} threads; floor {times['floor (3 matmuls)']:.3f} s",
             "", "| method | time | vs ppo | vs floor | peak extra | vs logits |", "|---|--:|--:|--:|--:|--:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['time_s']:.3f} s | {row['vs_ppo']:.2f} | {row['vs_floor']:.2f} | "
                     f"{row['peak_extra_bytes'] / 2**20:.0f} MiB | {row['vs_logits']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
