"""The kernel switch: verl's fused log-prob / entropy path computed by ``fused_linear_logprob_entropy``.

With ``actor_rollout_ref.model.use_fused_kernels=True`` verl's model forward takes the LM head's
input and weight to one of two functions, looked up in their modules at call time:

    fused_kernel_options.impl_backend=triton  verl.utils.kernel.linear_cross_entropy.linear_cross_entropy
    impl_backend=torch (or liger)             verl.utils.experimental.torch_functional.FusedLinearForPPO

``use_asymgrpo_fused_kernels()`` replaces both module attributes by ``linear_cross_entropy`` and
``FusedLinearForPPO`` below, which return what verl's do (shapes and dtypes) from our kernel;
``use_asymgrpo_fused_kernels(False)`` puts verl's back. Setting the environment variable
``ASYMGRPO_VERL_FUSED_KERNELS=1`` does the same at plugin import, so every process that imports
verl (the Ray workers too) switches. A vocabulary-parallel call (a ``dist_process_group``, as Megatron's tensor
parallelism makes: each rank its rows of the weight, the same hidden states and labels) runs
the kernels' vocabulary-parallel path.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

from asymgrpo_kernels import fused_linear_logprob_entropy

FUSED_KERNELS_ENV = "ASYMGRPO_VERL_FUSED_KERNELS"
_FUSED_LINEAR_BACKENDS = ("torch", "liger")


def _temperature(temperature: float) -> float:
    """The temperature as a Python float (verl passes one scalar temperature to its fused kernels)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python float, got {type(temperature).__name__}")
    return float(temperature)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "none",
    dist_process_group: torch.distributed.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's Triton ``linear_cross_entropy`` signature, computed by ``fused_linear_logprob_entropy``.

    Args:
        hidden: [..., H] float32 / bfloat16 / float16 hidden states.
        weight: [V, H] LM-head weight, same dtype.
        labels: integer target ids, ``hidden.shape[:-1].numel()`` of them (any shape).
        temperature: a Python number > 0.
        reduction: must be "none" (verl's fused forward uses nothing else).
        dist_process_group: a vocabulary-parallel LM head: ``weight`` is this rank's contiguous
            rows [V_r, H], shards in rank order (``fused_linear_logprob_entropy``'s
            ``process_group``); every rank gets the same log-probs and entropy.

    Returns:
        (logprobs, entropy): flattened [N] float32 tensors, N = number of labels, as verl's
        function returns them; differentiable with respect to hidden and weight.

    Raises:
        ValueError / TypeError: a bad reduction, temperature or labels shape (named).
    """
    if reduction != "none":
        raise ValueError(f"reduction must be 'none' (per-token log-probs and entropy), got {reduction!r}")
    if labels.numel() != hidden.shape[:-1].numel():
        raise ValueError(
            f"labels must hold one target per row of hidden {list(hidden.shape)}, got {list(labels.shape)}"
        )
    logprobs, entropy = fused_linear_logprob_entropy(
        hidden, weight, labels.reshape(hidden.shape[:-1]), temperature=_temperature(temperature),
        process_group=dist_process_group,
    )
    return logprobs.reshape(-1), entropy.reshape(-1)


class FusedLinearForPPO(torch.nn.Module):
    """verl's ``FusedLinearForPPO`` interface, computed by ``fused_linear_logprob_entropy``.

    Args:
        chunk_size: accepted for verl's signature; our kernel bounds its scratch memory by bytes,
            not by a row count, so the value does not change the result.
        impl_backend: "torch" or "liger", as verl accepts (both run our kernel).
    """

    def __init__(self, chunk_size: int = 512, impl_backend: str = "torch") -> None:
        super().__init__()
        if impl_backend not in _FUSED_LINEAR_BACKENDS:
            choices = ", ".join(map(repr, _FUSED_LINEAR_BACKENDS))
            raise ValueError(f"impl_backend must be one of {choices}; got {impl_backend!r}")
        self.chunk_size = chunk_size
        self.impl_backend = impl_backend

    def forward(
        self,
        hidden_states: torch.Tensor,
        vocab_weights: torch.Tensor,
        input_ids: torch.Tensor,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropy of ``input_ids`` under softmax(hidden_states @ vocab_weights.T / temperature).

        Args:
            hidden_states: [..., H] (verl: [N, H] or [B, T, H]).
            vocab_weights: [V, H], same dtype.
            input_ids: integer ids shaped ``hidden_states.shape[:-1]``.
            temperature: a Python number > 0.

        Returns:
            (log_probs, entropy) shaped like ``input_ids``: log_probs float32, entropy in
            ``hidden_states.dtype``, as verl's returns them.
        """
        log_probs, entropy = fused_linear_logprob_entropy(
            hidden_states, vocab_weights, input_ids, temperature=_temperature(temperature)
        )
        return log_probs, entropy.to(hidden_states.dtype)


#: (module, attribute) -> our replacement.
_TARGETS = {
    ("verl.utils.kernel.linear_cross_entropy", "linear_cross_entropy"): linear_cross_entropy,
    ("verl.utils.experimental.torch_functional", "FusedLinearForPPO"): FusedLinearForPPO,
}
#: verl's originals while ours are in place (empty when verl's are).
_ORIGINALS: dict[tuple[str, str], object] = {}


def use_asymgrpo_fused_kernels(enable: bool = True) -> None:
    """Route verl's fused log-prob / entropy functions to ours (``enable=False``: back to verl's).

    Idempotent in both directions; affects this process only (set ``ASYMGRPO_VERL_FUSED_KERNELS=1``
    for all of a run's processes).
    """
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
    if enable == asymgrpo_fused_kernels_enabled():
        return
    for (module_name, attribute), ours in _TARGETS.items():
        module = importlib.import_module(module_name)
        if enable:
            _ORIGINALS[(module_name, attribute)] = getattr(module, attribute)
            setattr(module, attribute, ours)
        else:
            setattr(module, attribute, _ORIGINALS.pop((module_name, attribute)))


def asymgrpo_fused_kernels_enabled() -> bool:
    """Whether verl's fused log-prob / entropy functions are ours now."""
    return bool(_ORIGINALS)


def switch_from_environment() -> None:
    """``use_asymgrpo_fused_kernels()`` when ``ASYMGRPO_VERL_FUSED_KERNELS`` is "1".

    "0" or unset leaves verl's functions; any other value warns (RuntimeWarning) and leaves them,
    since verl would hide an import error of this plugin.
    """
    value = os.environ.get(FUSED_KERNELS_ENV, "0")
    if value == "1":
        use_asymgrpo_fused_kernels()
    elif value != "0":
        warnings.warn(
            f"{FUSED_KERNELS_ENV}={value!r} is neither '1' nor '0'; verl's fused kernels are left in place",
            RuntimeWarning,
            stacklevel=2,
        )
