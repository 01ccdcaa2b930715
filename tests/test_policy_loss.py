"""asym_policy_loss: values, gradients and metrics against the plain float64 formula; bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymgrpo_kernels import asym_policy_loss
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import policy_loss_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AGGS = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
OPTIONS = {
    "plain": {},
    "clip_higher": dict(clip_low=0.2, clip_high=0.28),
    "dual_clip": dict(dual_clip=1.5, clip_low=0.1),
    "is_weights": dict(is_weights=True),
    "kl_k1": dict(kl_coef=0.3, kl_estimator="k1"),
    "kl_k2": dict(kl_coef=0.3, kl_estimator="k2"),
    "kl_k3": dict(kl_coef=0.3, kl_estimator="k3"),
    "entropy_bonus": dict(entropy_coef=0.05),
    "everything": dict(clip_low=0.15, clip_high=0.3, dual_clip=2.0, is_weights=True, kl_coef=0.1, entropy_coef=0.02),
}


def make_batch(batch=4, seq_len=7, *, per_token_adv=False, seed=0, spread=0.6, dtype=torch.float64):
    """Log-probs, old log-probs whose ratios fall on both sides of the clip range, and the rest."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, seq_len, generator=gen) * 3
    data = {
        "logprobs": logp,
        "old_logprobs": logp + torch.randn(batch, seq_len, generator=gen) * spread,
        "advantages": torch.randn((batch, seq_len) if per_token_adv else (batch,), generator=gen),
        "mask": (torch.rand(batch, seq_len, generator=gen) > 0.3).long(),
        "ref_logprobs": logp + torch.randn(batch, seq_len, generator=gen) * 0.5,
        "entropy": torch.rand(batch, seq_len, generator=gen) * 4,
        "is_weights": torch.rand(batch, seq_len, generator=gen) * 1.5,
    }
    data["mask"][0, 0] = 1
    data["mask"][-1] = 0  # one fully masked sequence
    return {k: v.to(DEVICE, dtype if v.is_floating_point() else v.dtype) for k, v in data.items()}


