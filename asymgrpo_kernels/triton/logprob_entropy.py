"""Triton backend of ``fused_linear_logprob_entropy``: fused forward and backward, no [N x V] tensor.

Same ``forward``/``backward`` contract as ``asymgrpo_kernels.chunked``. Both passes read only
the n scored rows of hidden [..., H] (through their element offsets) and weight [V, H] through
its strides (transposed or sliced views are never copied), and apply the temperature inside
the kernels as a runtime float32 scalar.

Extra memory, in bytes, beyond the inputs and the returned tensors (F = workspace_bytes,
A = ``configs.VOCAB_ALIGN``, 128 on CUDA):

* forward: 16 * n * P for the per-split partials (m, S, Zm, s_y), plus at most as much again
  of temporaries while they are merged, where the split count P is at most
  max(1, F // (32 * n)): so at most max(F, 32 * n).
* backward:
  - 4 * N * H when the hidden gradient is wanted and hidden is not float32 (the float32
    accumulator of the hidden gradient; for float32 hidden it is the returned tensor);
  - 4 * Vc * H when the weight gradient is wanted and weight is not float32, with
    Vc = min(V, max(A, F // (4 * H) rounded down to a multiple of A)): the vocabulary is
    then processed in chunks of Vc rows, each accumulated in float32 and cast into the output
    (for float32 weight the output itself accumulates, in one launch over the vocabulary);
  - 4 * V when the bias gradient is wanted and bias is not float32;
  - a few [n] vectors (the row offsets, float32 upstream gradients).
"""

from __future__ import annotations

import torch
import triton

from ..lm_head import LMHead
from ..partials import PARTIALS, empty_partials, finish, merge_partials
from .configs import INTERPRET, INTERPRETER_PROGRAMS, MIN_FORWARD_BLOCK_N, PROGRAMS_PER_SM, VOCAB_ALIGN
from .logprob_entropy_bwd import launch_backward
from .logprob_entropy_fwd import launch_forward

_MAX_SPLITS = 65_535  # grid axis 1 limit
_FORWARD_PLANES_PER_SPLIT = 2 * PARTIALS  # partials + the temporaries of their merge, float32 [N] each


def forward_split_span(n_rows: int, vocab_size: int, workspace_bytes: int, device: torch.device) -> int:
    """Vocabulary width of one forward split (a multiple of VOCAB_ALIGN; every split non-empty).

    Aims for enough (token block, split) programs to fill the GPU, within the workspace.
    """
    if INTERPRET or device.type != "cuda":
        programs = INTERPRETER_PROGRAMS
    else:
        programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    splits = triton.cdiv(programs, triton.cdiv(n_rows, MIN_FORWARD_BLOCK_N))
    by_workspace = max(1, workspace_bytes // (_FORWARD_PLANES_PER_SPLIT * 4 * n_rows))
    splits = max(1, min(splits, by_workspace, triton.cdiv(vocab_size, VOCAB_ALIGN), _MAX_SPLITS))
    return triton.cdiv(triton.cdiv(vocab_size, splits), VOCAB_ALIGN) * VOCAB_ALIGN


def weight_chunk_rows(vocab_size: int, hidden_size: int, workspace_bytes: int) -> int:
    """Vocabulary rows whose float32 [rows, H] weight-gradient accumulator fits the workspace."""
    rows = workspace_bytes // (4 * hidden_size) // VOCAB_ALIGN * VOCAB_ALIGN
    return min(vocab_size, max(VOCAB_ALIGN, rows))


def partials(head: LMHead) -> torch.Tensor:
    """[4, n] float32 partials (``asymgrpo_kernels.partials``) of the head's vocabulary rows.

    Targets outside [0, V) (a vocabulary shard that does not hold them) contribute s_y = 0.
    """
    if head.n_rows == 0:
        return empty_partials(0, head.weight.device)
    span = forward_split_span(head.n_rows, head.weight.shape[0], head.workspace_bytes, head.weight.device)
    head = head._replace(bias=head.bias.contiguous() if head.bias is not None else None)
    return merge_partials(launch_forward(head, head.row_offsets(), span))


def forward(head: LMHead) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, lse) of the scored rows, each float32 [n]."""
    return finish(partials(head))


def backward(
    head: LMHead,
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    needs_grad: tuple[bool, bool, bool],
    shard: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (hidden, weight, bias) given float32 [n] upstream gradients of the scored rows.

    Returns contiguous tensors in the dtype of the matching input (the hidden gradient shaped
    like hidden, zero at positions not scored), or None where ``needs_grad`` is False. With
    ``shard`` (the weight is one vocabulary shard) the hidden gradient is instead the float32
    [n, H] rows of the scored positions, in the order of ``head.rows`` (the partial sum a
    vocabulary-parallel backward all-reduces). Targets outside [0, V) never get a one-hot term.
    """
    need_hidden, need_weight, need_bias = needs_grad
    vocab_size, hidden_size = head.weight.shape
    f32 = dict(dtype=torch.float32, device=head.weight.device)
    hidden_grad_rows = head.n_rows if shard else head.n_positions
    grad_hidden = torch.zeros(hidden_grad_rows, hidden_size, **f32) if need_hidden else None
    grad_bias = torch.zeros(vocab_size, **f32) if need_bias else None
    grad_weight = None
    chunk = vocab_size
    weight_acc = None
    if need_weight and head.weight.dtype == torch.float32:
        grad_weight = torch.zeros(vocab_size, hidden_size, **f32)
    elif need_weight:
        grad_weight = torch.empty(vocab_size, hidden_size, dtype=head.weight.dtype, device=head.weight.device)
        chunk = weight_chunk_rows(vocab_size, hidden_size, head.workspace_bytes)
        weight_acc = torch.zeros(chunk, hidden_size, **f32)

    if head.n_rows > 0:
        head = head._replace(bias=head.bias.contiguous() if head.bias is not None else None)
        h_offsets = head.row_offsets()
        if shard:  # the kernel adds row i's gradient at position i of the [n, H] buffer
            head = head._replace(rows=torch.arange(head.n_rows, device=head.rows.device))
        per_row = [t.contiguous() for t in (grad_logprobs, grad_entropy, lse, entropy)]
        for start in range(0, vocab_size, chunk):
            vocab = slice(start, min(start + chunk, vocab_size))
            if weight_acc is not None and start > 0:
                weight_acc.zero_()
            chunk_acc = weight_acc[: vocab.stop - start] if weight_acc is not None else None
            launch_backward(
                head, h_offsets, *per_row, vocab, grad_hidden,
                chunk_acc if chunk_acc is not None else grad_weight,
                grad_bias[vocab] if grad_bias is not None else None,
            )
            if chunk_acc is not None:
                grad_weight[vocab].copy_(chunk_acc)
    elif weight_acc is not None:
        grad_weight.zero_()

    if grad_hidden is not None and not shard:
        grad_hidden = grad_hidden.to(head.hidden.dtype).view(head.hidden.shape)
    if grad_bias is not None:
        grad_bias = grad_bias.to(head.weight.dtype)
    return grad_hidden, grad_weight, grad_bias
