"""Check, before training, that the model's tokenizer can represent every character of the data.

A tokenizer that does not know a character maps it to its unknown token (the embedded
character tokenizer maps it to ``<pad>``) or drops it (a BPE without an unknown token), so the
policy would silently see other text than the dataset holds. ``check_tokenizable`` turns that
into an error naming the characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_SHOWN_UNKNOWN = 20  # distinct unknown characters (or pieces) named in a message
_SHOWN_KNOWN = 100  # characters of the vocabulary named in a message
_SHOWN_TEXT = 60  # characters of the first offending text quoted in a message
_SHOWN_PIECE = 20  # characters of one unknown piece (a word a tokenizer maps to its unknown token)


def check_tokenizable(tokenizer: Any, texts: Sequence[str], *, what: str = "prompt") -> None:
    """Raise ValueError when ``tokenizer`` cannot represent some character of ``texts``.

    ``what`` names one text in the message ("prompt", "answer", "held-out prompt").

    - A ``tokenizers`` ``WordLevel`` model over single characters (the embedded model's
      tokenizer): the unknown characters are those outside its vocabulary; the message names
      them, the first text holding one, and the characters the vocabulary does know. Plain
      set logic, the tokenizer is not called.
    - Any other fast tokenizer: each text is encoded without special tokens; a character that
      no token's offsets cover was dropped (whitespace excepted: byte-level BPEs leave it out
      of the offsets they report), and the text under a token with the unknown id (but not the
      unknown token written literally) was not known. The message names both.
    - A slow tokenizer with an ``unk_token_id``: a text is unknown when it yields more unknown
      ids than it holds the unknown token literally; the message names the first such text.
    - A slow tokenizer without an unknown token: nothing to check.

    Raises:
        ValueError: some text holds a character the tokenizer cannot represent.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    characters = _character_vocabulary(tokenizer, backend)
    if characters is not None:
        _check_characters(characters, texts, what)
    elif backend is not None:
        _check_encodings(backend, tokenizer.unk_token_id, tokenizer.unk_token, texts, what)
    elif getattr(tokenizer, "unk_token_id", None) is not None:
        _check_unknown_ids(tokenizer, texts, what)


def _character_vocabulary(tokenizer: Any, backend: Any) -> list[str] | None:
    """The characters of a WordLevel single-character vocabulary in id order, else None.

    None as well when the tokenizer normalizes text first: a normalizer (lowercasing, say)
    may map a character outside the vocabulary onto one inside it.
    """
    if backend is None:
        return None
    from tokenizers.models import WordLevel

    if not isinstance(backend.model, WordLevel) or backend.normalizer is not None:
        return None
    specials = set(tokenizer.all_special_tokens)
    vocab = {token: i for token, i in tokenizer.get_vocab().items() if token not in specials}
    if any(len(token) != 1 for token in vocab):
        return None
    return sorted(vocab, key=vocab.__getitem__)


def _check_characters(characters: list[str], texts: Sequence[str], what: str) -> None:
    """Raise ValueError naming the characters of ``texts`` outside ``characters``."""
    known = set(characters)
    unknown: set[str] = set()
    offending = []
    for i, text in enumerate(texts):
        missing = set(text) - known
        if missing:
            unknown |= missing
            offending.append(i)
    if offending:
        _raise(unknown, offending, texts, what, f"it knows only {_bounded_text(characters)}")


def _check_encodings(backend: Any, unk_id: int | None, unk: str | None, texts: Sequence[str], what: str) -> None:
    """Raise ValueError naming the characters of ``texts`` the ``tokenizers`` ``backend`` drops or maps to ``unk_id``."""
    dropped: set[str] = set()
    unknown: set[str] = set()
    offending = []
    for i, (text, encoding) in enumerate(zip(texts, backend.encode_batch(list(texts), add_special_tokens=False),
                                             strict=True)):
        text_dropped = _uncovered(text, encoding.offsets)
        text_unknown = _unknown_pieces(text, encoding, unk_id, unk) if unk_id in encoding.ids else set()
        if text_dropped or text_unknown:
            dropped |= text_dropped
            unknown |= text_unknown
            offending.append(i)
    if offending:
        if not unknown:
            how = "it drops them"
        elif not dropped:
            how = f"it maps them to its unknown token {unk!r}"
        else:
            how = f"it drops some and maps the others to its unknown token {unk!r}"
        _raise(dropped | unknown, offending, texts, what, how)


def _unknown_pieces(text: str, encoding: Any, unk_id: int, unk: str) -> set[str]:
    """The pieces of ``text`` under the tokens of ``encoding`` with ``unk_id``, the literal ``unk`` excepted."""
    return {text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)
            if token == unk_id and text[start:end] != unk}


def _uncovered(text: str, offsets: list[tuple[int, int]]) -> set[str]:
    """The characters of ``text``, whitespace excepted, that no ``(start, end)`` of ``offsets`` covers."""
    covered = bytearray(len(text))
    for start, end in offsets:
        covered[start:end] = b"\x01" * (end - start)
    uncovered = set()
    i = covered.find(0)
    while i >= 0:
        if not text[i].isspace():
            uncovered.add(text[i])
        i = covered.find(0, i + 1)
    return uncovered


def _check_unknown_ids(tokenizer: Any, texts: Sequence[str], what: str) -> None:
    """Raise ValueError naming the first of ``texts`` the (slow) tokenizer maps partly to its unknown token."""
    if not texts:
        return  # transformers fails on an empty batch
    unk_id, unk = tokenizer.unk_token_id, tokenizer.unk_token
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    offending = [i for i, (text, row) in enumerate(zip(texts, ids, strict=True)) if row.count(unk_id) > text.count(unk)]
    if offending:
        raise ValueError(f"{_count(len(offending), what)} characters the model's tokenizer does not know: it maps "
                         f"some characters to its unknown token {unk!r} ({_first(offending[0], texts, what)})")


def _raise(unknown: set[str], offending: list[int], texts: Sequence[str], what: str, how: str) -> None:
    """Raise the ValueError naming the ``unknown`` characters, how many texts hold them, the first one, and ``how``."""
    named = _bounded([repr(_cut(piece, _SHOWN_PIECE)) for piece in sorted(unknown)], _SHOWN_UNKNOWN)
    raise ValueError(f"{_count(len(offending), what)} characters the model's tokenizer does not know: {named} "
                     f"({_first(offending[0], texts, what)}); {how}")


def _count(n: int, what: str) -> str:
    """'1 prompt holds' / '3 prompts hold'."""
    return f"1 {what} holds" if n == 1 else f"{n} {what}s hold"


def _first(i: int, texts: Sequence[str], what: str) -> str:
    """'first: prompt 4, 'Compute 1+2='', the text cut to ``_SHOWN_TEXT`` characters."""
    return f"first: {what} {i}, {_cut(texts[i], _SHOWN_TEXT)!r}"


def _cut(text: str, limit: int) -> str:
    """``text``, or its start and '...' when it is longer than ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(items: list[str], limit: int) -> str:
    """``items`` joined by commas, the ones past ``limit`` counted instead of shown."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, and {len(items) - limit} more"


def _bounded_text(characters: list[str]) -> str:
    """The characters as one quoted string, those past ``_SHOWN_KNOWN`` counted instead of shown."""
    shown = repr("".join(characters[:_SHOWN_KNOWN]))
    more = len(characters) - _SHOWN_KNOWN
    return shown if more <= 0 else f"{shown} and {more} more"
