"""The embedded tasks ('add', 'mul'): exact, disjoint, seeded splits; the char tokenizer covers them; the
config checks embedded_task, embedded_test_size and max_new_tokens against the chosen task."""

import pytest

from asymgrpo.config import ConfigError, TrainConfig
from asymgrpo.data import EMBEDDED_TASKS, arithmetic_splits, embedded_splits, longest_answer, product_splits, task_size
from asymgrpo.demo.tokenizer import CHARSET, build_char_tokenizer
from asymgrpo.preflight import load_data


def test_mul_splits_are_exact_disjoint_and_seeded():
    train, test = product_splits(seed=3, test_size=500)
    assert len(train) + len(test) == task_size("mul") == 900 * 8 and len(test) == 500
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert len({e.prompt for e in train + test}) == 7200
    for e in train + test:
        a, b = e.prompt.removesuffix("=").split("*")
        assert 100 <= int(a) <= 999 and 2 <= int(b) <= 9 and int(e.answer) == int(a) * int(b)
    assert product_splits(seed=3, test_size=500) == (train, test)
    assert product_splits(seed=4, test_size=500)[1] != test
    assert embedded_splits("mul", seed=3, test_size=500) == (train, test)
    # longer answers than 'add': most are 4 digits
    assert sum(len(e.answer) == 4 for e in train + test) / 7200 > 0.8
    assert max(len(e.answer) for e in train + test) == longest_answer("mul") == 4
    for size in (0, 7200):
        with pytest.raises(ValueError, match="test_size"):
            product_splits(seed=0, test_size=size)


def test_add_is_unchanged_and_the_default():
    assert TrainConfig().embedded_task == "add" and EMBEDDED_TASKS == ("add", "mul")
    assert embedded_splits("add", seed=0, test_size=500) == arithmetic_splits(seed=0, test_size=500)
    assert task_size("add", 99) == 100 * 100 and longest_answer("add", 99) == 3 and longest_answer("add", 9) == 2
    with pytest.raises(ValueError, match="embedded_task must be one of add, mul"):
        embedded_splits("sub", seed=0, test_size=5)


@pytest.mark.parametrize("task", EMBEDDED_TASKS)
def test_the_char_tokenizer_covers_every_task(task):
    tokenizer = build_char_tokenizer()
    train, test = embedded_splits(task, seed=0, test_size=100)
    for e in (train + test)[:2000]:
        for text in (e.prompt, e.answer):
            assert set(text) <= set(CHARSET)
            ids = tokenizer.encode(text)
            assert len(ids) == len(text) and tokenizer.pad_token_id not in ids  # unknown characters map to pad
            assert tokenizer.decode(ids) == text


def test_load_data_follows_embedded_task(tmp_path):
    train, test = load_data(TrainConfig.from_dict({"embedded_task": "mul", "seed": 1, "embedded_test_size": 300}))
    assert (train, test) == product_splits(seed=1, test_size=300)
    assert load_data(TrainConfig())[1] == arithmetic_splits(seed=0, test_size=500)[1]


@pytest.mark.parametrize("values, message", [
    ({"embedded_task": "sub"}, "embedded_task must be one of add, mul; got 'sub'"),
    ({"embedded_task": "mul", "embedded_test_size": 7200}, "embedded_test_size must be < the 7200 possible problems of embedded_task 'mul'"),
    ({"embedded_test_size": 10_000}, "embedded_test_size must be < the 10000 possible problems of embedded_task 'add'"),
    ({"embedded_task": "mul", "max_new_tokens": 4}, r"max_new_tokens must be >= 5 for embedded_task 'mul' \(its longest answer, 4 tokens, and eos\), got 4"),
    ({"max_new_tokens": 3}, "max_new_tokens must be >= 4 for embedded_task 'add'"),
    ({"embedded_max_operand": 999, "max_new_tokens": 4}, "max_new_tokens must be >= 5 for embedded_task 'add'"),
])
def test_config_checks_the_chosen_task(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_config_accepts_what_each_task_needs():
    TrainConfig.from_dict({"embedded_task": "mul", "embedded_test_size": 7199, "max_new_tokens": 5})
    TrainConfig.from_dict({"embedded_task": "add", "max_new_tokens": 4})
    assert TrainConfig().max_new_tokens >= longest_answer("mul") + 1  # the default serves both tasks
    # the add-only limits do not bind 'mul', and other data is not checked against a task
    TrainConfig.from_dict({"embedded_task": "mul", "embedded_max_operand": 9, "embedded_test_size": 1000})
    with pytest.raises(ConfigError, match="possible problems of embedded_task 'add'"):
        TrainConfig.from_dict({"embedded_max_operand": 9, "embedded_test_size": 1000})
