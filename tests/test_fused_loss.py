"""fused_linear_asymgrpo_loss and AsymGRPOLoss: loss and gradients against the materialized
reference composition (logits -> log_softmax -> entropy -> policy loss) in float64."""

from __future__ import annotations

import pytest
import torch

import asymgrpo_kernels.losses as losses_module
from asymgrpo_kernels import AsymGRPOLoss, fused_linear_asymgrpo_loss, group_advantages
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import asymgrpo_loss_reference, logprob_entropy_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AGGS = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
OPTIONS = {
    "plain": {},
    "kl": dict(kl_coef=0.2, kl_estimator="k3"),
    "entropy_bonus": dict(entropy_coef=0.05),
    "dual_clip_is": dict(dual_clip=1.5, clip_low=0.1, clip_high=0.28, is_weights=True),
    "everything": dict(clip_low=0.15, clip_high=0.3, dual_clip=2.0, is_weights=True, kl_coef=0.1,
                       kl_estimator="k2", entropy_coef=0.02),
}


# Skipped only where Triton itself cannot run (not installed, or no CUDA and no interpreter):
# an error importing our own Triton backend fails these cases instead of hiding as a skip.
TRITON = pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="triton cannot run here"))


def make_problem(batch=3, seq_len=5, hidden_size=16, vocab=37, *, seed=0, bias=True, on_policy=False,
                 per_token_adv=False, temperature=0.7):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq_len, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5 * 2
    b = torch.randn(vocab, generator=gen) * 0.5 if bias else None
    targets = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    mask = (torch.rand(batch, seq_len, generator=gen) > 0.25).long()
    mask[0, :2] = 1
    targets[mask == 0] = -1  # padding ids outside [0, V) where mask == 0 must not matter
    with torch.no_grad():
        logp, _ = logprob_entropy_reference(hidden.double(), weight.double(), torch.where(mask == 1, targets, -100),
                                            None if b is None else b.double(), temperature)
    p = dict(
        hidden=hidden, weight=weight, bias=b, targets=targets, mask=mask, temperature=temperature,
        advantages=torch.randn((batch, seq_len) if per_token_adv else (batch,), generator=gen),
        old_logprobs=None if on_policy else (logp + torch.randn(batch, seq_len, generator=gen) * 0.4).float(),
        ref_logprobs=(logp + torch.randn(batch, seq_len, generator=gen) * 0.3).float(),
        is_weights=torch.rand(batch, seq_len, generator=gen) + 0.5,
    )
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in p.items()}


def run(problem, options, *, backend="torch", float64_reference=False, **extra):
    """Loss and the gradients of (hidden, weight, bias) from the fused call or the float64 reference."""
    cast = (lambda t: t.double()) if float64_reference else (lambda t: t)  # noqa: E731
    leaves = {k: None if problem[k] is None else cast(problem[k]).detach().clone().requires_grad_()
              for k in ("hidden", "weight", "bias")}
    kw = dict(options)
    if kw.pop("is_weights", False):
        kw["is_weights"] = cast(problem["is_weights"])
    kw.update(extra)
    old = problem["old_logprobs"]
    common = dict(old_logprobs=None if old is None else cast(old), ref_logprobs=cast(problem["ref_logprobs"]),
                  bias=leaves["bias"], temperature=problem["temperature"], **kw)
    args = (leaves["hidden"], leaves["weight"], problem["targets"], problem["mask"], cast(problem["advantages"]))
    if float64_reference:
        loss, metrics = asymgrpo_loss_reference(*args, **common), None
    else:
        loss, metrics = fused_linear_asymgrpo_loss(*args, backend=backend, **common)
    loss.backward()
    grads = [None if leaves[k] is None else leaves[k].grad for k in ("hidden", "weight", "bias")]
    return loss.detach(), grads, metrics


def assert_matches_reference(problem, options, backend="torch", tol=2e-5, **extra):
    loss, grads, metrics = run(problem, options, backend=backend, **extra)
    ref_loss, ref_grads, _ = run(problem, options, float64_reference=True, **extra)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    for name, g, r in zip(("hidden", "weight", "bias"), grads, ref_grads):
        if r is None:
            assert g is None
            continue
        assert g is not None and g.dtype == torch.float32, name
        assert float(r.abs().max()) > 0, f"{name} gets a gradient"
        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
    return metrics


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_fused_matches_reference_composition(agg, name):
    assert_matches_reference(make_problem(seed=len(name) + len(agg)), OPTIONS[name], loss_agg=agg)


@pytest.mark.parametrize("backend", ["torch", "reference", TRITON])
@pytest.mark.parametrize("on_policy", [False, True])
def test_backends_on_and_off_policy(backend, on_policy):
    problem = make_problem(seed=21, on_policy=on_policy, per_token_adv=True)
    assert_matches_reference(problem, OPTIONS["everything"], backend=backend)


def test_no_bias_temperature_one_and_options_passed_through():
    problem = make_problem(seed=4, bias=False, temperature=1.0)
    assert_matches_reference(problem, OPTIONS["kl"], loss_agg="seq-mean-token-sum-norm", max_len=11, num_items=2.0)


