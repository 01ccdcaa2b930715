"""The runnable examples in examples/, run end to end with fewer steps (the README's commands run them in full)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trl_example_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = load("trl_asymgrpo").main(steps=2, warmup_steps=30, output_dir=str(tmp_path / "run"))
    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert logged and all(math.isfinite(entry[key]) for entry in logged
                          for key in ("loss", "entropy", "entropy_pos", "entropy_neg"))
    assert "done: 2 steps" in capsys.readouterr().out


def test_verl_cpu_example_updates_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    example = load("verl_asymgrpo_cpu")
    rows = example.run(steps=2, warmup_steps=30)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["loss"]) and 0 <= row["reward"] <= 1 for row in rows)
    assert "actor/pg_clipfrac" in rows[0] and "actor/clip_frac_high" in rows[0]
    import verl.utils.experimental.torch_functional as torch_functional

    assert torch_functional.FusedLinearForPPO.__module__.startswith("verl."), "the example switches verl's back"
    assert "step 2:" in capsys.readouterr().out
