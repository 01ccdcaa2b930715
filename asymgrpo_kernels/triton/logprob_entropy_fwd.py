"""Forward kernel: per-token log-sum-exp, entropy and target log-prob in one pass over the vocabulary.

Programs tile (token block, vocabulary split): grid axis 0 counts token blocks (unbounded),
axis 1 the splits (at most 65,535). Each program streams its split's vocabulary blocks,
computing a tempered-logits tile s with ``tl.dot`` over H (float32 accumulation) and never
storing it. Per row it keeps

    m  = running max of s                       (identity -inf)
    S  = sum exp(s - m)
    Zm = sum exp(s - m) * (s - m)               (rescaled when m grows)
    s_y = the target's logit, when the target falls in this split (else 0)

Zm is taken relative to m rather than Z = sum exp(s - m) * s: then the entropy comes out as
log S - Zm / S without subtracting two numbers of the size of the logits (lse - E_p[s]),
which loses everything in float32 when |s| ~ 1e3. The [4, splits, N] partials are merged
in torch (O(N * splits)) by ``partials.merge_partials``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..lm_head import LMHead
from ..partials import PARTIALS
from .configs import FORWARD_CONFIGS, FORWARD_KEY, dot_options
from .tiles import block_offsets, range_offsets, tempered_logits_tile

@triton.autotune(configs=FORWARD_CONFIGS, key=FORWARD_KEY)
@triton.jit
def _forward_kernel(
    h_ptr, h_offsets_ptr, w_ptr, b_ptr, targets_ptr, partials_ptr,
    N, V, H, split_span,
    stride_hk, stride_wv, stride_wk,
    inv_temperature,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_mask = block_offsets(tl.program_id(0), BLOCK_N, N)
    split = tl.program_id(1).to(tl.int64)
    n_splits = tl.num_programs(1)
    v_begin = split * split_span
    v_end = tl.minimum(v_begin + split_span, V)
    target = tl.load(targets_ptr + rows, mask=row_mask, other=-1)
    h_offsets = tl.load(h_offsets_ptr + rows, mask=row_mask, other=0)

    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK_N,), dtype=tl.float32)
    shifted_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v_start in range(v_begin, v_end, BLOCK_V):
        cols, col_mask = range_offsets(v_start, BLOCK_V, v_end)
        s = tempered_logits_tile(
            h_ptr, h_offsets, stride_hk, row_mask,
            w_ptr, stride_wv, stride_wk, cols, col_mask,
            b_ptr, H, inv_temperature,
            HAS_BIAS, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_K,
        )
        s = tl.where(col_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)  # 0 on the first tile, where m = -inf
        # Zm relative to m_new: sum e_old (s - m_new) = Zm_old + S_old (m_old - m_new). The
        # where()s keep 0 * (-inf) out: m_old = -inf on the first tile, s = -inf off the vocabulary.
        moved = sum_exp * tl.where(sum_exp > 0, m - m_new, 0.0)
        shifted = s - m_new[:, None]
        e = tl.exp(shifted)  # 0 on masked columns
        shifted_sum = alpha * (shifted_sum + moved) + tl.sum(e * tl.where(col_mask[None, :], shifted, 0.0), axis=1)
        sum_exp = alpha * sum_exp + tl.sum(e, axis=1)
        m = m_new
        target_logit += tl.sum(tl.where((cols[None, :] == target[:, None]) & col_mask[None, :], s, 0.0), axis=1)

    out = partials_ptr + split * N + rows
    plane = n_splits.to(tl.int64) * N
    tl.store(out, m, mask=row_mask)
    tl.store(out + plane, sum_exp, mask=row_mask)
    tl.store(out + 2 * plane, shifted_sum, mask=row_mask)
    tl.store(out + 3 * plane, target_logit, mask=row_mask)


def launch_forward(head: LMHead, h_offsets: torch.Tensor, split_span: int) -> torch.Tensor:
    """Run the kernel over the head's n scored rows; return float32 partials [4, splits, n].

    hidden and weight are read through their strides (no copies); ``h_offsets`` [n] int64 are
    the scored rows' element offsets in hidden's storage (``LMHead.row_offsets``); bias is
    contiguous or None. ``split_span`` (a multiple of ``configs.VOCAB_ALIGN``) is the
    vocabulary width of one split.
    """
    n_rows, (vocab_size, hidden_size) = head.n_rows, head.weight.shape
    n_splits = triton.cdiv(vocab_size, split_span)
    partials = torch.empty(PARTIALS, n_splits, n_rows, dtype=torch.float32, device=head.weight.device)
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]), n_splits)  # noqa: E731
    _forward_kernel[grid](
        head.hidden, h_offsets, head.weight, head.bias if head.bias is not None else head.weight, head.targets, partials,
        n_rows, vocab_size, hidden_size, split_span,
        head.hidden.stride(-1), head.weight.stride(0), head.weight.stride(1),
        1.0 / head.temperature,
        HAS_BIAS=head.bias is not None, **dot_options(head.hidden.dtype),
    )
    return partials
