"""The research bench without training: statistics on known inputs, plan checks, resuming, the report.

Runs are faked (a runner that writes run folders by hand), so nothing here loads a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from asymgrpo.cli import main
from asymgrpo.config import ConfigError, TrainConfig
from asymgrpo.sweep import build_plan, plan_from_folder, run_sweep, write_report
from asymgrpo.sweep.runner import SweepError, run_state, train_command
from asymgrpo.sweep.stats import (band, curve, early_late, interval, paired_difference, run_summary,
                                  window_size)

HAS_PASS_K = "eval_pass_k" in {f.name for f in dataclasses.fields(TrainConfig)}


# --- statistics -----------------------------------------------------------------------------

def test_interval_of_a_constant_is_the_point():
    result = interval([0.25] * 7)
    assert result["mean"] == result["low"] == result["high"] == 0.25
    assert result["n"] == 7 and result["note"] == "all seeds equal"


def test_interval_of_one_seed_is_the_point_and_says_so():
    result = interval([0.4])
    assert (result["mean"], result["low"], result["high"], result["n"]) == (0.4, 0.4, 0.4, 1)
    assert "one seed" in result["note"]
    assert interval([]) is None


def test_interval_covers_the_mean_shrinks_with_n_and_is_reproducible():
    rng = np.random.default_rng(1)
    widths = []
    for n in (5, 20, 200):
        sample = rng.normal(0.5, 0.1, size=n)
        result = interval(sample)
        assert result["low"] < sample.mean() < result["high"]
        assert result["mean"] == pytest.approx(sample.mean())
        widths.append(result["high"] - result["low"])
        assert interval(sample) == result  # a fixed RNG seed
    assert widths[0] > widths[1] > widths[2]
    # for n = 200 the percentile interval is close to the normal one: mean +- 1.96 sd / sqrt(n)
    assert widths[2] == pytest.approx(2 * 1.96 * sample.std() / math.sqrt(200), rel=0.15)


def test_interval_of_two_values_stays_within_them():
    result = interval([0.0, 1.0])
    assert result["mean"] == 0.5 and 0.0 <= result["low"] <= result["high"] <= 1.0


def test_paired_difference_uses_only_the_common_seeds():
    method = {0: 0.5, 1: 0.6, 2: 0.7, 3: None, 5: 0.9}
    baseline = {0: 0.4, 1: 0.6, 2: 0.8, 3: 0.1, 4: 0.2}
    result = paired_difference(method, baseline)
    assert result["seeds"] == [0, 1, 2]
    assert result["differences"] == pytest.approx([0.1, 0.0, -0.1])
    assert (result["positive"], result["negative"], result["zero"], result["n"]) == (1, 1, 1, 3)
    assert result["mean"] == pytest.approx(0.0, abs=1e-12)
    assert result["low"] <= 0 <= result["high"]
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_paired_difference_of_a_constant_shift_is_the_shift():
    result = paired_difference({s: 0.5 + 0.25 for s in range(4)}, {s: 0.5 for s in range(4)})
    assert result["mean"] == result["low"] == result["high"] == 0.25 and result["positive"] == 4


def _rows(steps: int, *, entropy=lambda s: float(s), eval_at=(), pass_at_k=None):
    rows = [{"step": 0, "accuracy": 0.1}]
    for step in range(1, steps + 1):
        row = {"step": step, "reward": 0.5, "accuracy": None, "entropy": entropy(step),
               "entropy_pos": 10.0 * step, "entropy_neg": None if step == 1 else -float(step)}
        if step in eval_at or step == steps:
            row["accuracy"] = 0.1 + 0.1 * step
        rows.append(row)
    if pass_at_k:
        rows[-1].update({f"eval_pass@{k}": v for k, v in pass_at_k.items()})
    return rows


def test_window_size():
    assert [window_size(n) for n in (0, 1, 4, 5, 9, 10, 40)] == [0, 1, 1, 1, 1, 2, 8]


def test_run_summary_of_hand_written_rows():
    rows = _rows(10, eval_at=(5,), pass_at_k={1: 0.3, 2: 0.4, 8: 0.6})
    rows[5]["accuracy"] = 0.95  # the best evaluation is not the last one
    summary = run_summary(rows)
    assert summary["steps"] == 10
    assert summary["initial_accuracy"] == 0.1
    assert summary["end_accuracy"] == pytest.approx(1.1)
    assert summary["best_accuracy"] == pytest.approx(1.1)
    rows[-1]["accuracy"] = 0.5
    summary = run_summary(rows)
    assert summary["end_accuracy"] == 0.5 and summary["best_accuracy"] == 0.95
    assert (summary["pass@1"], summary["pass@8"], summary["pass@32"]) == (0.3, 0.6, None)
    assert summary["pass_at_k"] == {"1": 0.3, "2": 0.4, "8": 0.6}
    # 10 steps: windows of 2 steps
    assert summary["entropy_early"] == pytest.approx(1.5) and summary["entropy_late"] == pytest.approx(9.5)
    assert summary["entropy_pos_early"] == pytest.approx(15.0)
    # step 1 has no negative-channel value: 9 steps have one, windows of 1 step
    assert summary["entropy_neg_early"] == pytest.approx(-2.0) and summary["entropy_neg_late"] == pytest.approx(-10.0)


def test_run_summary_without_pass_at_k_or_evaluations():
    summary = run_summary([{"step": 1, "entropy": 2.0, "accuracy": None}, {"step": 2, "entropy": 4.0}])
    assert summary["pass@1"] is None and summary["pass@8"] is None and summary["pass_at_k"] == {}
    assert summary["end_accuracy"] is None and summary["best_accuracy"] is None
    assert summary["entropy_pos_early"] is None and summary["entropy_pos_late"] is None
    assert run_summary([])["steps"] == 0


def test_early_late_windows_on_short_runs():
    assert early_late(_rows(1), "entropy") == (1.0, 1.0)  # one step: both windows are it
    assert early_late(_rows(3), "entropy") == (1.0, 3.0)  # at least one step each
    shuffled = list(reversed(_rows(4)))
    assert early_late(shuffled, "entropy") == (1.0, 4.0)  # rows are ordered by step
    assert early_late(_rows(3), "missing") == (None, None)


def test_curve_and_band():
    a = curve(_rows(3), "accuracy")
    assert a == ([0, 3], [0.1, pytest.approx(0.4)])
    b = band([([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 2], [3.0, 5.0])])
    assert b["steps"] == [0, 1, 2] and b["mean"] == [2.0, 2.0, 4.0]
    assert b["low"] == [1.0, 2.0, 3.0] and b["high"] == [3.0, 2.0, 5.0] and b["n"] == [2, 1, 2]


# --- the plan ---------------------------------------------------------------------------------

def test_plan_layout_and_keys(tmp_path):
    plan = build_plan(tmp_path / "s", methods="grpo,asymgrpo", seeds="0,3", overrides={"steps": "3"})
    assert [r.name for r in plan.runs] == ["grpo/seed0", "asymgrpo/seed0", "grpo/seed3", "asymgrpo/seed3"]  # seed-major
    assert plan.baseline == "grpo"
    run = plan.runs[2]
    assert run.path == tmp_path / "s" / "grpo" / "seed3"
    assert run.config["seed"] == 3 and run.config["steps"] == 3 and run.config["preset"] == "grpo"
    assert run.config["output_dir"] == str(run.path) and run.config["clip_high"] == 0.2
    if HAS_PASS_K:
        assert run.config["eval_pass_k"] == 32
        assert build_plan(tmp_path / "s", methods="grpo", eval_pass_k=0).runs[0].config["eval_pass_k"] == 0


def test_plan_with_a_grid(tmp_path):
    plan = build_plan(tmp_path, methods="grpo", seeds=2, grid="clip-high=0.28,3e-1")
    assert plan.grid_key == "clip_high" and plan.grid_values == (0.28, 0.3)
    assert [r.name for r in plan.runs] == ["grpo/clip_high=0.28/seed0", "grpo/clip_high=0.3/seed0",
                                           "grpo/clip_high=0.28/seed1", "grpo/clip_high=0.3/seed1"]
    assert plan.runs[1].config["clip_high"] == 0.3  # the grid wins over the method's key
    assert build_plan(tmp_path, methods="grpo", seeds=1, grid="tis_cap=none,2").grid_values == (None, 2.0)


def test_default_methods_and_seeds(tmp_path):
    from asymgrpo.methods import SWEEP_METHODS

    plan = build_plan(tmp_path)
    assert plan.methods == SWEEP_METHODS and plan.seeds == (0, 1, 2, 3, 4)
    assert len(plan.runs) == len(SWEEP_METHODS) * 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods="grpo,nope"), "unknown method 'nope'"),
    (dict(methods="grpo,grpo"), "twice"),
    (dict(seeds="0"), "seed count must be > 0"),
    (dict(seeds="a,b"), "seeds must be"),
    (dict(seeds="1,1"), "twice"),
    (dict(grid="nope=1,2"), "not a TrainConfig key"),
    (dict(grid="clip_high"), "KEY=V1,V2"),
    (dict(grid="seed=1,2"), "set by the sweep"),
    (dict(grid="clip_high=0.3,abc"), "grid value clip_high=abc"),
    (dict(grid="clip_high=0.3,0.30"), "twice"),
    (dict(grid="group_size=4,1"), "group_size must be >= 2"),  # a value the config's checks reject
    (dict(overrides={"steps": "0"}), "steps must be > 0"),
    (dict(overrides={"seed": 1}), "set by the sweep"),
    (dict(overrides={"preset": "grpo"}), "set by the method(s)"),
    (dict(overrides={"nope": 1}), "unknown config key"),
    (dict(baseline="reinforce", methods="grpo,asymgrpo"), "baseline 'reinforce'"),
])
def test_bad_input_fails_before_any_run(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_plan(tmp_path / "s", **{"methods": "grpo", **kwargs})
    assert not (tmp_path / "s").exists()


def test_a_config_file_key_is_replaced_by_the_methods(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: reinforce\nsteps: 3\n")
    plan = build_plan(tmp_path / "s", methods="grpo,asymgrpo", seeds=1, config_file=config)
    assert plan.overridden == {"preset": ["grpo", "asymgrpo"]}
    assert [r.config["preset"] for r in plan.runs] == ["grpo", "asymgrpo"] and plan.runs[0].config["steps"] == 3


# --- running, resuming, reporting with a fake runner --------------------------------------------

def fake_metrics(steps: int, seed: int, method: str, pass_k: int = 0) -> list[dict]:
    shift = 0.05 if method == "asymgrpo" else 0.0
    rows = [{"step": 0, "accuracy": 0.1 + 0.01 * seed}]
    for step in range(1, steps + 1):
        rows.append({"step": step, "reward": 0.3, "accuracy": None, "entropy": 1.0 - 0.1 * step + shift,
                     "entropy_pos": 0.8 + shift, "entropy_neg": 1.2 - shift, "tokens_pos": 3, "tokens_neg": 4})
    rows[-1]["accuracy"] = 0.2 + 0.01 * seed + shift
    k = 1
    while k <= pass_k:
        rows[-1][f"eval_pass@{k}"] = min(1.0, 0.2 + 0.1 * k)
        k *= 2
    return rows


class FakeRunner:
    """Writes what a training run would (run.json, metrics.jsonl, the final checkpoint folder)."""

    def __init__(self, fail: set[str] = frozenset(), stop_at: int | None = None):
        self.calls: list[tuple[str, list[str]]] = []
        self.fail, self.stop_at = set(fail), stop_at

    def __call__(self, run, command, log):
        self.calls.append((run.name, command))
        log.write_text("fake\n")
        if run.name in self.fail:
            return 1
        out = run.path
        (out / "run.json").write_text(json.dumps({"config": run.config, "base_model": None, "world_size": 1}))
        steps = run.config["steps"]
        reached = steps if self.stop_at is None else self.stop_at
        rows = fake_metrics(steps, run.seed, run.method, run.config.get("eval_pass_k", 0))[: reached + 1]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        checkpoint = out / "checkpoints" / f"step_{reached:06d}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "trainer_state.pt").write_bytes(b"")
        return 0 if self.stop_at is None else 130


def test_sweep_runs_records_failures_and_skips_finished_runs(tmp_path):
    plan = build_plan(tmp_path, methods="grpo,asymgrpo", seeds=3, overrides={"steps": 5}, eval_pass_k=8)
    runner = FakeRunner(fail={"asymgrpo/seed1"})
    result = run_sweep(plan, runner=runner, echo=lambda _: None)
    assert [o.status for o in result.outcomes] == ["finished"] * 3 + ["failed", "finished", "finished"]
    assert [name for name, _ in runner.calls] == [r.name for r in plan.runs]
    command = runner.calls[0][1]
    assert command[1:4] == ["-m", "asymgrpo", "train"] and "--resume" not in command
    assert (plan.runs[0].path / "train_config.yaml").is_file()
    assert TrainConfig.load(plan.runs[0].path / "train_config.yaml").to_dict() == {
        **plan.runs[0].config, "resume": False, "overwrite": False}

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failed"] == ["asymgrpo/seed1"]
    assert {r["name"]: r["status"] for r in report["runs"]}["asymgrpo/seed1"] == "failed"

    again = FakeRunner()
    result = run_sweep(plan, runner=again, echo=lambda _: None)
    assert [name for name, _ in again.calls] == ["asymgrpo/seed1"]  # finished runs are skipped
    assert sum(o.skipped for o in result.outcomes) == 5 and not result.failed


def test_an_interrupted_run_is_resumed_and_stops_the_sweep(tmp_path):
    plan = build_plan(tmp_path, methods="grpo", seeds=2, overrides={"steps": 4})
    result = run_sweep(plan, runner=FakeRunner(stop_at=2), echo=lambda _: None)
    assert result.interrupted and [o.status for o in result.outcomes] == ["interrupted", "pending"]
    assert run_state(plan.runs[0]) == "started"
    assert "--resume" in train_command(plan.runs[0], "started")
    runner = FakeRunner()
    run_sweep(plan, runner=runner, echo=lambda _: None)
    assert "--resume" in runner.calls[0][1] and "--resume" not in runner.calls[1][1]


def test_a_changed_plan_for_a_sweep_folder_is_an_error(tmp_path):
    plan = build_plan(tmp_path, methods="grpo", seeds=1, overrides={"steps": 3})
    run_sweep(plan, runner=FakeRunner(), echo=lambda _: None)
    changed = build_plan(tmp_path, methods="grpo", seeds=1, overrides={"steps": 4})
    with pytest.raises(SweepError, match="another base config: steps 4 \\(was 3\\)"):
        run_sweep(changed, runner=FakeRunner(), echo=lambda _: None)
    with pytest.raises(SweepError, match="grid key"):
        run_sweep(build_plan(tmp_path, methods="grpo", seeds=1, overrides={"steps": 3}, grid="lr=0.1"),
                  runner=FakeRunner(), echo=lambda _: None)
    # more seeds and methods for the same sweep are fine, and the report covers them all
    more = build_plan(tmp_path, methods="asymgrpo", seeds=2, overrides={"steps": 3, "progress": True})
    runner = FakeRunner()
    run_sweep(more, runner=runner, echo=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["grpo/seed0", "asymgrpo/seed0", "asymgrpo/seed1"]


def test_a_run_folder_outside_a_sweep_is_not_taken_over(tmp_path):
    plan = build_plan(tmp_path, methods="grpo", seeds=1)
    plan.runs[0].path.mkdir(parents=True)
    (plan.runs[0].path / "run.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(SweepError, match="not a sweep folder"):
        run_sweep(plan, runner=FakeRunner(), echo=lambda _: None)


def test_report_structure_from_fake_run_folders(tmp_path):
    plan = build_plan(tmp_path, methods="grpo,asymgrpo,reinforce", seeds=3, overrides={"steps": 10}, eval_pass_k=32)
    run_sweep(plan, runner=FakeRunner(fail={"reinforce/seed0", "reinforce/seed1", "reinforce/seed2"}),
              echo=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"command", "plan", "statistics", "runs", "groups", "paired", "failed", "plots"}
    assert report["plan"]["base"]["steps"] == 10 and report["plan"]["baseline"] == "grpo"
    groups = {g["method"]: g for g in report["groups"]}
    assert groups["grpo"]["n_seeds"] == 3 and groups["reinforce"]["n_seeds"] == 0
    assert groups["reinforce"]["quantities"]["end_accuracy"] is None
    end = groups["grpo"]["quantities"]["end_accuracy"]
    assert end["mean"] == pytest.approx(0.21) and end["low"] <= 0.21 <= end["high"]
    if HAS_PASS_K:
        assert groups["grpo"]["quantities"]["pass@8"]["mean"] == pytest.approx(1.0)
        assert groups["grpo"]["quantities"]["pass@32"]["mean"] == pytest.approx(1.0)
    paired = {p["method"]: p for p in report["paired"]}
    assert set(paired) == {"asymgrpo", "reinforce"} and paired["reinforce"]["n_pairs"] == 0
    diff = paired["asymgrpo"]["quantities"]["end_accuracy"]
    assert diff["mean"] == pytest.approx(0.05) and diff["positive"] == 3 and diff["n"] == 3
    assert paired["asymgrpo"]["quantities"]["entropy_neg_late"]["negative"] == 3
    assert sorted(report["plots"]) == sorted(f"plots/{n}.png" for n in ("accuracy", "entropy", "entropy_pos",
                                                                         "entropy_neg"))
    for name in report["plots"]:
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Results", "## Paired differences vs grpo", "## Runs", "## Reading guide"):
        assert heading in md
    assert "| method | n | end acc | best acc | pass@1 | pass@8 | pass@32 |" in md
    assert "| reinforce | 0/3 | - |" in md
    assert "(3/3)" in md and "contains 0 is not a detected difference" in md

    # --report-only rebuilds the same from the folders alone (failed runs are then "not started")
    (tmp_path / "report.json").unlink()
    write_report(plan_from_folder(tmp_path))
    rebuilt = json.loads((tmp_path / "report.json").read_text())
    assert rebuilt["groups"] == report["groups"] and rebuilt["paired"] == report["paired"]
    assert {r["status"] for r in rebuilt["runs"] if r["method"] == "reinforce"} == {"not started"}


def test_report_with_a_grid_has_one_row_per_method_and_value(tmp_path):
    plan = build_plan(tmp_path, methods="grpo,asymgrpo", seeds=1, overrides={"steps": 2}, grid="lr=1e-4,1e-3")
    run_sweep(plan, runner=FakeRunner(), echo=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(g["method"], g["grid_value"]) for g in report["groups"]] == [
        ("grpo", 1e-4), ("grpo", 1e-3), ("asymgrpo", 1e-4), ("asymgrpo", 1e-3)]
    assert [(p["method"], p["grid_value"]) for p in report["paired"]] == [("asymgrpo", 1e-4), ("asymgrpo", 1e-3)]
    assert report["groups"][0]["quantities"]["end_accuracy"]["note"] == "one seed: no interval"
    md = (tmp_path / "report.md").read_text()
    assert "| method | lr | n |" in md and "| asymgrpo | 0.001 | 1/1 |" in md


def test_no_baseline_no_paired_table(tmp_path):
    plan = build_plan(tmp_path, methods="asymgrpo,reinforce", seeds=1, overrides={"steps": 2})
    assert plan.baseline is None
    run_sweep(plan, runner=FakeRunner(), echo=lambda _: None)
    assert json.loads((tmp_path / "report.json").read_text())["paired"] == []
    assert "No baseline" in (tmp_path / "report.md").read_text()


# --- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--methods", "grpo,nope"], "unknown method 'nope'"),
    (["--grid", "nope=1"], "not a TrainConfig key"),
    (["--grid", "lr=-1"], "lr must be > 0"),
    (["--seeds", "x"], "seeds must be"),
    (["--steps", "0"], "steps must be > 0"),
    (["--preset", "grpo"], "set by the method(s) grpo"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    out = tmp_path / "s"
    assert main(["sweep", "--output-dir", str(out), "--methods", "grpo", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asymgrpo: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_report_only_needs_a_sweep(tmp_path, capsys):
    assert main(["sweep", "--report-only", "--output-dir", str(tmp_path)]) == 2
    assert "holds no sweep.json" in capsys.readouterr().err


def test_cli_exit_code_2_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asymgrpo", "sweep", "--output-dir", str(tmp_path / "s"),
                             "--methods", "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown method 'nope'" in result.stderr and "Traceback" not in result.stderr
