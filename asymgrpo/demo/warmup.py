"""Supervised warm-up of the embedded model: next-token loss on prompt -> answer<eos>.

A randomly initialised policy never samples a correct sum, so every reward would be 0 and
RL would have nothing to learn from. A few hundred supervised steps bring held-out greedy
accuracy to a low, non-zero level; AsymGRPO takes it from there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batch import pack
from ..data import Example
from ..policy import sequence_logprobs


def supervised_warmup(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], *,
                      steps: int, lr: float, batch_size: int, seed: int) -> None:
    """Train ``model`` in place with AdamW on random batches of ``examples``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    prompts = [tokenizer.encode(e.prompt) for e in examples]
    answers = [tokenizer.encode(e.answer) + [tokenizer.eos_token_id] for e in examples]
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        batch = pack([prompts[i] for i in rows], [answers[i] for i in rows], [[0.0] * len(answers[i]) for i in rows],
                     pad_id=tokenizer.pad_token_id, device=next(model.parameters()).device)
        logprobs, _ = sequence_logprobs(model, batch.input_ids, batch.targets)
        loss = -(logprobs * batch.mask).sum() / batch.mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def build_embedded_checkpoint(folder: str | Path, examples: list[Example], *, steps: int, lr: float, batch_size: int,
                              seed: int) -> Path:
    """Build the tiny Qwen2 + char tokenizer, warm it up on ``examples`` and save both to ``folder``."""
    from .model import build_tiny_qwen2
    from .tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=seed)
    supervised_warmup(model, tokenizer, examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
