"""Vocabulary-parallel kernel core and loss on real gloo processes, against the float64 single-process reference.

Each run spawns P ranks (``ranks.run_ranks``) that hold contiguous, unequal shards of the LM head
(``vocab_parallel_cases``). Checked: log-probs, entropies, losses and metrics equal the
single-process float64 results to the float32 tolerance of the other tests, and are the same
bits on every rank, as is the hidden gradient; each rank's weight / bias gradient is its rows of
the full one; torch and Triton (interpreter) backends, ignored and masked tokens, temperatures,
every loss aggregation, explicit vocab_start, an empty shard and a sub-group; bad layouts raise
the same ValueError on every rank (never a hang); a DTensor head from FSDP2 gets FSDP2's gradient;
and no rank's peak memory comes near [tokens x vocab].
"""

from __future__ import annotations

import pytest
import torch

from asymgrpo_kernels import fused_linear_asymgrpo_loss
from asymgrpo_kernels.reference import logprob_entropy_reference
from benchmarks.ranks import run_ranks
from test_fused_loss import AGGS, OPTIONS, run
from vocab_parallel_cases import (BACKENDS, TEMPERATURES, error_cases, fsdp2_head, parallel_cases, peak_memory,
                                  scored_targets, upstream, verl_linear_cross_entropy)
from vocab_parallel_cases import cpu_problem as make_problem  # on the CPU, as the ranks build it

TOL = 2e-5
SHARDS = {2: ([20, 17], None), 3: ([13, 12, 12], [15, 0, 22])}  # V = 37: 3 ranks cannot split it evenly


def _spawn(world_size: int):
    sizes, empty_sizes = SHARDS[world_size]
    return world_size, sizes, run_ranks(world_size, parallel_cases, sizes, empty_sizes)


@pytest.fixture(scope="module")
def three_ranks():
    return _spawn(3)


@pytest.fixture(scope="module")
def two_ranks():
    return _spawn(2)


@pytest.fixture(params=[2, 3], ids=lambda p: f"{p}-ranks")
def ranks(request):
    return request.getfixturevalue("two_ranks" if request.param == 2 else "three_ranks")


def reference_logprob(problem):
    """Float64 log-probs, entropies and gradients of the whole vocabulary on one process."""
    hidden, weight, bias = (None if problem[k] is None else problem[k].double().requires_grad_()
                            for k in ("hidden", "weight", "bias"))
    logp, ent = logprob_entropy_reference(hidden, weight, scored_targets(problem), bias, problem["temperature"])
    g_logp, g_ent = upstream(problem)
    ((logp * g_logp.double()).sum() + (ent * g_ent.double()).sum()).backward()
    return dict(logp=logp.detach(), ent=ent.detach(), dh=hidden.grad, dw=weight.grad,
                db=None if bias is None else bias.grad)


def close(actual, expected, what):
    assert actual.dtype == torch.float32, what
    torch.testing.assert_close(actual.double(), expected, rtol=TOL, atol=TOL, msg=lambda m: f"{what}: {m}")


def assert_same_on_every_rank(results, keys):
    for key in keys:
        for rank, result in enumerate(results[1:], 1):
            assert torch.equal(result[key], results[0][key]), f"{key} differs between rank 0 and rank {rank}"


