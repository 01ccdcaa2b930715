"""The one place that picks a backend: ``get_backend`` returns the object every public function uses.

A backend provides the operations of the package:

* ``logprob_entropy(head, shard=None)``: differentiable float32 (log-probs, entropies) of an
  ``LMHead``'s scored rows; with a ``vocab_parallel.VocabShard``, the head's weight is this
  rank's vocabulary shard and the shards are combined over its process group;
* ``token_terms``: the per-token loss and its derivatives (``token_terms.token_terms``'s contract);
* ``group_advantages(rewards, segments, options)``: advantages from rewards sorted into groups;
* ``single_pass_loss``: whether the fused loss forms its gradients in the forward pass.

    backend    log-probs / entropy            per-token loss        advantages       fused loss
    torch      chunked.py (any device)        torch                 torch            one pass
    triton     triton/ fused kernels          Triton (float32 math)  Triton launch    two passes
    reference  materialized [n x V] logits    torch                 torch            two passes

"auto" is triton on CUDA (when Triton is installed) and torch elsewhere.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import chunked
from .functions import LinearLogprobEntropy, VocabParallelLogprobEntropy
from .lm_head import LMHead
from .options import BACKENDS, AdvantageOptions, LossOptions
from .token_terms import TokenInputs, TokenTerms, token_terms
from .vocab_parallel import VocabShard


def triton_installed() -> bool:
    """True when the triton package can be found (it is optional)."""
    return importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when Triton is installed and can run here (a CUDA device, or the interpreter)."""
    return triton_installed() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


class TorchBackend:
    """Chunked pure PyTorch: runs on any device."""

    name = "torch"
    single_pass_loss = True
    kernels = chunked

    def logprob_entropy(self, head: LMHead, shard: VocabShard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        function = LinearLogprobEntropy if shard is None else VocabParallelLogprobEntropy
        extra = () if shard is None else (shard,)
        return function.apply(
            head.hidden, head.weight, head.bias, head.rows, head.targets, head.temperature, self.kernels,
            head.workspace_bytes, *extra,
        )

    def token_terms(self, inputs: TokenInputs, options: LossOptions) -> TokenTerms:
        return token_terms(inputs, options)

    def group_advantages(self, rewards: torch.Tensor, segments, options: AdvantageOptions) -> torch.Tensor:
        from .advantages import group_advantages_torch

        return group_advantages_torch(rewards, segments, options)


class ReferenceBackend(TorchBackend):
    """Materialized logits and autograd: the obviously-correct path, for checks."""

    name = "reference"
    single_pass_loss = False

    def logprob_entropy(self, head: LMHead, shard: VocabShard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from .reference import logprob_entropy_reference

        hidden = head.gather(head.rows)
        return logprob_entropy_reference(hidden, head.weight, head.targets, head.bias, head.temperature)


class TritonBackend(TorchBackend):
    """Fused Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1)."""

    name = "triton"
    single_pass_loss = False

    @property
    def kernels(self):
        from .triton import logprob_entropy

        return logprob_entropy

    def token_terms(self, inputs: TokenInputs, options: LossOptions) -> TokenTerms:
        if inputs.logprobs.dtype != torch.float32:  # the kernel's math is float32; float64 checks stay in torch
            return token_terms(inputs, options)
        from .triton.policy_loss import token_terms_triton

        return token_terms_triton(inputs, options)

    def group_advantages(self, rewards: torch.Tensor, segments, options: AdvantageOptions) -> torch.Tensor:
        from .triton.advantages import group_advantages_triton

        return group_advantages_triton(rewards, segments, options)


_BACKENDS = {backend.name: backend for backend in (TorchBackend(), TritonBackend(), ReferenceBackend())}


def get_backend(name: str, device: torch.device) -> TorchBackend:
    """The backend object for ``name`` ("auto", "triton", "torch" or "reference") on ``device``.

    Raises ValueError naming ``backend`` when the name is unknown, or when Triton cannot run on
    ``device`` (no triton package, or tensors off CUDA without TRITON_INTERPRET=1).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    if name == "auto":
        name = "triton" if device.type == "cuda" and triton_installed() else "torch"
    elif name == "triton":
        if not triton_available():
            raise ValueError(
                "backend='triton' needs the triton package and a CUDA device "
                "(or TRITON_INTERPRET=1 set before triton is imported, to run on the CPU); "
                "use backend='torch' instead"
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend='triton' runs on CUDA tensors (or under TRITON_INTERPRET=1); got tensors on {device}")
    return _BACKENDS[name]
