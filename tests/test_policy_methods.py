"""The entropy-control policy losses (docs/algorithm.md §8): GSPO, CISPO, Clip-Cov, KL-Cov, the entropy quantile.

Each against the float64 formula (``reference.policy_loss_reference``), values and gradients, on
the per-token loss and through the fused LM-head loss, every backend (on CUDA when the machine
has it, Triton natively; else on the CPU, Triton under the interpreter); against verl's own
``core_algos`` functions (gspo, cispo, clip_cov, kl_cov) and TRL's ``get_high_entropy_mask``;
and the fused path of the batch-statistic methods runs its two passes and never holds
[tokens x vocab].
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from asymgrpo_kernels import LossOptions, asym_policy_loss, fused_linear_asymgrpo_loss
from asymgrpo_kernels.batch_statistics import high_entropy_tokens, sequence_means
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import asymgrpo_loss_reference, policy_loss_reference

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no Triton"))]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the backend tests run (Triton natively on CUDA)

#: Every method with options that make its selection bite on a batch of ~40 tokens.
METHODS = {
    "gspo": dict(policy_loss="gspo"),
    "gspo-dual": dict(policy_loss="gspo", dual_clip=3.0, clip_low=0.1, clip_high=0.1),
    "cispo": dict(policy_loss="cispo", clip_low=0.99, clip_high=0.3),
    "clip_cov": dict(policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-0.5, clip_cov_ub=2.0),
    "kl_cov": dict(policy_loss="kl_cov", kl_cov_ratio=0.15, kl_cov_coef=0.7),
    "top_entropy": dict(top_entropy_quantile=0.3),
    "top_entropy+clip_cov": dict(policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-0.5,
                                 top_entropy_quantile=0.5),
}


def batch(seed: int, batch_size: int = 5, seq_len: int = 9, dtype=torch.float64, token_advantages: bool = False):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch_size, seq_len, generator=gen, dtype=dtype) * 3
    return dict(
        logprobs=logp,
        old_logprobs=logp + 0.4 * torch.randn(batch_size, seq_len, generator=gen, dtype=dtype),
        advantages=torch.randn(batch_size, *((seq_len,) if token_advantages else ()), generator=gen, dtype=dtype),
        mask=(torch.rand(batch_size, seq_len, generator=gen) > 0.25).float(),
        entropy=torch.rand(batch_size, seq_len, generator=gen, dtype=dtype) * 2,
        is_weights=0.5 + torch.rand(batch_size, seq_len, generator=gen, dtype=dtype),
    )


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("extras", ["plain", "is+kl+bonus"])
def test_policy_loss_matches_the_float64_formula(backend, method, loss_agg, extras):
    data = {k: v.to(DEVICE) for k, v in batch(3).items()}
    options = dict(METHODS[method], loss_agg=loss_agg)
    kwargs = {}
    if extras != "plain":
        options.update(kl_coef=0.05, entropy_coef=0.01)
        kwargs = dict(is_weights=data["is_weights"], ref_logprobs=data["logprobs"] - 0.1)
    dtype = torch.float64 if backend == "torch" else torch.float32
    logp = data["logprobs"].to(dtype).requires_grad_()
    entropy = data["entropy"].to(dtype).requires_grad_()
    cast = {k: v.to(dtype) for k, v in kwargs.items()}
    torch.manual_seed(11)
    loss, metrics = asym_policy_loss(logp, data["old_logprobs"].to(dtype), data["advantages"].to(dtype), data["mask"],
                                     entropy=entropy, backend=backend, **cast, **options)
    got = grads(loss, logp, entropy)

    ref_logp = data["logprobs"].clone().requires_grad_()
    ref_entropy = data["entropy"].clone().requires_grad_()
    torch.manual_seed(11)
    ref = policy_loss_reference(ref_logp, data["old_logprobs"], data["advantages"], data["mask"], entropy=ref_entropy,
                                **kwargs, **options)
    want = grads(ref, ref_logp, ref_entropy)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)
    if "cov" in options.get("policy_loss", ""):
        assert 0 < metrics["cov_frac"] < 1
    if "top_entropy_quantile" in options:
        assert 0 < metrics["entropy_kept_frac"] < 1


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_fused_loss_matches_the_float64_formula(backend, method, temperature):
    gen = torch.Generator().manual_seed(7)
    batch_size, seq_len, hidden_size, vocab = 3, 11, 16, 37  # odd sizes
    hidden = torch.randn(batch_size, seq_len, hidden_size, generator=gen).to(DEVICE).requires_grad_()
    weight = (0.3 * torch.randn(vocab, hidden_size, generator=gen)).to(DEVICE).requires_grad_()
    targets = torch.randint(vocab, (batch_size, seq_len), generator=gen).to(DEVICE)
    mask = (torch.rand(batch_size, seq_len, generator=gen) > 0.3).float().to(DEVICE)
    mask[:, :3] = 0  # prompts left in the batch
    hidden.data[:, 0] = float("nan")  # never scored, never read
    advantages = torch.randn(batch_size, generator=gen).to(DEVICE)
    old = (-3 * torch.rand(batch_size, seq_len, generator=gen)).to(DEVICE)
    options = METHODS[method]
    torch.manual_seed(5)
    loss, metrics = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, advantages, old_logprobs=old,
                                               temperature=temperature, backend=backend, **options)
    got = grads(loss, hidden, weight)
    torch.manual_seed(5)
    clean = torch.where(torch.isnan(hidden), 0.0, hidden).double()
    ref = asymgrpo_loss_reference(clean, weight.double(), targets, mask, advantages.double(), old_logprobs=old.double(),
                                  temperature=temperature, **options)
    want = grads(ref, clean, weight)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=2e-5, atol=2e-6)
    assert torch.equal(got[0][:, :3], torch.zeros_like(got[0][:, :3]))


@pytest.mark.parametrize("method", ["gspo", "kl_cov", "top_entropy"])
def test_fused_loss_under_autocast_and_twice_through_one_graph(method):
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 13, 16, generator=gen).requires_grad_()
    weight = (0.3 * torch.randn(29, 16, generator=gen)).requires_grad_()
    targets = torch.randint(29, (2, 13), generator=gen)
    mask, advantages = torch.ones(2, 13), torch.tensor([0.7, -1.1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, advantages, backend="torch",
                                             **METHODS[method])
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    loss.backward()
    torch.testing.assert_close(hidden.grad, 2 * first)
    ref = asymgrpo_loss_reference(hidden.detach().bfloat16().double(), weight.detach().bfloat16().double(), targets,
                                  mask, advantages.double(), **METHODS[method])
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=2e-3)


def test_batch_statistic_methods_take_the_two_pass_path(monkeypatch):
    """GSPO, the covariance selections and the quantile need every token first: the torch
    backend's single-pass fusion must not run for them (and does run for PPO and CISPO, whose
    tokens are each on their own)."""
    from asymgrpo_kernels import chunked

    calls = []
    original = chunked.forward_with_grads
    monkeypatch.setattr(chunked, "forward_with_grads", lambda *a, **k: calls.append(1) or original(*a, **k))
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    args = (hidden, weight, torch.randint(11, (2, 5)), torch.ones(2, 5), torch.tensor([1.0, -1.0]))
    for name, options in METHODS.items():
        if name != "cispo":
            fused_linear_asymgrpo_loss(*args, backend="torch", **options)[0].backward()
    assert calls == []
    fused_linear_asymgrpo_loss(*args, backend="torch")[0].backward()
    fused_linear_asymgrpo_loss(*args, backend="torch", **METHODS["cispo"])[0].backward()
    assert calls == [1, 1]


def test_sequence_means_of_unsorted_lengths_and_empty_sequences():
    sequences = torch.tensor([0, 0, 0, 2, 2, 5])
    values = torch.tensor([1.0, 2.0, 9.0, 4.0, -4.0, 3.0])
    valid = torch.tensor([True, True, False, True, True, False])
    torch.testing.assert_close(sequence_means(values * valid, valid, sequences),
                               torch.tensor([1.5, 1.5, 1.5, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("top", [0.2, 0.5, 0.999])
def test_high_entropy_tokens_match_trl(top):
    """TRL's GRPOTrainer.get_high_entropy_mask, called on a one-process stand-in for its accelerator."""
    trl_trainer = pytest.importorskip("trl.trainer.grpo_trainer")

    class OneProcess:
        pad_across_processes = staticmethod(lambda tensor, dim, pad_index: tensor)
        gather = staticmethod(lambda tensor: tensor)

    gen = torch.Generator().manual_seed(1)
    entropy = torch.rand(6, 10, generator=gen).round(decimals=1)  # ties included
    mask = (torch.rand(6, 10, generator=gen) > 0.3).int()
    trl_mask = trl_trainer.GRPOTrainer.get_high_entropy_mask(
        type("Stand-in", (), {"accelerator": OneProcess()})(), entropy, mask, 1 - top)
    assert torch.equal(high_entropy_tokens(entropy.reshape(-1), mask.bool().reshape(-1), top), trl_mask.reshape(-1))


