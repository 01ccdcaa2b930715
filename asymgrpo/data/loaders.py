"""Load prompt/answer records from a JSONL file or a local Hugging Face ``datasets`` folder.

Every bad input is a ValueError of one line naming the file and the line (JSONL) or the split
and record (folders), raised before any record is returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


@dataclass(frozen=True)
class Example:
    """One task: the prompt text given to the policy and the reference answer the reward checks."""

    prompt: str
    answer: str


def load_examples(path: str, *, prompt_field: str = "prompt", answer_field: str = "answer", split: str = "train") -> list[Example]:
    """Records of a ``.jsonl`` file (one JSON object per line) or a ``datasets`` folder.

    A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read with
    ``datasets.load_from_disk`` (``split`` picks the part of a DatasetDict); any other folder
    (parquet / json / csv files) with ``datasets.load_dataset``. Blank JSONL lines are skipped.

    Raises:
        ValueError: one line naming the file and line (JSONL) or split and record (folders)
            when the file cannot be read or is not UTF-8, a line is not a JSON object, a record
            lacks a field or holds null in it, ``split`` is not in the folder, the folder cannot
            be read by ``datasets``, or there are no records.
    """
    if path.endswith(".jsonl"):
        source, records = path, _jsonl_records(path, (prompt_field, answer_field))
    else:
        source, records = _folder_records(path, split)
    examples = [_example(where, record, prompt_field, answer_field) for where, record in records]
    if not examples:
        raise ValueError(f"{source} holds no records")
    return examples


def _example(where: str, record: dict[str, Any], prompt_field: str, answer_field: str) -> Example:
    """The Example of ``record`` (found at ``where``). Raises ValueError when a field is missing or null."""
    for field in (prompt_field, answer_field):
        if field not in record:
            fields = f"fields: {', '.join(record)}" if record else "no fields"
            raise ValueError(f"{where}: no field {field!r} ({fields}); "
                             "pick the fields with --prompt-field / --answer-field")
        if record[field] is None:
            raise ValueError(f"{where}: field {field!r} is null")
    return Example(prompt=str(record[prompt_field]), answer=str(record[answer_field]))


def _jsonl_records(path: str, fields: tuple[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """('{path} line {n}', record) for each non-blank line of ``path``.

    Raises:
        ValueError: a line is not UTF-8 text, not JSON, or not a JSON object (with the
            ``fields`` it should have in the message), or the file cannot be read.
    """
    for number, raw in enumerate(_read_lines(path), start=1):
        where = f"{path} line {number}"
        try:
            line = raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not JSON
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
                             "is it a binary file?") from err
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):  # bad content of the file, not a caller's type error
            raise ValueError(f"{where}: expected a JSON object with fields {fields[0]!r} and {fields[1]!r}, "  # noqa: TRY004
                             f"got {_JSON_TYPES[type(record)]}")
        yield where, record


def _read_lines(path: str) -> list[bytes]:
    """The lines of ``path`` as bytes. Raises ValueError when it cannot be read (missing, a folder, permissions)."""
    try:
        with open(path, "rb") as f:
            return f.readlines()
    except OSError as err:
        reason = f"[Errno {err.errno}] {err.strerror}" if err.strerror else str(err)
        raise ValueError(f"cannot read dataset file {path!r}: {reason}") from err


def _folder_records(path: str, split: str) -> tuple[str, Iterator[tuple[str, dict[str, Any]]]]:
    """(source, ('{source} record {i}', record) for each record) of the ``datasets`` folder ``path``.

    ``source`` is ``path``, with ``split`` when the folder holds several.

    Raises:
        ValueError: ``path`` is not a folder, ``datasets`` cannot read it, or it has no ``split``.
    """
    import datasets

    data = _open_folder(path)
    source = path
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{path} has splits {', '.join(data)}; no {split!r}")
        data, source = data[split], f"{path} split {split!r}"
    return source, ((f"{source} record {i}", record) for i, record in enumerate(data))


def _open_folder(path: str) -> Any:
    """``datasets.load_from_disk`` of a saved folder, else ``datasets.load_dataset`` of its data files.

    Raises:
        ValueError: ``path`` is missing or not a folder, or ``datasets`` fails on it (the
            library's message, first line, and that of its cause).
    """
    import datasets

    folder = Path(path)
    if not folder.exists():
        raise ValueError(f"cannot read dataset {path!r}: no such .jsonl file or folder")
    if not folder.is_dir():
        raise ValueError(f"cannot read dataset {path!r}: neither a .jsonl file nor a datasets folder")
    saved = (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists()
    try:
        return datasets.load_from_disk(path) if saved else datasets.load_dataset(path)
    except Exception as err:  # the library raises OSError, ValueError, KeyError, DatasetsError, ...
        raise ValueError(f"cannot read dataset folder {path!r}: {_first_lines(err)}") from err


def _first_lines(err: Exception) -> str:
    """The first line of ``err``'s message, and of its cause's (datasets wraps the real error in a generic one)."""
    message = _first_line(err)
    return message if err.__cause__ is None else f"{message} ({_first_line(err.__cause__)})"


def _first_line(err: BaseException) -> str:
    return str(err).strip().partition("\n")[0] or type(err).__name__
