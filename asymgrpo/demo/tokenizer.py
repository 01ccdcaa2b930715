"""A character-level Hugging Face tokenizer built locally (no download).

Every character of ``CHARSET`` is one token; ``<pad>`` and ``<eos>`` are the only specials.
The result is a ``PreTrainedTokenizerFast`` that ``save_pretrained`` writes in the standard
format. Load it back with ``asymgrpo.policy.load_tokenizer``: beside a Qwen2 config.json,
transformers 5's ``AutoTokenizer`` rebuilds it as Qwen2's BPE tokenizer, which drops spaces and
unknown characters.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
CHARSET = "0123456789+-*/= "


def build_char_tokenizer(charset: str = CHARSET) -> PreTrainedTokenizerFast:
    """Tokenizer with ids 0 = <pad>, 1 = <eos>, then one id per character of ``charset``."""
    if len(set(charset)) != len(charset):
        raise ValueError(f"charset must not repeat characters, got {charset!r}")
    vocab = {PAD: 0, EOS: 1}
    for ch in charset:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
