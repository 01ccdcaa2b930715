"""The embedded policy: a tiny Qwen2-architecture causal LM, randomly initialised.

Two layers, hidden size 128, two query heads and one key/value head of dimension 64
(vLLM's CPU attention needs head_dim 64 or more), float32. About 0.4 M parameters.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, PreTrainedTokenizerFast


def build_tiny_qwen2(tokenizer: PreTrainedTokenizerFast, *, seed: int, max_positions: int = 128) -> Qwen2ForCausalLM:
    """A freshly initialised tiny Qwen2 whose vocabulary matches ``tokenizer`` (tied embeddings)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.float()