def verl_config(**policy_loss):
    """A real verl ``ActorConfig`` with the clip range and the PolicyLossConfig fields given."""
    from verl.workers.config import ActorConfig, PolicyLossConfig

    clip = dict(clip_ratio=0.2, clip_ratio_low=policy_loss.pop("clip_ratio_low", 0.2),
                clip_ratio_high=policy_loss.pop("clip_ratio_high", 0.28))
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(**policy_loss), **clip)  # fmt: skip


#: verl loss mode and its config -> our options.
VERL_CASES = {
    "gspo": (dict(loss_mode="gspo", clip_ratio_low=3e-4, clip_ratio_high=4e-4),
             dict(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4)),
    "cispo": (dict(loss_mode="cispo", clip_ratio_low=0.9, clip_ratio_high=0.5),
              dict(policy_loss="cispo", clip_low=0.9, clip_high=0.5)),
    "clip_cov": (dict(loss_mode="clip_cov", clip_cov_ratio=0.1, clip_cov_lb=0.05, clip_cov_ub=3.0),
                 dict(policy_loss="clip_cov", clip_cov_ratio=0.1, clip_cov_lb=0.05, clip_cov_ub=3.0)),
    "kl_cov": (dict(loss_mode="kl_cov", kl_cov_ratio=0.1, ppo_kl_coef=0.5),
               dict(policy_loss="kl_cov", kl_cov_ratio=0.1, kl_cov_coef=0.5)),
}


