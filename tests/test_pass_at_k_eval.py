"""pass@k at the final evaluation (``eval_pass_k``): which k are logged, how per-prompt counts combine
(the torchrun path gathers them), and the config's checks: fast, no vLLM. The tiny training that logs
them runs in tests/test_trainer_vllm.py (``test_eval_pass_k_at_the_final_step``), on that module's engine;
the last test here (slow, ~2 min on 2 cores) checks that 2 torchrun processes log the figures of one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asymgrpo.config import ConfigError, TrainConfig
from asymgrpo.distributed import Ranks, share
from asymgrpo.evaluate import mean_pass_at_k, pass_at_k
from asymgrpo.preflight import load_data
from asymgrpo.trainer import pass_ks


def test_pass_ks_are_powers_of_two_up_to_n_and_n():
    assert pass_ks(0) == ()
    assert pass_ks(1) == (1,)
    assert pass_ks(8) == (1, 2, 4, 8)
    assert pass_ks(12) == (1, 2, 4, 8, 12)
    assert pass_ks(32) == (1, 2, 4, 8, 16, 32)


def test_mean_pass_at_k_is_monotone_and_bounded():
    correct = [0, 1, 3, 8, 0, 2]
    passes = mean_pass_at_k(8, correct, pass_ks(8))
    assert list(passes) == [1, 2, 4, 8]
    assert passes[1] == pytest.approx(sum(correct) / (8 * len(correct)))  # pass@1 = the mean sample accuracy
    assert passes[8] == pytest.approx(4 / 6)  # the share of prompts with any correct sample
    values = list(passes.values())
    assert all(0 <= a <= b <= 1 for a, b in zip(values, values[1:]))


def test_ranks_shares_of_the_counts_give_the_single_process_figures():
    """What held_out_accuracy does under torchrun: each rank's contiguous share, concatenated in rank order."""
    counts = [3, 0, 8, 1, 5, 2, 0]
    for world_size in (2, 3):
        parts = [share(counts, Ranks(rank=r, world_size=world_size, local_rank=r)) for r in range(world_size)]
        merged = [c for part in parts for c in part]
        assert merged == counts
        assert mean_pass_at_k(8, merged, (1, 4)) == mean_pass_at_k(8, counts, (1, 4))
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_eval_pass_k_config():
    assert TrainConfig().eval_pass_k == 0
    assert TrainConfig.from_dict({"eval_pass_k": 16}).eval_pass_k == 16
    with pytest.raises(ConfigError, match="eval_pass_k must be >= 0, got -1"):
        TrainConfig.from_dict({"eval_pass_k": -1})
    with pytest.raises(ConfigError, match="eval_pass_k must be int"):
        TrainConfig.from_dict({"eval_pass_k": "many"})


def test_eval_pass_k_needs_held_out_data(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    config = TrainConfig.from_dict({"model": str(tmp_path), "dataset": str(data), "eval_pass_k": 4})
    with pytest.raises(ConfigError, match="eval_pass_k 4 needs held-out data"):
        load_data(config)
    load_data(TrainConfig.from_dict({"model": str(tmp_path), "dataset": str(data), "eval_dataset": str(data),
                                     "eval_pass_k": 4}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_log_the_pass_at_k_of_one(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (the cpu or gpu extra installs it)")
    tests = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])  # trainer_rewards for the workers
    options = ["train", "--warmup-steps", "30", "--steps", "1", "--prompts-per-step", "8", "--group-size", "4",
               "--eval-size", "40", "--embedded-test-size", "200", "--checkpoint-every", "0", "--progress", "false",
               "--lr", "1e-3", "--reward", "trainer_rewards:first_digit_reward", "--eval-pass-k", "8"]
    launchers = {"one": [sys.executable, "-m", "asymgrpo"],
                 "two": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                         str(_free_port()), "-m", "asymgrpo"]}
    rows = {}
    for name, launcher in launchers.items():
        out = tmp_path / name
        result = subprocess.run([*launcher, *options, "--output-dir", str(out)], capture_output=True, text=True,
                                env=env, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    passes = {name: {k: v for k, v in row.items() if k.startswith("eval_pass@")} for name, row in rows.items()}
    assert list(passes["one"]) == ["eval_pass@1", "eval_pass@2", "eval_pass@4", "eval_pass@8"]
    # the same seeded samples of the same prompts; the weights differ only by float summation order
    assert passes["two"] == pytest.approx(passes["one"], abs=0.03)
    assert rows["two"]["accuracy"] == pytest.approx(rows["one"]["accuracy"], abs=0.03)
