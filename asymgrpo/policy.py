"""The policy: a Hugging Face causal LM, read through its backbone's last hidden states.

The trainer never asks the model for logits. ``last_hidden`` runs the backbone only;
log-probs, entropies and the loss come from fused kernels fed with the LM head's weight
(``lm_head_weight``; tied embeddings work as they are).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from asymgrpo_kernels import fused_linear_logprob_entropy

from .distributed import POLICY_CALL

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """"auto" is bfloat16 on CUDA and float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return DTYPES[name]


def resolve_attn_implementation(name: str) -> str:
    """"auto" is flash_attention_2 when flash-attn is installed and CUDA is present, sdpa otherwise."""
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(path: str):
    """The tokenizer of a model folder or hub name, as saved.

    ``AutoTokenizer`` in transformers 5 rebuilds a character-level (``WordLevel``) tokenizer.json,
    such as the embedded model's, as the model type's BPE tokenizer, which drops spaces and
    unknown characters; such a folder is loaded with ``PreTrainedTokenizerFast`` instead.
    Raises OSError (transformers') when the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    saved = Path(path) / "tokenizer.json"
    if saved.is_file() and json.loads(saved.read_text()).get("model", {}).get("type") == "WordLevel":
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def load_policy(path: str, *, dtype: torch.dtype, attn_implementation: str, device: torch.device,
                gradient_checkpointing: bool = False) -> PreTrainedModel:
    """A causal LM from a folder or hub name, on ``device``, in training mode."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    return model


def last_hidden(model: PreTrainedModel, input_ids: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, T] token ids -> [B, T, H] last hidden states of the backbone (no logits).

    Sequences are right-padded: causal attention keeps every real token away from the
    padding after it, so no attention mask is needed. With a ``compute_dtype`` other than the
    parameters' (float32 master weights, bfloat16 compute), the backbone runs under autocast
    and the result is returned in ``compute_dtype``.
    """
    if compute_dtype is None or compute_dtype == model.dtype:
        return model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    with torch.autocast(input_ids.device.type, dtype=compute_dtype):
        hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    return hidden.to(compute_dtype)


def lm_head_weight(model: PreTrainedModel, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[V, H] weight of the output projection, cast (differentiably) to ``compute_dtype`` if given."""
    weight = model.get_output_embeddings().weight
    return weight if compute_dtype is None else weight.to(compute_dtype)


def policy_call(model: PreTrainedModel, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(model, *args, **kwargs)``: every use of the policy's weights goes through here.

    A sharded policy (``distributed.shard_policy``) has ``POLICY_CALL``, a method registered with
    FSDP2 as a forward method: its parameters (the root's too: embeddings, LM head) are
    all-gathered for ``fn`` and their gradients reduce-scattered after the backward. An
    unsharded policy calls ``fn`` directly.
    """
    method = getattr(model, POLICY_CALL, None)
    return method(fn, *args, **kwargs) if method is not None else fn(model, *args, **kwargs)


def fused_loss(model: PreTrainedModel, loss_fn, input_ids: torch.Tensor, *loss_args,
               compute_dtype: torch.dtype | None = None, **loss_kwargs):
    """``loss_fn(hidden, lm_head_weight, *loss_args, **loss_kwargs)`` on [B, T] ``input_ids`` (its (loss, metrics)).

    hidden: [B, T, H] from ``last_hidden``; the weight: [V, H] plain (all-gathered when sharded).
    """
    def run(model):
        hidden = last_hidden(model, input_ids, compute_dtype)
        return loss_fn(hidden, lm_head_weight(model, compute_dtype), *loss_args, **loss_kwargs)

    return policy_call(model, run)


def sequence_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, targets: torch.Tensor, *,
                      temperature: float = 1.0, backend: str = "auto",
                      compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the entropy at each position, both [B, T-1] float32.

    ``targets`` is [B, T-1] (input_ids shifted left); positions equal to -100 give 0.
    """
    def run(model):
        hidden = last_hidden(model, input_ids[:, :-1], compute_dtype)
        return fused_linear_logprob_entropy(hidden, lm_head_weight(model, compute_dtype), targets,
                                            temperature=temperature, backend=backend)

    return policy_call(model, run)