@pytest.mark.parametrize("backend", ["torch", "reference", TRITON])
@pytest.mark.parametrize("entropy_agg", ["token-mean", "seq-mean-token-sum"])
def test_entropy_term_aggregated_on_its_own(backend, entropy_agg):
    """entropy_agg / entropy_num_items on the single-pass torch path and the two-pass paths."""
    options = dict(OPTIONS["everything"], entropy_coef=0.3, loss_agg="seq-mean-token-mean", num_items=5.0,
                   entropy_agg=entropy_agg, entropy_num_items=6.0)
    assert_matches_reference(make_problem(seed=17), options, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "reference", TRITON])
def test_token_values_are_the_per_token_logprobs_and_entropy(backend):
    problem = make_problem(seed=8)
    hidden, weight = problem["hidden"].requires_grad_(), problem["weight"]
    loss, metrics, values = fused_linear_asymgrpo_loss(
        hidden, weight, problem["targets"], problem["mask"], problem["advantages"], bias=problem["bias"],
        old_logprobs=problem["old_logprobs"], temperature=problem["temperature"], backend=backend,
        return_token_values=True,
    )
    valid = problem["mask"] == 1
    with torch.no_grad():
        logp, entropy = logprob_entropy_reference(hidden.double(), weight.double(),
                                                  torch.where(valid, problem["targets"], -100),
                                                  problem["bias"].double(), problem["temperature"])
    assert values.logprobs.shape == values.entropy.shape == problem["mask"].shape
    assert values.logprobs.dtype == torch.float32 and not values.logprobs.requires_grad
    torch.testing.assert_close(values.logprobs.double(), logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    assert torch.all(values.logprobs[~valid] == 0) and torch.all(values.entropy[~valid] == 0)
    torch.testing.assert_close(metrics["entropy"], values.entropy[valid].mean())
    loss.backward()  # the loss is still differentiable alongside
    assert hidden.grad is not None
    module_out = AsymGRPOLoss(backend=backend, temperature=problem["temperature"])(
        hidden, weight, problem["targets"], problem["mask"], problem["advantages"], bias=problem["bias"],
        old_logprobs=problem["old_logprobs"], return_token_values=True)
    assert len(module_out) == 3 and torch.equal(module_out[2].logprobs, values.logprobs)


def test_metrics_come_from_the_fused_entropy():
    problem = make_problem(seed=5)
    metrics = assert_matches_reference(problem, OPTIONS["everything"])
    with torch.no_grad():
        _, entropy = logprob_entropy_reference(problem["hidden"], problem["weight"],
                                               torch.where(problem["mask"] == 1, problem["targets"], -100),
                                               problem["bias"], problem["temperature"])
    valid = problem["mask"] == 1
    pos = valid & (problem["advantages"][:, None] > 0)
    torch.testing.assert_close(metrics["entropy_pos"], entropy[pos].mean() if pos.any() else torch.tensor(0.0))
    assert metrics["tokens_pos"] + metrics["tokens_neg"] == metrics["tokens"] == valid.sum()
    assert not any(v.requires_grad for v in metrics.values())


def test_tied_embeddings_accumulate_both_gradients():
    """With tied embeddings lm_head.weight is the embedding matrix: both uses add into one .grad."""
    torch.manual_seed(0)
    vocab, width = 29, 12

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, width)
            self.body = torch.nn.Linear(width, width)
            self.lm_head = torch.nn.Linear(width, vocab, bias=False)
            self.lm_head.weight = self.embed.weight  # tied

        def backbone(self, ids):
            return torch.tanh(self.body(self.embed(ids)))

    model = TinyLM().to(DEVICE)
    ids = torch.randint(0, vocab, (4, 9), device=DEVICE)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = torch.ones_like(targets)
    mask[:, :3] = 0  # prompt tokens
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], device=DEVICE), group_size=4)
    loss_fn = AsymGRPOLoss("asymgrpo", entropy_coef=0.01, backend="torch")

    loss, _ = loss_fn(model.backbone(inputs), model.lm_head.weight, targets, mask, adv)
    loss.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = asymgrpo_loss_reference(model.backbone(inputs), model.lm_head.weight, targets, mask, adv, entropy_coef=0.01)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for name, param in model.named_parameters():
        torch.testing.assert_close(fused_grads[name], param.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert set(fused_grads) == {"embed.weight", "body.weight", "body.bias"}  # one tensor for embed and head


def test_module_equals_function():
    problem = make_problem(seed=8)
    module = AsymGRPOLoss("grpo", clip_high=0.28, kl_coef=0.1, loss_agg="seq-mean-token-mean",
                          temperature=problem["temperature"], backend="torch")
    args = (problem["hidden"], problem["weight"], problem["targets"], problem["mask"], problem["advantages"])
    kw = dict(old_logprobs=problem["old_logprobs"], ref_logprobs=problem["ref_logprobs"], bias=problem["bias"])
    loss, metrics = module(*args, **kw)
    want, want_metrics = fused_linear_asymgrpo_loss(*args, **kw, clip_high=0.28, kl_coef=0.1, loss_agg="seq-mean-token-mean",
                                                    temperature=problem["temperature"], backend="torch")
    assert torch.equal(loss, want) and metrics.keys() == want_metrics.keys()


@pytest.mark.parametrize(
    "override,error,match",
    [
        (dict(mask="twos"), ValueError, "mask must hold only 0 and 1"),
        (dict(mask="short"), ValueError, r"mask must have shape \[B, T\]"),
        (dict(advantages=torch.ones(4)), ValueError, r"advantages must have shape \[B\] = \[3\]"),
        (dict(old_logprobs=torch.zeros(3, 4)), ValueError, "old_logprobs must have shape"),
        (dict(is_weights=torch.zeros(3, 5, 1)), ValueError, "is_weights must have shape"),
        (dict(targets="out_of_range"), ValueError, r"targets must lie in \[0, 37\) where mask == 1; found 37"),
        (dict(targets="float"), TypeError, "targets must be an integer tensor"),
        (dict(hidden=torch.zeros(15, 16)), ValueError, r"hidden must have shape \[B, T, H\]"),
        (dict(clip_low=-0.2), ValueError, "clip_low must be a finite number >= 0"),
        (dict(dual_clip=0.9), ValueError, "dual_clip must be > 1"),
        (dict(loss_agg="sum"), ValueError, "loss_agg must be one of"),
        (dict(kl_estimator="k4", kl_coef=0.1), ValueError, "kl_estimator must be one of 'k1', 'k2', 'k3'"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    ],
)
def test_bad_input_raises_before_any_kernel(monkeypatch, override, error, match):
    problem = make_problem()
    special = {
        "twos": problem["mask"] * 2, "short": problem["mask"][:, :4],
        "out_of_range": torch.where(problem["mask"] == 1, 37, 0), "float": problem["targets"].float(),
    }
    args = dict(hidden=problem["hidden"], weight=problem["weight"], targets=problem["targets"], mask=problem["mask"],
                advantages=problem["advantages"], ref_logprobs=problem["ref_logprobs"])
    args.update({k: special.get(v, v) if isinstance(v, str) else v for k, v in override.items()})
    launched = []
    real = losses_module.scored_head

    def spy(*args, **kw):  # every backend's work starts from the scored rows' LMHead
        launched.append(True)
        return real(*args, **kw)

    monkeypatch.setattr(losses_module, "scored_head", spy)
    with pytest.raises(error, match=match):
        fused_linear_asymgrpo_loss(**args)
    assert not launched, "the kernel core ran before the bad argument was caught"


@pytest.mark.parametrize("old", ["on-policy", "given"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_pass_torch_path_equals_the_two_pass_composition(old, dtype):
    """With gradients wanted, the torch backend forms each chunk's gradients in the forward pass
    (three LM-head matmuls). It must equal fused_linear_logprob_entropy -> asym_policy_loss,
    also under a scaled upstream gradient and with several chunks."""
    from asymgrpo_kernels import asym_policy_loss, fused_linear_logprob_entropy

    gen = torch.Generator().manual_seed(7)
    b, t, h, v = 3, 9, 16, 130
    hidden = torch.randn(b, t, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / 4).to(dtype)
    bias = torch.randn(v, generator=gen).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.3).long()
    adv = torch.randn(b, generator=gen)
    old_logprobs = None if old == "on-policy" else -4 * torch.rand(b, t, generator=gen)
    kw = dict(entropy_coef=0.02, clip_high=0.28, loss_agg="seq-mean-token-mean")
    small_workspace = v * 4 * 4 * 2  # two rows per chunk

    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    loss, metrics = fused_linear_asymgrpo_loss(
        leaves[0], leaves[1], targets, mask, adv, old_logprobs=old_logprobs, bias=leaves[2], temperature=0.8,
        backend="torch", workspace_bytes=small_workspace, **kw,
    )
    (3.0 * loss).backward()

    twin = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    logp, ent = fused_linear_logprob_entropy(
        twin[0], twin[1], torch.where(mask.bool(), targets, -100), bias=twin[2], temperature=0.8, backend="torch",
        workspace_bytes=small_workspace,
    )
    loss2, metrics2 = asym_policy_loss(logp, old_logprobs, adv, mask, entropy=ent, backend="torch", **kw)
    (3.0 * loss2).backward()

    torch.testing.assert_close(loss, loss2, rtol=1e-6, atol=1e-6)
    for name in metrics2:
        torch.testing.assert_close(metrics[name], metrics2[name], rtol=1e-6, atol=1e-6, msg=name)
    # bf16 gradients round where the two paths apply the upstream scale (before / after the
    # matmul): a few bf16 ulps of the gradient's scale
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, c in zip(leaves, twin):
        scale = c.grad.float().abs().max().item()
        assert scale > 0
        torch.testing.assert_close(a.grad.float(), c.grad.float(), rtol=0, atol=tol * scale)
