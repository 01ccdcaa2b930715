"""Held-out evaluation with vLLM: greedy accuracy and pass@k."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data import Example
from .rewards import RewardStats, SafeReward
from .rollout import RolloutEngine


@dataclass(frozen=True)
class EvalResult:
    """accuracy: share of prompts whose greedy completion scores 1 (num_correct of num_prompts);
    pass_at_k: {k: unbiased pass@k estimate}; reward_stats: the failed reward calls of the
    evaluation (greedy and sampled ones together); num_correct: of the greedy completions;
    sampled_correct: with ``ks``, each prompt's correct count among its max(ks) samples (empty without)."""

    accuracy: float
    pass_at_k: dict[int, float]
    num_prompts: int
    reward_stats: RewardStats
    num_correct: int = 0
    sampled_correct: tuple[int, ...] = ()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_pass_at_k(n: int, correct: list[int] | tuple[int, ...], ks) -> dict[int, float]:
    """{k: mean over prompts of pass_at_k(n, c, k)} for each k in ``ks``, from each prompt's correct count c of n."""
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in sorted(set(ks))}


def evaluate(engine: RolloutEngine, tokenizer, examples: list[Example], reward: SafeReward, *, prompt_template: str,
             max_new_tokens: int, ks: tuple[int, ...] = (), temperature: float = 1.0, seed: int = 0,
             require_success: bool = True) -> EvalResult:
    """Greedy accuracy on ``examples``; with ``ks``, also pass@k from max(ks) samples per prompt at ``temperature``.

    seed: the i-th prompt's samples use vLLM seed ``seed + i * max(ks)`` (one seed per prompt, each of
        its samples seed, seed + 1, ...): a slice of ``examples`` starting at j gives the same samples
        with ``seed + j * max(ks)``.
    require_success: raise ``RewardFailure`` when every reward call of a batch fails (``SafeReward.score``).
    """
    texts = [prompt_template.format(prompt=e.prompt) for e in examples]
    prompt_ids = [tokenizer(t)["input_ids"] for t in texts]
    greedy = engine.greedy(prompt_ids, max_tokens=max_new_tokens)
    decoded = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in greedy]
    scored = reward.score(texts, decoded, [e.answer for e in examples], require_success=require_success)
    num_correct = sum(s == 1.0 for s in scored.values)
    accuracy = num_correct / len(examples)
    stats = scored.stats
    passes: dict[int, float] = {}
    if ks:
        n = max(ks)
        seeds = [seed + i * n for i in range(len(examples))]
        groups = engine.sample(prompt_ids, n=n, max_tokens=max_new_tokens, temperature=temperature, seeds=seeds)
        sampled = reward.score([t for t in texts for _ in range(n)],
                               [tokenizer.decode(c.token_ids, skip_special_tokens=True) for g in groups for c in g],
                               [e.answer for e in examples for _ in range(n)], require_success=require_success)
        correct = [sum(s == 1.0 for s in sampled.values[i * n:(i + 1) * n]) for i in range(len(examples))]
        passes = mean_pass_at_k(n, correct, ks)
        stats = stats.merge(sampled.stats)
    else:
        correct = []
    return EvalResult(accuracy=accuracy, pass_at_k=passes, num_prompts=len(examples), reward_stats=stats,
                      num_correct=num_correct, sampled_correct=tuple(correct))
