"""The embedded tasks, exact answers, no download. ``embedded_task`` chooses one:

* ``add``: "a+b=" -> "a+b" for a, b in 0..max_operand (answers of 1-3 digits at the default 99);
* ``mul``: "a*b=" -> "a*b" for a 3-digit a (100..999) and a 1-digit b (2..9): 7,200 problems,
  answers of 3-4 digits (4 for 86 % of them), so a completion has more tokens whose entropy can move.
  ``max_operand`` does not apply to it.

The problems are shuffled once by ``seed``; the first ``test_size`` form the held-out test split,
the rest the train split. Same seed, same splits.
"""

from __future__ import annotations

import random

from .loaders import Example

EMBEDDED_TASKS = ("add", "mul")
MUL_LEFT = range(100, 1000)  # the 3-digit factor of "mul"
MUL_RIGHT = range(2, 10)  # its 1-digit factor (0 and 1 would be trivial)


def arithmetic_splits(*, seed: int, test_size: int, max_operand: int = 99) -> tuple[list[Example], list[Example]]:
    """(train, test) lists of Example(prompt="a+b=", answer=str(a + b)); disjoint, deterministic."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if not 0 < test_size < len(pairs):
        raise ValueError(f"test_size must be in [1, {len(pairs) - 1}], got {test_size}")
    random.Random(seed).shuffle(pairs)
    examples = [Example(prompt=f"{a}+{b}=", answer=str(a + b)) for a, b in pairs]
    return examples[test_size:], examples[:test_size]


def product_splits(*, seed: int, test_size: int) -> tuple[list[Example], list[Example]]:
    """(train, test) lists of Example(prompt="a*b=", answer=str(a * b)), a in 100..999, b in 2..9; disjoint,
    deterministic."""
    pairs = [(a, b) for a in MUL_LEFT for b in MUL_RIGHT]
    if not 0 < test_size < len(pairs):
        raise ValueError(f"test_size must be in [1, {len(pairs) - 1}], got {test_size}")
    random.Random(seed).shuffle(pairs)
    examples = [Example(prompt=f"{a}*{b}=", answer=str(a * b)) for a, b in pairs]
    return examples[test_size:], examples[:test_size]


def _check_task(task: str) -> None:
    if task not in EMBEDDED_TASKS:
        raise ValueError(f"embedded_task must be one of {', '.join(EMBEDDED_TASKS)}; got {task!r}")


def embedded_splits(task: str, *, seed: int, test_size: int, max_operand: int = 99) -> tuple[list[Example], list[Example]]:
    """(train, test) of embedded task ``task`` (``arithmetic_splits`` for "add", ``product_splits`` for "mul")."""
    _check_task(task)
    if task == "add":
        return arithmetic_splits(seed=seed, test_size=test_size, max_operand=max_operand)
    return product_splits(seed=seed, test_size=test_size)


def task_size(task: str, max_operand: int = 99) -> int:
    """How many distinct problems embedded task ``task`` has (train and test splits together)."""
    _check_task(task)
    return (max_operand + 1) ** 2 if task == "add" else len(MUL_LEFT) * len(MUL_RIGHT)


def longest_answer(task: str, max_operand: int = 99) -> int:
    """Characters (= tokens of the char tokenizer) of the task's longest answer, without eos."""
    _check_task(task)
    return len(str(2 * max_operand)) if task == "add" else len(str(MUL_LEFT[-1] * MUL_RIGHT[-1]))
