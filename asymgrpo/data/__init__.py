"""Prompt/answer records: the embedded arithmetic task, JSONL files, local datasets folders."""

from .arithmetic import arithmetic_splits
from .loaders import Example, load_examples
from .vocabulary import check_tokenizable

__all__ = ["Example", "arithmetic_splits", "check_tokenizable", "load_examples"]
