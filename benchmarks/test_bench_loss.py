"""The whole fused AsymGRPO loss (clip-higher, k3 KL, entropy bonus) vs the materialized
reference composition and the three-matmul floor; also with the first half of every
sequence prompt (mask 0, shape id suffix -prompt50)."""

from .conftest import parametrize_cases
from .harness import run_case

SUITE, TASKS = "loss", ("asymgrpo_loss",)


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc, SUITE, TASKS)


def test_asymgrpo_loss(case, benchmark, bench):
    run_case(case, benchmark, **bench)
