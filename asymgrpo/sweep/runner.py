"""Plan and run a sweep: methods x seeds (x the values of one grid key), one training run after another.

    build_plan   check every input and build every run's TrainConfig (a bad value fails here,
                 before any run starts); SweepError (a ConfigError: exit code 2 on the CLI)
    run_sweep    record the plan (sweep.json), then for each run: skip it when finished, resume it
                 when interrupted, start it otherwise, as a subprocess ``python -m asymgrpo train``
                 whose output goes to <run>/train.log; a failed run is recorded and the others go on

Folder layout (deterministic, so re-running the same command finds its runs):

    <sweep_dir>/sweep.json                       the plan: base config, grid key, methods, seeds, values
    <sweep_dir>/<method>/seed<k>/                one run folder (run.json, metrics.jsonl, checkpoints/,
    <sweep_dir>/<method>/<key>=<value>/seed<k>/    train_config.yaml, train.log), with a grid
    <sweep_dir>/report.json, report.md, plots/   the report (report.py, plots.py)

Order of the config sources, later ones winning: TrainConfig's defaults, ``--config FILE``, the
forwarded ``--KEY VALUE`` options, the method's keys, the grid value, the seed and output folder.
A forwarded option that a chosen method sets is an error (the method would silently override it);
a key from the config file is overridden by the method's keys and said so in the plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..checkpoint import checkpoint_step, list_checkpoints
from ..config import ConfigError, TrainConfig, _check_type, _read_yaml
from ..methods import METHODS, SWEEP_METHODS, method_keys

PLAN_FILE, RUN_CONFIG_FILE, LOG_FILE = "sweep.json", "train_config.yaml", "train.log"
DEFAULT_SEEDS = 5
DEFAULT_EVAL_PASS_K = 32
#: Keys the sweep sets itself for every run: not forwarded, not a grid key.
MANAGED_KEYS = ("seed", "output_dir", "resume", "overwrite")
#: Keys that may differ between two invocations of one sweep (they change no number of a run).
FREE_KEYS = frozenset({*MANAGED_KEYS, "progress", "reward_timeout_s", "reward_workers", "keep_checkpoints"})


class SweepError(ConfigError):
    """A sweep's input is wrong, or its folder holds a different sweep."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the plan: its method, seed, grid value (None without a grid), folder and name
    (the folder relative to the sweep folder, e.g. ``asymgrpo/clip_high=0.28/seed3``)."""

    method: str
    seed: int
    grid_value: Any
    path: Path
    name: str
    config: dict[str, Any] = field(repr=False)  # every TrainConfig key of the run


@dataclass(frozen=True)
class SweepPlan:
    """What ``run_sweep`` runs and ``write_report`` reports on (``build_plan`` makes one).

    base: every TrainConfig key before the methods' keys (the config file, the forwarded options,
    eval_pass_k); grid_key / grid_values: the swept key and its values (None / () without a grid).
    """

    sweep_dir: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    grid_key: str | None
    grid_values: tuple[Any, ...]
    baseline: str | None
    base: dict[str, Any] = field(repr=False)
    runs: tuple[RunSpec, ...] = field(repr=False)
    overridden: dict[str, list[str]] = field(default_factory=dict, repr=False)  # config-file key -> methods
    command: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "seeds": list(self.seeds), "grid_key": self.grid_key,
                "grid_values": list(self.grid_values), "baseline": self.baseline, "base": self.base,
                "overridden_by_methods": self.overridden, "runs": [r.name for r in self.runs]}


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run in this invocation: ``finished`` (now or before: ``skipped``),
    ``failed`` (``returncode``), ``interrupted`` (the sweep stopped there) or ``pending`` (not reached)."""

    run: RunSpec
    status: str
    returncode: int | None = None
    skipped: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class SweepResult:
    plan: SweepPlan
    outcomes: tuple[RunOutcome, ...]
    interrupted: bool = False

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# --- parsing the command line's values ----------------------------------------------------

