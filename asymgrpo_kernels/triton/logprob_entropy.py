"""Triton backend of ``fused_linear_logprob_entropy``: fused forward and backward, no [N x V] tensor.

Same ``forward``/``backward`` contract as ``asymgrpo_kernels.chunked``. Both passes read
hidden [N, H] and weight [V, H] through their strides (transposed or sliced views are never
copied) and apply the temperature inside the kernels as a runtime float32 scalar.

Extra memory, in bytes, beyond the inputs and the returned tensors (F = workspace_bytes,
A = ``configs.VOCAB_ALIGN``, 128 on CUDA):

* forward: 16 * N * P for the per-split partials (m, S, Zm, s_y), plus at most as much again
  of temporaries while they are merged, where the split count P is at most
  max(1, F // (32 * N)): so at most max(F, 32 * N).
* backward:
  - 4 * N * H when the hidden gradient is wanted and hidden is not float32 (the float32
    accumulator of the hidden gradient; for float32 hidden it is the returned tensor);
  - 4 * Vc * H when the weight gradient is wanted and weight is not float32, with
    Vc = min(V, max(A, F // (4 * H) rounded down to a multiple of A)): the vocabulary is
    then processed in chunks of Vc rows, each accumulated in float32 and cast into the output
    (for float32 weight the output itself accumulates, in one launch over the vocabulary);
  - 4 * V when the bias gradient is wanted and bias is not float32;
  - a few float32 [N] vectors.
"""

from __future__ import annotations

import torch
import triton

from .configs import INTERPRET, INTERPRETER_PROGRAMS, MIN_FORWARD_BLOCK_N, PROGRAMS_PER_SM, VOCAB_ALIGN
from .logprob_entropy_bwd import launch_backward
from .logprob_entropy_fwd import PARTIALS, combine_partials, launch_forward

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


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    workspace_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], bias [V] | None, targets [N] int64 (negative = ignored).

    Returns (logprobs, entropy, lse), each float32 [N]. Ignored rows hold -lse as logprob.
    """
    n_rows = hidden.shape[0]
    if n_rows == 0:
        empty = torch.empty(0, dtype=torch.float32, device=hidden.device)
        return empty, empty.clone(), empty.clone()
    span = forward_split_span(n_rows, weight.shape[0], workspace_bytes, hidden.device)
    bias = bias.contiguous() if bias is not None else None
    partials = launch_forward(hidden, weight, bias, targets.contiguous(), temperature, span)
    return combine_partials(partials)


def backward(
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    needs_grad: tuple[bool, bool, bool],
    workspace_bytes: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (hidden, weight, bias) given float32 [N] upstream gradients.

    The upstream gradients must already be zero on ignored rows. Returns contiguous tensors
    in the dtype of the matching input, or None where ``needs_grad`` is False.
    """
    need_hidden, need_weight, need_bias = needs_grad
    n_rows, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros(n_rows, hidden_size, **f32) if need_hidden else None
    grad_bias = torch.zeros(vocab_size, **f32) if need_bias else None
    grad_weight = None
    chunk = vocab_size
    weight_acc = None
    if need_weight and weight.dtype == torch.float32:
        grad_weight = torch.zeros(vocab_size, hidden_size, **f32)
    elif need_weight:
        grad_weight = torch.empty(vocab_size, hidden_size, dtype=weight.dtype, device=weight.device)
        chunk = weight_chunk_rows(vocab_size, hidden_size, workspace_bytes)
        weight_acc = torch.zeros(chunk, hidden_size, **f32)

    if n_rows > 0:
        bias = bias.contiguous() if bias is not None else None
        per_row = [t.contiguous() for t in (grad_logprobs, grad_entropy, targets, lse, entropy)]
        for start in range(0, vocab_size, chunk):
            stop = min(start + chunk, vocab_size)
            if weight_acc is not None and start > 0:
                weight_acc.zero_()
            chunk_acc = weight_acc[: stop - start] if weight_acc is not None else None
            launch_backward(
                per_row[0], per_row[1], hidden, weight[start:stop],
                bias[start:stop] if bias is not None else None, per_row[2], per_row[3], per_row[4],
                temperature, start, vocab_size,
                grad_hidden,
                chunk_acc if chunk_acc is not None else grad_weight,
                grad_bias[start:stop] if grad_bias is not None else None,
            )
            if chunk_acc is not None:
                grad_weight[start:stop].copy_(chunk_acc)
    elif weight_acc is not None:
        grad_weight.zero_()

    if grad_hidden is not None:
        grad_hidden = grad_hidden.to(hidden.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias
