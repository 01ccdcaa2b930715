"""Backward kernel: recompute each logits tile, form its gradient, scatter it into dh, dW, db.

One program per (token block, vocabulary block) of a vocabulary range [vocab_offset,
vocab_offset + V) (the whole vocabulary, or one chunk of it). Flat grid on axis 0, ordered
GROUP token blocks at a time so that programs running together share weight tiles in L2.
Each program:

1. recomputes s = (h W^T + b) / T for its tile (float32, ``tempered_logits_tile``);
2. forms, with p = exp(s - lse) and E_p[s] = lse - H,
       ds = g_logp * (onehot(y) - p) - g_H * p * (s - E_p[s]),
   taking s - E_p[s] as (s - lse) + H: finite even where p underflows to 0 (the form
   -p (log p + H) would give 0 * (-inf) = NaN there);
3. with dlogits = ds / T, adds its column sums into db[cols], then loops over H in BLOCK_K
   steps and adds dh[positions] += dlogits @ W[cols] and dW[cols] += dlogits^T @ h_rows; all
   three are float32 atomic adds. On CUDA dlogits is rounded to the input dtype for the two
   products (tensor-core operands, float32 accumulation), as a plain bf16 backward would.

Only scored rows reach the kernel (their hidden rows read through element offsets, their
hidden gradients added at their positions); token blocks whose upstream gradients are all
zero (every token clipped, say) skip all work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..lm_head import LMHead
from .configs import BACKWARD_CONFIGS, BACKWARD_KEY, dot_options
from .tiles import block_offsets, dot_operand, load_tile, range_offsets, tempered_logits_tile


@triton.jit
def _grouped_block_ids(pid, n_row_blocks, n_col_blocks, GROUP: tl.constexpr):
    """Flat program id -> (token block, vocabulary block), walking GROUP token blocks at a time."""
    per_group = GROUP * n_col_blocks
    first_row = (pid // per_group) * GROUP
    rows_in_group = tl.minimum(n_row_blocks - first_row, GROUP)
    within = pid % per_group
    return first_row + within % rows_in_group, within // rows_in_group


@triton.autotune(configs=BACKWARD_CONFIGS, key=BACKWARD_KEY, reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"])
@triton.jit
def _backward_kernel(
    h_ptr, h_offsets_ptr, positions_ptr, w_ptr, b_ptr, targets_ptr, lse_ptr, entropy_ptr, g_logp_ptr, g_ent_ptr,
    dh_ptr, dw_ptr, db_ptr,
    N, V, H, vocab_offset, vocab_total,
    stride_hk, stride_wv, stride_wk, stride_dh, stride_dw,
    inv_temperature,
    HAS_BIAS: tl.constexpr, NEED_H: tl.constexpr, NEED_W: tl.constexpr, NEED_B: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    row_block, col_block = _grouped_block_ids(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP)
    rows, row_mask = block_offsets(row_block, BLOCK_N, N)
    cols, col_mask = block_offsets(col_block, BLOCK_V, V)
    g_logp = tl.load(g_logp_ptr + rows, mask=row_mask, other=0.0)
    g_ent = tl.load(g_ent_ptr + rows, mask=row_mask, other=0.0)
    if tl.max(tl.abs(g_logp) + tl.abs(g_ent), axis=0) > 0:
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        entropy = tl.load(entropy_ptr + rows, mask=row_mask, other=0.0)
        target = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
        h_offsets = tl.load(h_offsets_ptr + rows, mask=row_mask, other=0)
        s = tempered_logits_tile(
            h_ptr, h_offsets, stride_hk, row_mask,
            w_ptr, stride_wv, stride_wk, cols, col_mask,
            b_ptr, H, inv_temperature,
            HAS_BIAS, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_K,
        )
        log_p = s - lse[:, None]
        p = tl.exp(log_p)
        onehot = tl.where((cols[None, :] + vocab_offset) == target[:, None], 1.0, 0.0)
        ds = g_logp[:, None] * (onehot - p) - g_ent[:, None] * p * (log_p + entropy[:, None])
        # padding rows may hold exp overflow times a zero gradient: select, never multiply
        ds = tl.where(row_mask[:, None] & col_mask[None, :], ds, 0.0) * inv_temperature
        if NEED_B:
            tl.atomic_add(db_ptr + cols, tl.sum(ds, axis=0), mask=col_mask, sem="relaxed")
        if NEED_H or NEED_W:
            ds_op = dot_operand(ds, h_ptr, UPCAST)
            positions = tl.load(positions_ptr + rows, mask=row_mask, other=0)
            for k_start in range(0, H, BLOCK_K):
                ks, k_mask = range_offsets(k_start, BLOCK_K, H)
                if NEED_H:
                    w = load_tile(w_ptr, cols, ks, stride_wv, stride_wk, col_mask, k_mask, UPCAST)
                    tl.atomic_add(
                        dh_ptr + positions[:, None] * stride_dh + ks[None, :],
                        tl.dot(ds_op, w, input_precision=DOT_PRECISION),
                        mask=row_mask[:, None] & k_mask[None, :], sem="relaxed",
                    )
                if NEED_W:
                    h = load_tile(h_ptr, h_offsets, ks, 1, stride_hk, row_mask, k_mask, UPCAST)
                    tl.atomic_add(
                        dw_ptr + cols[:, None] * stride_dw + ks[None, :],
                        tl.dot(tl.trans(ds_op), h, input_precision=DOT_PRECISION),
                        mask=col_mask[:, None] & k_mask[None, :], sem="relaxed",
                    )


def launch_backward(
    head: LMHead,
    h_offsets: torch.Tensor,
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    vocab: slice,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    """Add the gradient of the vocabulary rows ``vocab`` into float32 accumulators, in place.

    ``h_offsets`` [n] int64 are the scored rows' element offsets in hidden's storage; lse,
    entropy, grad_logprobs, grad_entropy are contiguous float32 [n]. grad_hidden is float32
    [N, H] (rows at the head's flat positions), grad_weight float32 [vocab rows, H], grad_bias
    float32 [vocab rows], each with unit column stride, or None when not wanted. Any of them
    not None must hold zeros the first time a (H, V, dtypes) combination runs: autotuning
    re-zeroes them.
    """
    weight = head.weight[vocab]
    bias = head.bias[vocab] if head.bias is not None else None
    n_rows, vocab_rows = head.n_rows, weight.shape[0]
    placeholder = grad_logprobs.new_empty(0)
    dh = grad_hidden if grad_hidden is not None else placeholder
    dw = grad_weight if grad_weight is not None else placeholder
    db = grad_bias if grad_bias is not None else placeholder
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(vocab_rows, meta["BLOCK_V"]),)  # noqa: E731
    _backward_kernel[grid](
        head.hidden, h_offsets, head.rows, weight, bias if bias is not None else weight, head.targets, lse, entropy,
        grad_logprobs, grad_entropy,
        dh, dw, db,
        n_rows, vocab_rows, head.hidden.shape[-1], vocab.start, head.weight.shape[0],
        head.hidden.stride(-1), weight.stride(0), weight.stride(1),
        dh.stride(0) if grad_hidden is not None else 0, dw.stride(0) if grad_weight is not None else 0,
        1.0 / head.temperature,
        HAS_BIAS=bias is not None, NEED_H=grad_hidden is not None, NEED_W=grad_weight is not None,
        NEED_B=grad_bias is not None, **dot_options(head.hidden.dtype),
    )
