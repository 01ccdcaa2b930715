"""torch.autograd.Function glue: runs a backend's passes and saves what backward needs."""

from __future__ import annotations

from types import ModuleType

import torch


class LinearLogprobEntropy(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None) -> (logprobs [N], entropy [N]), float32.

    ``backend`` is a module with ``forward`` and ``backward`` of the signatures in
    ``asymgrpo_kernels.chunked``; ``targets`` is int64 [N] with ignored rows set to -1.
    Saved for backward: the inputs (no copies) and the float32 [N] lse and entropy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, backend: ModuleType, workspace_bytes: int):
        valid = targets >= 0
        logprobs, entropy, lse = backend.forward(hidden, weight, bias, targets, temperature, workspace_bytes=workspace_bytes)
        logprobs = logprobs.masked_fill_(~valid, 0.0)
        entropy = entropy.masked_fill_(~valid, 0.0)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.backend, ctx.workspace_bytes = temperature, backend, workspace_bytes
        ctx.mark_non_differentiable(targets)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        if not any(needs):
            return (None,) * 7
        valid = targets >= 0
        zeros = torch.zeros_like(lse)
        grad_logprobs = zeros if grad_logprobs is None else grad_logprobs.float().masked_fill(~valid, 0.0)
        grad_entropy = zeros if grad_entropy is None else grad_entropy.float().masked_fill(~valid, 0.0)
        grads = ctx.backend.backward(
            grad_logprobs.contiguous(), grad_entropy.contiguous(), hidden, weight, bias, targets,
            lse, entropy, ctx.temperature, needs, workspace_bytes=ctx.workspace_bytes,
        )
        return (*grads, None, None, None, None)
