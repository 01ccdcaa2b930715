"""The model-forward side: run the backbone and hand its hidden states to the fused loss.

``add_fused_loss_forward(model)`` wraps ``model.forward`` so that ``model(..., asymgrpo_loss=fn)``
runs the backbone only (never the LM head) and returns ``fn(hidden, weight, bias)`` with the
LM head's weight and bias, looked up on every call (FSDP and PEFT replace modules after the
patch). Going through ``model(...)`` lets DDP / FSDP / accelerate wrappers run their forward
hooks. ``fn`` is a ``functools.partial``, which those wrappers pass through untouched (they
recurse into tensors, containers and dataclasses, and would cast float inputs under mixed
precision).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from asymgrpo_kernels import LossOptions, fused_linear_asymgrpo_loss

HeadLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]


def add_fused_loss_forward(model: nn.Module, *, cast_lm_head_to_fp32: bool) -> None:
    """Wrap ``model.forward`` (a causal LM, PEFT unwrapped) to take ``asymgrpo_loss=fn``.

    Without the keyword the forward is the previous one (generation and TRL's own log-prob
    passes are unchanged). With it: ``model.base_model(...)`` gives ``last_hidden_state``
    [B, L, H]; the head weight [V, H] and bias [V] (full tensors under FSDP2) come from
    ``model.get_output_embeddings()``; ``hidden`` is brought to the head's device and dtype
    (``head_operands``) and ``fn(hidden, weight, bias)`` is returned.
    """
    previous = model.forward

    @functools.wraps(type(model).forward)  # generate() validates its keywords against this signature
    def forward(self, *args, asymgrpo_loss: HeadLoss | None = None, **kwargs):
        if asymgrpo_loss is None:
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        weight, bias = head_parameters(self.get_output_embeddings())
        hidden, context = head_operands(hidden.to(weight.device), weight, cast_lm_head_to_fp32)
        with context:
            return asymgrpo_loss(hidden, weight, bias)

    model.forward = types.MethodType(forward, model)


def head_parameters(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the LM head; FSDP2's sharded DTensors as full tensors."""
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    return weight, bias


def head_operands(hidden: torch.Tensor, weight: torch.Tensor,
                  cast_lm_head_to_fp32: bool) -> tuple[torch.Tensor, AbstractContextManager]:
    """``hidden`` in the dtype the fused loss multiplies it in, and the context to call it in.

    ``cast_lm_head_to_fp32``: float32 hidden, autocast off (the head weight is float32, TRL casts
    it). Otherwise under autocast both operands go to the autocast dtype inside the loss; outside
    autocast a hidden dtype that differs from the weight's (a bfloat16 backbone before a float32
    head) is cast to the weight's.
    """
    if cast_lm_head_to_fp32:
        return hidden.float(), torch.autocast(hidden.device.type, enabled=False)
    if not torch.is_autocast_enabled(hidden.device.type) and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    return hidden, nullcontext()


def completion_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                    completion_ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                    options: LossOptions, **loss_inputs: Any):
    """The fused AsymGRPO loss of the completion tokens, as ``(loss, metrics, TokenValues)``.

    Args:
        hidden: [B, P + T, H] backbone output over prompt + completion; position t predicts token
            t + 1, so ``hidden[:, -T - 1:-1]`` scores the T completion tokens. Prompt positions are
            never read by the LM head.
        weight, bias: the LM head's [V, H] weight and [V] bias (or None).
        completion_ids: [B, T] int64, the targets.
        mask: [B, T] 0/1, the scored tokens (completion mask, times the tool mask).
        advantages: [B] float32.
        options: the ``LossOptions``.
        **loss_inputs: the other keywords of ``fused_linear_asymgrpo_loss`` (old_logprobs,
            ref_logprobs, is_weights, num_items, entropy_num_items, temperature).
    """
    steps = completion_ids.shape[1]
    return fused_linear_asymgrpo_loss(
        hidden[:, -steps - 1:-1], weight, completion_ids, mask, advantages, bias=bias, options=options,
        return_token_values=True, **loss_inputs,
    )
