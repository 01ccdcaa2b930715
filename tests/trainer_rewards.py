"""Reward functions for the trainer tests, in a module light enough for the reward worker processes to import."""

import time
import zlib


def first_digit_reward(prompt: str, completion: str, answer: str) -> float:
    """Partial credit a barely trained model earns often, so every step has a gradient."""
    return float(completion[:1] == answer[:1])


def flaky_reward(prompt: str, completion: str, answer: str) -> float:
    """Raises, returns NaN or hangs on a fixed share of (prompt, completion) pairs; otherwise first_digit_reward."""
    code = zlib.crc32(f"{prompt}|{completion}".encode())
    if code % 9 == 1:
        raise RuntimeError("checker crashed")
    if code % 9 == 2:
        return float("nan")
    if code % 40 == 3:
        time.sleep(5)
    return first_digit_reward(prompt, completion, answer)


def always_raises(prompt: str, completion: str, answer: str) -> float:
    raise RuntimeError("checker crashed")


def always_hangs(prompt: str, completion: str, answer: str) -> float:
    time.sleep(60)
    return 1.0
