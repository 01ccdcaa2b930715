"""Resumable checkpoints: a Hugging Face model folder plus the trainer's state.

    <output_dir>/checkpoints/step_000020/
        config.json, model.safetensors, tokenizer files   (loadable by vLLM and transformers)
        trainer_state.pt                                  (step, world size, optimizer, RNG states)

Under torchrun rank 0 writes the folder alone: the full (unsharded) weights, the full optimizer
state (gathered to rank 0), and every rank's RNG states (``rng_per_rank``, rank order); the other
ranks take part in the gathers and wait until it is published. Such a checkpoint resumes with
the same number of processes only (``world_size``).

Folders are written under a temporary name, fsync'd, and renamed (``durable.publish_dir``), so
a run killed mid-save, or a power loss, leaves the previous checkpoint intact and never a
checkpoint with truncated files.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError
from .distributed import SINGLE, Ranks, barrier, full_optimizer_state, gather, load_optimizer_state
from .durable import publish_dir

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer: torch.optim.Optimizer, *,
                    keep: int, ranks: Ranks = SINGLE, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write step ``step``'s checkpoint and delete all but the ``keep`` newest step checkpoints.

    Under torchrun every rank calls it (it gathers the optimizer state and the RNG states);
    ``weights`` is the full state dict (``distributed.full_state_dict``), written by rank 0.
    """
    root = checkpoint_dir(output_dir)
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    optimizer_state = full_optimizer_state(model, optimizer, ranks)
    rngs = gather(rng_states(), ranks)
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, **({"state_dict": weights} if ranks.distributed else {}))
        tokenizer.save_pretrained(tmp)
        state = {"step": step, "world_size": ranks.world_size, "optimizer": optimizer_state, "rng": rngs[0]}
        if ranks.distributed:
            state["rng_per_rank"] = rngs
        torch.save(state, tmp / STATE_FILE)
        publish_dir(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    barrier(ranks)
    return final


def rng_states() -> dict:
    """This process's RNG states: torch, Python, numpy, CUDA (None without CUDA)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Step checkpoints, oldest first (half-written ``.tmp_*`` folders are not listed)."""
    root = checkpoint_dir(output_dir)
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists()) if root.exists() else []


def load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, model=None, ranks: Ranks = SINGLE) -> int:
    """Restore optimizer and RNG states from ``folder``; return the step it was saved at.

    Under torchrun every rank reads the full optimizer state and keeps its shard (``model``: the
    sharded policy), and restores its own RNG states. ConfigError when the checkpoint was written
    by another number of processes.
    """
    state = torch.load(folder / STATE_FILE, weights_only=False)
    saved_world = int(state.get("world_size", 1))
    if saved_world != ranks.world_size:
        raise ConfigError(world_size_mismatch(folder, saved_world, ranks.world_size))
    load_optimizer_state(model, optimizer, state["optimizer"], ranks)
    rng = state["rng_per_rank"][ranks.rank] if ranks.distributed else state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])


def world_size_mismatch(where: str | Path, saved: int, now: int) -> str:
    """The one-line error of a resume with another number of processes than the run was trained with."""
    def launch(n: int) -> str:
        return "one process (no torchrun)" if n == 1 else f"{n} processes (torchrun --nproc-per-node {n})"

    return (f"{where} was trained with world size {saved} and cannot resume with world size {now}: "
            f"resume it with {launch(saved)}, as it was started")


def checkpoint_step(folder: Path) -> int:
    """The step a ``step_NNNNNN`` checkpoint folder was saved at, from its name."""
    return int(folder.name.removeprefix("step_"))
