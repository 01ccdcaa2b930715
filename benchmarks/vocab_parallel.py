"""The vocabulary-parallel fused loss at P = 1, 2, 4 processes (gloo): per-rank time, memory and traffic.

    python -m benchmarks.vocab_parallel                       # CPU, small shapes, P = 1 2 4
    python -m benchmarks.vocab_parallel --processes 1 2 --tokens 1024 --out results/x.json

Each P runs in fresh processes (``benchmarks.ranks``), one thread per rank; every rank holds
V / P rows of the LM head (the first V mod P ranks one more) and the same N tokens (a quarter of
them prompt, masked out). Per rank, for ``fused_linear_asymgrpo_loss`` forward + backward (torch
backend, token-mean, clip 0.2/0.28, entropy bonus 0.01):

* time: median of ``--repeats`` calls, and its ratio to the single-process call without a
  process group (P = 1 row, "none") and to the matmul floor of the rank's shard (three plain
  matmuls: h W_r^T, g W_r, g^T h);
* peak extra memory: peak RSS during one call minus RSS before it, minus the gradients
  (``benchmarks.memory``'s definition), and its ratio to the float32 [n, V] logits;
* traffic: bytes each rank sends per scored token and the number of collectives per call,
  counted by wrapping torch.distributed's all_gather / all_reduce.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.ranks import run_ranks

RESULTS = Path(__file__).resolve().parent / "results"


def shard_rows(vocab: int, world_size: int, rank: int) -> slice:
    sizes = [vocab // world_size + (r < vocab % world_size) for r in range(world_size)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


class Traffic:
    """Counts the collectives torch.distributed runs, and the bytes this rank puts into them."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_reduce")

    def __init__(self) -> None:
        import torch.distributed as dist

        self.calls, self.bytes, self._dist = 0, 0, dist
        self._saved = {name: getattr(dist, name) for name in self.NAMES if hasattr(dist, name)}
        for name, original in self._saved.items():
            setattr(dist, name, self._counted(original, name.startswith("all_gather")))

    def _counted(self, original, gathers: bool):
        def wrapper(*args, **kwargs):
            tensor = args[1] if gathers else args[0]  # all_gather(out, local) / all_reduce(tensor)
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return original(*args, **kwargs)
        return wrapper

    def restore(self) -> None:
        for name, original in self._saved.items():
            setattr(self._dist, name, original)


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) * 1024


def measure(rank: int, world_size: int, tokens: int, hidden_size: int, vocab: int, repeats: int,
            parallel: bool) -> dict:
    """One rank's figures (a module-level worker for ``run_ranks``)."""
    import torch.distributed as dist

    from asymgrpo_kernels import fused_linear_asymgrpo_loss

    gen = torch.Generator().manual_seed(0)
    batch, seq = 8, tokens // 8
    hidden = torch.randn(batch, seq, hidden_size, generator=gen).requires_grad_()
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5
    rows = shard_rows(vocab, world_size, rank) if parallel else slice(0, vocab)
    weight = weight[rows].clone().requires_grad_()
    targets = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[:, : seq // 4] = 0  # the prompt
    advantages = torch.randn(batch, generator=gen)
    n_scored = int(mask.sum())
    group = dist.group.WORLD if parallel else None

    def step() -> None:
        hidden.grad = weight.grad = None
        loss, _ = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, advantages, backend="torch",
                                             clip_high=0.28, entropy_coef=0.01, process_group=group)
        loss.backward()

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            dist.barrier()
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def floor() -> None:
        h = hidden.detach().reshape(-1, hidden_size)[:n_scored]
        g = h @ weight.detach().T
        g @ weight.detach()
        g.T @ h

    step()  # warm-up
    traffic = Traffic()
    step()
    traffic.restore()
    seconds, floor_seconds = timed(step), timed(floor)
    hidden.grad = weight.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter to the current RSS
    before = _rss("VmRSS:")
    step()
    extra = _rss("VmHWM:") - before - (hidden.numel() + weight.numel()) * 4
    return {"rank": rank, "vocab_rows": rows.stop - rows.start, "seconds": seconds, "floor_seconds": floor_seconds,
            "peak_extra_bytes": extra, "collectives": traffic.calls, "bytes_sent": traffic.bytes,
            "scored_tokens": n_scored}


def run(processes: list[int], tokens: int, hidden_size: int, vocab: int, repeats: int) -> dict:
    rows = []
    for world_size, parallel in [(1, False)] + [(p, True) for p in processes]:
        ranks = run_ranks(world_size, measure, tokens, hidden_size, vocab, repeats, parallel, timeout_s=1800)
        rows.append({"processes": world_size, "process_group": parallel, "ranks": ranks})
    baseline = rows[0]["ranks"][0]["seconds"]
    logits_bytes = rows[0]["ranks"][0]["scored_tokens"] * vocab * 4
    for row in rows:
        for rank in row["ranks"]:
            rank["time_vs_single_process"] = rank["seconds"] / baseline
            rank["time_vs_floor"] = rank["seconds"] / rank["floor_seconds"]
            rank["memory_vs_logits"] = rank["peak_extra_bytes"] / logits_bytes
            rank["bytes_per_token"] = rank["bytes_sent"] / rank["scored_tokens"]
    return {"shape": {"tokens": tokens, "hidden": hidden_size, "vocab": vocab, "dtype": "float32"},
            "torch": torch.__version__, "rows": rows}


def table(result: dict) -> str:
    shape = result["shape"]
    lines = [f"N = {shape['tokens']} tokens (3/4 scored), H = {shape['hidden']}, V = {shape['vocab']}, float32, "
             "one thread per rank; per rank: forward + backward of fused_linear_asymgrpo_loss (torch backend)", "",
             "| P | group | rank | V_r | time ms | vs P=1 none | vs floor | peak extra MiB | vs [n, V] logits "
             "| collectives | bytes sent / token |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for r in row["ranks"]:
            lines.append(
                f"| {row['processes']} | {'yes' if row['process_group'] else 'none'} | {r['rank']} | {r['vocab_rows']} "
                f"| {r['seconds'] * 1e3:.0f} | {r['time_vs_single_process']:.2f} | {r['time_vs_floor']:.2f} "
                f"| {r['peak_extra_bytes'] / 2**20:.0f} | {r['memory_vs_logits']:.3f} | {r['collectives']} "
                f"| {r['bytes_per_token']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32_768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "vocab_parallel-cpu.json")
    args = parser.parse_args(argv)
    result = run(args.processes, args.tokens, args.hidden, args.vocab, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