def run(fn, data, options, **extra):
    """Loss and gradients with respect to (logprobs, entropy) of one implementation."""
    logp = data["logprobs"].detach().clone().requires_grad_()
    ent = data["entropy"].detach().clone().requires_grad_()
    kw = dict(options)
    if kw.pop("is_weights", False):
        kw["is_weights"] = data["is_weights"]
    kw.update(extra)
    out = fn(logp, data["old_logprobs"], data["advantages"], data["mask"], ref_logprobs=data["ref_logprobs"], entropy=ent, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return loss.detach(), logp.grad, ent.grad


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_torch_matches_float64_formula(agg, name, per_token_adv):
    data = make_batch(per_token_adv=per_token_adv, seed=len(name))
    got = run(asym_policy_loss, data, OPTIONS[name], loss_agg=agg, backend="torch")
    want = run(policy_loss_reference, data, OPTIONS[name], loss_agg=agg)
    assert got[0].dtype == torch.float64
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("entropy_agg", AGGS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("entropy_num_items", [None, 7.0])
def test_entropy_term_aggregated_on_its_own(entropy_agg, agg, entropy_num_items):
    """entropy_agg: the bonus -entropy_coef * H takes its own aggregation and count (TRL's convention
    is a token mean over the micro-batch while the policy term follows loss_type)."""
    data = make_batch(seed=11)
    options = dict(OPTIONS["everything"], loss_agg=agg, num_items=3.0, entropy_agg=entropy_agg,
                   entropy_num_items=entropy_num_items)
    got = run(asym_policy_loss, data, options, backend="torch")
    want = run(policy_loss_reference, data, options)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # the policy term is unchanged: with entropy_coef 0 entropy_agg has no effect
    plain = dict(options, entropy_coef=0.0)
    assert torch.equal(run(asym_policy_loss, data, plain)[0], run(asym_policy_loss, data, dict(plain, entropy_agg=None,
                                                                                              entropy_num_items=None))[0])


def test_token_sum_scales_with_num_items():
    """token-sum is the masked sum; num_items divides it (1 / world size under gradient averaging)."""
    data = make_batch(seed=2)
    total = run(asym_policy_loss, data, {}, loss_agg="token-sum")[0]
    per_rank = run(asym_policy_loss, data, {}, loss_agg="token-sum", num_items=0.5)[0]
    torch.testing.assert_close(per_rank, 2 * total, rtol=1e-12, atol=0)
    mean = run(asym_policy_loss, data, {}, loss_agg="token-mean")[0]
    torch.testing.assert_close(total, mean * data["mask"].sum(), rtol=1e-12, atol=0)


def test_entropy_metric_is_the_mean_over_scored_tokens():
    data = make_batch(seed=4)
    _, metrics = asym_policy_loss(**_call(data, {}))
    valid = data["mask"] == 1
    torch.testing.assert_close(metrics["entropy"], data["entropy"][valid].mean().float())
    _, without = asym_policy_loss(data["logprobs"], data["old_logprobs"], data["advantages"], data["mask"])
    assert "entropy" not in without


def test_ratios_cover_every_clip_branch():
    """The batches above exercise clipped-low, clipped-high, dual-clipped and unclipped tokens."""
    data = make_batch(seed=len("everything"))
    _, metrics = asym_policy_loss(data["logprobs"], data["old_logprobs"], data["advantages"], data["mask"],
                                  clip_low=0.15, clip_high=0.3, dual_clip=2.0)
    assert metrics["clip_frac_low"] > 0 and metrics["clip_frac_high"] > 0 and metrics["clip_frac_dual"] > 0
    assert metrics["clip_frac_low"] + metrics["clip_frac_high"] < 1


@pytest.mark.skipif(not triton_available(), reason="triton cannot run here")
@pytest.mark.parametrize("name", ["plain", "dual_clip", "kl_k1", "kl_k2", "everything", "entropy_agg"])
def test_triton_matches_torch(name):
    options = dict(OPTIONS["everything"], entropy_agg="token-mean", entropy_num_items=40.0) if name == "entropy_agg" \
        else OPTIONS[name]
    data = make_batch(batch=8, seq_len=300, seed=3, dtype=torch.float32)  # > 1 program, every branch
    got_loss, got_metrics = asym_policy_loss(**_call(data, options), backend="triton")
    want_loss, want_metrics = asym_policy_loss(**_call(data, options), backend="torch")
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-7)
    assert got_metrics.keys() == want_metrics.keys()
    for key in want_metrics:
        torch.testing.assert_close(got_metrics[key], want_metrics[key], rtol=1e-6, atol=1e-7)
    got = run(asym_policy_loss, data, options, backend="triton")
    want = run(asym_policy_loss, data, options, backend="torch")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def _call(data, options):
    kw = dict(options)
    if kw.pop("is_weights", False):
        kw["is_weights"] = data["is_weights"]
    return dict(logprobs=data["logprobs"], old_logprobs=data["old_logprobs"], advantages=data["advantages"],
                mask=data["mask"], ref_logprobs=data["ref_logprobs"], entropy=data["entropy"], **kw)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4), seq_len=st.integers(1, 6), seed=st.integers(0, 10_000),
    agg=st.sampled_from(AGGS), clip_low=st.floats(0, 0.5), clip_high=st.floats(0, 0.5),
    dual=st.one_of(st.none(), st.floats(1.01, 4)), kl_coef=st.floats(0, 1), estimator=st.sampled_from(["k1", "k2", "k3"]),
    entropy_coef=st.floats(-0.1, 0.1), spread=st.floats(0, 1.5), per_token_adv=st.booleans(),
)
def test_property_matches_float64_formula(batch, seq_len, seed, agg, clip_low, clip_high, dual, kl_coef, estimator,
                                          entropy_coef, spread, per_token_adv):
    data = make_batch(batch, seq_len, seed=seed, spread=spread, per_token_adv=per_token_adv)
    options = dict(clip_low=clip_low, clip_high=clip_high, dual_clip=dual, kl_coef=kl_coef, kl_estimator=estimator,
                   entropy_coef=entropy_coef, is_weights=True, loss_agg=agg)
    got = run(asym_policy_loss, data, options)
    want = run(policy_loss_reference, data, options)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_on_policy_ratio_is_one_and_gradient_is_minus_advantage():
    data = make_batch(seed=5)
    logp = data["logprobs"].clone().requires_grad_()
    loss, metrics = asym_policy_loss(logp, None, data["advantages"], data["mask"])
    m = data["mask"].double()
    adv = data["advantages"][:, None].expand_as(m)
    torch.testing.assert_close(loss, -(adv * m).sum() / m.sum())
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * m / m.sum())
    assert metrics["ratio_mean"] == 1 and metrics["ratio_max"] == 1 and metrics["approx_kl"] == 0


