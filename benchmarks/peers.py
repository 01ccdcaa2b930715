"""Implementations under benchmark: ours, the materialized reference, the matmul floor, and peers.

Each adapter computes one *task* from the same ``cases.Inputs``:

* ``logprob_entropy``: (log p(target), entropy) per token; objective sum(g1 logp + g2 H).
* ``logprob``: log p(target) only (cut_cross_entropy has no entropy); objective sum(g1 logp).
* ``asymgrpo_loss``: the AsymGRPO loss with clip-higher, k3 KL and an entropy bonus.
* ``grpo_loss``: the loss Liger implements: clip 0.2 / 0.28, k3 KL (coef 0.04) to given
  reference log-probs, given old log-probs, token-mean ("dapo") aggregation, no entropy term.
* ``floor``: the LM head alone as plain matmuls (logits = h W^T; dh = g W; dW = g^T h).

"fwd" runs the forward under torch.no_grad() (how old / reference log-probs are computed);
"fwd+bwd" runs the forward with autograd and returns d objective / d (hidden, weight).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .cases import Inputs

GRPO_LOSS_CONFIG = {"clip_low": 0.2, "clip_high": 0.28, "kl_coef": 0.04}
ASYMGRPO_LOSS_CONFIG = {**GRPO_LOSS_CONFIG, "kl_estimator": "k3", "entropy_coef": 0.01, "loss_agg": "token-mean"}

TASK_DESCRIPTIONS = {
    "logprob_entropy": "log p(target) and entropy per token",
    "logprob": "log p(target) per token (no entropy)",
    "asymgrpo_loss": "AsymGRPO loss: clip 0.2/0.28, k3 KL 0.04, entropy bonus 0.01, token-mean",
    "grpo_loss": "GRPO loss as Liger defines it: clip 0.2/0.28, k3 KL 0.04, token-mean (dapo), no entropy",
    "floor": "LM head as three plain matmuls (the floor)",
}


def objective(task: str, outputs: tuple[torch.Tensor, ...], inputs: Inputs) -> torch.Tensor:
    """The scalar whose gradient a forward + backward computes, for ``task``'s outputs."""
    if task == "logprob_entropy":
        logp, entropy = outputs
        return (logp * inputs.g_logp).sum() + (entropy * inputs.g_entropy).sum()
    if task == "logprob":
        return (outputs[0] * inputs.g_logp).sum()
    return outputs[0]


@dataclass
class Adapter:
    """One implementation of one task.

    ``forward(inputs, state)`` returns the task's outputs as a tuple of tensors; ``prepare``
    builds anything the call needs beyond the shared inputs (it is not timed and counts as
    input memory). ``warmup`` marks compiled implementations whose first call compiles.
    ``peer`` marks code this project does not own (another library, or torch.compile): an
    exception raised inside that code is the peer's result, recorded with its error, not a
    failure of the benchmark run (``harness.run_case``).
    """

    name: str
    task: str
    label: str
    forward: Callable[[Inputs, dict], tuple[torch.Tensor, ...]]
    needs: Callable[[torch.device], str | None] = lambda device: None
    prepare: Callable[[Inputs], dict] = lambda inputs: {}
    warmup: bool = False
    entropy: str = "yes"
    notes: str = ""
    backend: str | None = None
    peer: bool = False

    def unavailable(self, device: torch.device) -> str | None:
        """None when the adapter can run on ``device``, else the reason it cannot."""
        return self.needs(device)

    def call(self, inputs: Inputs, state: dict, mode: str):
        """Run the timed call: outputs ("fwd") or gradients for (hidden, weight) ("fwd+bwd")."""
        if mode == "fwd":
            with torch.no_grad():
                return self.forward(inputs, state)
        outputs = self.forward(inputs, state)
        return torch.autograd.grad(objective(self.task, outputs, inputs), inputs.params)


# --------------------------------------------------------------------------- availability


