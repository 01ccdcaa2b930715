"""The GPU goals (benchmarks/goals.py) judged on synthetic suite rows with known answers, and
plot.py putting their table first only when one of them was measured."""

from __future__ import annotations

import json

import pytest

from benchmarks import goals, plot
from benchmarks.cases import Shape, tokens
from benchmarks.results import with_ratios

TARGET = tokens(16_384, 4096, 151_936, "bfloat16")
PUBLISHED = goals.PUBLISHED_KERNEL_SHAPE
MS = 1e-3


def row(task: str, impl: str, shape: Shape, time_ms: float, peak_bytes: int = 0, status: str = "ok", **extra) -> dict:
    return {"task": task, "impl": impl, "label": extra.pop("label", impl), "backend": extra.pop("backend", None),
            "shape_id": shape.id, "shape": shape.as_dict(), "n_tokens": shape.n_tokens, "hidden": shape.hidden,
            "vocab": shape.vocab, "dtype": shape.dtype, "prompt_pct": 0, "mode": "fwd+bwd", "entropy": "yes",
            "status": status, "time_s": time_ms * MS, "peak_extra_bytes": peak_bytes, **extra}


def suite(name: str, rows: list[dict]) -> dict:
    meta = {"device_name": "a GPU", "versions": {}, "date_utc": "-", "preset": "gpu", "torch": "-"}
    return {"suite": name, "meta": meta, "rows": with_ratios(rows)}


def gpu_docs(*, triton_ms=14.0, liger_ms=40.0, eager_ms=45.0, published_ms=30.0, liger_status="ok") -> list[dict]:
    logits = TARGET.logits_bytes(4)
    liger = row("grpo_loss", "liger_fused_linear", TARGET, liger_ms, status=liger_status, label="Liger fused")
    if liger_status != "ok":
        liger["reason"] = "raised inside the peer's own code, at x.py:1: AssertionError: boom"
    return [
        suite("loss", [
            row("floor", "floor", TARGET, 10.0),
            row("asymgrpo_loss", "ours_torch", TARGET, 20.0, int(0.03 * logits), backend="torch"),
            row("asymgrpo_loss", "ours_triton", TARGET, triton_ms, int(0.01 * logits), backend="triton"),
        ]),
        suite("peers", [
            row("grpo_loss", "reference", TARGET, eager_ms),
            liger,
            row("grpo_loss", "ours", TARGET, triton_ms, backend="triton"),
        ]),
        suite("logprob_entropy", [
            row("logprob_entropy", "ours_triton", PUBLISHED, published_ms, int(0.65 * goals.GIB), backend="triton"),
            row("logprob_entropy", "ours_torch", PUBLISHED, 60.0, int(0.5 * goals.GIB), backend="torch"),
        ]),
    ]


def judged(docs: list[dict]) -> list[goals.Verdict]:
    return [verdict for _, verdict in goals.verdicts(docs)]


def test_every_goal_met_on_a_good_run():
    floor, memory, liger, eager, published = judged(gpu_docs())
    assert [v.met for v in (floor, memory, liger, eager, published)] == [True] * 5
    assert floor.figure.startswith("triton 1.40x floor (14.0 ms), torch 2.00x floor"), "judged on the faster backend"
    assert "triton 0.09 GiB = 1.00% of the logits, torch 0.28 GiB = 3.00%" in memory.figure
    assert liger.figure.startswith("2.86x (Liger fused 40.0 ms, ours (triton) 14.0 ms)")
    assert "0.59x the time and 0.16x the memory of verl's Triton kernel (50.9 ms, 4.0 GiB)" in published.figure
    assert "1.20x the time and 0.50x the memory of Liger's CuTe kernel (24.9 ms, 1.3 GiB)" in published.figure


@pytest.mark.parametrize("kwargs, goal_index", [
    (dict(triton_ms=14.6), 0),  # 1.46x the floor
    (dict(liger_ms=34.0), 2),  # 2.43x
    (dict(eager_ms=41.0), 3),  # 2.93x
    (dict(published_ms=51.0), 4),  # slower than the published 50.9 ms
])
def test_each_goal_can_fail(kwargs, goal_index):
    verdicts = judged(gpu_docs(**kwargs))
    assert verdicts[goal_index].met is False
    assert all(v.met for i, v in enumerate(verdicts) if i != goal_index)


def test_a_peer_failure_is_not_measured_with_its_reason():
    liger = judged(gpu_docs(liger_status="peer_error"))[2]
    assert liger.met is None
    assert "Liger fused: peer_error (raised inside the peer's own code" in liger.figure


def test_cpu_results_measure_no_goal(tmp_path):
    cpu = tokens(4096, 512, 32_768, "float32")
    docs = [suite("loss", [row("floor", "floor", cpu, 1.0), row("asymgrpo_loss", "ours_torch", cpu, 2.0)])]
    assert all(v.met is None and v.figure.startswith("not measured: no ") for v in judged(docs))
    for i, doc in enumerate(docs):
        (tmp_path / f"cpu{i}.json").write_text(json.dumps(doc))
    plot.main([str(p) for p in tmp_path.glob("*.json")] + ["--md", str(tmp_path / "r.md"), "--no-png"])
    assert "### Goals" not in (tmp_path / "r.md").read_text()


def test_plot_puts_the_goals_first_when_measured(tmp_path):
    for doc in gpu_docs():
        (tmp_path / f"{doc['suite']}.json").write_text(json.dumps(doc))
    plot.main([str(p) for p in sorted(tmp_path.glob("*.json"))] + ["--md", str(tmp_path / "r.md"), "--no-png"])
    text = (tmp_path / "r.md").read_text()
    assert text.index("### Goals") < text.index("### loss on a GPU")
    assert text.count("| met |") == 5
