"""The AsymGRPO training loop: sample with vLLM, score, update with the fused loss, push weights back.

Reads top to bottom:
    train      setup (data, reward, starting weights, objective, engine), then per step
               rollout -> score -> update -> log
    rollout    the step's prompts -> G completions each (vLLM), packed into one batch
    score      rewards -> group advantages; the policy's own log-probs of the samples
               (old log-probs, vLLM mismatch, optional TIS weights), the reference's for KL
    update     updates_per_step optimizer steps on slices of whole groups, each micro-batched
               through the fused loss (``policy_update``)
    log_step   metrics.jsonl row, progress bar, checkpoint

One ``AsymGRPOLoss``, built from the config (``TrainConfig.loss_module``), holds the objective:
its advantages, its loss, and the temperature and backend of every scoring call.

Under torchrun (``distributed``) every process runs this loop on its share of each step's groups
with its own vLLM engine and an FSDP2 shard of the policy; the item counts of the loss and the
metrics are reduced over the processes, so a step computes what one process would on the whole
batch. Rank 0 alone writes the run folder and prints.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from asymgrpo_kernels import AsymGRPOLoss

from .batch import PackedBatch, pack
from .checkpoint import checkpoint_dir, list_checkpoints, load_trainer_state, save_checkpoint
from .config import EMBEDDED, TrainConfig
from .data import Example
from .distributed import (SINGLE, Ranks, all_reduce_max, all_reduce_sum, barrier, full_norm,
                          full_state_dict, gather, init_from_env, shard_policy, share)
from .distributed import device as distributed_device
from .durable import publish_dir
from .evaluate import evaluate, mean_pass_at_k
from .interrupt import StopRequest
from .plotting import plot_metrics
from .policy import fused_loss, load_policy, resolve_attn_implementation, resolve_dtype, sequence_logprobs
from .preflight import RunInputs, check_inputs, check_texts, load_tokenizer
from .rewards import RewardFailure, RewardStats, SafeReward
from .rollout import RolloutEngine
from .run_dir import (CURVES_FILE, METRICS_FILE, append_metrics, clear_run, keep_metrics_until, read_metrics,
                      saved_run, write_run)

TIMING_KEYS = ("step_time", "rollout_time", "tokens_per_s")  # metrics that depend on the wall clock, not on the run


@dataclass(frozen=True)
class TrainResult:
    """initial / final_accuracy: the run's first and latest held-out accuracy (None without held-out data).

    steps: the step reached; start_step: where this call started (0, or the resumed checkpoint's
    step; == steps when the run had already finished); signal: the SIGINT / SIGTERM that stopped it early.
    """

    initial_accuracy: float | None
    final_accuracy: float | None
    steps: int
    wall_time_s: float
    output_dir: Path
    start_step: int = 0
    signal: int | None = None


@dataclass(frozen=True)
class Prompts:
    """The training set, formatted and tokenized once: ``texts`` go to the reward, ``ids`` to vLLM."""

    texts: list[str]
    ids: list[list[int]]
    answers: list[str]


@dataclass(frozen=True)
class Rollout:
    """One step's samples: G completions of each of the step's prompts, a prompt's group contiguous.

    prompts: for each completion, its prompt's index in ``Prompts``; completions: decoded;
    batch: prompt + completion rows with vLLM's log-probs; time_s: spent sampling.
    """

    prompts: list[int]
    completions: list[str]
    batch: PackedBatch
    time_s: float


@dataclass(frozen=True)
class Scores:
    """What the update uses, all computed before it. Per-token tensors are [N, T-1], 0 off the mask.

    old_logprobs / entropy: the policy's; ref_logprobs: the reference model's (None without KL);
    mismatch: |policy - vLLM| sampled-token log-prob; is_weights: None without tis_cap;
    reward_stats: the failed reward calls of the batch.
    """

    rewards: torch.Tensor
    reward_stats: RewardStats
    advantages: torch.Tensor
    old_logprobs: torch.Tensor
    entropy: torch.Tensor
    ref_logprobs: torch.Tensor | None
    mismatch: torch.Tensor
    is_weights: torch.Tensor | None


def train(config: TrainConfig, *, inputs: RunInputs | None = None, engine: RolloutEngine | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Run (or, with ``config.resume``, continue) training; return the held-out accuracy before and after.

    Every input is checked first (``preflight.check_inputs``: ConfigError, nothing written yet), unless
    ``inputs`` is what that check returned for this config (the command line checks before importing this module).
    A run whose last step is checkpointed returns at once (``TrainResult.start_step == steps``).
    SIGINT / SIGTERM stop the run after the current step, with a checkpoint (``TrainResult.signal``).

    engine: an already running engine whose model has the policy's architecture and vocabulary
        (tests share one); the policy's weights are pushed into it first. None starts one.
    stop_after: return after this step, as if the run were killed there (after its checkpoint, if any).

    Under torchrun (WORLD_SIZE > 1) every process calls this: it joins the process group, shards
    the policy (FSDP2) and starts its own engine; the engine it started is shut down at the end,
    which also leaves the process group.
    """
    started = time.perf_counter()
    inputs = inputs or check_inputs(config)
    out = Path(config.output_dir)
    step = inputs.resume_step
    if config.resume and step == config.steps:
        return finished_result(out, step, started)
    ranks = init_from_env()  # after every rank's checks: nothing is written before all have passed them
    started_engines: list[RolloutEngine] = []
    try:
        return run(config, inputs, ranks, engine, started_engines, stop_after, started)
    finally:
        if ranks.distributed:  # vLLM's shutdown destroys the process group: last
            for own in started_engines:
                own.close()


