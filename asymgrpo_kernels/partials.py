"""Per-token softmax statistics of a slice of the vocabulary, and how slices combine.

A slice (a forward split of the Triton kernel, or a rank's vocabulary shard) summarises each
scored token's logits s over its columns as four float32 numbers, the *partials*:

    m   = max of s                               (-inf for an empty slice)
    S   = sum exp(s - m)                         (0 for an empty slice)
    Zm  = sum exp(s - m) (s - m)
    s_y = the target's logit if the target lies in the slice, else 0

Slices merge exactly (``merge_partials``): with M = max m, S = sum S_i e^(m_i - M) and
Zm = sum e^(m_i - M) (Zm_i + S_i (m_i - M)); the target logits add, since only one slice holds
the target. ``finish`` turns the merged partials into lse = M + log S, entropy = log S - Zm / S
and log p(target) = s_y - lse, with no subtraction of two numbers the size of the logits.
Both are plain torch, so every rank that merges the same gathered partials gets the same bits.
"""

from __future__ import annotations

import torch

#: The float32 partials kept per token: m, S, Zm, s_y.
PARTIALS = 4


def empty_partials(n_rows: int, device: torch.device) -> torch.Tensor:
    """[4, n] partials of an empty slice: m = -inf, S = Zm = s_y = 0 (the identity of the merge)."""
    partials = torch.zeros(PARTIALS, n_rows, dtype=torch.float32, device=device)
    partials[0] = float("-inf")
    return partials


def merge_partials(partials: torch.Tensor) -> torch.Tensor:
    """[4, slices, n] -> [4, n]: the partials of the union of the slices.

    At least one slice of every token must be non-empty (finite m); empty slices (m = -inf,
    S = 0) contribute nothing.
    """
    m, sum_exp, shifted_sum, target_logit = partials.unbind(0)
    m_max = m.amax(dim=0)
    delta = m - m_max  # <= 0, -inf for an empty slice
    scale = delta.exp()
    moved = torch.where(sum_exp > 0, sum_exp * delta, 0.0)  # keeps 0 * (-inf) out
    total = (sum_exp * scale).sum(dim=0)
    shifted_total = (scale * (shifted_sum + moved)).sum(dim=0)  # sum_v e^(s_v - M) (s_v - M)
    return torch.stack((m_max, total, shifted_total, target_logit.sum(dim=0)))


def finish(partials: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[4, n] partials of the whole vocabulary -> (logprobs, entropy, lse), each float32 [n]."""
    m, total, shifted_total, target_logit = partials.unbind(0)
    log_total = total.log()
    lse = m + log_total
    return target_logit - lse, log_total - shifted_total / total, lse
