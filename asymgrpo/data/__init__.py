"""Prompt/answer records: the embedded arithmetic tasks, JSONL files, local datasets folders."""

from .arithmetic import EMBEDDED_TASKS, arithmetic_splits, embedded_splits, longest_answer, product_splits, task_size
from .loaders import Example, load_examples
from .vocabulary import check_tokenizable

__all__ = ["EMBEDDED_TASKS", "Example", "arithmetic_splits", "embedded_splits", "longest_answer", "product_splits",
           "task_size", "check_tokenizable", "load_examples"]
