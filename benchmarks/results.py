"""Benchmark rows -> one JSON file per suite, with the run's metadata and ratios from the same run.

Ratios: ``time_vs_reference`` and ``memory_vs_reference`` divide by the row of the same task,
shape and mode whose implementation is "reference"; ``time_vs_floor`` divides by the floor
row of the same shape and mode; ``tflops`` is the LM head's useful FLOPs (2NHV forward,
6NHV forward + backward, over all N tokens, scored or not) over the median time. On a
prompt shape (``prompt_pct`` > 0), ``time_vs_full_mask`` / ``memory_vs_full_mask`` divide by
the row of the same task, implementation and mode at the plain twin shape.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .cases import matmul_flops, Shape


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def device_slug(device: torch.device) -> str:
    """A file-name-safe tag: "cpu" or the card's name, e.g. "nvidia-h100-80gb-hbm3"."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device: torch.device, preset: str) -> dict:
    """Device, library versions, date and commit of this run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "preset": preset,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "versions": {d: _version(d) for d in ("triton", "liger-kernel", "cut-cross-entropy", "transformers", "asymgrpo")},
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }


class Recorder:
    """Collects rows during a pytest session and writes ``<suite>-<device>.json`` per suite."""

    def __init__(self, out_dir: Path, device: torch.device, preset: str):
        self.out_dir, self.device, self.preset = Path(out_dir), device, preset
        self.rows: dict[str, list[dict]] = {}
        self.meta = metadata(device, preset)

    def path(self, suite: str) -> Path:
        return self.out_dir / f"{suite}-{device_slug(self.device)}.json"

    def add(self, suite: str, row: dict) -> None:
        """Record a row and rewrite the suite's file, so a run cut short keeps what it measured."""
        self.rows.setdefault(suite, []).append(row)
        self.write_suite(suite)

    def write_suite(self, suite: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"suite": suite, "meta": self.meta, "rows": with_ratios(self.rows[suite])}
        path = self.path(suite)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path

    def write(self) -> list[Path]:
        return [self.write_suite(suite) for suite in self.rows]


def with_ratios(rows: list[dict]) -> list[dict]:
    """Rows with time / memory ratios against the reference and the floor of the same run."""
    def key(row):
        return (row["shape_id"], row["mode"])

    measured = [r for r in rows if r["status"] in ("ok", "mismatch")]
    reference = {(r["task"],) + key(r): r for r in measured if r["impl"] == "reference"}
    floor = {key(r): r for r in measured if r["task"] == "floor"}
    by_impl = {(r["task"], r["impl"]) + key(r): r for r in measured}
    out = []
    for row in rows:
        row = dict(row)
        if row["status"] in ("ok", "mismatch"):
            ref, flo = reference.get((row["task"],) + key(row)), floor.get(key(row))
            shape = Shape.from_dict(row["shape"])
            row["tflops"] = matmul_flops(shape, row["mode"]) / row["time_s"] / 1e12
            row["time_vs_reference"] = row["time_s"] / ref["time_s"] if ref else None
            row["memory_vs_reference"] = (
                row["peak_extra_bytes"] / ref["peak_extra_bytes"] if ref and ref["peak_extra_bytes"] > 0 else None
            )
            row["time_vs_floor"] = row["time_s"] / flo["time_s"] if flo else None
            row["memory_vs_fp32_logits"] = row["peak_extra_bytes"] / shape.logits_bytes(4)
            if shape.prompt_pct:
                full = by_impl.get((row["task"], row["impl"], shape.base_id, row["mode"]))
                row["time_vs_full_mask"] = row["time_s"] / full["time_s"] if full else None
                row["memory_vs_full_mask"] = (
                    row["peak_extra_bytes"] / full["peak_extra_bytes"] if full and full["peak_extra_bytes"] > 0 else None
                )
        out.append(row)
    return out
