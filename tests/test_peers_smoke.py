"""Our losses agree with the peers' definitions on tiny shapes, so that a drift is caught in CI.

* Liger-Kernel's LigerFusedLinearGRPOLoss (its chunked torch path, compiled=False) for each
  loss type we map to an aggregation mode, with and without the k3 KL, with a temperature.
* Liger's triton_grpo_loss on logits from a plain matmul (Triton: CUDA, or the interpreter,
  which tests/conftest.py turns on when no CUDA device exists).
* cut_cross_entropy.linear_cross_entropy (impl="torch_compile" run eagerly on the CPU,
  impl="cce" on CUDA) for log p(target): its per-token loss is -log p.

Tolerances: float32 throughout; loss and gradients to a normwise relative error of 1e-5
(5e-3 for cut_cross_entropy on CUDA, whose Triton matmuls round float32 operands to TF32).
A peer that is not installed is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from asymgrpo_kernels import fused_linear_asymgrpo_loss, fused_linear_logprob_entropy

B, T, H, V = 3, 5, 16, 37
TOL = 1e-5

# Liger loss_type -> our loss_agg (docs/algorithm.md §7).
LOSS_TYPES = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm"}


def _inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=torch.float64).float()
    weight = (torch.randn(V, H, generator=gen) / H**0.5 * 2).float()
    targets = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 4:] = 0
    advantages = torch.tensor([1.3, -0.7, 0.4])
    with torch.no_grad():
        logp, _ = fused_linear_logprob_entropy(hidden, weight, targets, backend="reference")
    # Old log-probs far enough from the current ones that both clip bounds are hit.
    old = (logp + 0.4 * torch.randn(B, T, generator=gen)).contiguous()
    ref = (logp + 0.2 * torch.randn(B, T, generator=gen)).contiguous()
    return {"hidden": hidden, "weight": weight, "targets": targets, "mask": mask, "advantages": advantages,
            "old": old, "ref": ref}


def _leaves(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return x["hidden"].clone().requires_grad_(), x["weight"].clone().requires_grad_()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def _ours(x: dict, *, temperature: float = 1.0, **loss_kwargs):
    hidden, weight = _leaves(x)
    loss, metrics = fused_linear_asymgrpo_loss(
        hidden, weight, x["targets"], x["mask"], x["advantages"], old_logprobs=x["old"], ref_logprobs=x["ref"],
        temperature=temperature, backend="torch", **loss_kwargs,
    )
    grad_hidden, grad_weight = torch.autograd.grad(loss, [hidden, weight])
    return loss.detach(), metrics, grad_hidden, grad_weight


@pytest.mark.parametrize(
    "loss_type, kl_coef, clip_high, temperature",
    [("dapo", 0.04, 0.28, 1.0), ("bnpo", 0.0, 0.2, 1.0), ("grpo", 0.1, 0.28, 0.7), ("dr_grpo", 0.04, 0.2, 1.0)],
)
def test_matches_liger_fused_linear_grpo_loss(loss_type, kl_coef, clip_high, temperature):
    chunked_loss = pytest.importorskip("liger_kernel.chunked_loss", reason="liger-kernel is not installed")
    x = _inputs()
    liger = chunked_loss.LigerFusedLinearGRPOLoss(
        beta=kl_coef, compiled=False, use_ref_model=kl_coef != 0.0, epsilon_low=0.2, epsilon_high=clip_high,
        loss_type=loss_type, max_completion_length=T, temperature=temperature,
    )
    hidden, weight = _leaves(x)
    liger_loss, liger_metrics = liger(
        hidden, weight, x["targets"], x["mask"], x["advantages"],
        ref_per_token_logps=x["ref"] if kl_coef else None, old_per_token_logps=x["old"],
    )
    liger_grads = torch.autograd.grad(liger_loss, [hidden, weight])

    loss, metrics, grad_hidden, grad_weight = _ours(
        x, temperature=temperature, clip_low=0.2, clip_high=clip_high, kl_coef=kl_coef,
        loss_agg=LOSS_TYPES[loss_type], max_len=T if loss_type == "dr_grpo" else None,
    )
    assert _rel(loss, liger_loss.detach()) < TOL
    assert _rel(grad_hidden, liger_grads[0]) < TOL
    assert _rel(grad_weight, liger_grads[1]) < TOL
    # Liger's metrics: [KL to the reference (when beta != 0), clip fraction (either side)].
    liger_clip = liger_metrics[-1]
    assert liger_clip > 0, "the inputs should exercise clipping"
    torch.testing.assert_close(metrics["clip_frac_low"] + metrics["clip_frac_high"], liger_clip.float(), rtol=1e-6, atol=1e-7)
    if kl_coef:
        torch.testing.assert_close(metrics["ref_kl"], liger_metrics[0].float(), rtol=1e-5, atol=1e-7)


def _triton_runs_here() -> str | None:
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "Triton needs CUDA or TRITON_INTERPRET=1 set before triton is imported"


@pytest.mark.parametrize("loss_type, kl_coef", [("dapo", 0.04), ("grpo", 0.0)])
def test_matches_liger_triton_grpo_loss(loss_type, kl_coef):
    reason = _triton_runs_here()
    if reason:
        pytest.skip(reason)
    grpo = pytest.importorskip("liger_kernel.transformers.grpo_loss", reason="liger-kernel is not installed")
    x = _inputs(seed=1)
    hidden, weight = _leaves(x)
    # triton_grpo_loss takes logits for T + 1 positions and drops the last one.
    hidden_ext = torch.cat([hidden, hidden.new_zeros(B, 1, H)], dim=1)
    logits = hidden_ext @ weight.T
    liger_loss, _ = grpo.triton_grpo_loss(
        logits, x["old"], x["ref"], x["targets"], x["advantages"], x["mask"], temperature=0.9, beta=kl_coef,
        eps_low=0.2, eps_high=0.28, loss_type=loss_type, reduce=True,
    )
    liger_grads = torch.autograd.grad(liger_loss, [hidden, weight])
    loss, _, grad_hidden, grad_weight = _ours(
        x, temperature=0.9, clip_low=0.2, clip_high=0.28, kl_coef=kl_coef, loss_agg=LOSS_TYPES[loss_type],
    )
    assert _rel(loss, liger_loss.detach()) < TOL
    assert _rel(grad_hidden, liger_grads[0]) < TOL
    assert _rel(grad_weight, liger_grads[1]) < TOL


def test_logprobs_match_cut_cross_entropy():
    cce = pytest.importorskip("cut_cross_entropy", reason="cut-cross-entropy is not installed")
    x = _inputs(seed=2)
    targets = x["targets"].clone()
    targets[1, 2] = -100  # both libraries' ignore_index: 0 loss, no gradient
    g = torch.randn(B, T, generator=torch.Generator().manual_seed(3))

    hidden, weight = _leaves(x)
    tol = TOL
    if torch.cuda.is_available():
        nll = cce.linear_cross_entropy(hidden.cuda(), weight.cuda(), targets.cuda(), reduction="none", impl="cce").cpu()
        tol = 5e-3  # CCE's Triton matmuls take float32 operands as TF32
    else:  # the same code run eagerly (no compile in CI) where torch can force that
        stance = getattr(torch.compiler, "set_stance", None)
        with stance("force_eager") if stance else contextlib.nullcontext():
            nll = cce.linear_cross_entropy(hidden, weight, targets, reduction="none", impl="torch_compile")
    cce_grads = torch.autograd.grad((-nll * g).sum(), [hidden, weight])

    hidden2, weight2 = _leaves(x)
    logp, _ = fused_linear_logprob_entropy(hidden2, weight2, targets, backend="torch")
    grads = torch.autograd.grad((logp * g).sum(), [hidden2, weight2])
    assert _rel(logp.detach(), -nll.detach().float()) < tol
    assert _rel(grads[0], cce_grads[0]) < tol
    assert _rel(grads[1], cce_grads[1]) < tol
