"""Segmented group normalization + asymmetric modulation: one launch, one program per group.

The launcher sorts the batch by group (``order`` [B] int64: row indices grouped together) and
computes the segment bounds (``offsets`` [K + 1] int64). Each program walks its segment in
tiles of BLOCK rows three times (sum / min / max, squared deviations, write), so groups of
any size work; statistics are float64 and the power float32, as in the torch path
(``asymgrpo_kernels.advantages``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..advantages import Segments
from ..options import AdvantageOptions

MAX_BLOCK = 1024


@triton.jit
def _modulate(z, beta_pos, beta_neg):
    """sign(z) * |z| ** (2 beta_sign(z)) in float32, 0 where z == 0."""
    z = z.to(tl.float32)
    exponent = tl.where(z > 0, 2.0 * beta_pos, 2.0 * beta_neg)
    magnitude = tl.abs(z)
    powered = tl.exp2(exponent * tl.log2(tl.where(z == 0, 1.0, magnitude)))
    powered = tl.where(exponent == 1.0, magnitude, powered)
    return tl.where(z == 0, 0.0, tl.where(z > 0, powered, -powered))


@triton.jit
def _group_advantages_kernel(
    rewards_ptr, order_ptr, offsets_ptr, out_ptr,
    beta_pos, beta_neg, eps,
    STD: tl.constexpr, UNBIASED: tl.constexpr, BLOCK: tl.constexpr,
):
    group = tl.program_id(0)
    start = tl.load(offsets_ptr + group)
    stop = tl.load(offsets_ptr + group + 1)
    cols = tl.arange(0, BLOCK)

    total = tl.zeros([BLOCK], dtype=tl.float64)
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float64)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float64)
    for tile in range(start, stop, BLOCK):
        idx = tile + cols
        valid = idx < stop
        rows = tl.load(order_ptr + idx, mask=valid, other=0)
        r = tl.load(rewards_ptr + rows, mask=valid, other=0.0).to(tl.float64)
        total += tl.where(valid, r, 0.0)
        lo = tl.minimum(lo, tl.where(valid, r, float("inf")))
        hi = tl.maximum(hi, tl.where(valid, r, float("-inf")))
    n = (stop - start).to(tl.float64)
    mean = tl.sum(total, axis=0) / n
    silent = (stop - start == 1) | (tl.min(lo, axis=0) == tl.max(hi, axis=0))

    denom = n * 0.0 + 1.0
    if STD:
        ssq = tl.zeros([BLOCK], dtype=tl.float64)
        for tile in range(start, stop, BLOCK):
            idx = tile + cols
            valid = idx < stop
            rows = tl.load(order_ptr + idx, mask=valid, other=0)
            r = tl.load(rewards_ptr + rows, mask=valid, other=0.0).to(tl.float64)
            dev = tl.where(valid, r - mean, 0.0)
            ssq += dev * dev
        ssq_total = tl.sum(ssq, axis=0)
        if UNBIASED:
            denom = tl.sqrt(ssq_total / tl.maximum(n - 1.0, 1.0)) + eps
        else:
            denom = tl.maximum(tl.sqrt(ssq_total / n), eps)
        denom = tl.where(silent, 1.0, denom)

    for tile in range(start, stop, BLOCK):
        idx = tile + cols
        valid = idx < stop
        rows = tl.load(order_ptr + idx, mask=valid, other=0)
        r = tl.load(rewards_ptr + rows, mask=valid, other=0.0).to(tl.float64)
        z = tl.where(silent, 0.0, (r - mean) / denom)
        tl.store(out_ptr + rows, _modulate(z, beta_pos, beta_neg), mask=valid)


def group_advantages_triton(rewards: torch.Tensor, segments: Segments, options: AdvantageOptions) -> torch.Tensor:
    """rewards [B] float and their groups -> float32 [B] advantages.

    Arguments are validated by ``asymgrpo_kernels.group_advantages``; this only launches.
    """
    order = torch.argsort(segments.inverse, stable=True)
    offsets = torch.zeros(segments.counts.numel() + 1, dtype=torch.int64, device=rewards.device)
    torch.cumsum(segments.counts, 0, out=offsets[1:])
    out = torch.empty(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    block = min(MAX_BLOCK, triton.next_power_of_2(max(segments.largest, 16)))
    _group_advantages_kernel[(segments.counts.numel(),)](
        rewards.contiguous(), order, offsets, out,
        options.beta_pos, options.beta_neg, options.eps,
        STD=options.normalize == "std", UNBIASED=options.unbiased_std, BLOCK=block,
    )
    return out