@pytest.mark.parametrize("mode", VERL_CASES)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("weights", [False, True])
def test_matches_verl_core_algos(mode, loss_agg, weights):
    verl_core = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is an optional extra")
    verl_options, options = VERL_CASES[mode]
    data = batch(21, batch_size=6, seq_len=12, dtype=torch.float32, token_advantages=True)
    data["old_logprobs"] = data["logprobs"] + 0.05 * torch.randn(6, 12, generator=torch.Generator().manual_seed(4))
    is_weights = data["is_weights"] if weights else None
    ours_logp = data["logprobs"].clone().requires_grad_()
    torch.manual_seed(9)
    ours, metrics = asym_policy_loss(ours_logp, data["old_logprobs"], data["advantages"], data["mask"],
                                     is_weights=is_weights, backend="torch", loss_agg=loss_agg, **options)
    theirs_logp = data["logprobs"].clone().requires_grad_()
    torch.manual_seed(9)
    theirs, verl_metrics = verl_core.get_policy_loss_fn(mode)(
        old_log_prob=data["old_logprobs"], log_prob=theirs_logp, advantages=data["advantages"],
        response_mask=data["mask"], loss_agg_mode=loss_agg, config=verl_config(**verl_options),
        rollout_is_weights=is_weights)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(ours, ours_logp)[0], grads(theirs, theirs_logp)[0], rtol=1e-5, atol=1e-7)
    if mode == "clip_cov":  # verl's pg_clipfrac is the share of tokens it cut
        assert metrics["cov_frac"].item() == pytest.approx(verl_metrics["actor/pg_clipfrac"], abs=1e-6)
        assert metrics["cov_frac"] > 0


