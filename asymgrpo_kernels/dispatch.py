"""The one place that picks a backend: triton, torch (chunked) or reference (materialized)."""

from __future__ import annotations

import os
from types import ModuleType

import torch


def triton_available() -> bool:
    """True when Triton is importable and can run here (a CUDA device, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend for ``device``; check that "triton" can run there."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "backend='triton' needs the triton package and a CUDA device "
                "(or TRITON_INTERPRET=1 set before triton is imported, to run on the CPU); "
                "use backend='torch' instead"
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend='triton' runs on CUDA tensors (or under TRITON_INTERPRET=1); got tensors on {device}")
    return backend


def logprob_entropy_backend(name: str) -> ModuleType:
    """The module implementing ``forward``/``backward`` for a concrete backend name."""
    if name == "triton":
        from .triton import logprob_entropy as module
    else:
        from . import chunked as module
    return module
