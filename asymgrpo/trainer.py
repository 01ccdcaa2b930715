"""The AsymGRPO training loop: sample with vLLM, score, update with the fused loss, push weights back.

Reads top to bottom:
    setup      data, reward, starting weights (embedded warm-up / HF model / checkpoint), engine
    each step  prompts -> G completions each (vLLM) -> rewards -> group advantages
               -> trainer log-probs (mismatch metric, old log-probs, optional TIS weights)
               -> micro-batched fused loss, one optimizer step -> new weights into vLLM
               -> held-out eval, metrics.jsonl row, checkpoint
    end        curves.png, final checkpoint
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from asymgrpo_kernels import fused_linear_asymgrpo_loss, group_advantages

from .batch import PackedBatch, pack
from .checkpoint import checkpoint_dir, list_checkpoints, load_trainer_state, save_checkpoint
from .config import EMBEDDED, TrainConfig
from .data import Example, arithmetic_splits, load_examples
from .evaluate import evaluate
from .plotting import plot_metrics
from .policy import last_hidden, lm_head_weight, load_policy, resolve_attn_implementation, resolve_dtype, sequence_logprobs
from .rewards import SafeReward, resolve_reward
from .rollout import RolloutEngine

TIMING_KEYS = ("step_time", "rollout_time", "tokens_per_s")  # metrics that depend on the wall clock, not on the run


@dataclass(frozen=True)
class TrainResult:
    initial_accuracy: float | None
    final_accuracy: float | None
    steps: int
    wall_time_s: float
    output_dir: Path


def train(config: TrainConfig, *, engine: RolloutEngine | None = None, stop_after: int | None = None) -> TrainResult:
    """Run (or, with ``config.resume``, continue) training; return the held-out accuracy before and after.

    engine: an already running engine whose model has the policy's architecture and vocabulary
        (tests share one); the policy's weights are pushed into it first. None starts one.
    stop_after: return after this step, as if the run were killed there (after its checkpoint, if any).
    """
    started = time.perf_counter()
    out = Path(config.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    # --- data and reward --------------------------------------------------------------
    train_set, eval_set = load_data(config)
    reward = SafeReward(resolve_reward(reward_name(config)), config.reward_timeout_s)

    # --- starting weights ---------------------------------------------------------------
    resume_from = list_checkpoints(out)[-1] if config.resume and list_checkpoints(out) else None
    if resume_from is None:
        start_fresh(out)
        base_path = initial_model(config, train_set, out)
    else:
        base_path = Path(json.loads((out / "run.json").read_text())["base_model"])
    load_path = str(resume_from or base_path)
    tokenizer = AutoTokenizer.from_pretrained(load_path)
    dtype = resolve_dtype(config.dtype)  # compute dtype; parameters and optimizer state stay float32
    attn = resolve_attn_implementation(config.attn_implementation)
    model = load_policy(load_path, dtype=torch.float32, attn_implementation=attn, device=device,
                        gradient_checkpointing=config.gradient_checkpointing)
    ref_model = None
    if config.kl_coef > 0:
        ref_model = load_policy(str(base_path), dtype=dtype, attn_implementation=attn, device=device).eval()
        ref_model.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = load_trainer_state(resume_from, optimizer) if resume_from else 0
    metrics_path = out / "metrics.jsonl"
    truncate_metrics(metrics_path, step)

    # --- rollout engine -----------------------------------------------------------------
    prompt_texts = [config.prompt_template.format(prompt=e.prompt) for e in train_set]
    prompt_ids = [tokenizer(t)["input_ids"] for t in prompt_texts]
    if engine is None:
        eval_ids = [tokenizer(config.prompt_template.format(prompt=e.prompt))["input_ids"] for e in eval_set]
        engine = RolloutEngine(load_path, dtype=str(dtype).removeprefix("torch."),
                               max_model_len=max_model_len(config, prompt_ids + eval_ids), seed=config.seed,
                               gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                               cpu_kvcache_gb=config.vllm_cpu_kvcache_gb)
    engine.load_weights(model.state_dict().items())

    def held_out_accuracy() -> float | None:
        if not eval_set:
            return None
        result = evaluate(engine, tokenizer, eval_set[: config.eval_size], reward,
                          prompt_template=config.prompt_template, max_new_tokens=config.max_new_tokens)
        return result.accuracy

    initial_accuracy = read_initial_accuracy(metrics_path) if step > 0 else held_out_accuracy()
    if step == 0:
        append_metrics(metrics_path, {"step": 0, "accuracy": initial_accuracy})
    accuracy = initial_accuracy
    bar = progress_bar(config, step)

    # --- training loop ------------------------------------------------------------------
    while step < config.steps:
        step += 1
        t0 = time.perf_counter()
        rows = prompt_indices(len(train_set), config.prompts_per_step, step, config.seed)
        groups = engine.sample([prompt_ids[i] for i in rows], n=config.group_size, max_tokens=config.max_new_tokens,
                               temperature=config.temperature, top_p=config.top_p,
                               seeds=sampling_seeds(config.seed, step, len(rows), config.group_size))
        rollout_time = time.perf_counter() - t0

        # rewards and advantages: completions of one prompt are contiguous
        reward.stats.reset()
        samples = [(i, c) for i, group in zip(rows, groups, strict=True) for c in group]
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for _, c in samples]
        rewards = torch.tensor(reward.score([prompt_texts[i] for i, _ in samples], texts,
                                            [train_set[i].answer for i, _ in samples]), dtype=torch.float32)
        advantages = group_advantages(rewards, group_size=config.group_size, **config.advantage_kwargs).to(device)
        batch = pack([prompt_ids[i] for i, _ in samples], [c.token_ids for _, c in samples],
                     [c.logprobs for _, c in samples], pad_id=pad_id(tokenizer), device=device)

        # the policy's own log-probs of what vLLM sampled, before the update
        old_logprobs, entropy = score_tokens(model, batch, config, dtype)
        ref_logprobs = score_tokens(ref_model, batch, config, dtype)[0] if ref_model is not None else None
        mismatch = ((old_logprobs - batch.vllm_logprobs).abs() * batch.mask)
        is_weights = None
        if config.tis_cap is not None:
            is_weights = torch.exp(old_logprobs - batch.vllm_logprobs).clamp(max=config.tis_cap) * batch.mask

        # updates_per_step optimizer steps, each on its own slice of whole groups (PPO-style mini-batches);
        # from the second on, the policy has moved away from the sampling one and the ratio clip acts
        rows_per_update = len(batch) // config.updates_per_step
        updates = []
        for first in range(0, len(batch), rows_per_update):
            rows = slice(first, first + rows_per_update)
            part = batch.slice(rows.start, rows.stop)

            def cut(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t[rows, : part.mask.shape[1]]

            updates.append(policy_update(model, optimizer, part, advantages[rows], cut(old_logprobs),
                                         cut(ref_logprobs), cut(is_weights), config, dtype))
        loss_metrics = merge_metrics(updates)
        engine.load_weights(model.state_dict().items())

        step_time = time.perf_counter() - t0
        tokens = float(batch.mask.sum())
        evaluated = step == config.steps or (config.eval_every > 0 and step % config.eval_every == 0)
        if evaluated:
            accuracy = held_out_accuracy()
        grouped = rewards.view(-1, config.group_size)
        row = {
            "step": step,
            "reward": rewards.mean().item(),
            "train_accuracy": (rewards == 1).float().mean().item(),
            "accuracy": accuracy if evaluated else None,
            "entropy": (entropy * batch.mask).sum().item() / tokens,
            **loss_metrics,
            "logprob_mismatch": mismatch.sum().item() / tokens,
            "logprob_mismatch_max": mismatch.max().item(),
            "groups_all_wrong": (grouped.max(dim=1).values < 1).float().mean().item(),
            "groups_all_right": (grouped.min(dim=1).values == 1).float().mean().item(),
            "completion_tokens": tokens / len(batch),
            "reward_errors": reward.stats.errors,
            "reward_timeouts": reward.stats.timeouts,
            "reward_non_finite": reward.stats.non_finite,
            "lr": optimizer.param_groups[0]["lr"],
            "rollout_time": rollout_time,
            "step_time": step_time,
            "tokens_per_s": tokens / step_time,
        }
        append_metrics(metrics_path, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc="-" if accuracy is None else f"{accuracy:.3f}",
                            ent=f"{row['entropy']:.3f}")
        if step == config.steps or (config.checkpoint_every > 0 and step % config.checkpoint_every == 0):
            save_checkpoint(out, step, model, tokenizer, optimizer, keep=config.keep_checkpoints)
        if stop_after is not None and step >= stop_after:
            break

    # --- end ----------------------------------------------------------------------------
    if bar is not None:
        bar.close()
    plot_metrics(metrics_path, out / "curves.png")
    return TrainResult(initial_accuracy=initial_accuracy, final_accuracy=accuracy, steps=step,
                       wall_time_s=time.perf_counter() - started, output_dir=out)


def policy_update(model, optimizer, batch: PackedBatch, advantages: torch.Tensor, old_logprobs: torch.Tensor,
                  ref_logprobs: torch.Tensor | None, is_weights: torch.Tensor | None, config: TrainConfig,
                  compute_dtype: torch.dtype) -> dict:
    """One optimizer step on ``batch``: accumulate the fused loss's gradients over micro-batches, clip, step.

    Returns the step's metrics (floats).

    num_items is the whole step's token count (token-mean) or sequence count (seq-mean-*), so
    the accumulated gradient equals that of one big batch.
    """
    num_items = float(batch.mask.sum()) if config.loss_agg == "token-mean" else float(len(batch))
    optimizer.zero_grad(set_to_none=True)
    total_loss, parts = 0.0, []
    for start in range(0, len(batch), config.micro_batch_size):
        stop = min(start + config.micro_batch_size, len(batch))
        micro = batch.slice(start, stop)
        width = micro.mask.shape[1]

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop, :width]

        hidden = last_hidden(model, micro.input_ids[:, :-1], compute_dtype)
        loss, metrics = fused_linear_asymgrpo_loss(
            hidden, lm_head_weight(model, compute_dtype), micro.targets, micro.mask, advantages[start:stop],
            old_logprobs=cut(old_logprobs), ref_logprobs=cut(ref_logprobs), is_weights=cut(is_weights),
            temperature=config.temperature, backend=config.loss_backend, clip_low=config.clip_low,
            clip_high=config.clip_high, dual_clip=config.dual_clip, kl_coef=config.kl_coef,
            kl_estimator=config.kl_estimator, entropy_coef=config.entropy_coef, loss_agg=config.loss_agg,
            max_len=config.max_new_tokens if config.loss_agg == "seq-mean-token-sum-norm" else None,
            num_items=num_items,
        )
        loss.backward()
        total_loss += loss.item()
        parts.append(metrics)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
    optimizer.step()
    return {"loss": total_loss, "grad_norm": float(grad_norm), **merge_metrics(parts)}


@torch.no_grad()
def score_tokens(model, batch: PackedBatch, config: TrainConfig,
                 compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T-1] log-probs of the batch's targets and entropies under ``model`` (0 off the mask), micro-batched."""
    logprobs, entropy = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
    targets = torch.where(batch.mask > 0, batch.targets, -100)
    for start in range(0, len(batch), config.micro_batch_size):
        rows = slice(start, start + config.micro_batch_size)
        lp, ent = sequence_logprobs(model, batch.input_ids[rows], targets[rows], temperature=config.temperature,
                                    backend=config.loss_backend, compute_dtype=compute_dtype)
        logprobs[rows], entropy[rows] = lp, ent
    return logprobs * batch.mask, entropy * batch.mask


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


