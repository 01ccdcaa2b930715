"""Reward functions for tests/test_rewards.py, light enough for SafeReward's worker processes to import.

``behave`` does what its completion says, so one function covers every way a reward can fail.
"""

import os
import time
from pathlib import Path


def behave(prompt: str, completion: str, answer: str):
    """``completion`` is a number (returned as is) or one of the commands below."""
    command, _, argument = completion.partition(":")
    if command == "raise":
        raise RuntimeError("checker crashed")
    if command == "return":
        return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "none": None, "str": "x"}[argument]
    if command == "sleep":
        time.sleep(float(argument))
        return 1.0
    if command == "hang":
        if argument:  # a file to write this worker's pid to
            Path(argument).write_text(str(os.getpid()))
        time.sleep(60)
    if command == "exit":
        os._exit(3)
    if command == "pid":
        return float(os.getpid())
    return float(completion)
