"""Data: the embedded task's splits, JSONL and datasets folders, data order, packing, vocabulary checks."""

import json
import re

import pytest
import torch

from asymgrpo.batch import pack
from asymgrpo.data import Example, arithmetic_splits, check_tokenizable, load_examples
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
    with pytest.raises(ValueError, match=re.escape(f"{path} line 1: no field 'prompt' (fields: q, a)")):
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


def _error(path, **kwargs) -> str:
    """The one-line ValueError message ``load_examples(path, **kwargs)`` raises."""
    with pytest.raises(ValueError) as info:
        load_examples(str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _jsonl(tmp_path, *lines: str):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"prompt": "1+1=", "answer": "2"})


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path, GOOD, "", '{"prompt": "1+1" "answer": 2}')
    assert _error(path) == f"{path} line 3: not valid JSON (Expecting ',' delimiter at column 18)"


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "an array"), ("3", "a number"), ('"1+1"', "a string"),
                                            ("null", "null")])
def test_jsonl_line_that_is_not_an_object(tmp_path, line, kind):
    path = _jsonl(tmp_path, json.dumps({"q": "1+1=", "answer": "2"}), line)
    assert _error(path, prompt_field="q") == f"{path} line 2: expected a JSON object with fields 'q' and 'answer', got {kind}"


def test_jsonl_missing_field_names_its_line(tmp_path):
    path = _jsonl(tmp_path, GOOD, "", json.dumps({"question": "2+2=", "solution": "4"}))
    hint = "pick the fields with --prompt-field / --answer-field"
    assert _error(path) == f"{path} line 3: no field 'prompt' (fields: question, solution); {hint}"
    assert _error(path, prompt_field="question") == f"{path} line 1: no field 'question' (fields: prompt, answer); {hint}"
    path = _jsonl(tmp_path, json.dumps({"prompt": "1+1="}), "{}")
    assert _error(path) == f"{path} line 1: no field 'answer' (fields: prompt); {hint}"
    assert _error(path, answer_field="prompt") == f"{path} line 2: no field 'prompt' (no fields); {hint}"


def test_jsonl_null_field(tmp_path):
    path = _jsonl(tmp_path, GOOD, json.dumps({"prompt": "2+2=", "answer": None}))
    assert _error(path) == f"{path} line 2: field 'answer' is null"


def test_unreadable_jsonl_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert _error(missing) == f"cannot read dataset file '{missing}': [Errno 2] No such file or directory"
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert _error(folder) == f"cannot read dataset file '{folder}': [Errno 21] Is a directory"


def test_binary_jsonl_file(tmp_path):
    path = tmp_path / "image.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert _error(path) == f"{path} line 1: not UTF-8 text (byte 0x89 at offset 0); is it a binary file?"


@pytest.mark.parametrize("text", ["", "\n  \n\t\n", "\ufeff\n"], ids=["empty", "blank-lines", "byte-order-mark"])
def test_jsonl_without_records(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    assert _error(path) == f"{path} holds no records"


def test_jsonl_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_text(GOOD + "\n", encoding="utf-8-sig")
    assert load_examples(str(path)) == [Example(prompt="1+1=", answer="2")]


def test_datasets_folder_bad_records(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"prompt": ["1+1=", None], "answer": ["2", "4"]}),
        "test": datasets.Dataset.from_dict({"problem": ["3x=9"], "solution": ["3"]}),
    }).save_to_disk(str(tmp_path / "ds"))
    folder = tmp_path / "ds"
    assert _error(folder) == f"{folder} split 'train' record 1: field 'prompt' is null"
    assert _error(folder, split="test") == (f"{folder} split 'test' record 0: no field 'prompt' (fields: problem, "
                                            "solution); pick the fields with --prompt-field / --answer-field")


