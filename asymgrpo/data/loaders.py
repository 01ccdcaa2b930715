"""Load prompt/answer records from a JSONL file or a local Hugging Face ``datasets`` folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One task: the prompt text given to the policy and the reference answer the reward checks."""

    prompt: str
    answer: str


def load_examples(path: str, *, prompt_field: str = "prompt", answer_field: str = "answer", split: str = "train") -> list[Example]:
    """Records of a ``.jsonl`` file (one JSON object per line) or a ``datasets`` folder.

    A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read with
    ``datasets.load_from_disk`` (``split`` picks the part of a DatasetDict); any other folder
    (parquet / json / csv files) with ``datasets.load_dataset``. Raises ValueError naming the
    record and field when a field is missing.
    """
    if path.endswith(".jsonl"):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = _load_dataset_folder(path, split)
    examples = []
    for i, row in enumerate(rows):
        for key in (prompt_field, answer_field):
            if key not in row:
                raise ValueError(f"record {i} of {path} has no field {key!r} (fields: {', '.join(row)})")
        examples.append(Example(prompt=str(row[prompt_field]), answer=str(row[answer_field])))
    if not examples:
        raise ValueError(f"{path} holds no records")
    return examples


def _load_dataset_folder(path: str, split: str) -> list[dict]:
    import datasets

    folder = Path(path)
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        data = datasets.load_from_disk(str(folder))
    else:
        data = datasets.load_dataset(str(folder))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{path} has splits {', '.join(data)}; no {split!r}")
        data = data[split]
    return list(data)
