"""Command line: ``asymgrpo train [--config FILE] [--KEY VALUE ...]``, ``asymgrpo eval CHECKPOINT`` and
``asymgrpo sweep [--methods A,B] [--seeds N] [--grid KEY=V1,V2] [--KEY VALUE ...]`` (docs/research.md).

Every key of ``TrainConfig`` is an option of ``train`` (``--group-size 8`` or ``--group_size 8``);
the YAML file's keys are the same names. The config and every input are checked before anything
heavy loads; a user error ends as one line on stderr and exit code 2, Ctrl-C as a line saying how
to continue (``--resume``).

Under ``torchrun --nproc-per-node N`` every process runs ``train``; only rank 0 prints (a reward
failure is printed by the rank it happened on). Every rank checks the config and inputs before
the process group starts, so a user error ends every rank with exit code 2 and none waits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import typing
from pathlib import Path

from .config import EMBEDDED, ConfigError, TrainConfig, config_fields
from .distributed import env_ranks
from .preflight import check_inputs, check_model, check_texts, load_data, load_reward, load_tokenizer
from .rewards import RewardFailure, SafeReward


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asymgrpo", description="AsymGRPO training with vLLM rollouts.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy (no arguments: the embedded CPU demo)",
                                description="Train with AsymGRPO. With no arguments: the embedded tiny-model demo.")
    _add_config_options(train)

    evaluate = commands.add_parser("eval", help="greedy accuracy and pass@k of a checkpoint, with vLLM")
    evaluate.add_argument("checkpoint", help="a model folder (e.g. <output_dir>/checkpoints/step_000040) or hub name")
    evaluate.add_argument("--dataset", default=None,
                          help="'embedded', a .jsonl file or a datasets folder (default: the run's eval data, else embedded)")
    evaluate.add_argument("--split", default="test", help="split inside a datasets folder (default test)")
    evaluate.add_argument("--prompt-field", default=None, help="record field of the prompt (default: the run's, else prompt)")
    evaluate.add_argument("--answer-field", default=None, help="record field of the answer (default: the run's, else answer)")
    evaluate.add_argument("--num-prompts", type=int, default=500, help="evaluate the first N prompts (default 500)")
    evaluate.add_argument("--k", type=int, nargs="*", default=[1, 4, 8], help="pass@k values (default 1 4 8)")
    evaluate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k (default 1.0)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's max_new_tokens")
    evaluate.add_argument("--seed", type=int, default=0)

    from .sweep.command import add_sweep_options, forwarded_fields

    sweep = commands.add_parser(
        "sweep", help="run methods x seeds (x one grid key) and report them with intervals (docs/research.md)",
        description="Run every method x seed (x grid value) as `asymgrpo train`, one after another, then write "
                    "report.json, report.md and plots/ in the sweep folder. Re-running the same command skips "
                    "finished runs and resumes interrupted ones. Every other --KEY VALUE is a train option "
                    "given to every run.")
    add_sweep_options(sweep)
    _add_config_options(sweep, only=forwarded_fields())
    return parser


def _add_config_options(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """``--config FILE`` and one option per TrainConfig key (those in ``only``, when given)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of config keys (command-line options win)")
    for name, hint, default, help_text in config_fields():
        if only is not None and name not in only:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]  # Optional[X] -> X
        type_name = inner[0].__name__
        if hint is bool:
            parser.add_argument(*flags, dest=name, nargs="?", const="true", default=argparse.SUPPRESS,
                                metavar="BOOL", help=f"{help_text} (default {default})")
        else:
            parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=type_name.upper(),
                                help=f"{help_text} (default {default!r})")


