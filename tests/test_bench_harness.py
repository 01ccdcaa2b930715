"""The benchmark harness tells a peer's own failure from ours (benchmarks/harness.py).

A peer (another library, or torch.compile) that raises inside its own code is that peer's
result at the case: the row is recorded with status "peer_error" and the error, and the case
is skipped, so the run that measures ours still passes. Everything else stays a failure:
an implementation of ours that raises, a peer adapter that calls the peer with a wrong
signature (it raises in benchmarks/peers.py), and our baseline failing while a peer is checked.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import harness
from benchmarks.cases import tokens
from benchmarks.peers import Adapter
from benchmarks.peers import adapter as real_adapter
from benchmarks.results import Recorder

SHAPE = tokens(8, 16, 40, "float32", seq=4)
DEVICE = torch.device("cpu")


def _raise_in_stdlib(inputs, state):
    json.loads("{")  # json.JSONDecodeError, raised inside the standard library: outside this repository


def _raise_here(inputs, state):
    raise TypeError("forward() got an unexpected keyword argument 'bad'")


def _run(monkeypatch, tmp_path, impl: Adapter, baseline: Adapter | None = None) -> list[dict]:
    """run_case on one fake implementation of the grpo_loss task; returns the recorded rows."""
    fakes = {impl.name: impl, **({"ours": baseline} if baseline else {})}
    monkeypatch.setattr(harness, "adapter", lambda task, name: fakes.get(name) or real_adapter(task, name))
    monkeypatch.setattr(harness, "_cache", harness._ShapeCache())
    recorder = Recorder(tmp_path, DEVICE, "tiny")
    case = harness.Case("peers", "grpo_loss", impl.name, SHAPE, "fwd+bwd")
    try:
        harness.run_case(case, benchmark=None, recorder=recorder, device=DEVICE, rounds=1, warmup_rounds=0,
                         isolate_memory=False)
    finally:
        rows = recorder.rows.get("peers", [])
    return rows


def test_peer_failing_inside_its_own_code_is_recorded_and_skipped(monkeypatch, tmp_path):
    peer = Adapter("fake_peer", "grpo_loss", "a fake peer", _raise_in_stdlib, peer=True)
    with pytest.raises(pytest.skip.Exception, match="a fake peer: raised inside the peer's own code"):
        _run(monkeypatch, tmp_path, peer)
    (row,) = json.loads((tmp_path / "peers-cpu.json").read_text())["rows"]
    assert row["impl"] == "fake_peer" and row["status"] == "peer_error"
    assert "JSONDecodeError" in row["reason"] and "json/decoder.py" in row["reason"]


@pytest.mark.parametrize("forward, peer", [(_raise_in_stdlib, False), (_raise_here, True)],
                         ids=["ours-raising-anywhere", "peer-adapter-raising-in-its-own-frame"])
def test_other_failures_fail(monkeypatch, tmp_path, forward, peer):
    impl = Adapter("fake", "grpo_loss", "a fake implementation", forward, peer=peer)
    with pytest.raises((json.JSONDecodeError, TypeError)):
        _run(monkeypatch, tmp_path, impl)
    (row,) = json.loads((tmp_path / "peers-cpu.json").read_text())["rows"]
    assert row["status"] == "error"


def test_our_baseline_failing_is_ours_even_while_a_peer_is_checked(monkeypatch, tmp_path):
    peer = Adapter("fake_peer", "grpo_loss", "a fake peer", real_adapter("grpo_loss", "reference").forward, peer=True)
    broken_ours = Adapter("ours", "grpo_loss", "ours, broken", _raise_in_stdlib)
    with pytest.raises(RuntimeError, match="the baseline ours failed: JSONDecodeError"):
        _run(monkeypatch, tmp_path, peer, baseline=broken_ours)