def _module(name: str) -> str | None:
    """None if ``name`` imports, else why it does not."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # ImportError, or a peer that fails at import on this platform
        return f"{name} is not importable here ({type(exc).__name__}: {exc})"
    return None


def _has_attr(module: str, attr: str) -> str | None:
    reason = _module(module)
    if reason is None and not hasattr(importlib.import_module(module), attr):
        reason = f"{module}.{attr} does not exist yet"
    return reason


def _triton_runs(device: torch.device) -> str | None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels need a CUDA device (or TRITON_INTERPRET=1, too slow at these sizes)"
    return _module("triton")


def _ours_triton(device: torch.device) -> str | None:
    if importlib.util.find_spec("asymgrpo_kernels.triton.logprob_entropy") is None:
        return "the triton backend (asymgrpo_kernels.triton.logprob_entropy) does not exist yet"
    return _triton_runs(device)


def _all(*checks: Callable[[torch.device], str | None]) -> Callable[[torch.device], str | None]:
    def needs(device: torch.device) -> str | None:
        return next((r for r in (check(device) for check in checks) if r is not None), None)

    return needs


def ours_backend(device: torch.device) -> str:
    """The backend "ours" means on ``device``: what backend="auto" picks there."""
    from asymgrpo_kernels import dispatch

    if hasattr(dispatch, "get_backend"):  # backend objects
        return dispatch.get_backend("auto", device).name
    return dispatch.resolve_backend("auto", device)  # earlier revisions: backend names


# --------------------------------------------------------------------------- the floor


def _floor_prepare(inputs: Inputs) -> dict:
    s = inputs.shape
    h = inputs.hidden.detach().reshape(s.n_tokens, s.hidden)
    # The upstream logit gradient of the backward matmuls; its values do not change the timing.
    g = torch.full((s.n_tokens, s.vocab), 0.5, dtype=h.dtype, device=h.device)
    return {"h": h, "w": inputs.weight.detach(), "g": g}


def _floor_call(inputs: Inputs, state: dict, mode: str):
    h, w, g = state["h"], state["w"], state["g"]
    if mode == "fwd":
        return (h @ w.T,)
    logits = h @ w.T  # noqa: F841 - the forward matmul is part of the floor; its result is dropped
    return g @ w, g.T @ h


class FloorAdapter(Adapter):
    def call(self, inputs: Inputs, state: dict, mode: str):
        with torch.no_grad():
            return _floor_call(inputs, state, mode)


# --------------------------------------------------------------------------- plain PyTorch


def plain_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) from materialized logits, as plain user code writes it."""
    logits = hidden @ weight.T
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def plain_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
) -> torch.Tensor:
    """The ``grpo_loss`` task in plain PyTorch (materialized logits); torch.compile-friendly."""
    logp = plain_logprobs(hidden, weight, targets)
    ratio = torch.exp(logp - old_logprobs)
    adv = advantages[:, None]
    pg = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)
    d = ref_logprobs - logp
    loss = pg + kl_coef * (torch.exp(d) - d - 1)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


_compiled: dict[str, Callable] = {}


def _compiled_grpo_loss() -> Callable:
    if "grpo" not in _compiled:
        _compiled["grpo"] = torch.compile(plain_grpo_loss, dynamic=True)
    return _compiled["grpo"]


def _grpo_args(inputs: Inputs) -> tuple:
    c = GRPO_LOSS_CONFIG
    return (
        inputs.hidden, inputs.weight, inputs.targets, inputs.mask, inputs.advantages,
        inputs.old_logprobs, inputs.ref_logprobs, c["clip_low"], c["clip_high"], c["kl_coef"],
    )


# --------------------------------------------------------------------------- ours


def _ours_logprob_entropy(backend: str, **options):
    def forward(inputs: Inputs, state: dict):
        from asymgrpo_kernels import fused_linear_logprob_entropy

        return fused_linear_logprob_entropy(inputs.hidden, inputs.weight, inputs.kernel_targets, backend=backend, **options)

    return forward


SMALL_WORKSPACE = 64 * 2**20


def _ours_small_workspace() -> Adapter:
    """The torch backend with a quarter of the default workspace: the memory / time trade-off (CPU)."""
    return Adapter(
        "ours_torch_ws64m", "logprob_entropy", "ours (torch backend, 64 MiB workspace)",
        _ours_logprob_entropy("torch", workspace_bytes=SMALL_WORKSPACE), backend="torch",
        needs=lambda device: None if device.type == "cpu" else "a CPU-only variant (the trade-off of the torch path)",
    )


