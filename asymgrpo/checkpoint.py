"""Resumable checkpoints: a Hugging Face model folder plus the trainer's state.

    <output_dir>/checkpoints/step_000020/
        config.json, model.safetensors, tokenizer files   (loadable by vLLM and transformers)
        trainer_state.pt                                  (step, optimizer, RNG states)

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

from .durable import publish_dir

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer: torch.optim.Optimizer, *,
                    keep: int) -> Path:
    """Write step ``step``'s checkpoint and delete all but the ``keep`` newest step checkpoints."""
    root = checkpoint_dir(output_dir)
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    torch.save(state, tmp / STATE_FILE)
    publish_dir(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Step checkpoints, oldest first (half-written ``.tmp_*`` folders are not listed)."""
    root = checkpoint_dir(output_dir)
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists()) if root.exists() else []


def load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer) -> int:
    """Restore optimizer and RNG states from ``folder``; return the step it was saved at."""
    state = torch.load(folder / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])


def checkpoint_step(folder: Path) -> int:
    """The step a ``step_NNNNNN`` checkpoint folder was saved at, from its name."""
    return int(folder.name.removeprefix("step_"))
