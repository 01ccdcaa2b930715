"""Research bench: run methods x seeds (x one grid key) with the trainer, then report with intervals.

    from asymgrpo.sweep import build_plan, run_sweep, write_report

    plan = build_plan("runs/sweep", methods="grpo,asymgrpo", seeds=5, overrides={"steps": 40})
    result = run_sweep(plan)            # one `python -m asymgrpo train` per run; resumable
    write_report(plan)                  # report.json, report.md, plots/ (run_sweep writes them too)

See docs/research.md.
"""

from .report import write_report
from .runner import (RunOutcome, RunSpec, SweepError, SweepPlan, SweepResult, build_plan, plan_from_folder,
                     run_sweep)
from .stats import interval, paired_difference, run_summary

__all__ = ["RunOutcome", "RunSpec", "SweepError", "SweepPlan", "SweepResult", "build_plan", "interval",
           "paired_difference", "plan_from_folder", "run_summary", "run_sweep", "write_report"]
