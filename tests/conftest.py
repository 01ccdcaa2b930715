"""Test session set-up: run Triton kernels through the interpreter when no CUDA device exists.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection
time. On a CUDA machine it is left alone (benchmarks/gpu_check.sh runs the suite natively).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