def _ours_logprob(backend: str):
    inner = _ours_logprob_entropy(backend)
    return lambda inputs, state: inner(inputs, state)[:1]


def _ours_loss(backend: str, config: dict):
    def forward(inputs: Inputs, state: dict):
        from asymgrpo_kernels import fused_linear_asymgrpo_loss

        loss, _ = fused_linear_asymgrpo_loss(
            inputs.hidden, inputs.weight, inputs.targets, inputs.mask, inputs.advantages,
            old_logprobs=inputs.old_logprobs, ref_logprobs=inputs.ref_logprobs, backend=backend, **config,
        )
        return (loss,)

    return forward


def _reference_asymgrpo_loss(inputs: Inputs, state: dict):
    from asymgrpo_kernels.reference import asymgrpo_loss_reference

    loss = asymgrpo_loss_reference(
        inputs.hidden, inputs.weight, inputs.targets, inputs.mask, inputs.advantages,
        old_logprobs=inputs.old_logprobs, ref_logprobs=inputs.ref_logprobs, **ASYMGRPO_LOSS_CONFIG,
    )
    return (loss,)


def _reference_logprob_entropy(inputs: Inputs, state: dict):
    from asymgrpo_kernels.reference import logprob_entropy_reference

    return logprob_entropy_reference(inputs.hidden, inputs.weight, inputs.kernel_targets)


_OURS_KERNEL = _has_attr("asymgrpo_kernels", "fused_linear_logprob_entropy")
_OURS_LOSS = lambda device: _has_attr("asymgrpo_kernels", "fused_linear_asymgrpo_loss")  # noqa: E731
_OURS_GRPO_CONFIG = {**GRPO_LOSS_CONFIG, "kl_estimator": "k3", "entropy_coef": 0.0, "loss_agg": "token-mean"}


def _ours(task: str, backend: str) -> Adapter:
    """Ours for ``task`` with ``backend`` ("torch", "triton" or "auto")."""
    needs = {"torch": lambda device: _OURS_KERNEL, "triton": _ours_triton, "auto": lambda device: _OURS_KERNEL}[backend]
    forward = {
        "logprob_entropy": _ours_logprob_entropy(backend),
        "logprob": _ours_logprob(backend),
        "asymgrpo_loss": _ours_loss(backend, ASYMGRPO_LOSS_CONFIG),
        "grpo_loss": _ours_loss(backend, _OURS_GRPO_CONFIG),
    }[task]
    if task in ("asymgrpo_loss", "grpo_loss"):
        needs = _all(needs, _OURS_LOSS)
    name = "ours" if backend == "auto" else f"ours_{backend}"
    label = "ours" if backend == "auto" else f"ours ({backend} backend)"
    notes = "entropy computed too (unused by this task)" if task == "logprob" else ""
    if task == "grpo_loss":
        notes = "entropy computed too (metrics)"
    return Adapter(name, task, label, forward, needs=needs, backend=backend, notes=notes)


# --------------------------------------------------------------------------- Liger-Kernel


def _liger_fused_prepare(inputs: Inputs) -> dict:
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    c = GRPO_LOSS_CONFIG
    module = LigerFusedLinearGRPOLoss(
        beta=c["kl_coef"], epsilon_low=c["clip_low"], epsilon_high=c["clip_high"],
        loss_type="dapo", use_ref_model=True, temperature=1.0,
    )  # chunk_size and compiled left at their defaults, as TRL uses it
    return {"module": module}


def _liger_fused_forward(inputs: Inputs, state: dict):
    loss, _ = state["module"](
        inputs.hidden, inputs.weight, inputs.targets, inputs.mask, inputs.advantages,
        ref_per_token_logps=inputs.ref_logprobs, old_per_token_logps=inputs.old_logprobs,
    )
    return (loss,)


