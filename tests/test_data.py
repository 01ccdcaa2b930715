"""Data: the embedded task's splits, JSONL and datasets folders, data order, packing."""

import json

import pytest
import torch

from asymgrpo.batch import pack
from asymgrpo.data import arithmetic_splits, load_examples
from asymgrpo.trainer import prompt_indices


def test_arithmetic_splits_are_exact_disjoint_and_seeded():
    train, test = arithmetic_splits(seed=3, test_size=100, max_operand=20)
    assert len(train) + len(test) == 21 * 21 and len(test) == 100
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    for e in train + test:
        a, b = e.prompt.rstrip("=").split("+")
        assert int(e.answer) == int(a) + int(b)
    assert arithmetic_splits(seed=3, test_size=100, max_operand=20) == (train, test)
    assert arithmetic_splits(seed=4, test_size=100, max_operand=20)[1] != test
    with pytest.raises(ValueError, match="test_size"):
        arithmetic_splits(seed=0, test_size=0, max_operand=20)


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "1+1", "a": 2}) + "\n\n" + json.dumps({"q": "2+2", "a": "4"}) + "\n")
    examples = load_examples(str(path), prompt_field="q", answer_field="a")
    assert [(e.prompt, e.answer) for e in examples] == [("1+1", "2"), ("2+2", "4")]
    with pytest.raises(ValueError, match="record 0 .* no field 'prompt'"):
        load_examples(str(path))


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"problem": ["x+1=2", "2x=4"], "solution": ["1", "2"]}),
        "test": datasets.Dataset.from_dict({"problem": ["3x=9"], "solution": ["3"]}),
    })
    data.save_to_disk(str(tmp_path / "ds"))
    test = load_examples(str(tmp_path / "ds"), prompt_field="problem", answer_field="solution", split="test")
    assert [(e.prompt, e.answer) for e in test] == [("3x=9", "3")]
    with pytest.raises(ValueError, match="no 'validation'"):
        load_examples(str(tmp_path / "ds"), prompt_field="problem", answer_field="solution", split="validation")


def test_prompt_order_is_a_pure_function_and_covers_each_epoch():
    first_epoch = [i for step in range(1, 6) for i in prompt_indices(10, 2, step, seed=1)]
    assert sorted(first_epoch) == list(range(10))
    assert prompt_indices(10, 4, 7, seed=1) == prompt_indices(10, 4, 7, seed=1)
    assert [prompt_indices(10, 10, s, seed=1) for s in (1, 2)][0] != prompt_indices(10, 10, 2, seed=1)


def test_pack_layout():
    batch = pack([[5, 6], [7]], [[8, 1], [9, 10, 1]], [[-0.5, -0.25], [-1.0, -2.0, -3.0]], pad_id=0,
                 device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[5, 6, 8, 1], [7, 9, 10, 1]]
    assert batch.targets.tolist() == [[6, 8, 1], [9, 10, 1]]
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch.vllm_logprobs.tolist() == [[0, -0.5, -0.25], [-1.0, -2.0, -3.0]]
    short = pack([[5], [7, 7, 7]], [[1], [1]], [[0.0], [0.0]], pad_id=0, device=torch.device("cpu")).slice(0, 1)
    assert short.input_ids.tolist() == [[5, 1]] and short.mask.tolist() == [[1]]