def run(config: TrainConfig, inputs: RunInputs, ranks: Ranks, engine: RolloutEngine | None,
        started_engines: list[RolloutEngine], stop_after: int | None, started: float) -> TrainResult:
    """``train`` after the checks, on every rank; an engine it starts is appended to ``started_engines``."""
    out = Path(config.output_dir)
    step = inputs.resume_step
    base_path = gather(prepare_run_folder(config, inputs, out, ranks.world_size) if ranks.is_main else None,
                       ranks)[0]
    device = distributed_device(ranks) if ranks.distributed else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    loss_fn = config.loss_module()

    # --- starting weights: a checkpoint to resume from, else the warm-up / the configured model
    resume_from = list_checkpoints(out)[-1] if step else None
    load_path = str(resume_from or base_path)
    tokenizer = load_tokenizer(load_path)
    if not inputs.texts_checked:
        check_texts(tokenizer, config, inputs.train_set, inputs.eval_set)
    dtype = resolve_dtype(config.dtype)  # compute dtype; parameters and optimizer state stay float32
    attn = resolve_attn_implementation(config.attn_implementation)
    model = load_policy(load_path, dtype=torch.float32, attn_implementation=attn, device=device,
                        gradient_checkpointing=config.gradient_checkpointing)
    ref_model = reference_model(base_path, dtype, attn, device) if config.kl_coef != 0 else None
    if ranks.distributed:
        shard_policy(model, ranks)
        if ref_model is not None:
            shard_policy(ref_model, ranks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if resume_from is not None:
        load_trainer_state(resume_from, optimizer, model, ranks)

    # --- rollout engine -----------------------------------------------------------------
    prompts = tokenize_prompts(inputs.train_set, tokenizer, config.prompt_template)
    if engine is None:
        eval_ids = tokenize_prompts(inputs.eval_set, tokenizer, config.prompt_template).ids
        engine = start_engine(config, load_path, dtype, prompts.ids + eval_ids, external_launcher=ranks.distributed)
        started_engines.append(engine)
    engine.load_weights(full_state_dict(model, ranks).items())
    workers = config.reward_workers or (max(1, min(os.cpu_count() or 1, 8) // ranks.world_size)
                                        if ranks.distributed else 0)  # 0: SafeReward's one per CPU
    reward = SafeReward(inputs.reward_fn, config.reward_timeout_s, workers=workers, name=inputs.reward_name)

    with reward, StopRequest() as stop:
        if step == 0:
            with stopped_at(0, "the starting evaluation"):
                initial_accuracy, eval_stats, _ = held_out_accuracy(engine, tokenizer, inputs.eval_set, reward, config,
                                                                    ranks)
            if ranks.is_main:
                append_metrics(out, {"step": 0, "accuracy": initial_accuracy, **reward_counts(eval_stats, "eval_")})
        else:
            initial_accuracy = accuracies(read_metrics(out)[0])[0]
        accuracy = initial_accuracy  # the latest evaluation's: shown by the progress bar, returned at the end
        bar = progress_bar(config, step) if ranks.is_main else None
        stopped = agreed_signal(stop.signal, ranks)

        # --- training loop --------------------------------------------------------------
        while step < config.steps and stopped is None:
            step += 1
            with stopped_at(step, "training"):
                step_started = time.perf_counter()
                samples = rollout(engine, prompts, tokenizer, step, config, device, ranks)
                scores = score(model, ref_model, loss_fn, reward, samples, prompts, config, dtype)
                losses = update(model, optimizer, loss_fn, samples.batch, scores, config, dtype, ranks)
                weights = full_state_dict(model, ranks)
                engine.load_weights(weights.items())
                step_time = time.perf_counter() - step_started
                evaluated = due(step, config.eval_every, config.steps)
                eval_stats, passes = None, {}
                if evaluated:  # the final step's evaluation also estimates pass@k (eval_pass_k > 0)
                    accuracy, eval_stats, passes = held_out_accuracy(
                        engine, tokenizer, inputs.eval_set, reward, config, ranks,
                        pass_k=config.eval_pass_k if step == config.steps else 0)
            log_step(step, samples, scores, losses, step_time=step_time, accuracy=accuracy, eval_stats=eval_stats,
                     optimizer=optimizer, model=model, tokenizer=tokenizer, bar=bar, config=config, ranks=ranks,
                     weights=weights, pass_at_k=passes)
            stopped = agreed_signal(stop.signal, ranks)
            if stop_after is not None and step >= stop_after:
                break
        if stopped is not None and step > 0 and not due(step, config.checkpoint_every, config.steps):
            save_checkpoint(out, step, model, tokenizer, optimizer, keep=config.keep_checkpoints, ranks=ranks,
                            weights=full_state_dict(model, ranks))

    # --- end ----------------------------------------------------------------------------
    if bar is not None:
        bar.close()
    if ranks.is_main:
        plot_metrics(out / METRICS_FILE, out / CURVES_FILE)
    barrier(ranks)
    return TrainResult(initial_accuracy=initial_accuracy, final_accuracy=accuracy, steps=step,
                       wall_time_s=time.perf_counter() - started, output_dir=out, start_step=inputs.resume_step,
                       signal=stopped)


def agreed_signal(signal: int | None, ranks: Ranks) -> int | None:
    """The stop signal every rank acts on: the largest one any rank has received (one all-reduce per step),
    so that all ranks stop after the same step."""
    if not ranks.distributed:
        return signal
    return int(all_reduce_max(signal or 0, ranks)) or None


def prepare_run_folder(config: TrainConfig, inputs: RunInputs, out: Path, world_size: int = 1) -> Path:
    """Set up ``out`` for the run and return the weights RL starts from (``run.json``'s base_model).

    A new run replaces what an earlier one wrote there (preflight allowed it: ``overwrite``); a
    resumed one keeps its rows up to its checkpoint and records the config it continues under.
    """
    if not config.resume:
        clear_run(out)
        write_run(out, config.to_dict(), base_model=None, world_size=world_size)
        return initial_model(config, inputs.train_set, out, world_size)
    base = saved_run(out)["base_model"]
    if keep_metrics_until(out, inputs.resume_step if inputs.resume_step else -1):
        print(f"asymgrpo: dropped the torn last line of {out / METRICS_FILE} (the run was killed while writing it)")
    write_run(out, config.to_dict(), base, world_size)
    where = f"from {list_checkpoints(out)[-1]}" if inputs.resume_step else "from its start (no step checkpoint yet)"
    print(f"asymgrpo: resuming {out} at step {inputs.resume_step} of {config.steps}, {where}")
    return Path(base) if base is not None and Path(base).exists() else initial_model(config, inputs.train_set, out,
                                                                                      world_size)


def finished_result(out: Path, step: int, started: float) -> TrainResult:
    """The result of a run that has already checkpointed its last step: its first and last accuracies."""
    first, last = accuracies(read_metrics(out)[0])
    return TrainResult(initial_accuracy=first, final_accuracy=last, steps=step,
                       wall_time_s=time.perf_counter() - started, output_dir=out, start_step=step, signal=None)


def accuracies(rows: list[dict]) -> tuple[float | None, float | None]:
    """(first, last) held-out accuracy in metrics rows."""
    values = [row["accuracy"] for row in rows if row.get("accuracy") is not None]
    return (values[0], values[-1]) if values else (None, None)


@contextmanager
def stopped_at(step: int, phase: str):
    """Name the step (and its phase) in a RewardFailure, with the way to continue."""
    try:
        yield
    except RewardFailure as error:
        raise RewardFailure(f"stopped at step {step} ({phase}): {error}. Fix the reward, then continue with "
                            f"--resume (or pass --allow-reward-failures to go on regardless)") from None


def rollout(engine: RolloutEngine, prompts: Prompts, tokenizer, step: int, config: TrainConfig,
            device: torch.device, ranks: Ranks = SINGLE) -> Rollout:
    """Step ``step``'s prompts (this rank's share), ``group_size`` vLLM samples each, packed for the trainer.

    Prompts and sampling seeds are pure functions of (seed, step), so a resumed run samples
    exactly what the uninterrupted one did; under torchrun each rank takes its positions of them
    (``rank_positions``) with their seeds.
    """
    started = time.perf_counter()
    rows = prompt_indices(len(prompts.ids), config.prompts_per_step, step, config.seed)
    seeds = sampling_seeds(config.seed, step, len(rows), config.group_size)
    if ranks.distributed:
        mine = rank_positions(config.prompts_per_step, config.updates_per_step, ranks)
        rows, seeds = [rows[p] for p in mine], [seeds[p] for p in mine]
    groups = engine.sample([prompts.ids[i] for i in rows], n=config.group_size, max_tokens=config.max_new_tokens,
                           temperature=config.temperature, top_p=config.top_p, seeds=seeds)
    time_s = time.perf_counter() - started
    samples = [(i, c) for i, group in zip(rows, groups, strict=True) for c in group]
    batch = pack([prompts.ids[i] for i, _ in samples], [c.token_ids for _, c in samples],
                 [c.logprobs for _, c in samples], pad_id=pad_id(tokenizer), device=device)
    completions = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for _, c in samples]
    return Rollout(prompts=[i for i, _ in samples], completions=completions, batch=batch, time_s=time_s)


def rank_positions(prompts_per_step: int, updates_per_step: int, ranks: Ranks) -> list[int]:
    """The positions in a step's prompt list (0..prompts_per_step-1) that ``ranks.rank`` samples and trains on.

    The step's prompts form ``updates_per_step`` consecutive blocks, one per optimizer step; each
    rank takes its contiguous share of every block, so optimizer step u sees the groups of block u
    on every rank, as in one process. The world size must divide the block size (``TrainConfig.check_world_size``).
    """
    block = prompts_per_step // updates_per_step
    each = block // ranks.world_size
    return [u * block + ranks.rank * each + i for u in range(updates_per_step) for i in range(each)]


def score(model, ref_model, loss_fn: AsymGRPOLoss, reward: SafeReward, samples: Rollout, prompts: Prompts,
          config: TrainConfig, compute_dtype: torch.dtype) -> Scores:
    """Rewards and group advantages of the samples; the policy's (and reference's) log-probs of them, before the update."""
    batch = samples.batch
    scored = reward.score([prompts.texts[i] for i in samples.prompts], samples.completions,
                          [prompts.answers[i] for i in samples.prompts],
                          require_success=not config.allow_reward_failures)
    # on the batch's device: the loss's backend (e.g. triton) computes the advantages too
    rewards = torch.tensor(scored.values, dtype=torch.float32, device=batch.mask.device)
    advantages = loss_fn.advantages(rewards, group_size=config.group_size)
    # the ratio's denominator is the trainer's own log-prob, not vLLM's: the two differ by the
    # engines' numerics (the mismatch), which the TIS weights (tis_cap) correct and the clip should not see
    old_logprobs, entropy = score_tokens(model, batch, loss_fn, config.micro_batch_size, compute_dtype)
    ref_logprobs = None
    if ref_model is not None:
        ref_logprobs = score_tokens(ref_model, batch, loss_fn, config.micro_batch_size, compute_dtype)[0]
    is_weights = None
    if config.tis_cap is not None:
        is_weights = torch.exp(old_logprobs - batch.vllm_logprobs).clamp(max=config.tis_cap) * batch.mask
    return Scores(rewards=rewards, reward_stats=scored.stats, advantages=advantages, old_logprobs=old_logprobs,
                  entropy=entropy, ref_logprobs=ref_logprobs,
                  mismatch=(old_logprobs - batch.vllm_logprobs).abs() * batch.mask, is_weights=is_weights)


def update(model, optimizer, loss_fn: AsymGRPOLoss, batch: PackedBatch, scores: Scores, config: TrainConfig,
           compute_dtype: torch.dtype, ranks: Ranks = SINGLE) -> dict[str, float]:
    """``updates_per_step`` optimizer steps, each on its own slice of whole groups (PPO-style mini-batches).

    From the second on, the policy has moved away from the sampling one and the ratio clip acts.
    Returns the steps' merged metrics.
    """
    rows = len(batch) // config.updates_per_step
    metrics = []
    for start in range(0, len(batch), rows):
        stop = start + rows
        part = batch.slice(start, stop)
        width = part.mask.shape[1]
        metrics.append(policy_update(
            model, optimizer, loss_fn, part, scores.advantages[start:stop],
            crop(scores.old_logprobs, start, stop, width), crop(scores.ref_logprobs, start, stop, width),
            crop(scores.is_weights, start, stop, width), micro_batch_size=config.micro_batch_size,
            max_grad_norm=config.max_grad_norm, compute_dtype=compute_dtype, ranks=ranks,
        ))
    return merge_metrics(metrics)


def log_step(step: int, samples: Rollout, scores: Scores, losses: dict[str, float], *, step_time: float,
             accuracy: float | None, eval_stats: RewardStats | None, optimizer, model, tokenizer, bar,
             config: TrainConfig, ranks: Ranks = SINGLE, weights: dict[str, torch.Tensor] | None = None,
             pass_at_k: dict[int, float] | None = None) -> None:
    """Append the step's metrics.jsonl row, advance the progress bar, save a checkpoint when one is due.

    accuracy: the latest held-out accuracy (the bar's). eval_stats: the failed reward calls of
    this step's held-out evaluation, None when there was none (then the row's accuracy is None).
    pass_at_k: {k: held-out pass@k} of this step's evaluation, logged as ``eval_pass@{k}`` (the final step's,
    with eval_pass_k > 0).
    Under torchrun every rank calls it: the batch's figures are gathered from all ranks (one
    all-gather), rank 0 writes the row; the checkpoint is collective (``weights``: the full state dict).
    """
    batch = BatchFigures.combine(gather(BatchFigures.of(samples, scores, step_time), ranks))
    rewards, tokens = batch.rewards, batch.tokens
    grouped = rewards.view(-1, config.group_size)
    row = {
        "step": step,
        "reward": rewards.mean().item(),
        "train_accuracy": (rewards == 1).float().mean().item(),
        "accuracy": accuracy if eval_stats is not None else None,
        **losses,
        "entropy": batch.entropy_sum / tokens,  # of the sampled batch, before the updates
        "logprob_mismatch": batch.mismatch_sum / tokens,
        "logprob_mismatch_max": batch.mismatch_max,
        "groups_all_wrong": (grouped.max(dim=1).values < 1).float().mean().item(),
        "groups_all_right": (grouped.min(dim=1).values == 1).float().mean().item(),
        "completion_tokens": tokens / batch.rows,
        **reward_counts(batch.reward_stats),
        **(reward_counts(eval_stats, "eval_") if eval_stats is not None else {}),
        **{f"eval_pass@{k}": value for k, value in (pass_at_k or {}).items()},
        "lr": optimizer.param_groups[0]["lr"],
        "rollout_time": batch.rollout_time,
        "step_time": batch.step_time,
        "tokens_per_s": tokens / batch.step_time,
    }
    out = Path(config.output_dir)
    if ranks.is_main:
        append_metrics(out, row)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", acc="-" if accuracy is None else f"{accuracy:.3f}",
                        ent=f"{row['entropy']:.3f}")
    if due(step, config.checkpoint_every, config.steps):
        save_checkpoint(out, step, model, tokenizer, optimizer, keep=config.keep_checkpoints, ranks=ranks,
                        weights=weights)