@pytest.mark.parametrize(
    "options, error",
    [
        (dict(policy_loss="clipcov"), r"policy_loss must be one of 'ppo', 'gspo', 'cispo', 'clip_cov', 'kl_cov'"),
        (dict(policy_loss="kl_cov", dual_clip=3.0), r"dual_clip applies to the clipped surrogates"),
        (dict(top_entropy_quantile=0.0), r"top_entropy_quantile must be a finite number > 0"),
        (dict(top_entropy_quantile=1.5), r"top_entropy_quantile must be in \(0, 1\]"),
        (dict(clip_cov_lb=2.0, clip_cov_ub=1.0), r"clip_cov_ub must be > clip_cov_lb"),
        (dict(kl_cov_ratio=0.0), r"kl_cov_ratio must be a finite number > 0"),
        (dict(clip_cov_ratio=3.0), r"clip_cov_ratio must be in \(0, 1\]"),
        (dict(kl_cov_coef=-1.0), r"kl_cov_coef must be a finite number >= 0"),
    ],
)
def test_bad_method_options_are_named(options, error):
    with pytest.raises(ValueError, match=error):
        LossOptions(**options)


def test_the_entropy_quantile_needs_the_entropy():
    data = batch(0)
    with pytest.raises(ValueError, match=r"top_entropy_quantile < 1 needs the per-token entropy"):
        asym_policy_loss(data["logprobs"], data["old_logprobs"], data["advantages"], data["mask"],
                         top_entropy_quantile=0.2)


def test_clip_cov_refuses_a_vocab_parallel_group():
    group = object()  # refused before the group is used
    with pytest.raises(ValueError, match=r"policy_loss='clip_cov' draws its tokens from torch's global CPU generator"):
        fused_linear_asymgrpo_loss(torch.randn(1, 2, 4), torch.randn(3, 4), torch.zeros(1, 2, dtype=torch.long),
                                   torch.ones(1, 2), torch.ones(1), backend="torch", policy_loss="clip_cov",
                                   process_group=group)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from asymgrpo_kernels import fused_linear_asymgrpo_loss

    def rss(field):
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith(field)).split()[1]) * 1024

    n, h, v = 16_384, 32, 32_768
    options = json.loads(sys.argv[1])
    torch.manual_seed(0)
    hidden = torch.randn(1, n, h, requires_grad=True)
    weight = (torch.randn(v, h) / h ** 0.5).requires_grad_()
    targets, mask = torch.randint(0, v, (1, n)), torch.ones(1, n)
    advantages, old = torch.ones(1, n), -torch.rand(1, n) * 5
    advantages[:, ::3] = -1.0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss("VmRSS:")
    loss, metrics = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, advantages, old_logprobs=old,
                                               backend="torch", **options)
    loss.backward()
    extra = rss("VmHWM:") - before - (hidden.numel() + weight.numel()) * 4
    print(json.dumps({"extra_bytes": extra, "finite": bool(hidden.grad.isfinite().all())}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["top_entropy+clip_cov"])
def test_batch_statistic_methods_never_hold_the_logits(method):
    logits_bytes = 16_384 * 32_768 * 4
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, json.dumps(METHODS[method])], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["extra_bytes"] < logits_bytes / 4, f"peak extra {result['extra_bytes'] / 2**20:.0f} MiB"
