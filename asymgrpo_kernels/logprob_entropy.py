"""fused_linear_logprob_entropy: log p(target) and entropy straight from hidden states."""

from __future__ import annotations

import torch

from .chunked import DEFAULT_WORKSPACE_BYTES
from .dispatch import logprob_entropy_backend, resolve_backend
from .functions import LinearLogprobEntropy
from .reference import logprob_entropy_reference
from .validate import check_logprob_entropy_inputs, check_targets_in_range


def fused_linear_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    backend: str = "auto",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target and the full-vocabulary entropy, without [N x V] logits.

    With s = (hidden @ weight.T + bias) / temperature and p = softmax(s):
    ``logprobs = log p[target]`` and ``entropy = -sum_v p_v log p_v``.

    Args:
        hidden: [..., H] float32, bfloat16 or float16 (any strides).
        weight: [V, H], same dtype as hidden (the LM head; tied embeddings work as they are).
        targets: [...] = hidden.shape[:-1], integer; each in [0, V) or equal to ``ignore_index``.
        bias: [V] or None, same dtype as hidden.
        temperature: > 0, applied inside the kernels.
        ignore_index: positions whose target equals it give 0 and 0 and no gradient.
        backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch" or "reference".
        workspace_bytes: bound on the scratch memory of one pass (triton and torch backends).

    Returns:
        (logprobs, entropy): float32 tensors shaped like targets. Both are differentiable with
        respect to hidden, weight and bias; all math is accumulated in float32.
    """
    temperature = check_logprob_entropy_inputs(hidden, weight, targets, bias, temperature, ignore_index, backend)
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes <= 0:
        raise ValueError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    valid = check_targets_in_range(targets, weight.shape[0], ignore_index)
    backend = resolve_backend(backend, hidden.device)
    if backend == "reference":
        return logprob_entropy_reference(hidden, weight, targets.long(), bias, temperature, ignore_index)
    batch_shape = targets.shape
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    kernel_targets = torch.where(valid, targets.long(), -1).reshape(-1)
    logprobs, entropy = LinearLogprobEntropy.apply(
        hidden_2d, weight, bias, kernel_targets, temperature, logprob_entropy_backend(backend), workspace_bytes
    )
    return logprobs.reshape(batch_shape), entropy.reshape(batch_shape)