@dataclass(frozen=True)
class BatchFigures:
    """What a step's metrics row needs of its sampled batch: one rank's (``of``), or all ranks' (``combine``).

    rewards: [B] (groups contiguous, ranks in order); tokens / rows: completion tokens and
    completions; entropy_sum / mismatch_sum / mismatch_max over the batch's tokens; times in
    seconds (the slowest rank's).
    """

    rewards: torch.Tensor
    tokens: float
    rows: int
    entropy_sum: float
    mismatch_sum: float
    mismatch_max: float
    reward_stats: RewardStats
    rollout_time: float
    step_time: float

    @classmethod
    def of(cls, samples: Rollout, scores: Scores, step_time: float) -> "BatchFigures":
        return cls(rewards=scores.rewards.cpu(), tokens=float(samples.batch.mask.sum()), rows=len(samples.batch),
                   entropy_sum=scores.entropy.sum().item(), mismatch_sum=scores.mismatch.sum().item(),
                   mismatch_max=scores.mismatch.max().item(), reward_stats=scores.reward_stats,
                   rollout_time=samples.time_s, step_time=step_time)

    @classmethod
    def combine(cls, parts: list["BatchFigures"]) -> "BatchFigures":
        """The whole batch's figures from the ranks' (in rank order); one part is returned as it is."""
        if len(parts) == 1:
            return parts[0]
        stats = parts[0].reward_stats
        for part in parts[1:]:
            stats = stats.merge(part.reward_stats)
        return cls(rewards=torch.cat([p.rewards for p in parts]), tokens=sum(p.tokens for p in parts),
                   rows=sum(p.rows for p in parts), entropy_sum=sum(p.entropy_sum for p in parts),
                   mismatch_sum=sum(p.mismatch_sum for p in parts), mismatch_max=max(p.mismatch_max for p in parts),
                   reward_stats=stats, rollout_time=max(p.rollout_time for p in parts),
                   step_time=max(p.step_time for p in parts))


def policy_update(model, optimizer, loss_fn: AsymGRPOLoss, batch: PackedBatch, advantages: torch.Tensor,
                  old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None = None,
                  is_weights: torch.Tensor | None = None, *, micro_batch_size: int, max_grad_norm: float,
                  compute_dtype: torch.dtype, ranks: Ranks = SINGLE) -> dict[str, float]:
    """One optimizer step on ``batch``: accumulate ``loss_fn``'s gradients over micro-batches, clip, step.

    Returns the step's metrics (floats). max_grad_norm 0 is no clipping.

    num_items is the whole step's token count (token-mean) or sequence count (seq-mean-*), so
    the accumulated gradient equals that of one big batch. Under torchrun ``batch`` is this rank's
    part of the step: num_items is summed over the ranks (one all-reduce) and FSDP2 sums the
    ranks' gradients (``shard_policy``), so the gradient, its clipping norm (over the sharded
    parameters) and the summed loss are those of one process on the whole batch.
    """
    num_items = float(batch.mask.sum()) if loss_fn.options.loss_agg == "token-mean" else float(len(batch))
    if ranks.distributed:
        num_items = float(all_reduce_sum(torch.tensor([num_items], dtype=torch.float64), ranks)[0])
    optimizer.zero_grad(set_to_none=True)
    total_loss, parts = 0.0, []
    for start in range(0, len(batch), micro_batch_size):
        stop = min(start + micro_batch_size, len(batch))
        micro = batch.slice(start, stop)
        width = micro.mask.shape[1]
        loss, metrics = fused_loss(
            model, loss_fn, micro.input_ids[:, :-1], micro.targets, micro.mask, advantages[start:stop],
            compute_dtype=compute_dtype, old_logprobs=crop(old_logprobs, start, stop, width),
            ref_logprobs=crop(ref_logprobs, start, stop, width), is_weights=crop(is_weights, start, stop, width),
            num_items=num_items,
        )
        loss.backward()
        total_loss += loss.item()
        parts.append(metrics)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    optimizer.step()
    if ranks.distributed:
        losses_parts = gather((total_loss, [{k: float(v) for k, v in p.items()} for p in parts]), ranks)
        total_loss = sum(loss for loss, _ in losses_parts)
        parts = [p for _, rank_parts in losses_parts for p in rank_parts]
    return {"loss": total_loss, "grad_norm": full_norm(grad_norm), **merge_metrics(parts)}


