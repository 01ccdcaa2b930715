"""The library called the way users call it: mixed-precision autocast, a graph differentiated
twice, prompts left in the batch, options at their limits, and numbers at the edges of float32
and float16 (docs/algorithm.md §3 and §6). Every backend, against float64; on CUDA when the
machine has it (the Triton kernels then run natively), else on the CPU."""

from __future__ import annotations

import pytest
import torch

import asymgrpo_kernels.chunked as chunked_module
from asymgrpo_kernels import AsymGRPOLoss, LossOptions, asym_policy_loss, fused_linear_asymgrpo_loss, fused_linear_logprob_entropy
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import asymgrpo_loss_reference, logprob_entropy_reference

TRITON = pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="triton cannot run here"))
BACKENDS = ["torch", "reference", TRITON]
FAST_BACKENDS = ["torch", TRITON]  # the ones that never materialize logits
LOSS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.05, kl_estimator="k3", entropy_coef=0.01)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernels run natively on CUDA


def same_run(backend: str) -> dict:
    """Tolerance between two runs of one backward: none, except Triton's on CUDA, whose float32
    atomic adds (logprob_entropy_bwd.py) may sum in a different order each time."""
    return dict(rtol=1e-5, atol=1e-6) if backend == "triton" and DEVICE == "cuda" else dict(rtol=0, atol=0)


