"""@triton.jit helpers shared by the forward and backward log-prob / entropy kernels.

Conventions: every row/column/hidden index is int64 before it meets a stride, so offsets
beyond 2**31 elements (N * V or N * H past 2**31) stay exact. ``UPCAST`` (a constexpr, set
under the Triton interpreter) converts loaded tiles to float32 before ``tl.dot``: the
interpreter's ``tl.dot`` returns garbage on bfloat16 operands, while on CUDA the tiles stay in
their input dtype and the tensor cores accumulate in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def range_offsets(start, BLOCK: tl.constexpr, limit):
    """int64 indices start .. start + BLOCK - 1 and the mask of those below ``limit``."""
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    return offsets, offsets < limit


@triton.jit
def block_offsets(block_id, BLOCK: tl.constexpr, limit):
    """int64 indices of block ``block_id`` (a program id, int32) and the mask below ``limit``."""
    return range_offsets(block_id.to(tl.int64) * BLOCK, BLOCK, limit)


@triton.jit
def load_tile(ptr, rows, cols, stride_row, stride_col, row_mask, col_mask, UPCAST: tl.constexpr):
    """Tile ptr[rows, cols] (any strides), zero outside the masks; float32 when ``UPCAST``."""
    tile = tl.load(
        ptr + rows[:, None] * stride_row + cols[None, :] * stride_col,
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def dot_operand(tile, like_ptr, UPCAST: tl.constexpr):
    """A float32 tile cast to the dtype ``tl.dot`` takes beside tiles loaded from ``like_ptr``."""
    if UPCAST:
        operand = tile
    else:
        operand = tile.to(like_ptr.dtype.element_ty)
    return operand


@triton.jit
def tempered_logits_tile(
    h_ptr, h_offsets, stride_hk, row_mask,
    w_ptr, stride_wv, stride_wk, cols, col_mask,
    b_ptr, H, inv_temperature,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """s = (h_rows @ w[cols]^T + b[cols]) / T as a float32 [BLOCK_N, BLOCK_V] tile.

    ``h_offsets`` [BLOCK_N] int64 are the element offsets of the hidden rows in their storage
    (any layout). Masked rows and columns read zeros (their logits equal the bias, or 0):
    callers mask them.
    """
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k_start in range(0, H, BLOCK_K):
        ks, k_mask = range_offsets(k_start, BLOCK_K, H)
        h = load_tile(h_ptr, h_offsets, ks, 1, stride_hk, row_mask, k_mask, UPCAST)
        w_t = load_tile(w_ptr, ks, cols, stride_wk, stride_wv, k_mask, col_mask, UPCAST)  # [BLOCK_K, BLOCK_V]
        acc = tl.dot(h, w_t, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temperature
