"""Prompt/answer records: the embedded arithmetic task, JSONL files, local datasets folders."""

from .arithmetic import arithmetic_splits
from .loaders import Example, load_examples

__all__ = ["Example", "arithmetic_splits", "load_examples"]
