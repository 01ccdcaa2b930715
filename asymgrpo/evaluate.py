"""Held-out evaluation with vLLM: greedy accuracy and pass@k."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data import Example
from .rewards import SafeReward
from .rollout import RolloutEngine


@dataclass(frozen=True)
class EvalResult:
    """accuracy: share of prompts whose greedy completion scores 1; pass_at_k: {k: unbiased pass@k estimate}."""

    accuracy: float
    pass_at_k: dict[int, float]
    num_prompts: int


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(engine: RolloutEngine, tokenizer, examples: list[Example], reward: SafeReward, *, prompt_template: str,
             max_new_tokens: int, ks: tuple[int, ...] = (), temperature: float = 1.0, seed: int = 0) -> EvalResult:
    """Greedy accuracy on ``examples``; with ``ks``, also pass@k from max(ks) samples per prompt at ``temperature``."""
    texts = [prompt_template.format(prompt=e.prompt) for e in examples]
    prompt_ids = [tokenizer(t)["input_ids"] for t in texts]
    greedy = engine.greedy(prompt_ids, max_tokens=max_new_tokens)
    decoded = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in greedy]
    scores = reward.score(texts, decoded, [e.answer for e in examples])
    accuracy = sum(s == 1.0 for s in scores) / len(examples)
    passes: dict[int, float] = {}
    if ks:
        n = max(ks)
        seeds = [seed + i * n for i in range(len(examples))]
        groups = engine.sample(prompt_ids, n=n, max_tokens=max_new_tokens, temperature=temperature, seeds=seeds)
        correct = []
        for text, example, group in zip(texts, examples, groups, strict=True):
            completions = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in group]
            correct.append(sum(s == 1.0 for s in reward.score([text] * n, completions, [example.answer] * n)))
        passes = {k: sum(pass_at_k(n, c, k) for c in correct) / len(examples) for k in sorted(set(ks))}
    return EvalResult(accuracy=accuracy, pass_at_k=passes, num_prompts=len(examples))
