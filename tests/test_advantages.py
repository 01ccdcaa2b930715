"""group_advantages: closed forms, GRPO / TRL / verl conventions, grouping, backends, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymgrpo_kernels import STD_CONVENTIONS, AdvantageOptions, group_advantages, modulate_advantages
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.reference import group_advantages_reference

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="triton cannot run here")),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = settings(max_examples=25, deadline=None)


def closed_form(correct: int, size: int, beta_pos: float, beta_neg: float) -> tuple[float, float]:
    """(A+, A-) of docs/algorithm.md §2 for a 0/1 group with `correct` ones out of `size`."""
    p = correct / size
    return ((1 - p) / p) ** beta_pos, -((p / (1 - p)) ** beta_neg)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta_pos,beta_neg", [(0.9, 0.4), (0.5, 0.5), (0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (1.3, 0.75)])
def test_binary_rewards_reproduce_closed_forms(backend, beta_pos, beta_neg):
    size = 8
    rewards = torch.tensor([float(i < k) for k in range(size + 1) for i in range(size)], device=DEVICE)
    adv = group_advantages(rewards, group_size=size, beta_pos=beta_pos, beta_neg=beta_neg, backend=backend).cpu()
    assert adv.dtype == torch.float32
    for k in range(size + 1):
        group = adv[k * size:(k + 1) * size]
        if k in (0, size):
            assert torch.equal(group, torch.zeros(size)), "all-equal groups carry no signal"
            continue
        a_pos, a_neg = closed_form(k, size, beta_pos, beta_neg)
        torch.testing.assert_close(group[:k], torch.full((k,), a_pos), rtol=2e-6, atol=0)
        torch.testing.assert_close(group[k:], torch.full((size - k,), a_neg), rtol=2e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_half_is_grpo_with_population_std(backend):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(6, 5, generator=gen)
    r = rewards.double()  # the convention's formula, evaluated without float32 rounding
    expected = (r - r.mean(1, keepdim=True)) / r.std(1, unbiased=False, keepdim=True)
    adv = group_advantages(rewards.flatten().to(DEVICE), group_size=5, beta_pos=0.5, beta_neg=0.5, backend=backend)
    torch.testing.assert_close(adv.cpu().double(), expected.flatten(), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", [1e-6, 1e-4])
def test_unbiased_std_matches_trl_and_verl_exactly(backend, eps):
    """TRL: (r - mean) / (r.view(-1, G).std(1) + 1e-4); verl: the same per uid with eps 1e-6."""
    gen = torch.Generator().manual_seed(1)
    size = 8
    rewards = torch.cat([torch.rand(3 * size, generator=gen), (torch.rand(2 * size, generator=gen) > 0.5).float()])
    adv = group_advantages(rewards.to(DEVICE), group_size=size, beta_pos=0.5, beta_neg=0.5,
                           std="unbiased", eps=eps, backend=backend)
    for dtype, tol in ((torch.float64, 1e-7), (torch.float32, 1e-6)):  # exact math; the peers' float32 code
        grouped = rewards.to(dtype).view(-1, size)
        peer = (rewards.to(dtype) - grouped.mean(1).repeat_interleave(size)) / (grouped.std(1).repeat_interleave(size) + eps)
        torch.testing.assert_close(adv.cpu().to(dtype), peer, rtol=tol, atol=tol)
    # the unbiased std is sqrt(G / (G - 1)) times the population one, so the peers' advantage is
    # the population advantage times sqrt((G - 1) / G) (0.935 at G = 8), up to eps
    pop = group_advantages(rewards.to(DEVICE), group_size=size, beta_pos=0.5, beta_neg=0.5, backend=backend).cpu()
    torch.testing.assert_close(adv.cpu(), pop * math.sqrt((size - 1) / size), rtol=50 * eps, atol=1e-7)  # eps / std, std >= 0.02 here


@pytest.mark.parametrize("backend", BACKENDS)
def test_dr_grpo_and_reinforce(backend):
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.5, 1.0, 0.0, 0.0, 0.0], device=DEVICE)
    dr = group_advantages(rewards, group_size=4, beta_pos=0.5, beta_neg=0.5, normalize="none", backend=backend).cpu()
    grouped = rewards.cpu().view(2, 4)
    torch.testing.assert_close(dr, (grouped - grouped.mean(1, keepdim=True)).flatten(), rtol=1e-6, atol=1e-7)
    reinforce = group_advantages(rewards, group_size=4, beta_pos=0.0, beta_neg=0.0, backend=backend).cpu()
    assert reinforce.tolist() == [-1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_groups_give_zero(backend):
    # all-equal groups (also values whose float mean is inexact), groups of one
    rewards = torch.tensor([0.1] * 7 + [0.3] + [5.0, 5.0, 5.0], device=DEVICE)
    ids = torch.tensor([0] * 7 + [1] + [2, 2, 2], device=DEVICE)
    for kw in ({}, {"std": "unbiased"}, {"normalize": "none"}, {"beta_pos": 0.0, "beta_neg": 0.0}):
        adv = group_advantages(rewards, ids, backend=backend, **kw)
        assert torch.equal(adv.cpu(), torch.zeros(11)), kw


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_floors_the_population_std(backend):
    # differences at noise level are not blown up to unit size: z = dev / max(std, eps)
    rewards = torch.tensor([1.0, 1.0 + 2**-20], dtype=torch.float64, device=DEVICE)
    adv = group_advantages(rewards, group_size=2, beta_pos=0.5, beta_neg=0.5, eps=1e-3, backend=backend).cpu()
    expected = torch.tensor([-1.0, 1.0]) * (2**-21 / 1e-3)
    torch.testing.assert_close(adv, expected.float(), rtol=1e-6, atol=0)
    raw = group_advantages(rewards, group_size=2, beta_pos=0.5, beta_neg=0.5, eps=0.0, backend=backend).cpu()
    assert raw.tolist() == [-1.0, 1.0]


@st.composite
def grouped_rewards(draw):
    sizes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=6))
    binary = draw(st.booleans())
    values = st.sampled_from([0.0, 1.0]) if binary else st.floats(-5, 5, allow_nan=False, width=32)
    rewards = [draw(values) for _ in range(sum(sizes))]
    labels = [label * 7 - 3 for label, size in enumerate(sizes) for _ in range(size)]
    perm = draw(st.permutations(range(len(labels))))
    return torch.tensor([rewards[i] for i in perm]), torch.tensor([labels[i] for i in perm])


betas = st.floats(0.0, 1.5, allow_nan=False)


stds = st.sampled_from(["population", "unbiased"])


@FAST
@given(data=grouped_rewards(), beta_pos=betas, beta_neg=betas, normalize=st.sampled_from(["std", "none"]), std=stds)
def test_property_matches_float64_reference(data, beta_pos, beta_neg, normalize, std):
    rewards, ids = data
    kw = dict(beta_pos=beta_pos, beta_neg=beta_neg, normalize=normalize, std=std)
    adv = group_advantages(rewards.to(DEVICE), ids.to(DEVICE), backend="torch", **kw).cpu()
    expected = group_advantages_reference(rewards, ids, **kw)
    torch.testing.assert_close(adv.double(), expected, rtol=5e-6, atol=1e-6)
    # sign follows r - mean, and each group's advantages are permutation-equivariant
    for label in ids.unique():
        rows = ids == label
        dev = rewards[rows].double() - rewards[rows].double().mean()
        nonzero = adv[rows] != 0
        assert torch.all(torch.sign(adv[rows][nonzero]) == torch.sign(dev[nonzero]))


@FAST
@given(data=grouped_rewards(), beta_pos=betas, beta_neg=betas)
def test_property_group_ids_equal_contiguous_groups(data, beta_pos, beta_neg):
    rewards, ids = data
    order = torch.argsort(ids, stable=True)
    by_ids = group_advantages(rewards, ids, beta_pos=beta_pos, beta_neg=beta_neg)
    sizes = torch.unique(ids, return_counts=True)[1]
    if bool((sizes == sizes[0]).all()):
        contiguous = group_advantages(rewards[order], group_size=int(sizes[0]), beta_pos=beta_pos, beta_neg=beta_neg)
        assert torch.equal(by_ids[order], contiguous)


@FAST
@given(correct=st.integers(1, 15), extra=st.integers(1, 15), beta_pos=betas, beta_neg=betas)
def test_property_binary_closed_forms(correct, extra, beta_pos, beta_neg):
    size = correct + extra
    rewards = torch.tensor([1.0] * correct + [0.0] * extra)
    adv = group_advantages(rewards, group_size=size, beta_pos=beta_pos, beta_neg=beta_neg)
    a_pos, a_neg = closed_form(correct, size, beta_pos, beta_neg)
    torch.testing.assert_close(adv, torch.tensor([a_pos] * correct + [a_neg] * extra), rtol=4e-6, atol=0)


@pytest.mark.skipif(not triton_available(), reason="triton cannot run here")
@settings(max_examples=6, deadline=None)
@given(data=grouped_rewards(), beta_pos=betas, beta_neg=betas, normalize=st.sampled_from(["std", "none"]), std=stds,
       holes=st.lists(st.integers(0, 40), max_size=6))
def test_property_triton_equals_torch(data, beta_pos, beta_neg, normalize, std, holes):
    rewards, ids = (t.to(DEVICE) for t in data)
    rewards[[h % rewards.numel() for h in holes]] = float("nan")
    kw = dict(beta_pos=beta_pos, beta_neg=beta_neg, normalize=normalize, std=std, nan_rewards="exclude")
    fast = group_advantages(rewards, ids, backend="triton", **kw)
    torch.testing.assert_close(fast, group_advantages(rewards, ids, backend="torch", **kw), rtol=2e-6, atol=1e-7)


@pytest.mark.skipif(not triton_available(), reason="triton cannot run here")
def test_triton_group_larger_than_one_tile():
    from asymgrpo_kernels.triton import advantages as kernel

    size = kernel.MAX_BLOCK * 2 + 37
    rewards = torch.rand(size + 3, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ids = torch.tensor([0] * size + [1, 1, 1], device=DEVICE)
    fast = group_advantages(rewards, ids, backend="triton")
    torch.testing.assert_close(fast, group_advantages(rewards, ids, backend="torch"), rtol=2e-6, atol=1e-7)


def test_empty_batch():
    assert group_advantages(torch.zeros(0), group_size=4).shape == (0,)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(), ValueError, "exactly one of group_ids"),
        (dict(group_size=4, group_ids=torch.zeros(8, dtype=torch.long)), ValueError, "exactly one of group_ids"),
        (dict(group_size=3), ValueError, "group_size must divide B = 8"),
        (dict(group_size=0), ValueError, "group_size must be an int > 0"),
        (dict(group_size=2.0), TypeError, "group_size must be an int"),
        (dict(group_ids=torch.zeros(7, dtype=torch.long)), ValueError, "group_ids must have the shape"),
        (dict(group_ids=torch.zeros(8)), TypeError, "group_ids must be an integer tensor"),
        (dict(group_size=4, normalize="mean"), ValueError, "normalize must be one of 'std', 'none'"),
        (dict(group_size=4, beta_pos=-0.1), ValueError, "beta_pos must be a finite number >= 0"),
        (dict(group_size=4, beta_neg=float("nan")), ValueError, "beta_neg must be a finite number >= 0"),
        (dict(group_size=4, eps=-1.0), ValueError, "eps must be a finite number >= 0"),
        (dict(group_size=4, std="bessel"), ValueError, "std must be one of 'population', 'unbiased'"),
        (dict(group_size=4, unbiased_std=True), TypeError, "unexpected keyword argument.*'unbiased_std'"),
        (dict(group_size=4, nan_rewards="zero"), ValueError, "nan_rewards must be one of 'raise', 'exclude'"),
        (dict(group_size=4, backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        group_advantages(torch.rand(8), **kwargs)


def test_bad_rewards():
    with pytest.raises(TypeError, match="rewards must be a floating-point tensor"):
        group_advantages(torch.ones(4, dtype=torch.long), group_size=2)
    with pytest.raises(ValueError, match=r"rewards must have shape \[B\]"):
        group_advantages(torch.ones(2, 2), group_size=2)
    rewards = torch.tensor([0.0, 1.0, 1.0, float("nan"), 0.0, 1.0])
    with pytest.raises(ValueError, match="group 1 has nan at index 3"):
        group_advantages(rewards, group_size=3)
    with pytest.raises(ValueError, match="group_ids=42 has inf at index 2"):
        group_advantages(torch.tensor([0.0, 1.0, float("inf")]), torch.tensor([7, 7, 42]))


@FAST
@given(data=grouped_rewards(), beta_pos=betas, beta_neg=betas, normalize=st.sampled_from(["std", "none"]), std=stds,
       holes=st.lists(st.integers(0, 60), min_size=1, max_size=8))
def test_property_excluded_nan_rewards_leave_their_group(data, beta_pos, beta_neg, normalize, std, holes):
    """With nan_rewards="exclude" a NaN reward gets 0 and the others get the advantages of the
    group without it: the float64 reference on the NaN-free rows, group by group."""
    rewards, ids = data
    rewards[[h % rewards.numel() for h in holes]] = float("nan")
    kw = dict(beta_pos=beta_pos, beta_neg=beta_neg, normalize=normalize, std=std)
    adv = group_advantages(rewards, ids, nan_rewards="exclude", backend="torch", **kw)
    holes_mask = torch.isnan(rewards)
    assert torch.all(adv[holes_mask] == 0)
    kept = ~holes_mask
    expected = group_advantages_reference(rewards[kept], ids[kept], **kw)
    torch.testing.assert_close(adv[kept].double(), expected, rtol=5e-6, atol=1e-6)


def test_excluded_nan_reward_keeps_the_closed_forms_of_the_rest():
    """A group of 5 with one unscorable completion is a group of 4 with 1 correct (p = 1/4)."""
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=5, nan_rewards="exclude")
    a_pos, a_neg = closed_form(1, 4, 0.9, 0.4)
    torch.testing.assert_close(adv, torch.tensor([a_pos, 0.0, a_neg, a_neg, a_neg]), rtol=4e-6, atol=0)
    # a group left with one scored reward (or none) carries no signal
    lone = group_advantages(torch.tensor([1.0, float("nan"), float("nan"), float("nan")]), group_size=2,
                            nan_rewards="exclude")
    assert lone.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_excluded_nan_rewards_still_reject_inf():
    with pytest.raises(ValueError, match=r"rewards must be finite or NaN \(nan_rewards='exclude'\); group 0 has inf"):
        group_advantages(torch.tensor([float("inf"), float("nan"), 0.0, 1.0]), group_size=4, nan_rewards="exclude")


def test_std_conventions_name_the_trainers():
    """STD_CONVENTIONS holds TRL's and verl's (Bessel std + 1e-4 / 1e-6) and ours."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    grouped = rewards.view(2, 4)
    for name, eps in (("trl", 1e-4), ("verl", 1e-6)):
        options = AdvantageOptions.from_preset("grpo", **STD_CONVENTIONS[name])
        peer = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)
        torch.testing.assert_close(group_advantages(rewards, group_size=4, options=options), peer.flatten())
    population = AdvantageOptions.from_preset("asymgrpo", **STD_CONVENTIONS["population"])
    assert population == AdvantageOptions()


