"""The sweep's report, rebuilt from its run folders: report.json, report.md and plots/*.png.

Only finished runs (their last step checkpointed) enter the aggregates; failed, interrupted and
not yet started runs are listed with their status.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..run_dir import read_metrics
from . import stats
from .plots import CAPTION, write_plots
from .runner import RunOutcome, SweepPlan, run_state

REPORT_JSON, REPORT_MD, PLOTS_DIR = "report.json", "report.md", "plots"

#: The wide table's columns: (quantity, header)
TABLE = (
    ("end_accuracy", "end acc"), ("best_accuracy", "best acc"), ("pass@1", "pass@1"), ("pass@8", "pass@8"),
    ("pass@32", "pass@32"), ("entropy_early", "entropy early"), ("entropy_late", "entropy late"),
    ("entropy_pos_late", "entropy_pos late"), ("entropy_neg_late", "entropy_neg late"),
)
#: The quantities compared against the baseline, seed by seed.
PAIRED = ("end_accuracy", "best_accuracy", "pass@1", "pass@8", "pass@32", "entropy_late", "entropy_pos_late",
          "entropy_neg_late")

GUIDE = """\
How to read this:
- Each cell is the mean over the finished seeds and, in brackets, a 95% percentile-bootstrap interval
  of that mean (10,000 resamples of the seeds, fixed RNG seed). With one seed there is no interval:
  the brackets repeat the point. "-" means no finished run logged the quantity (e.g. pass@k without
  eval_pass_k).
- A paired difference is method minus baseline on the same seed (and grid value), over the seeds both
  finished; "k/n > 0" counts the seeds where the method was higher.
- An interval that contains 0 is not a detected difference. With a few seeds a bootstrap interval is
  optimistic (too narrow): treat an interval that barely excludes 0 as a hint to run more seeds, not
  as a result.
- end acc: the last held-out greedy accuracy; best acc: its maximum over the evaluations (an
  optimistic pick); entropy early / late: the mean per-step entropy over the first / last 20% of the
  steps; entropy_pos / entropy_neg: the same over the tokens of positive- / negative-advantage samples.
"""


def group_label(method: str, grid_key: str | None, value: Any) -> str:
    return method if grid_key is None else f"{method} {grid_key}={value}"


def collect(plan: SweepPlan, outcomes: Iterable[RunOutcome] | None = None) -> list[dict[str, Any]]:
    """Every run of the plan: name, method, seed, grid value, status, return code, summary (finished runs only),
    and its metrics rows under ``_rows`` (not written to report.json)."""
    by_name = {o.run.name: o for o in outcomes or ()}
    runs = []
    for run in plan.runs:
        outcome = by_name.get(run.name)
        state = run_state(run)
        status = {"finished": "finished", "started": "incomplete", "new": "not started"}[state]
        if outcome is not None and outcome.status in ("failed", "interrupted") and state != "finished":
            status = outcome.status
        rows: list[dict] = []
        if (run.path / "metrics.jsonl").exists():
            try:
                rows = read_metrics(run.path)[0]
            except ValueError:
                status = "damaged" if status == "finished" else status
        summary = stats.run_summary(rows) if status == "finished" else None
        runs.append({"name": run.name, "method": run.method, "seed": run.seed, "grid_value": run.grid_value,
                     "path": str(run.path), "status": status,
                     "returncode": outcome.returncode if outcome is not None else None,
                     "summary": summary, "_rows": rows if status == "finished" else []})
    return runs


def aggregate(plan: SweepPlan, runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(groups, paired): per (method, grid value) the interval of every quantity over its finished seeds;
    per non-baseline group the paired difference against the baseline at the same grid value."""
    values = [None] if plan.grid_key is None else list(plan.grid_values)
    per_seed: dict[tuple[str, Any], dict[str, dict[int, Any]]] = {}
    groups = []
    for method in plan.methods:
        for value in values:
            finished = [r for r in runs if r["method"] == method and r["grid_value"] == value
                        and r["summary"] is not None]
            table = {q: {r["seed"]: r["summary"][q] for r in finished} for q in stats.QUANTITIES}
            per_seed[(method, _key(value))] = table
            groups.append({"method": method, "grid_value": value, "label": group_label(method, plan.grid_key, value),
                           "n_seeds": len(finished), "seeds": sorted(r["seed"] for r in finished),
                           "planned_seeds": sum(r["method"] == method and r["grid_value"] == value for r in runs),
                           "quantities": {q: stats.interval(v for v in table[q].values() if v is not None)
                                          for q in stats.QUANTITIES}})
    paired = []
    if plan.baseline is not None:
        for method in plan.methods:
            if method == plan.baseline:
                continue
            for value in values:
                mine, base = per_seed[(method, _key(value))], per_seed[(plan.baseline, _key(value))]
                diffs = {q: stats.paired_difference(mine[q], base[q]) for q in PAIRED}
                pairs = max((d["n"] for d in diffs.values() if d is not None), default=0)
                paired.append({"method": method, "grid_value": value, "baseline": plan.baseline,
                               "label": group_label(method, plan.grid_key, value), "n_pairs": pairs,
                               "quantities": diffs})
    return groups, paired


