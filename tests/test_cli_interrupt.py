"""Ctrl-C in a real `python -m asymgrpo train` process: it stops after the step, checkpoints, prints how to
continue, and `--resume` continues from there to the end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asymgrpo.run_dir import read_metrics

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="vLLM is not installed (the cpu or gpu extra installs it)")

TINY = ["--warmup-steps", "30", "--steps", "12", "--prompts-per-step", "8", "--group-size", "4", "--eval-size", "40",
        "--embedded-test-size", "200", "--eval-every", "0", "--checkpoint-every", "0", "--progress", "false"]


def _train(out: Path, *extra: str, interrupt_after_step: int | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "asymgrpo", "train", "--output-dir", str(out), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if interrupt_after_step is not None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            rows = read_metrics(out)[0] if (out / "metrics.jsonl").exists() else []
            if rows and rows[-1]["step"] >= interrupt_after_step:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_ctrl_c_stops_after_the_step_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    stopped = _train(out, *TINY, interrupt_after_step=2)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line.startswith("asymgrpo: SIGINT: stopped at step "), stopped.stderr
    assert last_line.endswith(f"continue with: asymgrpo train --resume --output-dir {out}")
    step = int(last_line.split("stopped at step ")[1].split()[0])
    assert 2 <= step < 12
    rows = read_metrics(out)[0]
    assert [r["step"] for r in rows] == list(range(step + 1))  # nothing half-done: every row is a whole step
    assert (out / "checkpoints" / f"step_{step:06d}" / "trainer_state.pt").exists()

    resumed = _train(out, "--resume", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} at step {step} of 12" in resumed.stdout
    assert f"done: {12 - step} steps" in resumed.stdout
    assert [r["step"] for r in read_metrics(out)[0]] == list(range(13))
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 12
    assert os.path.exists(out / "checkpoints" / "step_000012")
