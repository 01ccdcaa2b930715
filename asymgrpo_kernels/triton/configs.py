"""Block sizes and autotune sets of the Triton log-prob / entropy kernels, kept in one place.

On CUDA each kernel is autotuned over a small set chosen for H100/H200-class GPUs (tensor-core
tiles of 64-128 tokens x 64-128 vocabulary entries, 64-wide steps over the hidden size,
3-4 pipeline stages). Under ``TRITON_INTERPRET=1`` a single small configuration is used, so
nothing is benchmarked and the CPU tests stay fast; its BLOCK_K of 32 leaves a tail at H = 48.

The autotune keys are the hidden size and the full vocabulary size (plus, added by Triton, the
dtypes of the tensor arguments): the token count is left out on purpose, so batches of varying
length reuse one tuned configuration instead of re-tuning per length.
"""

from __future__ import annotations

import os

import torch
import triton

#: True when kernels run through the Triton interpreter (read once, at import, as Triton does).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _config(block_n: int, block_v: int, block_k: int, warps: int, stages: int, **extra: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_N": block_n, "BLOCK_V": block_v, "BLOCK_K": block_k, **extra}, num_warps=warps, num_stages=stages
    )


if INTERPRET:
    # tl.dot needs every tile dimension >= 16; small tiles keep the numpy emulation quick.
    FORWARD_CONFIGS = [_config(16, 32, 32, 1, 1)]
    BACKWARD_CONFIGS = [_config(16, 32, 32, 1, 1, GROUP=4)]
else:
    FORWARD_CONFIGS = [
        _config(128, 128, 64, 8, 3),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
        _config(64, 64, 64, 4, 4),
    ]
    BACKWARD_CONFIGS = [
        _config(128, 128, 64, 8, 3, GROUP=8),
        _config(128, 64, 64, 4, 3, GROUP=8),
        _config(64, 128, 64, 4, 3, GROUP=8),
        _config(64, 64, 64, 4, 4, GROUP=16),
    ]

FORWARD_KEY = ["H", "V"]
BACKWARD_KEY = ["H", "vocab_total"]

#: Vocabulary spans handed to forward splits and backward chunks are multiples of this, so every
#: BLOCK_V of the configs tiles them exactly.
VOCAB_ALIGN = max(c.kwargs["BLOCK_V"] for c in FORWARD_CONFIGS + BACKWARD_CONFIGS)
assert all(VOCAB_ALIGN % c.kwargs["BLOCK_V"] == 0 for c in FORWARD_CONFIGS + BACKWARD_CONFIGS)

#: Smallest token block of the forward configs: used to count token blocks before tuning.
MIN_FORWARD_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in FORWARD_CONFIGS)

#: Forward programs to aim for per streaming multiprocessor when splitting the vocabulary.
PROGRAMS_PER_SM = 4

#: Program count aimed for under the interpreter (several vocabulary splits even for tiny N,
#: so the CPU tests exercise the cross-split combine).
INTERPRETER_PROGRAMS = 4


def dot_options(dtype: torch.dtype) -> dict[str, object]:
    """Constexpr launch flags for ``tl.dot``: the interpreter upcast, and the float32 precision.

    float32 operands (float32 inputs, or any input under the interpreter's upcast) use exact
    ("ieee") products unless torch itself allows TF32 matmuls on CUDA
    (``torch.backends.cuda.matmul.allow_tf32``), so they match torch's default float32 math.
    bfloat16/float16 operands on CUDA get Triton's default, which only concerns float32.
    """
    exact = INTERPRET or (dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32)
    return {"UPCAST": INTERPRET, "DOT_PRECISION": "ieee" if exact else "tf32"}