# --- setup helpers ---------------------------------------------------------------------

def load_data(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples."""
    if config.dataset == EMBEDDED:
        return arithmetic_splits(seed=config.seed, test_size=config.embedded_test_size,
                                 max_operand=config.embedded_max_operand)
    fields = {"prompt_field": config.prompt_field, "answer_field": config.answer_field}
    train_set = load_examples(config.dataset, split=config.train_split, **fields)
    eval_set = load_examples(config.eval_dataset, split=config.eval_split, **fields) if config.eval_dataset else []
    return train_set, eval_set


def reward_name(config: TrainConfig) -> str:
    if config.reward != "auto":
        return config.reward
    return "exact" if config.dataset == EMBEDDED else "math"


def start_fresh(out: Path) -> None:
    """A new run in ``out``: drop an earlier run's metrics and checkpoints there."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def initial_model(config: TrainConfig, train_set: list[Example], out: Path) -> Path:
    """The weights RL starts from: the embedded warm-up checkpoint (built now) or ``config.model``."""
    if config.model == EMBEDDED:
        from .demo.warmup import build_embedded_checkpoint

        base = build_embedded_checkpoint(checkpoint_dir(out) / "warmup", train_set, steps=config.warmup_steps,
                                         lr=config.warmup_lr, batch_size=config.warmup_batch_size,
                                         seed=config.seed).resolve()
    else:
        base = Path(config.model).resolve() if Path(config.model).exists() else config.model
    (out / "run.json").write_text(json.dumps({"base_model": str(base), "config": config.to_dict()}, indent=1))
    return base


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


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only rows up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in rows))


def read_initial_accuracy(path: Path) -> float | None:
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["step"] == 0:
            return row["accuracy"]
    return None


def progress_bar(config: TrainConfig, step: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=step, desc="asymgrpo", unit="step", dynamic_ncols=True)
