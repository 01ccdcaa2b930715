"""Options and session fixtures of the benchmark suites (not collected by the default pytest run).

    pytest benchmarks/ [--bench-size tiny|cpu|gpu|gpu-full] [--bench-out DIR]

--bench-size defaults to "gpu" when CUDA is available, else "cpu". Each suite writes
DIR/<suite>-<device>.json (default DIR: benchmarks/results) at the end of the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .cases import PRESETS
from .harness import cases
from .results import Recorder

ROUNDS = {"tiny": (2, 0), "cpu": (2, 0), "gpu": (3, 1), "gpu-full": (3, 1)}  # (rounds, warm-up rounds)


def pytest_addoption(parser):
    group = parser.getgroup("asymgrpo benchmarks")
    group.addoption("--bench-size", choices=PRESETS, default=None, help="size preset (default: gpu with CUDA, else cpu)")
    group.addoption("--bench-out", default=str(Path(__file__).parent / "results"), help="directory for the JSON results")


def _preset(config) -> str:
    return config.getoption("--bench-size") or ("gpu" if torch.cuda.is_available() else "cpu")


def parametrize_cases(metafunc, suite: str, tasks: tuple[str, ...]) -> None:
    """Give a suite's test function one ``case`` parameter per (shape, task, implementation, mode)."""
    if "case" in metafunc.fixturenames:
        all_cases = cases(suite, _preset(metafunc.config), tasks)
        metafunc.parametrize("case", all_cases, ids=[c.id for c in all_cases])


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def preset(request) -> str:
    return _preset(request.config)


@pytest.fixture(scope="session")
def rounds(preset) -> tuple[int, int]:
    return ROUNDS[preset]


@pytest.fixture(scope="session")
def bench(device, preset, rounds, recorder):
    """Everything ``harness.run_case`` needs besides the case and pytest-benchmark's fixture."""
    return {"device": device, "recorder": recorder, "rounds": rounds[0], "warmup_rounds": rounds[1],
            "isolate_memory": preset == "cpu"}


@pytest.fixture(scope="session")
def recorder(request, device, preset):
    rec = Recorder(Path(request.config.getoption("--bench-out")), device, preset)
    yield rec
    for path in rec.write():
        print(f"\nbenchmark results written to {path}")