def test_metrics_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]))
    ratio = torch.tensor([[1.5, 0.5, 1.0, 3.0], [0.7, 1.1, 1.0, 9.0]])
    old = logp - ratio.log()
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    ent = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, 100.0]])
    ref = logp - torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.0, 0.0, 0.0, 9.0]])
    loss, m = asym_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=1.05, entropy=ent,
                               ref_logprobs=ref, kl_estimator="k1")
    assert m["tokens"] == 6
    # high clip: A > 0 and r > 1.2 (1.5); low clip: A < 0 and r < 0.8 (0.7); dual: A < 0 and r > 1.05 (1.1)
    torch.testing.assert_close(m["clip_frac_high"], torch.tensor(1 / 6))
    torch.testing.assert_close(m["clip_frac_low"], torch.tensor(1 / 6))
    torch.testing.assert_close(m["clip_frac_dual"], torch.tensor(1 / 6))
    r = ratio[:, :3].double()
    torch.testing.assert_close(m["approx_kl"], (r - 1 - r.log()).mean().float())
    torch.testing.assert_close(m["ratio_mean"], r.mean().float())
    torch.testing.assert_close(m["ratio_max"], torch.tensor(1.5))
    torch.testing.assert_close(m["ref_kl"], torch.tensor(0.6 / 6))  # k1 = logp - ref
    torch.testing.assert_close(m["entropy_pos"], torch.tensor(2.0))
    torch.testing.assert_close(m["entropy_neg"], torch.tensor(5.0))
    assert m["tokens_pos"] == 3 and m["tokens_neg"] == 3
    for value in m.values():
        assert value.dtype == torch.float32 and value.dim() == 0 and not value.requires_grad


def test_metrics_without_optional_inputs_and_empty_channels():
    logp = torch.zeros(2, 3)
    _, m = asym_policy_loss(logp, None, torch.tensor([1.0, 2.0]), torch.ones(2, 3), entropy=torch.ones(2, 3))
    assert "ref_kl" not in m and "clip_frac_dual" not in m
    assert m["tokens_neg"] == 0 and m["entropy_neg"] == 0 and m["entropy_pos"] == 1
    loss, m = asym_policy_loss(logp, None, torch.tensor([1.0, 2.0]), torch.zeros(2, 3))
    assert loss == 0 and m["tokens"] == 0 and m["ratio_max"] == 0
    assert set(m) == {"tokens", "clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean", "ratio_max"}


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_available(), reason="triton cannot run here"))])
def test_masked_positions_never_leak(backend):
    data = make_batch(seed=7, dtype=torch.float32)
    dirty = {k: v.clone() for k, v in data.items()}
    hidden = data["mask"] == 0
    for key in ("logprobs", "old_logprobs", "ref_logprobs", "entropy", "is_weights"):
        dirty[key][hidden] = float("nan")
    dirty["old_logprobs"][hidden] = float("-inf")  # ratio = inf there
    options = OPTIONS["everything"]
    clean = run(asym_policy_loss, data, options, backend=backend)
    got = run(asym_policy_loss, dirty, options, backend=backend)
    for g, w in zip(got, clean):
        torch.testing.assert_close(g, w)
    assert bool((got[1][hidden] == 0).all()) and bool((got[2][hidden] == 0).all())


@pytest.mark.parametrize("agg", AGGS)
def test_num_items_makes_micro_batches_add_up(agg):
    """Gradient accumulation: micro-batch losses with the step's count sum to the full-batch loss."""
    data = make_batch(batch=6, seq_len=5, seed=11)
    full = run(asym_policy_loss, data, OPTIONS["everything"], loss_agg=agg)
    count = {"token-mean": data["mask"].sum().item(), "token-sum": 1}.get(agg, 6)
    parts = []
    for rows in (slice(0, 2), slice(2, 6)):
        part = {k: v[rows] for k, v in data.items()}
        parts.append(run(asym_policy_loss, part, OPTIONS["everything"], loss_agg=agg, num_items=torch.tensor(count)))
    torch.testing.assert_close(parts[0][0] + parts[1][0], full[0])
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]]), full[1])
    torch.testing.assert_close(torch.cat([parts[0][2], parts[1][2]]), full[2])


