"""asymgrpo_kernels: fused, memory-lean kernels for AsymGRPO-style policy-gradient losses."""

from .logprob_entropy import fused_linear_logprob_entropy

__all__ = [
    "fused_linear_logprob_entropy",
]