def main(argv: list[str] | None = None) -> int:
    """Run a command; return its exit code: 0 done, 2 a user error (one line on stderr), 128 + N stopped by signal N."""
    _import_from_current_folder()
    args = build_parser().parse_args(argv)
    ranks = env_ranks()
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "sweep":
            from .sweep.command import run_sweep_command

            return run_sweep_command(args)
        return run_eval(args)
    except ConfigError as error:  # every rank finds the same one: rank 0 says it
        if ranks.is_main:
            print(f"asymgrpo: {error}", file=sys.stderr)
        return 2
    except RewardFailure as error:  # found by the rank whose batch failed
        where = f" (rank {ranks.rank})" if ranks.distributed else ""
        print(f"asymgrpo{where}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # training handles its own (run_train); this is eval, or a Ctrl-C while starting
        if ranks.is_main:
            print("\nasymgrpo: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def run_train(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    config = TrainConfig.load(args.config, overrides)
    inputs = check_inputs(config)  # before the trainer's imports (transformers, vLLM)
    _quiet_libraries()
    from .trainer import train

    out = Path(config.output_dir)
    ranks = env_ranks()
    launch = f"torchrun --nproc-per-node {ranks.world_size} -m asymgrpo" if ranks.distributed else "asymgrpo"
    resume = f"{launch} train --resume --output-dir {shlex.quote(str(out))}"
    try:
        result = train(config, inputs=inputs)
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops after the step), or one before training
        started = (out / "run.json").is_file()
        if ranks.is_main:
            print(f"\nasymgrpo: interrupted; continue from the newest checkpoint with: {resume}" if started else
                  "\nasymgrpo: interrupted before the run started", file=sys.stderr)
        return 128 + signal.SIGINT
    if not ranks.is_main:
        return 128 + result.signal if result.signal is not None else 0
    accuracy = (f" (held-out greedy accuracy {result.initial_accuracy:.3f} -> {result.final_accuracy:.3f})"
                if result.initial_accuracy is not None else "")
    if result.start_step == result.steps:
        print(f"{out} has already finished its {result.steps} steps{accuracy}: nothing to resume. "
              f"To train further, pass --steps N (N > {result.steps}) with --resume")
        return 0
    if result.signal is not None:
        print(f"asymgrpo: {signal.Signals(result.signal).name}: stopped at step {result.steps} of {config.steps}, "
              f"checkpoint saved; continue with: {resume}", file=sys.stderr)
        return 128 + result.signal
    print(f"done: {result.steps - result.start_step} steps in {result.wall_time_s:.0f} s")
    if result.initial_accuracy is not None:
        print(f"held-out greedy accuracy: {result.initial_accuracy:.3f} at the start -> {result.final_accuracy:.3f} at the end")
    print(f"wrote {out / 'metrics.jsonl'}, {out / 'curves.png'}, checkpoints in {out / 'checkpoints'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.num_prompts <= 0 or any(k <= 0 for k in args.k):
        raise ConfigError("--num-prompts and every --k must be > 0")
    check_model(args.checkpoint, key="checkpoint")
    run = _run_config(Path(args.checkpoint))
    keys = ("seed", "embedded_task", "embedded_test_size", "embedded_max_operand", "prompt_template", "prompt_field",
            "answer_field",
            "reward", "reward_timeout_s", "reward_workers", "max_new_tokens")
    values = {key: run[key] for key in keys if key in run}
    for key in ("max_new_tokens", "prompt_field", "answer_field"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    dataset = args.dataset or run.get("eval_dataset") or EMBEDDED
    values.update(dataset=dataset, eval_dataset=dataset, train_split=args.split, eval_split=args.split)
    config = TrainConfig.from_dict({**values, "model": str(args.checkpoint)})
    eval_set = load_data(config)[1][: args.num_prompts]
    reward_fn, name = load_reward(config)
    reward = SafeReward(reward_fn, config.reward_timeout_s, workers=config.reward_workers, name=name)
    _quiet_libraries()

    from .evaluate import evaluate
    from .policy import resolve_dtype
    from .rollout import RolloutEngine
    from .trainer import max_model_len

    tokenizer = load_tokenizer(args.checkpoint)
    check_texts(tokenizer, config, [], eval_set)
    prompt_ids = [tokenizer(config.prompt_template.format(prompt=e.prompt))["input_ids"] for e in eval_set]
    engine = RolloutEngine(args.checkpoint, dtype=str(resolve_dtype("auto")).removeprefix("torch."),
                           max_model_len=max_model_len(config, prompt_ids), seed=args.seed)
    with reward:
        result = evaluate(engine, tokenizer, eval_set, reward, prompt_template=config.prompt_template,
                          max_new_tokens=config.max_new_tokens, ks=tuple(args.k), temperature=args.temperature,
                          seed=args.seed)
    report = {"checkpoint": str(args.checkpoint), "prompts": result.num_prompts, "greedy_accuracy": result.accuracy,
              **{f"pass@{k}": v for k, v in result.pass_at_k.items()},
              "reward_failures": result.reward_stats.failures}
    print(json.dumps(report, indent=1))
    return 0


def _import_from_current_folder() -> None:
    """Let ``--reward my_module:fn`` find ``my_module.py`` in the current folder, as ``python -m asymgrpo`` does."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _quiet_libraries() -> None:
    """Keep the terminal for the progress bar: vLLM logs errors only, no per-file progress bars.

    math-verify warns once that its own timeouts are off: SafeReward enforces the time limit instead.
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _run_config(checkpoint: Path) -> dict:
    """The training config saved beside a checkpoint (<output_dir>/run.json), or {} for a bare model folder."""
    for folder in checkpoint.resolve().parents[:3] if checkpoint.exists() else []:
        if (folder / "run.json").exists():
            return json.loads((folder / "run.json").read_text())["config"]
    return {}