def assert_logprob_case(results, problem):
    expected = reference_logprob(problem)
    assert_same_on_every_rank(results, ("logp", "ent", "dh"))
    for key in ("logp", "ent", "dh"):
        close(results[0][key], expected[key], key)
    assert float(expected["dh"].abs().max()) > 0
    for rank, result in enumerate(results):
        close(result["dw"], expected["dw"][result["rows"]], f"weight gradient of rank {rank}")
        close(result["db"], expected["db"][result["rows"]], f"bias gradient of rank {rank}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_logprob_entropy_matches_single_process(ranks, backend, temperature):
    _, _, results = ranks
    assert_logprob_case([r[f"logprob/{backend}/T={temperature}"] for r in results],
                        make_problem(seed=3, temperature=temperature))


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_vocab_start(ranks, backend):
    _, _, results = ranks
    assert_logprob_case([r[f"logprob/{backend}/vocab_start"] for r in results], make_problem(seed=5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_shard(three_ranks, backend):
    _, _, results = three_ranks
    assert_logprob_case([r[f"logprob/{backend}/empty-shard"] for r in results], make_problem(seed=5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("agg", AGGS)
def test_loss_matches_single_process(ranks, backend, agg):
    _, _, results = ranks
    results = [r[f"loss/{backend}/{agg}"] for r in results]
    problem = make_problem(seed=len(agg))
    ref_loss, ref_grads, _ = run(problem, OPTIONS["everything"], float64_reference=True, loss_agg=agg)
    _, _, single_metrics = run(problem, OPTIONS["everything"], backend="torch", loss_agg=agg)
    assert_same_on_every_rank(results, ("loss", "dh"))
    for name in single_metrics:
        assert_same_on_every_rank([r["metrics"] for r in results], (name,))
        torch.testing.assert_close(results[0]["metrics"][name], single_metrics[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"metric {name}: {m}")
    close(results[0]["loss"], ref_loss, "loss")
    close(results[0]["dh"], ref_grads[0], "hidden gradient")
    for rank, result in enumerate(results):
        close(result["dw"], ref_grads[1][result["rows"]], f"weight gradient of rank {rank}")
        close(result["db"], ref_grads[2][result["rows"]], f"bias gradient of rank {rank}")


def test_module_takes_the_process_group_in_its_constructor(ranks):
    _, _, results = ranks
    results = [r["module/torch"] for r in results]
    problem = make_problem(seed=11)
    ref_loss, ref_grads, _ = run(problem, OPTIONS["everything"], float64_reference=True, loss_agg="token-mean")
    close(results[0]["loss"], ref_loss, "loss")
    assert_same_on_every_rank(results, ("loss", "dh"))
    close(results[-1]["dw"], ref_grads[1][results[-1]["rows"]], "weight gradient of the last rank")


def test_a_sub_group_uses_only_its_own_ranks(three_ranks):
    _, _, results = three_ranks
    assert "subgroup" not in results[1]
    assert_logprob_case([results[0]["subgroup"], results[2]["subgroup"]], make_problem(seed=7))


EXPECTED_ERRORS = {
    "overlap": "rank 1's shard [19, 36) overlaps the previous shard",
    "gap": "rank 1's shard [21, 38) leaves a gap after the previous shard",
    "start-on-some-ranks": "vocab_start must be given on every rank of process_group or on none",
    "target-out-of-range": "targets must lie in [0, 37)",
    "targets-differ": "same targets at the scored positions",
    "hidden-differs": "same hidden states",
    "hidden-shape-differs": "same number of positions of hidden / targets",
}


def test_bad_layouts_raise_the_same_value_error_on_every_rank():
    seen = run_ranks(2, error_cases, [20, 17], timeout_s=120)
    for name, expected in EXPECTED_ERRORS.items():
        kinds = {rank_seen[name] for rank_seen in seen}
        assert len(kinds) == 1, f"{name}: ranks raised different errors: {kinds}"
        kind, message = kinds.pop()
        assert kind == "ValueError" and expected in message, f"{name}: {kind}: {message}"


def test_argument_errors_before_any_communication():
    problem = make_problem(seed=3)
    args = (problem["hidden"], problem["weight"], problem["targets"], problem["mask"], problem["advantages"])
    with pytest.raises(ValueError, match="vocab_start is only meaningful with process_group"):
        fused_linear_asymgrpo_loss(*args, vocab_start=0)
    with pytest.raises(ValueError, match="needs torch.distributed initialised"):
        fused_linear_asymgrpo_loss(*args, process_group=object())


def test_verl_fused_kernel_signature_with_a_dist_process_group():
    pytest.importorskip("verl")  # a verl extra; our plugin's own import errors still fail below
    results = run_ranks(2, verl_linear_cross_entropy, [20, 17])
    problem = make_problem(seed=3) | {"bias": None}
    expected = reference_logprob(problem)
    assert_same_on_every_rank(results, ("logp", "ent", "dh"))
    for key in ("logp", "ent", "dh"):
        close(results[0][key], expected[key], key)
    for rank, result in enumerate(results):
        close(result["dw"], expected["dw"][result["rows"]], f"weight gradient of rank {rank}")


def test_fsdp2_dtensor_head_gets_the_averaged_gradient_fsdp2_gives():
    results = run_ranks(2, fsdp2_head)
    assert all(r["is_dtensor"] and r["grad_is_dtensor"] for r in results)
    # FSDP2 averages gradients over its mesh: the mean over ranks of each rank's own gradient
    problems = [make_problem(seed=20 + rank) | {"weight": make_problem(seed=3)["weight"], "bias": None}
                for rank in range(2)]
    expected = torch.stack([reference_logprob(problem)["dw"] for problem in problems]).mean(0)
    for result in results:
        close(result["grad"], expected, "FSDP2 weight gradient")
    single = [run(problem, {}, float64_reference=True)[1][1] for problem in problems]
    for result in results:
        close(result["loss_grad"], torch.stack(single).mean(0), "FSDP2 weight gradient of the loss")


@pytest.mark.slow
def test_no_rank_holds_tokens_by_vocab():
    n_tokens, hidden_size, vocab = 16_384, 32, 32_768  # float32 [N, V] logits: 2 GiB; a rank's share: 1 GiB
    results = run_ranks(2, peak_memory, n_tokens, hidden_size, vocab)
    logits_bytes = n_tokens * vocab * 4
    for rank, result in enumerate(results):
        assert result["finite"]
        assert result["extra_bytes"] < logits_bytes / 8, (
            f"rank {rank}: peak extra memory {result['extra_bytes'] / 2**20:.0f} MiB is not under an eighth of "
            f"the {logits_bytes / 2**20:.0f} MiB the full float32 logits would take"
        )