@pytest.mark.parametrize("beta_pos,beta_neg", [(0.5, 0.5), (0.9, 0.4), (0.0, 1.2)])
def test_modulate_advantages_is_the_modulation_of_group_advantages(beta_pos, beta_neg):
    z = torch.tensor([[-2.5, -1.0, -0.3, 0.0], [0.2, 1.0, 1.7, 3.0]], dtype=torch.float64)
    adv = modulate_advantages(z, beta_pos, beta_neg)
    assert adv.dtype == torch.float32 and adv.shape == z.shape
    exponent = torch.where(z > 0, 2 * beta_pos, 2 * beta_neg)
    torch.testing.assert_close(adv.double(), torch.sign(z) * z.abs() ** exponent, rtol=2e-6, atol=0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    z_pop = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    torch.testing.assert_close(modulate_advantages(z_pop, beta_pos, beta_neg),
                               group_advantages(rewards, group_size=6, beta_pos=beta_pos, beta_neg=beta_neg))


def test_modulate_advantages_bad_arguments():
    with pytest.raises(ValueError, match="beta_pos must be a finite number >= 0"):
        modulate_advantages(torch.ones(2), -1.0, 0.5)
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        modulate_advantages(torch.ones(2, dtype=torch.long), 0.5, 0.5)
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        modulate_advantages([1.0], 0.5, 0.5)
