"""Ours vs the libraries users would pick instead, on one grid: the GRPO loss as
Liger defines it (PyTorch eager and compiled, LigerFusedLinearGRPOLoss, Liger's
triton_grpo_loss on matmul logits) and log-probs alone (PyTorch, cut_cross_entropy)."""

from .conftest import parametrize_cases
from .harness import run_case

SUITE, TASKS = "peers", ("grpo_loss", "logprob")


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc, SUITE, TASKS)


def test_peers(case, benchmark, bench):
    run_case(case, benchmark, **bench)
