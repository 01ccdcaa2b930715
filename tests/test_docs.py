"""The documentation builds: ``mkdocs build --strict`` over docs/ and the API reference.

Strict mode turns every warning into a failure, among them a docstring that documents a
parameter its signature does not have, an object the API page names that does not exist, and a
link to a missing page or anchor. mkdocs and mkdocstrings come with the ``test`` extra; no
network is used (no inventories are fetched).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"mkdocs build --strict failed (exit {result.returncode}):\n{output}", pytrace=False)
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("fused_linear_logprob_entropy", "AsymGRPOLoss", "group_advantages", "TrainConfig"):
        assert name in api, f"{name} is missing from the built API reference"
    assert "group_size" in api, "the TrainConfig key table is missing from the built API reference"


def test_algorithm_sections_are_numbered_as_cited() -> None:
    """Code and tests cite "docs/algorithm.md §N": the numbered headings must stay where they are."""
    text = (ROOT / "docs" / "algorithm.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (\d+)\. (.+)$", text, flags=re.MULTILINE)
    assert [(int(n), title) for n, title in headings] == [
        (1, "The idea"),
        (2, "Advantages"),
        (3, "Policy loss and aggregation"),
        (4, "Metrics"),
        (5, "Log-prob and entropy from hidden states, and their gradients"),
        (6, "Numerics at the edges"),
        (7, "Conventions of other implementations"),
        (8, "Entropy-control policy losses"),
    ]
