"""Segmented group normalization + asymmetric modulation: one launch, one program per group.

The launcher sorts the batch by group (``order`` [B] int64: row indices grouped together) and
computes the segment bounds (``offsets`` [K + 1] int64). Each program walks its segment in
tiles of BLOCK rows three times (sum / count / min / max, squared deviations, write), so groups
of any size work; statistics are float64 and the power float32, as in the torch path
(``asymgrpo_kernels.advantages``). NaN rewards (only under ``nan_rewards="exclude"``) count
nowhere and get 0.
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
def _load_group_tile(rewards_ptr, order_ptr, idx, stop):
    """Rewards of one tile of a segment in float64, and which of them count (in range, not NaN)."""
    in_range = idx < stop
    rows = tl.load(order_ptr + idx, mask=in_range, other=0)
    r = tl.load(rewards_ptr + rows, mask=in_range, other=0.0).to(tl.float64)
    return rows, r, in_range & (r == r)


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
    count = tl.zeros([BLOCK], dtype=tl.float64)
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float64)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float64)
    for tile in range(start, stop, BLOCK):
        rows, r, scored = _load_group_tile(rewards_ptr, order_ptr, tile + cols, stop)
        total += tl.where(scored, r, 0.0)
        count += tl.where(scored, 1.0, 0.0)
        lo = tl.minimum(lo, tl.where(scored, r, float("inf")))
        hi = tl.maximum(hi, tl.where(scored, r, float("-inf")))
    n = tl.sum(count, axis=0)
    mean = tl.sum(total, axis=0) / tl.maximum(n, 1.0)
    silent = (n <= 1.0) | (tl.min(lo, axis=0) == tl.max(hi, axis=0))

    denom = n * 0.0 + 1.0
    if STD:
        ssq = tl.zeros([BLOCK], dtype=tl.float64)
        for tile in range(start, stop, BLOCK):
            rows, r, scored = _load_group_tile(rewards_ptr, order_ptr, tile + cols, stop)
            dev = tl.where(scored, r - mean, 0.0)
            ssq += dev * dev
        ssq_total = tl.sum(ssq, axis=0)
        if UNBIASED:
            denom = tl.sqrt(ssq_total / tl.maximum(n - 1.0, 1.0)) + eps
        else:
            denom = tl.maximum(tl.sqrt(ssq_total / tl.maximum(n, 1.0)), eps)
        denom = tl.where(silent, 1.0, denom)

    for tile in range(start, stop, BLOCK):
        idx = tile + cols
        rows, r, scored = _load_group_tile(rewards_ptr, order_ptr, idx, stop)
        z = tl.where(silent, 0.0, tl.where(scored, (r - mean) / denom, 0.0))
        tl.store(out_ptr + rows, _modulate(z, beta_pos, beta_neg), mask=idx < stop)


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
        STD=options.normalize == "std", UNBIASED=options.std == "unbiased", BLOCK=block,
    )
    return out
