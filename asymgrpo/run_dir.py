"""The run folder (``output_dir``): what a run writes there, and the rules that keep it safe.

    run.json        {"config": every TrainConfig key, "base_model": the weights RL started from,
                     "world_size": the number of trainer processes (1 without torchrun)}
    metrics.jsonl   one JSON row per step (step 0: the starting evaluation)
    curves.png      the metrics' plots
    checkpoints/    warmup/ (embedded model) and step_NNNNNN/ (resumable)

Rules: a run is never deleted implicitly (a new run into a folder that holds one needs
``overwrite``, which deletes only the files above); ``resume`` continues the run under its
saved config, where only ``RESUMABLE_KEYS`` may change; a torn last line of metrics.jsonl
(a process killed mid-write) is dropped on resume, and said so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_dir, checkpoint_step, list_checkpoints, world_size_mismatch
from .config import ConfigError
from .durable import append_line, write_text

RUN_FILE, METRICS_FILE, CURVES_FILE = "run.json", "metrics.jsonl", "curves.png"

# What a resumed run may change: where the folder is now, how long it runs and how it logs,
# checkpoints and guards the reward calls; none of them changes the numbers of a step.
# Everything else must equal run.json.
RESUMABLE_KEYS = frozenset({
    "output_dir", "steps", "eval_every", "checkpoint_every", "keep_checkpoints", "progress", "resume", "overwrite",
    "reward_timeout_s", "reward_workers", "allow_reward_failures",
})


class RunFolderError(ConfigError):
    """The run folder does not allow what was asked (it holds a run, it holds none to resume, ...)."""


def saved_run(out: str | Path) -> dict[str, Any] | None:
    """run.json of the run in ``out``, or None when there is none."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); it cannot be resumed") from None
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise RunFolderError(f"{path} holds no run config; it cannot be resumed")
    return run


def write_run(out: Path, config: dict[str, Any], base_model: str | None, world_size: int = 1) -> None:
    write_text(out / RUN_FILE, json.dumps({"base_model": base_model, "world_size": world_size, "config": config},
                                          indent=1))


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds any part of a run (so that starting one there would destroy it)."""
    return any((out / name).exists() for name in (RUN_FILE, METRICS_FILE)) or (
        checkpoint_dir(out).is_dir() and any(checkpoint_dir(out).iterdir()))


def describe_run(out: Path) -> str:
    """A few words on the run in ``out``: how far it got."""
    checkpoints = list_checkpoints(out)
    run = saved_run(out) if (out / RUN_FILE).is_file() else None
    total = f" of {run['config'].get('steps')}" if run else ""
    if checkpoints:
        return f"a run checkpointed at step {checkpoint_step(checkpoints[-1])}{total}"
    return "a run with no step checkpoint yet"


def clear_run(out: Path) -> None:
    """Delete the files a run writes in ``out`` (and nothing else the folder may hold)."""
    for name in (RUN_FILE, METRICS_FILE, CURVES_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def resume_differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """``key value (run.json: saved)`` for each key outside RESUMABLE_KEYS that differs from the saved run."""
    return [f"{key} {config[key]!r} (run.json: {saved.get(key)!r})" for key in config
            if key not in RESUMABLE_KEYS and key in saved and saved[key] != config[key]]


def check_resumable(out: Path, config: dict[str, Any], world_size: int = 1) -> int:
    """Raise RunFolderError unless the run in ``out`` can continue under ``config`` with ``world_size``
    processes; return the step it resumes from.

    0 when the run has no step checkpoint yet (it restarts from its starting weights). A run
    resumes with the number of processes it was trained with (run.json's world_size; 1 when absent).
    """
    run = saved_run(out)
    if run is None:
        raise RunFolderError(f"nothing to resume in {out}: it holds no {RUN_FILE} (drop --resume to start a run there)")
    saved_world = int(run.get("world_size") or 1)
    if saved_world != world_size:
        raise RunFolderError(world_size_mismatch(f"the run in {out}", saved_world, world_size))
    differences = resume_differences(run["config"], config)
    if differences:
        raise RunFolderError(
            f"--resume continues the run in {out} as it was started, but these options differ from its {RUN_FILE}: "
            f"{'; '.join(differences)}. Only {', '.join(sorted(RESUMABLE_KEYS - {'output_dir', 'resume', 'overwrite'}))} may change "
            f"on resume; start a new run in another --output-dir to change the others")
    checkpoints = list_checkpoints(out)
    step = checkpoint_step(checkpoints[-1]) if checkpoints else 0
    if step > config["steps"]:
        raise RunFolderError(f"steps {config['steps']} is below step {step}, where the run in {out} is checkpointed")
    return step


def append_metrics(out: Path, row: dict[str, Any]) -> None:
    append_line(out / METRICS_FILE, json.dumps(row))


def read_metrics(out: Path) -> tuple[list[dict[str, Any]], bool]:
    """(rows, torn): the rows of metrics.jsonl; ``torn`` when its last line was cut short and left out.

    A bad line before the last is not a torn write: RunFolderError names it.
    """
    path = out / METRICS_FILE
    if not path.exists():
        return [], False
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                return rows, True
            raise RunFolderError(f"{path} line {number} is not valid JSON: the metrics file is damaged") from None
    return rows, False


def keep_metrics_until(out: Path, step: int) -> bool:
    """Keep only metrics rows up to ``step`` (a resumed run rewrites what came after its checkpoint).

    Returns whether a torn last line was dropped.
    """
    rows, torn = read_metrics(out)
    if (out / METRICS_FILE).exists():
        write_text(out / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows if row["step"] <= step))
    return torn