@torch.no_grad()
def score_tokens(model, batch: PackedBatch, loss_fn: AsymGRPOLoss, micro_batch_size: int,
                 compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T-1] log-probs of the batch's targets and entropies under ``model`` (0 off the mask), micro-batched.

    At ``loss_fn``'s temperature and backend, so that they are the log-probs its loss will see.
    """
    logprobs, entropy = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
    targets = torch.where(batch.mask > 0, batch.targets, -100)
    for start in range(0, len(batch), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        lp, ent = sequence_logprobs(model, batch.input_ids[rows], targets[rows], temperature=loss_fn.temperature,
                                    backend=loss_fn.backend, compute_dtype=compute_dtype)
        logprobs[rows], entropy[rows] = lp, ent
    return logprobs * batch.mask, entropy * batch.mask


def crop(t: torch.Tensor | None, start: int, stop: int, width: int) -> torch.Tensor | None:
    """Rows start:stop of a [B, T-1] tensor, cut to a sliced batch's width (``PackedBatch.slice``)."""
    return None if t is None else t[start:stop, :width]


def merge_metrics(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Token-weighted means of per-micro-batch (or per-update) metrics; channel entropies by their channel's tokens."""
    weights = {"entropy_pos": "tokens_pos", "entropy_neg": "tokens_neg"}
    merged: dict[str, float] = {}
    for key in parts[0]:
        if key.startswith("tokens"):
            merged[key] = sum(float(p[key]) for p in parts)
        elif key == "ratio_max":
            merged[key] = max(float(p[key]) for p in parts)
        else:
            count = weights.get(key, "tokens")
            total = sum(float(p[count]) for p in parts)
            merged[key] = sum(float(p[key]) * float(p[count]) for p in parts) / total if total else 0.0
    return merged


def pass_ks(n: int) -> tuple[int, ...]:
    """The k of pass@k logged for ``n`` samples per prompt: 1, 2, 4, ... up to n, and n."""
    return tuple(sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n})) if n > 0 else ()


