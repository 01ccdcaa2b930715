"""Run a function on P real processes joined by a gloo process group, and collect what each returns.

``run_ranks(P, worker, *args)`` spawns P processes; rank r runs ``worker(rank, world_size, *args)``
with ``torch.distributed`` initialised (gloo, CPU tensors) and returns its result (anything
``torch.save`` takes). A rank that raises fails the call with its traceback; ranks still
running after ``timeout_s`` are killed and reported as hung, so a hang is a test failure.
``worker`` must be importable by module name (defined at module level). Used by tests/ and
benchmarks/vocab_parallel.py.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out: str, worker, args) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # P processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = worker(rank, world_size, *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while a peer still has work in flight
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, worker, *args, timeout_s: float = 300) -> list:
    """[result of rank 0, ..., result of rank P-1]."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out:
        port = free_port()
        procs = [ctx.Process(target=_entry, args=(r, world_size, port, out, worker, args)) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout_s)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        errors = {r: (Path(out) / f"rank{r}.err").read_text() for r in range(world_size)
                  if (Path(out) / f"rank{r}.err").exists()}
        assert not hung, f"ranks {hung} still running after {timeout_s} s (a hang); errors: {errors}"
        assert not errors, "\n".join(f"rank {r}:\n{text}" for r, text in errors.items())
        died = {r: (p.exitcode, "after" if (Path(out) / f"rank{r}.pt").exists() else "before")
                for r, p in enumerate(procs) if p.exitcode != 0}
        assert not died, "; ".join(f"rank {r} exited with code {code} {when} saving its result"
                                   for r, (code, when) in died.items())
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
