"""``asymgrpo sweep``: the command line of the research bench (asymgrpo.cli builds its parser)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

from ..config import TrainConfig
from .runner import DEFAULT_EVAL_PASS_K, MANAGED_KEYS, build_plan, plan_from_folder, run_sweep

SWEEP_OPTIONS = ("methods", "seeds", "grid", "baseline", "report_only", "eval_pass_k_sweep", "sweep_dir", "config",
                 "command")


def add_sweep_options(sweep: argparse.ArgumentParser) -> None:
    """The sweep's own options (the forwarded train keys are added by the caller)."""
    sweep.add_argument("--output-dir", "--output_dir", dest="sweep_dir", default="runs/sweep", metavar="DIR",
                       help="the sweep folder (default runs/sweep)")
    sweep.add_argument("--methods", default=None, metavar="A,B,...",
                       help="methods of asymgrpo.methods.METHODS (default: SWEEP_METHODS)")
    sweep.add_argument("--seeds", default=None, metavar="N|S1,S2,...",
                       help="a seed count (5 = seeds 0..4) or a comma list of seeds (default 5)")
    sweep.add_argument("--grid", default=None, metavar="KEY=V1,V2,...",
                       help="one TrainConfig key and its values: every method runs at each value")
    sweep.add_argument("--baseline", default=None, metavar="METHOD",
                       help="paired differences against this method (default grpo when swept)")
    sweep.add_argument("--report-only", action="store_true",
                       help="run nothing: rebuild report.json, report.md and plots/ from the finished runs")
    sweep.add_argument("--eval-pass-k", dest="eval_pass_k_sweep", type=int, default=DEFAULT_EVAL_PASS_K, metavar="K",
                       help=f"pass@k at the end of every run up to K, 0 = off (default {DEFAULT_EVAL_PASS_K}; "
                            f"used when the trainer has eval_pass_k)")


def forwarded_fields() -> set[str]:
    """TrainConfig keys that ``asymgrpo sweep`` forwards to every run (all but those it sets itself)."""
    return {f.name for f in dataclasses.fields(TrainConfig)} - set(MANAGED_KEYS) - {"eval_pass_k"}


def run_sweep_command(args: argparse.Namespace) -> int:
    """0 when every run finished, 1 when one failed, 2 on bad input (ConfigError, raised), 130 on Ctrl-C."""
    if args.report_only:
        plan = plan_from_folder(args.sweep_dir, baseline=args.baseline)
        from .report import write_report

        paths = write_report(plan)
        print(f"asymgrpo sweep: wrote {paths['report.md']}")
        return 0
    overrides = {k: v for k, v in vars(args).items() if k not in SWEEP_OPTIONS}
    overrides.setdefault("progress", False)  # the runs' output goes to train.log
    plan = build_plan(args.sweep_dir, methods=args.methods, seeds=args.seeds, grid=args.grid,
                      config_file=args.config, overrides=overrides, baseline=args.baseline,
                      eval_pass_k=args.eval_pass_k_sweep, command=["asymgrpo", *sys.argv[1:]])
    print(f"asymgrpo sweep: {len(plan.runs)} runs ({len(plan.methods)} methods x "
          + (f"{len(plan.grid_values)} {plan.grid_key} values x " if plan.grid_key else "")
          + f"{len(plan.seeds)} seeds) in {plan.sweep_dir}")
    result = run_sweep(plan)
    if result.interrupted:
        print("asymgrpo sweep: interrupted; re-run the same command to continue", file=sys.stderr)
        return 128 + signal.SIGINT
    if result.failed:
        print(f"asymgrpo sweep: {len(result.failed)} run(s) failed: "
              f"{', '.join(o.run.name for o in result.failed)} (see their train.log)", file=sys.stderr)
        return 1
    return 0
