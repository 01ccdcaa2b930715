"""fused_linear_logprob_entropy: values and gradients of every backend against float64."""

from __future__ import annotations

import pytest
import torch

from asymgrpo_kernels import fused_linear_logprob_entropy
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import logprob_entropy_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_CPU = DEVICE == "cpu"

BACKENDS = [
    "torch",
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="triton cannot run here")),
]

# Absolute tolerances on (logprobs, entropy, gradients), per input dtype. Low-precision inputs
# are compared against float64 math on the *same rounded* inputs, so the error left is the
# error of the computation (logits rounded to the input dtype by plain matmuls in torch and
# reference backends), not of the input rounding.
TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}


def make_inputs(n, h, v, dtype, *, bias=True, scale=1.0, ignored=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen) * scale
    weight = torch.randn(v, h, generator=gen) / h**0.5
    b = torch.randn(v, generator=gen) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    for i in ignored:
        targets[i] = -100
    cast = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), targets.to(DEVICE)


def run(backend, hidden, weight, bias, targets, temperature, grad_scale=(1.0, 1.0), **kw):
    """Outputs and gradients of sum(a * logprobs + c * entropy) for one backend."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    fn = logprob_entropy_reference if backend == "float64" else fused_linear_logprob_entropy
    if backend == "float64":
        leaves = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
        logp, ent = fn(leaves[0], leaves[1], targets, leaves[2], temperature)
    else:
        logp, ent = fn(leaves[0], leaves[1], targets, bias=leaves[2], temperature=temperature, backend=backend, **kw)
    gen = torch.Generator().manual_seed(1)
    up_logp = torch.randn(logp.shape, generator=gen).to(logp.device, logp.dtype) * grad_scale[0]
    up_ent = torch.randn(ent.shape, generator=gen).to(ent.device, ent.dtype) * grad_scale[1]
    (logp * up_logp + ent * up_ent).sum().backward()
    grads = [t.grad if t is not None else None for t in leaves]
    return logp.detach(), ent.detach(), grads


def assert_matches_float64(backend, hidden, weight, bias, targets, temperature, dtype, **kw):
    logp, ent, grads = run(backend, hidden, weight, bias, targets, temperature, **kw)
    ref_logp, ref_ent, ref_grads = run("float64", hidden, weight, bias, targets, temperature)
    assert logp.dtype == ent.dtype == torch.float32
    assert logp.shape == ent.shape == targets.shape
    tol = TOL[dtype]
    torch.testing.assert_close(logp.double(), ref_logp, atol=tol, rtol=tol)
    torch.testing.assert_close(ent.double(), ref_ent, atol=tol, rtol=tol)
    for name, g, g_ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        if g_ref is None:
            continue
        assert g is not None and g.dtype == dtype, name
        assert torch.isfinite(g).all(), name
        # absolute error measured against the gradient's own scale (hidden of scale 300 gives
        # gradients of scale 300; float32 logits of magnitude ~1e3 carry ~1e-4 absolute error)
        atol = tol * max(1.0, g_ref.abs().max().item())
        torch.testing.assert_close(g.double(), g_ref, atol=atol, rtol=tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n,h,v",
    [(1, 48, 50), (37, 48, 1001), (64, 64, 257), (5, 16, 50_257)],
    ids=["N=1", "odd", "pow2-ish", "V=50257"],
)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_float32_matches_float64(backend, n, h, v, temperature):
    if backend == "triton" and ON_CPU and n * v > 200_000:
        pytest.skip("kept small under the Triton interpreter")
    hidden, weight, bias, targets = make_inputs(n, h, v, torch.float32, ignored=(0,) if n > 1 else ())
    assert_matches_float64(backend, hidden, weight, bias, targets, temperature, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_half_precision_matches_float64(backend, dtype, temperature):
    hidden, weight, bias, targets = make_inputs(29, 40, 300, dtype, ignored=(3, 7))
    assert_matches_float64(backend, hidden, weight, bias, targets, temperature, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_and_small_workspace(backend):
    hidden, weight, _, targets = make_inputs(33, 24, 700, torch.float32, bias=False)
    # a workspace of a few rows forces many chunks in the chunked paths
    assert_matches_float64(backend, hidden, weight, None, targets, 1.3, torch.float32, workspace_bytes=700 * 4 * 2 * 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_that_overflow_a_naive_exp(backend):
    """Logits near 1e3 overflow exp() in float32; probabilities that underflow must not give NaN.

    It also catches the cancellation of H = lse - E_p[s] at large |s|: accumulate the entropy on
    logits shifted by the running max, sum exp(s - m) * (s - m), rescaled when m grows.
    """
    hidden, weight, bias, targets = make_inputs(9, 16, 129, torch.float32, scale=300.0)
    logp, ent, grads = run(backend, hidden, weight, bias, targets, 0.5)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert_matches_float64(backend, hidden, weight, bias, targets, 0.5, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_rows_give_zero_and_no_gradient(backend):
    hidden, weight, bias, targets = make_inputs(6, 16, 90, torch.float32)
    targets[:] = -100
    logp, ent, grads = run(backend, hidden, weight, bias, targets, 1.0)
    assert (logp == 0).all() and (ent == 0).all()
    for g in grads:
        assert g is not None and (g == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows_do_not_touch_gradients(backend):
    """Changing an ignored row's hidden state changes nothing, and its gradient is zero."""
    hidden, weight, bias, targets = make_inputs(8, 16, 90, torch.float32, ignored=(2, 5))
    _, _, grads_a = run(backend, hidden, weight, bias, targets, 1.0)
    hidden_b = hidden.clone()
    hidden_b[[2, 5]] += 10.0
    logp_b, ent_b, grads_b = run(backend, hidden_b, weight, bias, targets, 1.0)
    assert (grads_a[0][[2, 5]] == 0).all()
    assert logp_b[[2, 5]].eq(0).all() and ent_b[[2, 5]].eq(0).all()
    torch.testing.assert_close(grads_a[1], grads_b[1])
    torch.testing.assert_close(grads_a[2], grads_b[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_and_non_contiguous_inputs(backend):
    """hidden [B, T, H] as a transposed view, a custom ignore_index, and a strided weight."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 3, 32, generator=gen).to(DEVICE).transpose(0, 1)  # [3, 7, 32], non-contiguous
    weight = (torch.randn(32, 130, generator=gen) / 6).to(DEVICE).T  # [130, 32], non-contiguous
    targets = torch.randint(0, 130, (3, 7), generator=gen).to(DEVICE)
    targets[1, 2] = 129  # a real target equal to V-1
    targets[0, 0] = -1
    out = fused_linear_logprob_entropy(hidden, weight, targets, ignore_index=-1, backend=backend)
    ref = logprob_entropy_reference(hidden.double(), weight.double(), targets, None, 1.0, -1)
    for got, want in zip(out, ref):
        assert got.shape == (3, 7)
        torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=2e-4)
    assert out[0][0, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_entropy_only(backend):
    """Entropy regularization differentiates H alone; compare to float64 with g_logp = 0."""
    hidden, weight, bias, targets = make_inputs(11, 24, 77, torch.float32)
    _, _, grads = run(backend, hidden, weight, bias, targets, 0.8, grad_scale=(0.0, 1.0))
    _, _, ref = run("float64", hidden, weight, bias, targets, 0.8, grad_scale=(0.0, 1.0))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g.double(), r, atol=2e-4, rtol=2e-4)
        assert g.abs().max() > 0


def test_backends_agree_on_a_shared_case():
    """torch and reference backends return the same numbers (the dispatcher routes correctly)."""
    hidden, weight, bias, targets = make_inputs(20, 32, 333, torch.float32)
    a = fused_linear_logprob_entropy(hidden, weight, targets, bias=bias, backend="torch")
    b = fused_linear_logprob_entropy(hidden, weight, targets, bias=bias, backend="reference")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_auto_picks_torch_on_cpu():
    from asymgrpo_kernels.dispatch import get_backend

    assert get_backend("auto", torch.device("cpu")).name == "torch"