def held_out_accuracy(engine: RolloutEngine, tokenizer, eval_set: list[Example], reward: SafeReward,
                      config: TrainConfig, ranks: Ranks = SINGLE,
                      pass_k: int = 0) -> tuple[float | None, RewardStats, dict[int, float]]:
    """Greedy accuracy on the first ``eval_size`` held-out examples (None without held-out data), the
    evaluation's failed reward calls, and {k: pass@k} for ``pass_ks(pass_k)`` ({} when pass_k is 0).

    pass@k is the unbiased estimate from ``pass_k`` samples per prompt at temperature 1, the i-th
    example's seeded ``config.seed + i * pass_k`` (``evaluate``), so the samples do not depend on the ranks.

    Under torchrun each rank evaluates its contiguous share of them with its engine; the greedy
    correct counts, failure counts and every prompt's sampled correct count are gathered (one
    all-gather), so every rank returns the figures over all of them.
    """
    if not eval_set:
        return None, RewardStats(), {}
    examples = eval_set[: config.eval_size]
    ks = pass_ks(pass_k)
    positions = share(list(range(len(examples))), ranks) if ranks.distributed else list(range(len(examples)))
    mine = examples[positions[0]:positions[-1] + 1] if positions else []
    first = positions[0] if positions else 0
    result = evaluate(engine, tokenizer, mine, reward, prompt_template=config.prompt_template,
                      max_new_tokens=config.max_new_tokens, ks=ks, temperature=1.0, seed=config.seed + first * pass_k,
                      require_success=not config.allow_reward_failures) if mine else None
    if not ranks.distributed:
        return result.accuracy, result.reward_stats, result.pass_at_k
    parts = gather((result.num_correct, result.reward_stats, result.sampled_correct) if result
                   else (0, RewardStats(), ()), ranks)
    stats = parts[0][1]
    for _, part, _ in parts[1:]:
        stats = stats.merge(part)
    sampled = [count for _, _, counts in parts for count in counts]
    passes = mean_pass_at_k(pass_k, sampled, ks) if ks else {}
    return sum(correct for correct, _, _ in parts) / len(examples), stats, passes