def parse_methods(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b"`` or a sequence of names -> checked method names (default SWEEP_METHODS)."""
    if text is None:
        return tuple(SWEEP_METHODS)
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    if not names:
        raise SweepError("methods must name at least one method")
    for name in names:
        if name not in METHODS:
            raise SweepError(f"unknown method {name!r}; the methods are {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise SweepError(f"methods lists a method twice: {','.join(names)}")
    return tuple(names)


def parse_seeds(value: str | int | Sequence[int] | None) -> tuple[int, ...]:
    """A count (``5`` -> 0..4), a comma list (``"0,2,7"``; ``"3,"`` is seed 3 alone) or a sequence of seeds."""
    if value is None:
        value = DEFAULT_SEEDS
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if "," not in text else [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise SweepError(f"seeds must be a count (5) or a comma-separated list of seeds (0,1,2), got {text!r}") from None
    if isinstance(value, bool):
        raise SweepError(f"seeds must be a count or a list of seeds, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise SweepError(f"the seed count must be > 0, got {value}")
        return tuple(range(value))
    seeds = list(value)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise SweepError(f"seeds must be one or more integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds lists a seed twice: {seeds}")
    return tuple(seeds)


def parse_grid(text: str | None) -> tuple[str | None, tuple[str, ...]]:
    """``"KEY=V1,V2"`` -> (key with underscores, the value strings); (None, ()) for None."""
    if text is None:
        return None, ()
    key, sep, values = text.partition("=")
    key = key.strip().removeprefix("--").replace("-", "_")
    parts = tuple(v.strip() for v in values.split(","))
    if not sep or not key or not values.strip() or any(not v for v in parts):
        raise SweepError(f"grid must be KEY=V1,V2,... (one TrainConfig key and its values), got {text!r}")
    return key, parts


# --- the plan -------------------------------------------------------------------------------

def build_plan(sweep_dir: str | Path, *, methods: str | Sequence[str] | None = None,
               seeds: str | int | Sequence[int] | None = None, grid: str | tuple[str, Sequence[Any]] | None = None,
               config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
               baseline: str | None = None, eval_pass_k: int | None = DEFAULT_EVAL_PASS_K,
               command: Sequence[str] | None = None) -> SweepPlan:
    """Check every input and build every run's config; raise SweepError / ConfigError on the first problem.

    Args:
        sweep_dir: the sweep's folder.
        methods: names from ``asymgrpo.methods.METHODS`` (a comma list or a sequence); None = SWEEP_METHODS.
        seeds: a count, a comma list or a sequence of seeds; None = 5 seeds (0..4).
        grid: ``"KEY=V1,V2"`` or ``(key, values)``: one TrainConfig key and its values; None = no grid.
        config_file: a YAML file of TrainConfig keys, as ``asymgrpo train --config``.
        overrides: TrainConfig keys for every run (values typed or strings, as on the command line).
        baseline: the method paired differences are taken against; None = grpo when it is swept.
        eval_pass_k: pass@k at the end of every run up to this k (when TrainConfig has ``eval_pass_k``;
            a forwarded ``eval_pass_k`` wins); None or 0 = off.
        command: the command line, recorded in the report.
    """
    sweep_dir = Path(sweep_dir)
    names = parse_methods(methods)
    seed_list = parse_seeds(seeds)
    if isinstance(grid, tuple):
        grid_key, raw_values = (grid[0].replace("-", "_") if grid[0] else None), tuple(grid[1])
    else:
        grid_key, raw_values = parse_grid(grid)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = dict(overrides or {})
    for key in overrides:
        if key in MANAGED_KEYS:
            raise SweepError(f"{key} is set by the sweep for every run (use --seeds and --output-dir)")
    if grid_key is not None:
        if grid_key not in fields:
            raise SweepError(f"grid key {grid_key!r} is not a TrainConfig key; see `asymgrpo train --help`")
        if grid_key in MANAGED_KEYS:
            raise SweepError(f"grid key {grid_key!r} is set by the sweep itself (use --seeds for seeds)")
        if grid_key in overrides:
            raise SweepError(f"{grid_key} is both the grid key and a forwarded option; give it once")
        if not raw_values:
            raise SweepError(f"grid {grid_key} has no values")
    if baseline is not None and baseline not in names:
        raise SweepError(f"baseline {baseline!r} is not one of the swept methods ({', '.join(names)})")
    if baseline is None and "grpo" in names:
        baseline = "grpo"
    for key in overrides:
        setters = [m for m in names if key in METHODS[m]]
        if setters:
            raise SweepError(f"{key} is set by the method(s) {', '.join(setters)}: a forwarded --{key.replace('_', '-')} "
                             f"would not apply to them; sweep it with --grid {key}=... or drop it")
    if eval_pass_k and "eval_pass_k" in fields and "eval_pass_k" not in overrides:
        overrides["eval_pass_k"] = eval_pass_k
    base_config = TrainConfig.load(config_file, {**overrides, "resume": False, "overwrite": False})
    file_keys = set(_read_yaml(Path(config_file))) if config_file is not None else set()
    base = {k: v for k, v in base_config.to_dict().items() if k not in MANAGED_KEYS}
    overridden = {key: [m for m in names if key in METHODS[m] and METHODS[m][key] != base.get(key)]
                  for key in sorted(file_keys - set(overrides))}
    overridden = {k: v for k, v in overridden.items() if v}

    hints = typing.get_type_hints(TrainConfig)
    grid_values: list[Any] = []
    for value in raw_values:  # typed by the config's own parser; each run's config checks the value
        try:
            typed = _check_type(grid_key, value, hints[grid_key])
        except ConfigError as error:
            raise SweepError(f"grid value {grid_key}={value}: {error}") from None
        if typed in grid_values:
            raise SweepError(f"grid {grid_key} lists the value {value!r} twice")
        grid_values.append(typed)
    runs = run_specs(sweep_dir, names, seed_list, grid_key, grid_values, base, check=True)
    return SweepPlan(sweep_dir=sweep_dir, methods=names, seeds=seed_list, grid_key=grid_key,
                     grid_values=tuple(grid_values), baseline=baseline, base=base, runs=tuple(runs),
                     overridden=overridden, command=list(command if command is not None else sys.argv))


def _folder_text(value: Any) -> str:
    text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


def differing_keys(saved: Mapping[str, Any], planned: Mapping[str, Any]) -> list[str]:
    """``key planned (saved)`` for each key outside FREE_KEYS whose value differs.

    A key only one side has (a TrainConfig key added since) differs only when its value is not the default.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out = []
    for key in sorted(set(saved) | set(planned)):
        if key in FREE_KEYS:
            continue
        if key in saved and key in planned:
            if saved[key] != planned[key]:
                out.append(f"{key} {planned[key]!r} (was {saved[key]!r})")
        else:
            value = planned[key] if key in planned else saved[key]
            if key in defaults and value != defaults[key]:
                out.append(f"{key} {planned.get(key)!r} (was {saved.get(key)!r})")
    return out


def saved_plan(sweep_dir: str | Path) -> dict[str, Any] | None:
    """sweep.json of the sweep in ``sweep_dir``, or None when there is none."""
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SweepError(f"{path} is not valid JSON ({error})") from None


def check_folder(plan: SweepPlan) -> dict[str, Any]:
    """SweepError unless the sweep folder is new or holds this sweep (same base config and grid key);
    return the plan to record: the saved one's methods, seeds and grid values with this plan's added."""
    saved = saved_plan(plan.sweep_dir)
    record = plan.to_json()
    if saved is None:
        for run in plan.runs:
            if (run.path / "run.json").exists():
                raise SweepError(f"{run.path} holds a run but {plan.sweep_dir} holds no {PLAN_FILE}: "
                                 f"it is not a sweep folder; choose another --output-dir")
    else:
        differences = differing_keys(saved.get("base", {}), plan.base)
        if differences:
            raise SweepError(f"{plan.sweep_dir} holds a sweep with another base config: {'; '.join(differences)}. "
                             f"Re-run it with its own options, or choose another --output-dir")
        if saved.get("grid_key") != plan.grid_key:
            raise SweepError(f"{plan.sweep_dir} holds a sweep over grid key {saved.get('grid_key')!r}, not "
                             f"{plan.grid_key!r}; choose another --output-dir")
        for key in ("methods", "seeds", "grid_values", "runs"):
            record[key] = list(saved.get(key, [])) + [v for v in record[key] if v not in saved.get(key, [])]
    for run in plan.runs:  # a run folder written under another config (by hand, or an older plan)
        run_json = run.path / "run.json"
        if run_json.is_file():
            try:
                config = json.loads(run_json.read_text()).get("config", {})
            except json.JSONDecodeError:
                continue  # the trainer says what is wrong with it
            differences = differing_keys(config, run.config)
            if differences:
                raise SweepError(f"{run.path} holds a run under another config: {'; '.join(differences)}; "
                                 f"choose another --output-dir")
    return record


def run_state(run: RunSpec) -> str:
    """``finished`` (its last step is checkpointed), ``started`` (run.json, not finished) or ``new``."""
    if not (run.path / "run.json").is_file():
        return "new"
    checkpoints = list_checkpoints(run.path)
    if checkpoints and checkpoint_step(checkpoints[-1]) >= int(run.config["steps"]):
        return "finished"
    return "started"


def train_command(run: RunSpec, state: str) -> list[str]:
    """The subprocess of one run: ``python -m asymgrpo train --config <run>/train_config.yaml`` (+ --resume)."""
    command = [sys.executable, "-m", "asymgrpo", "train", "--config", str(run.path / RUN_CONFIG_FILE),
               "--output-dir", str(run.path)]
    if state == "started":
        command.append("--resume")
    elif state == "new" and run.path.exists() and any(p.name not in (RUN_CONFIG_FILE, LOG_FILE)
                                                      for p in run.path.iterdir()):
        command += ["--overwrite"]  # leftovers of a run killed before its run.json: the sweep's own folder
    return command


Runner = Callable[[RunSpec, list[str], Path], int]


def subprocess_runner(run: RunSpec, command: list[str], log: Path) -> int:
    """Run ``command``, its stdout and stderr appended to ``log``; return its exit code.

    Ctrl-C reaches the child too (same process group): it stops after its step and checkpoints;
    this waits for it. A SIGTERM to the sweep is passed on to the child.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        previous = signal.getsignal(signal.SIGTERM)
        forward = lambda signum, frame: process.send_signal(signum)  # noqa: E731
        try:
            signal.signal(signal.SIGTERM, forward)
        except ValueError:  # not the main thread
            previous = None
        try:
            while True:
                try:
                    return process.wait()
                except KeyboardInterrupt:  # the child got it as well: let it checkpoint, then report
                    try:
                        return process.wait(timeout=120)
                    except (KeyboardInterrupt, subprocess.TimeoutExpired):
                        process.kill()
                        process.wait()
                        raise KeyboardInterrupt from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def run_sweep(plan: SweepPlan, *, runner: Runner = subprocess_runner, report: bool = True,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run the plan's runs one after another; return what became of each (and write the report).

    Finished runs are skipped, interrupted ones resumed (``asymgrpo train --resume``), new ones
    started. A run that fails is recorded and the sweep goes on; a Ctrl-C (the run stops after its
    step, with a checkpoint) stops the sweep: re-running the same command continues it.

    Args:
        plan: from ``build_plan``.
        runner: runs one training command, its output to a log file, and returns its exit code
            (tests pass a fake one).
        report: write report.json, report.md and the plots at the end (also after a failure).
        echo: where the one-line progress messages go.
    """
    from .report import write_report

    record = check_folder(plan)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    (plan.sweep_dir / PLAN_FILE).write_text(json.dumps(record, indent=1, default=str))
    for key, setters in plan.overridden.items():
        echo(f"asymgrpo sweep: the config file's {key} is replaced by the keys of {', '.join(setters)}")
    outcomes: list[RunOutcome] = []
    interrupted = False
    total = len(plan.runs)
    for index, run in enumerate(plan.runs, start=1):
        if interrupted:
            outcomes.append(RunOutcome(run, "pending"))
            continue
        state = run_state(run)
        if state == "finished":
            echo(f"[{index}/{total}] {run.name}: finished, skipped")
            outcomes.append(RunOutcome(run, "finished", skipped=True))
            continue
        run.path.mkdir(parents=True, exist_ok=True)
        _write_run_config(run)
        command = train_command(run, state)
        echo(f"[{index}/{total}] {run.name}: {'resuming' if state == 'started' else 'training'} "
             f"(log: {run.path / LOG_FILE})")
        started = time.perf_counter()
        try:
            code = runner(run, command, run.path / LOG_FILE)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        seconds = time.perf_counter() - started
        if code in (128 + signal.SIGINT, -signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM):
            echo(f"[{index}/{total}] {run.name}: interrupted after {seconds:.0f} s")
            outcomes.append(RunOutcome(run, "interrupted", returncode=code, seconds=seconds))
            interrupted = True
        elif code == 0 and run_state(run) == "finished":
            echo(f"[{index}/{total}] {run.name}: done in {seconds:.0f} s")
            outcomes.append(RunOutcome(run, "finished", returncode=0, seconds=seconds))
        else:
            echo(f"[{index}/{total}] {run.name}: FAILED (exit code {code}; see {run.path / LOG_FILE})")
            outcomes.append(RunOutcome(run, "failed", returncode=code, seconds=seconds))
    result = SweepResult(plan=plan, outcomes=tuple(outcomes), interrupted=interrupted)
    if report:
        whole = plan_from_folder(plan.sweep_dir, baseline=plan.baseline, command=plan.command)
        paths = write_report(whole, outcomes=result.outcomes)
        echo(f"asymgrpo sweep: wrote {paths['report.md']}")
    return result


def _write_run_config(run: RunSpec) -> None:
    import yaml

    values = {k: v for k, v in run.config.items() if k not in ("resume", "overwrite")}
    (run.path / RUN_CONFIG_FILE).write_text(yaml.safe_dump(values, sort_keys=False))


def run_specs(sweep_dir: Path, methods: Sequence[str], seeds: Sequence[int], grid_key: str | None,
              grid_values: Sequence[Any], base: Mapping[str, Any], *, check: bool) -> tuple[RunSpec, ...]:
    """Every run of seeds x methods x grid values, in that order (seed-major, so that a sweep stopped
    early has every method at its first seeds); ``check``: build each TrainConfig (SweepError naming
    the run on a bad value), else take the keys as they are (a saved plan)."""
    runs = []
    for seed in seeds:
        for method in methods:
            for value in grid_values if grid_key is not None else [None]:
                folder = method
                keys = {**base, **method_keys(method)}
                if grid_key is not None:
                    folder = f"{method}/{grid_key}={_folder_text(value)}"
                    keys[grid_key] = value
                name = f"{folder}/seed{seed}"
                path = sweep_dir / name
                values = {**keys, "seed": int(seed), "output_dir": str(path), "resume": False, "overwrite": False}
                if check:
                    try:
                        values = TrainConfig.from_dict(values).to_dict()
                    except ConfigError as error:
                        where = f"method {method}" + (f", {grid_key}={value}" if grid_key is not None else "")
                        raise SweepError(f"{where}, seed {seed}: {error}") from None
                runs.append(RunSpec(method=method, seed=int(seed), grid_value=value, path=path, name=name,
                                    config=values))
    return tuple(runs)


def plan_from_folder(sweep_dir: str | Path, *, baseline: str | None = None,
                     command: Sequence[str] | None = None) -> SweepPlan:
    """The plan recorded in ``sweep_dir/sweep.json``: every run planned there so far, by any invocation
    (``--report-only`` reports on it); SweepError when there is none."""
    sweep_dir = Path(sweep_dir)
    saved = saved_plan(sweep_dir)
    if saved is None:
        raise SweepError(f"{sweep_dir} holds no {PLAN_FILE}: there is no sweep to report on")
    methods = tuple(m for m in saved.get("methods", []) if m in METHODS)
    baseline = baseline if baseline is not None else saved.get("baseline")
    if baseline is not None and baseline not in methods:
        raise SweepError(f"baseline {baseline!r} is not one of the swept methods ({', '.join(methods)})")
    grid_key = saved.get("grid_key")
    grid_values = tuple(saved.get("grid_values", [])) if grid_key else ()
    seeds = tuple(int(s) for s in saved.get("seeds", []))
    base = dict(saved.get("base", {}))
    planned = set(saved.get("runs", []))
    runs = tuple(r for r in run_specs(sweep_dir, methods, seeds, grid_key, grid_values, base, check=False)
                 if r.name in planned)
    return SweepPlan(sweep_dir=sweep_dir, methods=methods, seeds=seeds, grid_key=grid_key, grid_values=grid_values,
                     baseline=baseline, base=base, runs=runs, overridden=saved.get("overridden_by_methods", {}),
                     command=list(command if command is not None else sys.argv))
