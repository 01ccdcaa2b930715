"""Materialized, obviously-correct PyTorch: the ground truth for tests and benchmarks.

These functions build the full [tokens x vocab] logits exactly as plain PyTorch user code
would, and let autograd produce the gradients. Cast the inputs to float64 to get a float64
ground truth.
"""

from __future__ import annotations

import torch


def logprob_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(target) and entropy from materialized logits.

    hidden [..., H], weight [V, H], bias [V] or None, targets [...] int.
    Returns (logprobs, entropy) shaped like targets, in float32 (float64 if hidden is float64);
    ignored positions hold 0. Differentiable through autograd.
    """
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    scaled = logits.to(out_dtype) / temperature
    logp_all = torch.log_softmax(scaled, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprobs = logp_all.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=out_dtype, device=hidden.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)