def test_max_len_is_dr_grpo_constant():
    data = make_batch(seed=12)
    base = run(asym_policy_loss, data, {}, loss_agg="seq-mean-token-sum-norm")[0]
    longer = run(asym_policy_loss, data, {}, loss_agg="seq-mean-token-sum-norm", max_len=28)[0]
    torch.testing.assert_close(longer * 4, base)  # T = 7 -> 28
    summed = run(asym_policy_loss, data, {}, loss_agg="seq-mean-token-sum")[0]
    torch.testing.assert_close(base * 7, summed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    data = make_batch(seed=13, dtype=dtype)
    loss, logp_grad, ent_grad = run(asym_policy_loss, data, OPTIONS["everything"])
    assert loss.dtype == torch.float32 and logp_grad.dtype == dtype and ent_grad.dtype == dtype
    want = run(policy_loss_reference, {k: v.double() if v.is_floating_point() else v for k, v in data.items()},
               OPTIONS["everything"])
    torch.testing.assert_close(loss.double(), want[0], rtol=1e-5, atol=1e-6)


def _bad(**override):
    data = make_batch(batch=2, seq_len=3, dtype=torch.float32)
    args = dict(logprobs=data["logprobs"], old_logprobs=data["old_logprobs"], advantages=data["advantages"], mask=data["mask"])
    args.update(override)
    return args


@pytest.mark.parametrize(
    "override,error,match",
    [
        (dict(mask=torch.full((2, 3), 2)), ValueError, "mask must hold only 0 and 1, found 2"),
        (dict(mask=torch.full((2, 3), 0.5)), ValueError, "mask must hold only 0 and 1"),
        (dict(mask=torch.ones(2, 4)), ValueError, r"mask must have shape \[B, T\] = \[2, 3\]"),
        (dict(advantages=torch.ones(3)), ValueError, r"advantages must have shape \[B\] = \[2\] or \[B, T\] = \[2, 3\]"),
        (dict(advantages=torch.ones(2, 1)), ValueError, "advantages must have shape"),
        (dict(advantages=torch.ones(2, dtype=torch.long)), TypeError, "advantages must be a floating-point tensor"),
        (dict(logprobs=torch.zeros(6)), ValueError, r"logprobs must have shape \[B, T\]"),
        (dict(old_logprobs=torch.zeros(2, 4)), ValueError, r"old_logprobs must have shape \[2, 3\]"),
        (dict(ref_logprobs=torch.zeros(3, 3)), ValueError, r"ref_logprobs must have shape \[2, 3\]"),
        (dict(is_weights=torch.zeros(2, 3, dtype=torch.long)), TypeError, "is_weights must be a floating-point tensor"),
        (dict(clip_low=-0.1), ValueError, "clip_low must be a finite number >= 0"),
        (dict(clip_high=-1.0), ValueError, "clip_high must be a finite number >= 0"),
        (dict(dual_clip=1.0), ValueError, r"dual_clip must be > 1 \(or None\), got 1.0"),
        (dict(dual_clip=0.5), ValueError, "dual_clip must be > 1"),
        (dict(loss_agg="seq-mean"), ValueError, "loss_agg must be one of 'token-mean', 'token-sum', 'seq-mean-token-mean', "
                                                 "'seq-mean-token-sum', 'seq-mean-token-sum-norm'"),
        (dict(kl_estimator="low_var_kl"), ValueError, "kl_estimator must be one of 'k1', 'k2', 'k3'"),
        (dict(kl_coef=0.1), ValueError, "kl_coef != 0 needs the reference log-probs"),
        (dict(entropy_coef=0.1), ValueError, "entropy_coef != 0 needs the per-token entropy"),
        (dict(max_len=0, loss_agg="seq-mean-token-sum-norm"), ValueError, "max_len must be an int > 0"),
        (dict(max_len=8), ValueError, "max_len applies only to loss_agg='seq-mean-token-sum-norm'"),
        (dict(num_items=0), ValueError, "num_items must be a finite number > 0"),
        (dict(num_items="3"), TypeError, "num_items must be a number or a one-element tensor"),
        (dict(entropy_agg="mean"), ValueError, "entropy_agg must be one of 'token-mean', 'token-sum'"),
        (dict(entropy_num_items=4.0), ValueError, "entropy_num_items applies only with entropy_agg set"),
        (dict(entropy_agg="token-mean", entropy_num_items=-1.0), ValueError,
         "entropy_num_items must be a finite number > 0"),
        (dict(entropy_agg="token-mean", entropy_num_items=torch.tensor(0.0)), ValueError,
         "entropy_num_items must be a finite number > 0, got 0.0"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input(override, error, match):
    with pytest.raises(error, match=match):
        asym_policy_loss(**_bad(**override))