def problem(b=2, t=6, h=16, v=45, *, seed=0, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(b, t, h, generator=gen) * scale).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5 * 2 * scale).to(dtype)
    bias = (torch.randn(v, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=gen)
    mask = torch.ones(b, t)
    mask[:, : t // 2] = 0  # the prompt half of every row
    advantages = torch.randn(b, generator=gen)
    old = -3 * torch.rand(b, t, generator=gen)
    ref = -3 * torch.rand(b, t, generator=gen)
    tensors = dict(hidden=hidden, weight=weight, bias=bias, targets=targets, mask=mask, advantages=advantages,
                   old_logprobs=old, ref_logprobs=ref)
    return {k: v.to(DEVICE) for k, v in tensors.items()}


def leaves(p, keys=("hidden", "weight", "bias")):
    return {k: p[k].detach().clone().requires_grad_() for k in keys}


def float64_loss_and_grads(p, temperature=1.0, **loss):
    x = {k: p[k].detach().double().requires_grad_() for k in ("hidden", "weight", "bias")}
    value = asymgrpo_loss_reference(
        x["hidden"], x["weight"], p["targets"], p["mask"], p["advantages"].double(),
        old_logprobs=p["old_logprobs"].double(), ref_logprobs=p["ref_logprobs"].double(), bias=x["bias"],
        temperature=temperature, **loss,
    )
    value.backward()
    return value.detach(), {k: t.grad for k, t in x.items()}


def fused(p, x, backend, **kw):
    return fused_linear_asymgrpo_loss(
        x["hidden"], x["weight"], p["targets"], p["mask"], p["advantages"], old_logprobs=p["old_logprobs"],
        ref_logprobs=p["ref_logprobs"], bias=x["bias"], backend=backend, **{**LOSS, **kw},
    )


# --- a graph differentiated twice ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_through_one_graph(backend):
    """autograd.grad(retain_graph=True) then .backward() on one loss (the torch path raised
    "'NoneType' object is not iterable" on the second call)."""
    p = problem()
    x = leaves(p)
    loss, _ = fused(p, x, backend)
    (first,) = torch.autograd.grad(loss, [x["hidden"]], retain_graph=True)
    loss.backward()
    torch.testing.assert_close(x["hidden"].grad, first, **same_run(backend))
    _, want = float64_loss_and_grads(p, **LOSS)
    for name, tensor in x.items():
        torch.testing.assert_close(tensor.grad.double(), want[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_core_second_backward(backend):
    p = problem()
    x = leaves(p)
    logp, ent = fused_linear_logprob_entropy(x["hidden"], x["weight"], p["targets"], bias=x["bias"], backend=backend)
    objective = (logp * 0.7 - ent * 0.3).sum()
    (first,) = torch.autograd.grad(objective, [x["weight"]], retain_graph=True)
    objective.backward()
    torch.testing.assert_close(x["weight"].grad, first, **same_run(backend))


# --- mixed precision -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_training_step_with_float32_parameters(backend):
    """The ordinary mixed-precision step: float32 parameters, bf16 autocast. It crashed on the
    torch path (scatter dtype mismatch); now the operands are cast like a linear layer's and
    the rest is float32, so the result equals the same call on bf16-cast operands."""
    p = problem()
    x = leaves(p)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, metrics = fused(p, x, backend)
        loss.backward()  # backward inside the autocast region too
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in metrics.values())
    assert all(t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in x.values())

    cast = {k: v.detach().bfloat16().requires_grad_() for k, v in x.items()}
    want, _ = fused(p, cast, backend)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    for name in x:
        torch.testing.assert_close(x[name].grad, cast[name].grad.float(), rtol=0, atol=1e-2 * cast[name].grad.abs().max().item())


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_autocast_keeps_softmax_and_entropy_in_float32(backend):
    """Under autocast the log-probs and entropies are float32 math on the bf16 operands' exact
    products: far closer to float64 than bf16 rounding (they were bf16 values, errors ~4e-2)."""
    p = problem(v=300, h=64)
    hidden, weight, bias = (p[k].requires_grad_() for k in ("hidden", "weight", "bias"))
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logp, ent = fused_linear_logprob_entropy(hidden, weight, p["targets"], bias=bias, backend=backend)
    assert logp.dtype == ent.dtype == torch.float32
    cast = [t.detach().bfloat16().double() for t in (hidden, weight, bias)]
    want_logp, want_ent = logprob_entropy_reference(cast[0], cast[1], p["targets"], cast[2])
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=2e-5)
    assert not torch.equal(logp, logp.bfloat16().float()), "the log-probs are bf16 values: bf16 math"


def test_autocast_policy_loss_is_float32():
    p = problem()
    logp = torch.randn(2, 6, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, _ = asym_policy_loss(logp, p["old_logprobs"], p["advantages"], p["mask"], clip_high=0.28)
    assert loss.dtype == torch.float32


# --- prompts left in the batch ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_prompt_rows_are_never_read(backend, poison):
    """Masked rows' hidden states may be anything: they never reach the LM head, and their
    gradient is exactly zero."""
    p = problem()
    x = leaves(p)
    with torch.no_grad():
        x["hidden"][p["mask"] == 0] = poison
    loss, metrics = fused(p, x, backend)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert (x["hidden"].grad[p["mask"] == 0] == 0).all()
    assert torch.isfinite(x["weight"].grad).all() and torch.isfinite(x["bias"].grad).all()

    clean = leaves(p)
    want, _ = fused(p, clean, backend)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    for name in x:
        torch.testing.assert_close(x[name].grad, clean[name].grad, **same_run(backend), msg=name)


@pytest.mark.parametrize("with_grad", [True, False], ids=["fwd+bwd", "no_grad"])
def test_torch_path_projects_only_scored_rows(monkeypatch, with_grad):
    """The LM-head matmuls of the torch path see exactly the mask == 1 rows (they saw all)."""
    projected = []
    real = chunked_module._Projection.logits

    def counting(self, h):
        projected.append(h.shape[0])
        return real(self, h)

    monkeypatch.setattr(chunked_module._Projection, "logits", counting)
    p = problem(b=3, t=10)
    x = leaves(p) if with_grad else {k: p[k] for k in ("hidden", "weight", "bias")}
    with torch.set_grad_enabled(with_grad):
        loss, metrics = fused(p, x, "torch")
    if with_grad:
        loss.backward()
    scored = int(p["mask"].sum())
    assert scored == 15 and metrics["tokens"] == scored
    assert sum(projected) == scored  # one pass: the loss's single-pass path, or the forward alone

    projected.clear()
    targets = torch.where(p["mask"] == 1, p["targets"], -100)
    logp, ent = fused_linear_logprob_entropy(leaves(p)["hidden"], p["weight"], targets, backend="torch")
    (logp.sum() + ent.sum()).backward()
    assert sum(projected) == 2 * scored  # forward, then the backward's recomputation
    assert (logp[targets == -100] == 0).all() and (ent[targets == -100] == 0).all()


@pytest.mark.skipif(not triton_available(), reason="triton cannot run here")
def test_triton_path_launches_only_scored_rows(monkeypatch):
    import asymgrpo_kernels.triton.logprob_entropy as triton_backend

    launched = []
    for name in ("launch_forward", "launch_backward"):
        real = getattr(triton_backend, name)

        def spy(head, *args, _real=real, _name=name):
            launched.append((_name, head.n_rows))
            return _real(head, *args)

        monkeypatch.setattr(triton_backend, name, spy)
    p = problem(b=3, t=10)
    x = leaves(p)
    loss, _ = fused(p, x, "triton")
    loss.backward()
    assert launched == [("launch_forward", 15), ("launch_backward", 15)]


def test_all_prompt_batch_gives_zero_loss_and_gradient():
    p = problem()
    p["mask"] = torch.zeros_like(p["mask"])
    x = leaves(p)
    loss, metrics = fused(p, x, "torch")
    loss.backward()
    assert loss.item() == 0 and metrics["tokens"] == 0
    assert all((t.grad == 0).all() for t in x.values())


# --- option rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("clip_low", [1.0, 1.5])
def test_clip_low_of_one_or_more_is_rejected_everywhere(clip_low):
    """clip_low >= 1 switches the lower clip off; it was accepted silently by the functions."""
    p = problem()
    match = r"clip_low must be < 1"
    with pytest.raises(ValueError, match=match):
        LossOptions(clip_low=clip_low)
    with pytest.raises(ValueError, match=match):
        asym_policy_loss(torch.zeros(2, 6, device=DEVICE), None, p["advantages"], p["mask"], clip_low=clip_low)
    with pytest.raises(ValueError, match=match):
        fused(p, p, "torch", clip_low=clip_low)
    with pytest.raises(ValueError, match=match):
        AsymGRPOLoss(clip_low=clip_low)


def test_options_object_and_keywords():
    p = problem()
    options = LossOptions(clip_low=0.1, clip_high=0.3, loss_agg="seq-mean-token-mean")
    by_object, _ = fused_linear_asymgrpo_loss(p["hidden"], p["weight"], p["targets"], p["mask"], p["advantages"],
                                              old_logprobs=p["old_logprobs"], options=options)
    by_keywords, _ = fused_linear_asymgrpo_loss(p["hidden"], p["weight"], p["targets"], p["mask"], p["advantages"],
                                                old_logprobs=p["old_logprobs"], clip_low=0.1, clip_high=0.3,
                                                loss_agg="seq-mean-token-mean")
    assert torch.equal(by_object, by_keywords)
    overridden, _ = fused_linear_asymgrpo_loss(p["hidden"], p["weight"], p["targets"], p["mask"], p["advantages"],
                                               old_logprobs=p["old_logprobs"], options=options, clip_high=0.2)
    plain, _ = fused_linear_asymgrpo_loss(p["hidden"], p["weight"], p["targets"], p["mask"], p["advantages"],
                                          old_logprobs=p["old_logprobs"], clip_low=0.1, clip_high=0.2,
                                          loss_agg="seq-mean-token-mean")
    assert torch.equal(overridden, plain)
    with pytest.raises(TypeError, match="unexpected keyword argument.*'clip_hi'"):
        fused_linear_asymgrpo_loss(p["hidden"], p["weight"], p["targets"], p["mask"], p["advantages"], clip_hi=0.3)
    with pytest.raises(TypeError, match="options must be a LossOptions"):
        asym_policy_loss(torch.zeros(2, 6, device=DEVICE), None, p["advantages"], p["mask"], options={"clip_low": 0.1})
    module = AsymGRPOLoss("grpo", clip_high=0.28, beta_neg=0.3)
    assert module.options == LossOptions(clip_high=0.28) and module.advantage_options.beta_neg == 0.3
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        AsymGRPOLoss(beta=0.3)


# --- numbers at the edges --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_of_minus_infinity_keeps_entropy_finite(backend):
    """A forbidden token (bias -inf) has probability 0 and contributes 0 log 0 = 0 to the
    entropy (the entropy was NaN); its gradient is 0 and everything stays finite."""
    p = problem()
    forbidden = [3, 17]
    x = leaves(p)
    with torch.no_grad():
        x["bias"][forbidden] = float("-inf")
    targets = p["targets"].masked_fill(p["targets"] == 3, 4).masked_fill(p["targets"] == 17, 18)
    logp, ent = fused_linear_logprob_entropy(x["hidden"], x["weight"], targets, bias=x["bias"], backend=backend)
    (logp.sum() + ent.sum()).backward()
    allowed = [i for i in range(p["weight"].shape[0]) if i not in forbidden]
    want_logp, want_ent = logprob_entropy_reference(
        p["hidden"].double(), p["weight"][allowed].double(),
        torch.searchsorted(torch.tensor(allowed, device=DEVICE), targets),
        p["bias"][allowed].double(),
    )
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=1e-5)
    assert all(torch.isfinite(t.grad).all() for t in x.values())
    assert (x["bias"].grad[forbidden] == 0).all() and (x["weight"].grad[forbidden] == 0).all()

    forbidden_target = torch.full_like(targets, 3)
    logp, ent = fused_linear_logprob_entropy(x["hidden"], x["weight"], forbidden_target, bias=x["bias"], backend=backend)
    assert (logp < -1e29).all() and torch.isfinite(logp).all() and torch.isfinite(ent).all()


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("adv_sign", [0.0, -1.0, 1.0])
def test_log_ratio_beyond_float32(backend, adv_sign):
    """logp - old_logp = +-200 overflows exp in float32; the log-ratio is clamped to +-20 (the
    loss was NaN for A = 0 and inf for A < 0), and beyond the clamp it carries no gradient."""
    logp = torch.tensor([[-1.0, -250.0, -1.0, -2.0]], device=DEVICE, requires_grad=True)
    old = torch.tensor([[-201.0, -50.0, -1.5, -2.0]], device=DEVICE)
    adv = torch.tensor([adv_sign], device=DEVICE)
    mask = torch.ones(1, 4, device=DEVICE)
    loss, metrics = asym_policy_loss(logp, old, adv, mask, backend=backend, clip_high=0.28)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(logp.grad).all() and (logp.grad[0, :2] == 0).all()
    ratio = torch.tensor([20.0, -20.0, 0.5, 0.0], device=DEVICE).exp()
    pg = -torch.minimum(ratio * adv_sign, ratio.clamp(0.8, 1.28) * adv_sign)
    torch.testing.assert_close(loss, pg.mean(), rtol=1e-6, atol=0)
    assert metrics["ratio_max"] == pytest.approx(ratio.max().item(), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_logits_beyond_its_range(backend):
    """float16 inputs whose logits exceed 65,504: the logits are float32 on every path (they
    overflowed to inf and gave NaN on the torch and reference paths)."""
    p = problem(dtype=torch.float16, scale=100.0, h=32, v=60)
    hidden, weight = p["hidden"], p["weight"]
    assert (hidden.float() @ weight.float().T).abs().max() > 65_504
    x = {"hidden": hidden.clone().requires_grad_(), "weight": weight.clone().requires_grad_()}
    logp, ent = fused_linear_logprob_entropy(x["hidden"], x["weight"], p["targets"], temperature=500.0, backend=backend)
    (logp.sum() + ent.sum()).backward()
    want_logp, want_ent = logprob_entropy_reference(hidden.double(), weight.double(), p["targets"], temperature=500.0)
    torch.testing.assert_close(logp.double(), want_logp, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-3)
    assert all(torch.isfinite(t.grad).all() for t in x.values())