def _liger_triton_forward(inputs: Inputs, state: dict):
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    # triton_grpo_loss reads logits for T + 1 positions and drops the last: give it one more row.
    h = inputs.hidden
    h_ext = torch.cat([h, h.new_zeros(h.shape[0], 1, h.shape[2])], dim=1)
    logits = h_ext @ inputs.weight.T
    c = GRPO_LOSS_CONFIG
    loss, _ = triton_grpo_loss(
        logits, inputs.old_logprobs, inputs.ref_logprobs, inputs.targets, inputs.advantages, inputs.mask,
        temperature=1.0, beta=c["kl_coef"], eps_low=c["clip_low"], eps_high=c["clip_high"],
        loss_type="dapo", reduce=True,
    )
    return (loss,)


# --------------------------------------------------------------------------- Cut Cross-Entropy


def _cce_impl(device: torch.device) -> str:
    """CCE's Triton kernels run on CUDA only; elsewhere its torch.compile implementation."""
    return "cce" if device.type == "cuda" else "torch_compile"


def _cce_forward(inputs: Inputs, state: dict):
    from cut_cross_entropy import linear_cross_entropy

    nll = linear_cross_entropy(
        inputs.hidden, inputs.weight, inputs.targets, reduction="none", impl=_cce_impl(inputs.device)
    )
    return (-nll.float(),)


# --------------------------------------------------------------------------- registry


def adapters(task: str) -> list[Adapter]:
    """Every implementation of ``task``, the reference first (ratios are taken against it)."""
    if task == "floor":
        return [FloorAdapter("floor", "floor", "3-matmul floor", lambda i, s: (), prepare=_floor_prepare, entropy="n/a")]
    if task == "logprob_entropy":
        return [
            Adapter("reference", task, "reference (eager, materialized)", _reference_logprob_entropy),
            _ours(task, "torch"),
            _ours_small_workspace(),
            _ours(task, "triton"),
        ]
    if task == "asymgrpo_loss":
        return [
            Adapter("reference", task, "reference composition (materialized)", _reference_asymgrpo_loss,
                    needs=lambda device: _has_attr("asymgrpo_kernels.reference", "asymgrpo_loss_reference")),
            _ours(task, "torch"),
            _ours(task, "triton"),
        ]
    if task == "grpo_loss":
        return [
            Adapter("reference", task, "PyTorch eager (materialized)",
                    lambda i, s: (plain_grpo_loss(*_grpo_args(i)),), entropy="no"),
            Adapter("reference_compiled", task, "PyTorch torch.compile (materialized)",
                    lambda i, s: (_compiled_grpo_loss()(*_grpo_args(i)),), warmup=True, entropy="no",
                    peer=True),
            Adapter("liger_fused_linear", task, "Liger LigerFusedLinearGRPOLoss", _liger_fused_forward,
                    needs=lambda device: _module("liger_kernel.chunked_loss"), prepare=_liger_fused_prepare,
                    warmup=True, entropy="no", peer=True,
                    notes="its forward also runs the backward, so fwd = fwd+bwd work"),
            Adapter("liger_triton", task, "Liger triton_grpo_loss (+ LM-head matmul)", _liger_triton_forward,
                    needs=_all(lambda device: _module("liger_kernel.transformers.grpo_loss"), _triton_runs),
                    entropy="no", peer=True, notes="time and memory include the logits matmul and its backward"),
            _ours(task, "auto"),
        ]
    if task == "logprob":
        return [
            Adapter("reference", task, "PyTorch eager (materialized)",
                    lambda i, s: (plain_logprobs(i.hidden, i.weight, i.targets),), entropy="no"),
            Adapter("cce", task, "cut_cross_entropy.linear_cross_entropy", _cce_forward,
                    needs=lambda device: _module("cut_cross_entropy"), entropy="no",
                    warmup=True, peer=True, notes="impl=cce on CUDA, impl=torch_compile on the CPU"),
            _ours(task, "auto"),
        ]
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_DESCRIPTIONS)}")


def adapter(task: str, name: str) -> Adapter:
    """The adapter called ``name`` for ``task``."""
    for candidate in adapters(task):
        if candidate.name == name:
            return candidate
    raise ValueError(f"no implementation {name!r} for task {task!r}")


def baseline_name(task: str, device: torch.device) -> str:
    """The implementation every other one of ``task`` is checked against: ours as shipped."""
    if task in ("logprob_entropy", "asymgrpo_loss"):
        return "ours_triton" if ours_backend(device) == "triton" else "ours_torch"
    return "ours"
