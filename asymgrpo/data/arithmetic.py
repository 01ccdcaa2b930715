"""The embedded task: "a+b=" -> "c" for a, b in 0..max_operand, with exact answers.

The (a, b) pairs are shuffled once by ``seed``; the first ``test_size`` form the held-out
test split, the rest the train split. Same seed, same splits.
"""

from __future__ import annotations

import random

from .loaders import Example


def arithmetic_splits(*, seed: int, test_size: int, max_operand: int = 99) -> tuple[list[Example], list[Example]]:
    """(train, test) lists of Example(prompt="a+b=", answer=str(a + b)); disjoint, deterministic."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if not 0 < test_size < len(pairs):
        raise ValueError(f"test_size must be in [1, {len(pairs) - 1}], got {test_size}")
    random.Random(seed).shuffle(pairs)
    examples = [Example(prompt=f"{a}+{b}=", answer=str(a + b)) for a, b in pairs]
    return examples[test_size:], examples[:test_size]
