"""Built-in verifiable rewards: 1.0 for a correct completion, 0.0 otherwise."""

from __future__ import annotations


def exact_match(prompt: str, completion: str, answer: str) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, equals the answer exactly."""
    return float(completion.strip() == answer.strip())


def math_verify_reward(prompt: str, completion: str, answer: str) -> float:
    """1.0 when math-verify finds the completion's final answer equal to the reference.

    The reference is parsed as LaTeX (a bare "42" or "\\frac{1}{2}" works; so does a boxed one).
    math-verify's own signal-based timeouts are turned off (they work only on the main thread);
    ``SafeReward`` enforces the time limit instead.
    """
    from math_verify import parse, verify

    gold = parse(answer if "\\boxed" in answer or "$" in answer else f"${answer}$", parsing_timeout=None)
    predicted = parse(completion, parsing_timeout=None)
    if not gold or not predicted:
        return 0.0
    return float(verify(gold, predicted, timeout_seconds=None))