def _key(value: Any) -> str:
    return json.dumps(value)


def write_report(plan: SweepPlan, *, outcomes: Iterable[RunOutcome] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``plots/*.png`` in the sweep folder from its run folders.

    Args:
        plan: the sweep (``build_plan``, or ``plan_from_folder`` for a folder's whole plan).
        outcomes: what ``run_sweep`` saw of each run (failed runs and their exit codes); None = the
            run folders alone (a run that is not finished is then ``incomplete`` or ``not started``).

    Returns the paths written, by name (``report.json``, ``report.md``, then the plots).
    """
    folder = plan.sweep_dir
    folder.mkdir(parents=True, exist_ok=True)
    runs = collect(plan, outcomes)
    groups, paired = aggregate(plan, runs)
    lines: dict[str, list] = {}
    for group in groups:
        lines[group["label"]] = [r["_rows"] for r in runs if r["method"] == group["method"]
                                 and r["grid_value"] == group["grid_value"] and r["_rows"]]
    plots = write_plots(lines, folder / PLOTS_DIR)
    report = {
        "command": plan.command,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "plan": plan.to_json(),
        "statistics": {"interval": "percentile bootstrap of the mean over seeds", "level": stats.LEVEL,
                       "resamples": stats.RESAMPLES, "rng_seed": stats.RNG_SEED, "window": stats.WINDOW,
                       "plots": CAPTION},
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "groups": groups,
        "paired": paired,
        "failed": [r["name"] for r in runs if r["status"] == "failed"],
        "not_finished": [r["name"] for r in runs if r["status"] != "finished"],
        "plots": [str(p.relative_to(folder)) for p in plots],
    }
    json_path, md_path = folder / REPORT_JSON, folder / REPORT_MD
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path.write_text(markdown(report))
    return {REPORT_JSON: json_path, REPORT_MD: md_path, **{p.name: p for p in plots}}


def _interval_text(summary: Mapping[str, Any] | None, signed: bool = False) -> str:
    if summary is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(summary['mean'])} [{fmt.format(summary['low'])}, {fmt.format(summary['high'])}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(report: Mapping[str, Any]) -> str:
    """report.md's text from report.json's content."""
    plan = report["plan"]
    grid_key = plan["grid_key"]
    out = ["# Sweep report", "",
           f"Command: `{' '.join(report['command'])}`  ", f"Generated: {report['generated']}", "",
           f"Methods: {', '.join(plan['methods'])}; seeds: {', '.join(map(str, plan['seeds']))}"
           + (f"; grid: {grid_key} = {', '.join(map(str, plan['grid_values']))}" if grid_key else "")
           + f"; {plan['base'].get('steps')} steps per run.", ""]
    finished = sum(r["status"] == "finished" for r in report["runs"])
    out += [f"Runs: {finished} of {len(report['runs'])} finished"
            + (f"; failed: {', '.join(report['failed'])}" if report["failed"] else "") + ".", ""]

    out += ["## Results", "", "Mean over the finished seeds [95% bootstrap interval].", ""]
    header = ["method", *([grid_key] if grid_key else []), "n", *(h for _, h in TABLE)]
    rows = []
    for group in report["groups"]:
        n = f"{group['n_seeds']}/{group['planned_seeds']}"
        rows.append([group["method"], *([str(group["grid_value"])] if grid_key else []), n,
                     *(_interval_text(group["quantities"][q]) for q, _ in TABLE)])
    out += _table(header, rows) + [""]

    baseline = plan.get("baseline")
    out += [f"## Paired differences vs {baseline}" if baseline else "## Paired differences", ""]
    if not baseline:
        out += ["No baseline: pass --baseline METHOD (one of the swept methods) for paired differences.", ""]
    elif not report["paired"]:
        out += [f"Only the baseline {baseline} was swept: nothing to compare.", ""]
    else:
        out += [f"Method minus {baseline} on the same seed: mean [95% bootstrap interval] (seeds where > 0 / pairs).", ""]
        labels = dict(TABLE)
        header = ["method", *([grid_key] if grid_key else []), "pairs", *(f"Δ {labels[q]}" for q in PAIRED)]
        rows = []
        for pair in report["paired"]:
            cells = []
            for q in PAIRED:
                d = pair["quantities"][q]
                cells.append("-" if d is None else f"{_interval_text(d, signed=True)} ({d['positive']}/{d['n']})")
            rows.append([pair["method"], *([str(pair["grid_value"])] if grid_key else []), str(pair["n_pairs"]),
                         *cells])
        out += _table(header, rows) + [""]

    out += ["## Runs", ""]
    rows = []
    for run in report["runs"]:
        s = run["summary"] or {}
        acc = "-" if s.get("end_accuracy") is None else f"{s['end_accuracy']:.3f}"
        code = "" if run["returncode"] in (None, 0) else f" (exit {run['returncode']})"
        rows.append([run["name"], run["status"] + code, str(s.get("steps", "-")), acc])
    out += _table(["run", "status", "steps", "end acc"], rows) + [""]

    out += ["## Plots", "", f"{CAPTION}.", ""]
    out += [f"- [{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    out += ["## Reading guide", "", *GUIDE.rstrip().splitlines(), ""]
    return "\n".join(out)
