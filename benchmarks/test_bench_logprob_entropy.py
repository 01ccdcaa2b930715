"""Kernel core: fused_linear_logprob_entropy (torch and triton backends) vs the materialized
reference and the three-matmul floor, forward and forward + backward; also with the first
half of every sequence ignored (target -100, shape id suffix -prompt50)."""

from .conftest import parametrize_cases
from .harness import run_case

SUITE, TASKS = "logprob_entropy", ("logprob_entropy",)


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc, SUITE, TASKS)


def test_logprob_entropy(case, benchmark, bench):
    run_case(case, benchmark, **bench)