def reward_counts(stats: RewardStats, prefix: str = "") -> dict[str, int]:
    """metrics.jsonl's failure counts: ``{prefix}reward_errors``, ``_timeouts`` and ``_non_finite``."""
    return {f"{prefix}reward_{kind}": getattr(stats, kind) for kind in ("errors", "timeouts", "non_finite")}


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (every ``every`` steps; 0 = never) or the final one falls on ``step``."""
    return step == last or (every > 0 and step % every == 0)


# --- setup helpers ---------------------------------------------------------------------

def initial_model(config: TrainConfig, train_set: list[Example], out: Path, world_size: int = 1) -> Path:
    """The weights RL starts from: the embedded warm-up checkpoint (built now) or ``config.model``; recorded in run.json."""
    if config.model == EMBEDDED:
        from .demo.warmup import build_embedded_checkpoint

        folder = checkpoint_dir(out) / "warmup"
        tmp = folder.with_name(".tmp_warmup")
        shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted warm-up left
        build_embedded_checkpoint(tmp, train_set, steps=config.warmup_steps, lr=config.warmup_lr,
                                  batch_size=config.warmup_batch_size, seed=config.seed)
        base = publish_dir(tmp, folder).resolve()
    else:
        base = Path(config.model).resolve() if Path(config.model).exists() else config.model
    write_run(out, config.to_dict(), base_model=str(base), world_size=world_size)
    return base


def reference_model(path: Path | str, compute_dtype: torch.dtype, attn_implementation: str, device: torch.device):
    """The frozen model of the KL term: the starting weights, in the compute dtype, without gradients."""
    model = load_policy(str(path), dtype=compute_dtype, attn_implementation=attn_implementation, device=device).eval()
    model.requires_grad_(False)
    return model


def tokenize_prompts(examples: list[Example], tokenizer, template: str) -> Prompts:
    texts = [template.format(prompt=e.prompt) for e in examples]
    return Prompts(texts=texts, ids=[tokenizer(t)["input_ids"] for t in texts], answers=[e.answer for e in examples])


def start_engine(config: TrainConfig, path: str, compute_dtype: torch.dtype, prompts: list[list[int]], *,
                 external_launcher: bool = False) -> RolloutEngine:
    """A vLLM engine on ``path``, in the policy's compute dtype, long enough for every prompt in ``prompts``.

    external_launcher: this rank's engine under torchrun (``RolloutEngine``); every rank starts one at once.
    """
    return RolloutEngine(path, dtype=str(compute_dtype).removeprefix("torch."),
                         max_model_len=max_model_len(config, prompts), seed=config.seed,
                         gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                         cpu_kvcache_gb=config.vllm_cpu_kvcache_gb, external_launcher=external_launcher)


def max_model_len(config: TrainConfig, prompts: list[list[int]]) -> int:
    """Engine context: the config's value, or the longest prompt + max_new_tokens rounded up to 16."""
    if config.vllm_max_model_len:
        return config.vllm_max_model_len
    need = max(len(p) for p in prompts) + config.max_new_tokens
    return -(-need // 16) * 16


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_indices(num_examples: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of step ``step``'s prompts (1-based steps): consecutive slices of per-epoch permutations.

    A pure function of its arguments, so a resumed run sees the same data order.
    """
    first = (step - 1) * per_step
    orders: dict[int, list[int]] = {}
    indices = []
    for position in range(first, first + per_step):
        epoch, offset = divmod(position, num_examples)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            orders[epoch] = torch.randperm(num_examples, generator=generator).tolist()
        indices.append(orders[epoch][offset])
    return indices


def sampling_seeds(seed: int, step: int, num_prompts: int, group_size: int) -> list[int]:
    """One vLLM seed per prompt; vLLM gives the group's samples seed, seed + 1, ..., seed + G - 1."""
    base = (seed * 1_000_003 + step * 65_537) % (2**31 - num_prompts * group_size)
    return [base + i * group_size for i in range(num_prompts)]


def progress_bar(config: TrainConfig, step: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=step, desc="asymgrpo", unit="step", dynamic_ncols=True)
