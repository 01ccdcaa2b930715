"""One real sweep through the command line: `asymgrpo sweep` with two methods on the embedded task, tiny sizes.

Each run is a `python -m asymgrpo train` subprocess with its own vLLM engine (~15-20 s each on
an idle 2-core CPU, mostly start-up), so the sweep is kept to four runs (grpo and asymgrpo, two
seeds, 2 steps each).
It checks plumbing (the folders, the report's structure, that a re-run skips finished runs),
never a result.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="vLLM is not installed (the cpu or gpu extra installs it)")

TINY = ["--steps", "2", "--warmup-steps", "10", "--prompts-per-step", "4", "--group-size", "4",
        "--updates-per-step", "1", "--eval-size", "8", "--embedded-test-size", "16", "--eval-every", "0",
        "--checkpoint-every", "0", "--eval-pass-k", "2"]

RUNS = ("grpo/seed0", "grpo/seed1", "asymgrpo/seed0", "asymgrpo/seed1")


def _sweep(out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "asymgrpo", "sweep", "--output-dir", str(out), "--methods", "grpo,asymgrpo",
               "--seeds", "2", *TINY]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_sweep_through_the_cli_reports_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    first = _sweep(out)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in RUNS:
        run = out / name
        assert (run / "metrics.jsonl").is_file() and (run / "train.log").is_file()
        assert (run / "checkpoints" / "step_000002").is_dir()
        assert json.loads((run / "run.json").read_text())["config"]["seed"] == int(name[-1])

    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"command", "plan", "statistics", "runs", "groups", "paired", "failed", "plots"}
    assert [r["status"] for r in report["runs"]] == ["finished"] * 4 and report["failed"] == []
    summary = report["runs"][0]["summary"]
    assert set(summary) >= {"end_accuracy", "best_accuracy", "initial_accuracy", "pass@1", "pass@8", "pass@32",
                            "entropy_early", "entropy_late", "entropy_pos_late", "entropy_neg_late"}
    assert summary["steps"] == 2 and summary["end_accuracy"] is not None and summary["entropy_late"] is not None
    assert [g["method"] for g in report["groups"]] == ["grpo", "asymgrpo"]
    assert [p["method"] for p in report["paired"]] == ["asymgrpo"] and report["paired"][0]["n_pairs"] == 2
    for plot in report["plots"]:
        assert (out / plot).stat().st_size > 0
    assert len(report["plots"]) == 4
    md = (out / "report.md").read_text()
    assert "| method | n | end acc |" in md and "## Paired differences vs grpo" in md and "## Reading guide" in md

    again = _sweep(out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("finished, skipped") == 4, again.stdout
    for name in RUNS:  # one training command each: the re-run started none
        assert (out / name / "train.log").read_text().count("\n=== ") == 1