def test_unreadable_datasets_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    assert _error(tmp_path / "nowhere") == f"cannot read dataset '{tmp_path / 'nowhere'}': no such .jsonl file or folder"
    (tmp_path / "data.json").write_text(GOOD)
    assert _error(tmp_path / "data.json") == (f"cannot read dataset '{tmp_path / 'data.json'}': "
                                              "neither a .jsonl file nor a datasets folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert re.fullmatch(rf"cannot read dataset folder '{re.escape(str(empty))}': .*doesn't contain any data files",
                        _error(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part.json").write_text('{"prompt": ')
    assert re.fullmatch(rf"cannot read dataset folder '{re.escape(str(broken))}': "
                        r"An error occurred while generating the dataset \(.*JSON parse error.*\)", _error(broken))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{not json")
    assert _error(saved).startswith(f"cannot read dataset folder '{saved}': Expecting property name")


# --- vocabulary ------------------------------------------------------------------------

@pytest.fixture
def char_tokenizer():
    pytest.importorskip("transformers")
    from asymgrpo.demo.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


def _fast_tokenizer(core, **specials):
    """``core`` (a ``tokenizers.Tokenizer``) as a transformers tokenizer, as a model folder would load it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def _trained(model, pre_tokenizer, trainer):
    """A ``tokenizers.Tokenizer`` over ``model`` trained here on a few strings (no download)."""
    import tokenizers

    core = tokenizers.Tokenizer(model)
    core.pre_tokenizer = pre_tokenizer
    core.train_from_iterator(["12+34=46", "1 + 1 = 2", "hello world", "what is 2+2"], trainer)
    return core


def test_char_tokenizer_names_unknown_characters(char_tokenizer):
    prompts = ["12+34=", "Compute 12+34=", "1 - 2 * 3 / 4=", "what is 2+2="]
    with pytest.raises(ValueError) as info:
        check_tokenizable(char_tokenizer, prompts)
    assert str(info.value) == ("2 prompts hold characters the model's tokenizer does not know: 'C', 'a', 'e', 'h', "
                               "'i', 'm', 'o', 'p', 's', 't', 'u', 'w' (first: prompt 1, 'Compute 12+34='); "
                               "it knows only '0123456789+-*/= '")
    with pytest.raises(ValueError, match=r"^1 answer holds .*: '\.' \(first: answer 0, '1\.5'\)"):
        check_tokenizable(char_tokenizer, ["1.5", "2"], what="answer")
    assert check_tokenizable(char_tokenizer, ["12+34=", "1 - 2 * 3 / 4=", ""]) is None


def test_char_tokenizer_check_after_save_and_reload(tmp_path, char_tokenizer):
    from transformers import AutoTokenizer

    char_tokenizer.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="^1 held-out prompt holds .* know: 'x' .*; it knows only '0123456789"):
        check_tokenizable(AutoTokenizer.from_pretrained(str(tmp_path)), ["2x=4"], what="held-out prompt")


def test_char_tokenizer_in_a_model_folder(tmp_path, char_tokenizer):
    """Beside a Qwen2 config, AutoTokenizer rebuilds the vocabulary as a BPE that drops unknown characters."""
    from transformers import AutoTokenizer

    from asymgrpo.demo.model import build_tiny_qwen2

    build_tiny_qwen2(char_tokenizer, seed=0).save_pretrained(str(tmp_path))
    char_tokenizer.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded("Compute 12+34=", add_special_tokens=False)["input_ids"] == char_tokenizer("12+34=")["input_ids"]
    with pytest.raises(ValueError) as info:
        check_tokenizable(reloaded, ["12+34=", "Compute 12+34="])
    assert str(info.value) == ("1 prompt holds characters the model's tokenizer does not know: 'C', 'e', 'm', 'o', 'p', "
                               "'t', 'u' (first: prompt 1, 'Compute 12+34='); it drops them")


def test_char_tokenizer_message_is_bounded(char_tokenizer):
    texts = ["".join(chr(c) for c in range(0x4E00, 0x4E00 + 500)), "abc"]
    with pytest.raises(ValueError) as info:
        check_tokenizable(char_tokenizer, texts)
    message = str(info.value)
    assert len(message) < 400 and "\n" not in message
    assert "'a', 'b', 'c', " in message and ", and 483 more (first: prompt 0, '" in message and "...')" in message


def test_tokenizer_with_unknown_token():
    tokenizers = pytest.importorskip("tokenizers")
    core = _trained(tokenizers.models.WordPiece(unk_token="[UNK]"), tokenizers.pre_tokenizers.Whitespace(),
                    tokenizers.trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    tokenizer = _fast_tokenizer(core, unk_token="[UNK]")
    assert check_tokenizable(tokenizer, ["12+34=", "hello world", "[UNK] 1"]) is None  # the literal token is no unknown
    assert check_tokenizable(tokenizer, []) is None  # no held-out set
    with pytest.raises(ValueError) as info:
        check_tokenizable(tokenizer, ["hello", "[UNK] héllo", "Zürich", "x" * 50])
    assert str(info.value) == ("3 prompts hold characters the model's tokenizer does not know: 'Zürich', 'héllo', "
                               f"'{'x' * 17}...' (first: prompt 1, '[UNK] héllo'); it maps them to its unknown token '[UNK]'")


def test_word_level_tokenizer_with_unknown_words():
    tokenizers = pytest.importorskip("tokenizers")
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab={"<unk>": 0, "12": 1, "+": 2, "34": 3, "=": 4},
                                                            unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = _fast_tokenizer(core, unk_token="<unk>")
    assert check_tokenizable(tokenizer, ["12 + 34 ="]) is None
    with pytest.raises(ValueError, match=r"^1 prompt holds .* know: '35' \(first: prompt 0, '12 \+ 35 ='\); it maps"):
        check_tokenizable(tokenizer, ["12 + 35 =", "12 + 34 ="])


def test_tokenizer_that_drops_unknown_characters():
    tokenizers = pytest.importorskip("tokenizers")
    core = _trained(tokenizers.models.BPE(), tokenizers.pre_tokenizers.Whitespace(),
                    tokenizers.trainers.BpeTrainer(vocab_size=40, special_tokens=["<s>"]))
    tokenizer = _fast_tokenizer(core, unk_token="<s>")  # an unknown token the model never yields
    assert check_tokenizable(tokenizer, ["12+34=46", "what is 1 + 1"]) is None
    with pytest.raises(ValueError) as info:
        check_tokenizable(tokenizer, ["what is 1 + 1", "12 × 3 = 36", "4÷2"], what="answer")
    assert str(info.value) == ("2 answers hold characters the model's tokenizer does not know: '×', '÷' "
                               "(first: answer 1, '12 × 3 = 36'); it drops them")


def test_byte_level_tokenizer_represents_any_text():
    tokenizers = pytest.importorskip("tokenizers")
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    core = _trained(tokenizers.models.BPE(), byte_level(add_prefix_space=False),
                    tokenizers.trainers.BpeTrainer(vocab_size=300, initial_alphabet=byte_level.alphabet()))
    core.post_processor = tokenizers.processors.ByteLevel(trim_offsets=True)  # as GPT-2's: spaces out of the offsets
    assert check_tokenizable(_fast_tokenizer(core), ["Compute 12+34=", "Zürich ☃ 東京", "\x00\t", "a  b "]) is None


_SLOW_VOCAB = {"<unk>": 0, "1": 1, "+": 2, "=": 3}


class _SlowTokenizer:
    """The interface of a slow (pure Python) tokenizer: no backend, words outside the vocabulary become ``<unk>``."""

    unk_token, unk_token_id = "<unk>", 0

    def __call__(self, texts, add_special_tokens):
        return {"input_ids": [[_SLOW_VOCAB.get(word, 0) for word in text.split()] for text in texts]}


def test_slow_tokenizer_with_unknown_token():
    tokenizer = _SlowTokenizer()
    assert check_tokenizable(tokenizer, ["1 + 1 =", "<unk> 1", ""]) is None
    assert check_tokenizable(tokenizer, []) is None
    with pytest.raises(ValueError) as info:
        check_tokenizable(tokenizer, ["1 + 1 =", "<unk> 2 =", "1 + 3"])
    assert str(info.value) == ("2 prompts hold characters the model's tokenizer does not know: it maps some characters "
                               "to its unknown token '<unk>' (first: prompt 1, '<unk> 2 =')")


def test_prompt_order_is_a_pure_function_and_covers_each_epoch():
    first_epoch = [i for step in range(1, 6) for i in prompt_indices(10, 2, step, seed=1)]
    assert sorted(first_epoch) == list(range(10))
    assert prompt_indices(10, 4, 7, seed=1) == prompt_indices(10, 4, 7, seed=1)
    assert prompt_indices(10, 10, 1, seed=1) != prompt_indices(10, 10, 2, seed=1)


def test_pack_layout():
    batch = pack([[5, 6], [7]], [[8, 1], [9, 10, 1]], [[-0.5, -0.25], [-1.0, -2.0, -3.0]], pad_id=0,
                 device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[5, 6, 8, 1], [7, 9, 10, 1]]
    assert batch.targets.tolist() == [[6, 8, 1], [9, 10, 1]]
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch.vllm_logprobs.tolist() == [[0, -0.5, -0.25], [-1.0, -2.0, -3.0]]
    short = pack([[5], [7, 7, 7]], [[1], [1]], [[0.0], [0.0]], pad_id=0, device=torch.device("cpu")).slice(0, 1)
    assert short.input_ids.tolist() == [[5, 1]] and short.mask.tolist() == [[1]]
