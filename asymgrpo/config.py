"""Training configuration: one typed dataclass with documented defaults, and its checks.

Sources, later ones winning: the defaults below, a YAML file, command-line overrides.
Every value is checked (unknown key, wrong type, impossible value) by ``TrainConfig.from_dict``
before any model or engine loads; errors are ``ConfigError`` naming the key. The objective's
keys (preset, betas, clips, KL, entropy, aggregation) are checked by the kernels' own
``AsymGRPOLoss``, which the trainer then uses, so the config cannot accept what the loss rejects.

The defaults are the embedded task: a tiny Qwen2 and a character tokenizer built locally,
a short supervised warm-up on "a+b=" -> "c", then AsymGRPO with vLLM rollouts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from asymgrpo_kernels import PRESETS, AdvantageOptions, AsymGRPOLoss, LossOptions
from asymgrpo_kernels.options import BACKENDS, KL_ESTIMATORS, LOSS_AGG_MODES, NORMALIZE_MODES, POLICY_LOSSES

from .data.arithmetic import EMBEDDED_TASKS, longest_answer, task_size

EMBEDDED = "embedded"
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN = ("auto", "eager", "sdpa", "flash_attention_2")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # --- what to train on ---------------------------------------------------------------
    model: str = _opt(EMBEDDED, "Hugging Face causal LM (hub name or local folder), or 'embedded' for the tiny local Qwen2.")
    dataset: str = _opt(EMBEDDED, "'embedded' (a+b arithmetic), a .jsonl file, or a local Hugging Face datasets folder.")
    train_split: str = _opt("train", "Split name inside a datasets folder (ignored for jsonl and embedded).")
    eval_dataset: Optional[str] = _opt(None, "Held-out data for accuracy (same formats); None = the embedded test split, or no eval.")
    eval_split: str = _opt("test", "Split name inside an eval datasets folder.")
    prompt_field: str = _opt("prompt", "Record field holding the prompt.")
    answer_field: str = _opt("answer", "Record field holding the reference answer.")
    prompt_template: str = _opt("{prompt}", "Python format string applied to each prompt; {prompt} is the record's prompt, literal braces are doubled.")
    reward: str = _opt("auto", "'exact', 'math' (math-verify), a dotted path 'pkg.module:function', or 'auto' (exact on embedded, math otherwise).")
    reward_timeout_s: float = _opt(5.0, "Seconds one reward call may take; slower calls are stopped, score 0 and are counted.")
    reward_workers: int = _opt(0, "Worker processes that score rewards in parallel; 0 = one per CPU core, at most 8.")
    allow_reward_failures: bool = _opt(False, "Go on when every reward call of a batch fails (by default the run stops with the first failure's error).")
    output_dir: str = _opt("runs/asymgrpo", "Where run.json, metrics.jsonl, curves.png and checkpoints/ go.")
    seed: int = _opt(0, "Seed for data order, initialisation, sampling.")
    resume: bool = _opt(False, "Continue the run in output_dir from its newest checkpoint, under its saved config (run.json).")
    overwrite: bool = _opt(False, "Start a new run in an output_dir that holds one, deleting its run.json, metrics, curves and checkpoints.")

    # --- embedded task and warm-up (model == 'embedded' only) ---------------------------
    embedded_task: str = _opt("add", "Embedded task: 'add' (\"a+b=\", a, b in 0..embedded_max_operand, answers of 1-3 digits) or "
                              "'mul' (\"a*b=\", a in 100..999, b in 2..9: 7200 problems, answers of 3-4 digits).")
    embedded_max_operand: int = _opt(99, "Operands a, b of the embedded 'add' task are drawn from 0..this ('mul' ignores it).")
    embedded_test_size: int = _opt(500, "Held-out problems of the embedded task, never trained on.")
    warmup_steps: int = _opt(500, "Supervised next-token steps that bring the tiny model to a non-zero pass rate.")
    warmup_lr: float = _opt(1e-3, "AdamW learning rate of the warm-up.")
    warmup_batch_size: int = _opt(64, "Examples per warm-up step.")

    # --- AsymGRPO objective -------------------------------------------------------------
    preset: str = _opt("asymgrpo", "Advantage preset: " + ", ".join(PRESETS) + ".")
    beta_pos: Optional[float] = _opt(None, "Positive-channel exponent; None = the preset's value.")
    beta_neg: Optional[float] = _opt(None, "Negative-channel exponent; None = the preset's value.")
    normalize: Optional[str] = _opt(None, "Advantage normalization: " + " or ".join(NORMALIZE_MODES)
                                    + " ('none' only centres the group's rewards); None = the preset's value.")
    clip_low: float = _opt(0.2, "PPO ratio clip below 1.")
    clip_high: float = _opt(0.28, "PPO ratio clip above 1 (clip-higher when > clip_low).")
    dual_clip: Optional[float] = _opt(None, "Dual-clip constant c > 1 for negative advantages; None = off.")
    kl_coef: float = _opt(0.0, "Weight of the KL term to a frozen reference model; 0 = no reference model is loaded.")
    kl_estimator: str = _opt("k3", "KL estimator: " + ", ".join(KL_ESTIMATORS) + ".")
    entropy_coef: float = _opt(0.0, "Entropy bonus weight.")
    loss_agg: str = _opt("token-mean", "Loss aggregation: " + ", ".join(LOSS_AGG_MODES) + ".")
    policy_loss: str = _opt("ppo", "Policy-gradient surrogate: " + ", ".join(POLICY_LOSSES) + " (docs/algorithm.md §8).")
    top_entropy_quantile: float = _opt(1.0, "Train only the policy term of the tokens in this top share by entropy (TRL's 80/20 rule at 0.2); 1 = every token.")
    clip_cov_ratio: float = _opt(2e-4, "Clip-Cov (policy_loss clip_cov): share of scored tokens whose gradient is cut.")
    clip_cov_lb: float = _opt(1.0, "Clip-Cov: lower bound of the covariance window of the tokens it may cut.")
    clip_cov_ub: float = _opt(5.0, "Clip-Cov: upper bound of that window.")
    kl_cov_ratio: float = _opt(2e-4, "KL-Cov (policy_loss kl_cov): share of scored tokens, largest covariance first, that get the |log r| penalty.")
    kl_cov_coef: float = _opt(1.0, "KL-Cov: weight of the |log r| penalty.")
    tis_cap: Optional[float] = _opt(None, "Truncated importance sampling: weight tokens by min(p_trainer / p_vllm, cap); None = off.")

    # --- rollouts and optimisation ------------------------------------------------------
    steps: int = _opt(40, "Training steps: each samples one rollout batch and takes updates_per_step optimizer steps on it.")
    prompts_per_step: int = _opt(32, "Prompts per training step (each sampled group_size times).")
    group_size: int = _opt(8, "Completions sampled per prompt (G).")
    max_new_tokens: int = _opt(6, "Longest completion, in tokens.")
    temperature: float = _opt(1.0, "Sampling temperature (the loss uses the same one).")
    top_p: float = _opt(1.0, "Nucleus sampling threshold.")
    updates_per_step: int = _opt(2, "Optimizer steps per rollout batch, each on 1/this of the prompts' groups (PPO-style mini-batches).")
    lr: float = _opt(1e-4, "AdamW learning rate of the policy.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient norm clip; 0 = off.")
    micro_batch_size: int = _opt(256, "Sequences per forward/backward; gradients accumulate over the step.")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward to save memory.")
    dtype: str = _opt("auto", "Compute dtype of the policy and of vLLM: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16. Parameters and AdamW state stay float32.")
    attn_implementation: str = _opt("auto", "auto (flash_attention_2 when installed on CUDA, else sdpa), eager, sdpa, flash_attention_2.")
    loss_backend: str = _opt("auto", "Fused-loss backend: " + ", ".join(BACKENDS) + ".")

    # --- evaluation, logging, checkpoints -----------------------------------------------
    eval_every: int = _opt(5, "Greedy held-out accuracy every this many steps (and at the start and end); 0 = only start and end.")
    eval_size: int = _opt(500, "Held-out prompts used per evaluation (the first ones).")
    eval_pass_k: int = _opt(0, "When > 0, the final step's evaluation also samples this many completions per held-out prompt "
                            "(temperature 1, seeded) and logs the unbiased pass@k as eval_pass@1, eval_pass@2, eval_pass@4, ... "
                            "(powers of 2 up to it, and it); 0 = off.")
    checkpoint_every: int = _opt(20, "Save a resumable checkpoint every this many steps (and at the end); 0 = only at the end.")
    keep_checkpoints: int = _opt(2, "Newest step checkpoints kept on disk (the warm-up one is always kept).")
    progress: bool = _opt(True, "Show a progress bar.")

    # --- vLLM ---------------------------------------------------------------------------
    vllm_max_model_len: int = _opt(0, "Engine context length; 0 = the longest prompt plus max_new_tokens, rounded up.")
    vllm_gpu_memory_utilization: float = _opt(0.3, "Share of GPU memory vLLM may take (CUDA only).")
    vllm_cpu_kvcache_gb: float = _opt(1.0, "KV cache size on the CPU backend, GiB.")

    # ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build and check a config; raise ConfigError on the first bad key or value."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; see `asymgrpo train --help` for the valid ones")
        checked = {key: _check_type(key, value, hints[key]) for key, value in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    @classmethod
    def load(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults, then a YAML file's keys, then ``overrides`` (already-typed or string values).

        With ``resume`` on, the defaults are the run's saved config (output_dir/run.json) instead:
        what is not given again keeps the run's value, and what is given must match it
        (checked when the run starts, ``run_dir.check_resumable``).
        """
        values: dict[str, Any] = {**(_read_yaml(Path(yaml_path)) if yaml_path is not None else {}), **(overrides or {})}
        config = cls.from_dict(values)
        if config.resume:
            from .run_dir import saved_run

            run = saved_run(config.output_dir)
            if run is not None:
                saved = {k: v for k, v in run["config"].items() if k not in ("resume", "overwrite")}
                config = cls.from_dict({**saved, **values})
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Impossible values and combinations; types are already checked. Raises ConfigError."""
        positive_ints = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "micro_batch_size", "eval_size",
                         "warmup_batch_size", "embedded_test_size", "keep_checkpoints")
        for key in positive_ints:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "eval_pass_k", "checkpoint_every", "vllm_max_model_len", "reward_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("reward_timeout_s", "temperature", "lr", "warmup_lr", "vllm_cpu_kvcache_gb"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.updates_per_step <= 0 or self.prompts_per_step % self.updates_per_step:
            raise ConfigError(f"updates_per_step must be > 0 and divide prompts_per_step={self.prompts_per_step}, "
                              f"got {self.updates_per_step}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (advantages compare completions of one prompt), got {self.group_size}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ConfigError(f"tis_cap must be > 0 or null, got {self.tis_cap}")
        if self.embedded_max_operand < 1:
            raise ConfigError(f"embedded_max_operand must be >= 1, got {self.embedded_max_operand}")
        if self.embedded_task not in EMBEDDED_TASKS:
            raise ConfigError(f"embedded_task must be one of {', '.join(EMBEDDED_TASKS)}; got {self.embedded_task!r}")
        if EMBEDDED in (self.dataset, self.eval_dataset):
            problems = task_size(self.embedded_task, self.embedded_max_operand)
            if self.embedded_test_size >= problems:
                raise ConfigError(f"embedded_test_size must be < the {problems} possible problems of embedded_task "
                                  f"{self.embedded_task!r}, got {self.embedded_test_size}")
            need = longest_answer(self.embedded_task, self.embedded_max_operand) + 1
            if self.max_new_tokens < need:
                raise ConfigError(f"max_new_tokens must be >= {need} for embedded_task {self.embedded_task!r} (its longest "
                                  f"answer, {need - 1} tokens, and eos), got {self.max_new_tokens}")
        # the kernels name their argument "backend"; the key is checked here so the message names it
        for key, allowed in {"dtype": DTYPES, "attn_implementation": ATTN, "loss_backend": BACKENDS}.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        try:
            self.loss_module()  # the objective's options are checked where they are defined, by the kernels
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
        if "{prompt}" not in self.prompt_template:
            raise ConfigError(f"prompt_template must contain '{{prompt}}', got {self.prompt_template!r}")
        try:
            self.prompt_template.format(prompt="")
        except (IndexError, KeyError, ValueError) as error:
            raise ConfigError(f"prompt_template must be a format string whose only field is {{prompt}} "
                              f"(write literal braces twice, e.g. \\boxed{{{{}}}}): {error!r}") from None
        if self.reward not in ("auto", "exact", "math") and ":" not in self.reward and "." not in self.reward:
            raise ConfigError(f"reward must be 'auto', 'exact', 'math' or a dotted path like 'pkg.module:function', got {self.reward!r}")
        _check_data_source("dataset", self.dataset)
        if self.eval_dataset is not None:
            _check_data_source("eval_dataset", self.eval_dataset)
        if self.model == EMBEDDED and self.dataset != EMBEDDED:
            raise ConfigError(
                "model 'embedded' builds its model for the embedded task's data (dataset 'embedded'). To train it on "
                "your own data, start from its warm-up checkpoint instead: run `asymgrpo train` once, then pass "
                "--model runs/asymgrpo/checkpoints/warmup (its tokenizer knows only the characters 0-9 + - * / = and space)")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                              "overwrite replaces it")

    def check_world_size(self, world_size: int) -> None:
        """ConfigError unless each optimizer step's prompts split evenly over ``world_size`` trainer processes.

        Every process samples whole groups: ``prompts_per_step / updates_per_step`` prompts per
        optimizer step must divide by the number of processes.
        """
        if world_size <= 1:
            return
        if self.prompts_per_step % world_size:
            raise ConfigError(f"prompts_per_step must be divisible by the world size {world_size} (each process "
                              f"samples whole groups of its share of the prompts), got {self.prompts_per_step}")
        per_update = self.prompts_per_step // self.updates_per_step
        if per_update % world_size:
            raise ConfigError(f"prompts_per_step / updates_per_step = {per_update} prompts per optimizer step must be "
                              f"divisible by the world size {world_size} (each process takes whole groups of every "
                              f"optimizer step), got prompts_per_step {self.prompts_per_step} and updates_per_step "
                              f"{self.updates_per_step}")

    def loss_module(self) -> AsymGRPOLoss:
        """The objective of this config: its advantages (the preset under beta_pos / beta_neg /
        normalize when set) and its loss options, checked by ``AsymGRPOLoss``.

        Keys named like a ``LossOptions`` or ``AdvantageOptions`` field are passed under that name.
        ``max_len`` is no key: Dr. GRPO's constant is ``max_new_tokens``.
        """
        keys = {f.name for f in dataclasses.fields(self)}
        names = (*LossOptions.field_names(), *AdvantageOptions.field_names())
        objective = {name: getattr(self, name) for name in names if name in keys}
        max_len = self.max_new_tokens if self.loss_agg == "seq-mean-token-sum-norm" else None
        return AsymGRPOLoss(self.preset, temperature=self.temperature, backend=self.loss_backend, max_len=max_len,
                            **objective)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError (one line, naming the file) when it cannot be read."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {problem}{where}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(loaded).__name__}")
    return loaded


def _check_data_source(key: str, source: str) -> None:
    """``source`` is 'embedded', an existing .jsonl file or a folder (read by the datasets library)."""
    if source == EMBEDDED:
        return
    if source.endswith(".jsonl"):
        if not Path(source).is_file():
            raise ConfigError(f"{key} file {source!r} does not exist")
    elif not Path(source).is_dir():
        raise ConfigError(f"{key} must be 'embedded', a .jsonl file or a datasets folder; {source!r} is neither")


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` as the annotated type, or raise ConfigError. Strings from the command line are parsed."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    expected = hint.__name__ + (" or null" if optional else "")
    if isinstance(value, str) and hint is not str:
        value = _parse_string(key, value, hint, expected)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {type(value).__name__} {value!r}")
    return value


def _parse_string(key: str, text: str, hint: Any, expected: str) -> Any:
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        return hint(text)
    except ValueError:
        raise ConfigError(f"{key} must be {expected}, got {text!r}") from None


def config_fields() -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of every key, in declaration order: for --help and the README."""
    hints = typing.get_type_hints(TrainConfig)
    return [(f.name, hints[f.name], f.default, f.metadata["help"]) for f in dataclasses.fields(TrainConfig)]
