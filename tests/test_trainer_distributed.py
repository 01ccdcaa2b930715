"""The trainer under torchrun: 2 CPU processes (gloo), FSDP2-sharded policy, one vLLM engine per rank.

Real processes: ``python -m torch.distributed.run --nproc-per-node 2 -m asymgrpo train ...``.
Checked: the FSDP2 gradient route through the fused loss equals one process on the whole batch;
a 2-process run learns the embedded task; a stopped and resumed 2-process run equals an
uninterrupted one bit for bit; only rank 0 writes; user errors are one line with exit code 2.

This file also holds the worker of the gradient test (run by torchrun: ``python THIS_FILE grad ...``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parent

# the same small run as tests/test_trainer_vllm.py's, on the command line
SMALL = ["--warmup-steps", "30", "--steps", "4", "--prompts-per-step", "8", "--group-size", "4", "--eval-size", "40",
         "--embedded-test-size", "200", "--eval-every", "2", "--checkpoint-every", "2", "--keep-checkpoints", "5",
         "--progress", "false", "--lr", "1e-3", "--reward", "trainer_rewards:first_digit_reward"]
# a run that learns: the demo's warm-up and objective, fewer and smaller steps
LEARNS = ["--warmup-steps", "500", "--steps", "10", "--prompts-per-step", "32", "--group-size", "8",
          "--eval-size", "200", "--eval-every", "0", "--checkpoint-every", "0", "--progress", "false"]
TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])  # trainer_rewards for the workers
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(_free_port()), *args]


def _train(out: Path, *options: str, stop_after_row: int | None = None) -> subprocess.CompletedProcess:
    """A 2-process ``asymgrpo train`` into ``out``; with ``stop_after_row``, SIGTERM to torchrun once that
    step's metrics row is written (torchrun forwards it to both ranks: they stop after a step, together)."""
    command = _torchrun("-m", "asymgrpo", "train", "--output-dir", str(out), *options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    if stop_after_row is not None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            rows = _rows(out) if (out / "metrics.jsonl").exists() else []
            if rows and rows[-1]["step"] >= stop_after_row:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# --- the FSDP2 gradient route ---------------------------------------------------------------------

def _gradient_batch(vocab: int):
    """16 rows of random prompt + completion tokens of varied lengths, advantages; fixed by a seed."""
    from asymgrpo.batch import pack

    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, vocab, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g).tolist()
               for _ in range(16)]
    completions = [torch.randint(1, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(16)]
    logprobs = [[-1.0] * len(c) for c in completions]
    batch = pack(prompts, completions, logprobs, pad_id=0, device=torch.device("cpu"))
    advantages = torch.randn(16, generator=g)
    return batch, advantages


def _one_update(model, batch, advantages, ranks):
    """One SGD(lr=1) step through ``policy_update``: the weights move by exactly minus the gradient."""
    from asymgrpo.config import TrainConfig
    from asymgrpo.trainer import policy_update, score_tokens

    loss_fn = TrainConfig().loss_module()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    old_logprobs, _ = score_tokens(model, batch, loss_fn, micro_batch_size=3)
    return policy_update(model, optimizer, loss_fn, batch, advantages, old_logprobs + 0.05 * batch.mask,
                         micro_batch_size=3, max_grad_norm=0.0, compute_dtype=torch.float32, ranks=ranks)


def _gradient_worker(base: str, out: str) -> None:
    """Under torchrun: each rank updates the sharded policy on its half of the batch; rank 0 saves the result."""
    from asymgrpo.distributed import full_state_dict, init_from_env, shard_policy, shutdown
    from asymgrpo.policy import load_policy

    ranks = init_from_env()
    model = load_policy(base, dtype=torch.float32, attn_implementation="sdpa", device=torch.device("cpu"))
    shard_policy(model, ranks)
    assert type(model.get_output_embeddings().weight).__name__ == "DTensor"
    batch, advantages = _gradient_batch(model.config.vocab_size)
    rows = slice(ranks.rank * 8, ranks.rank * 8 + 8)
    metrics = _one_update(model, batch.slice(rows.start, rows.stop), advantages[rows], ranks)
    weights = full_state_dict(model, ranks)
    if ranks.is_main:
        torch.save({"weights": {k: v.clone() for k, v in weights.items()}, "metrics": metrics}, out)
    shutdown()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from asymgrpo.data import arithmetic_splits
    from asymgrpo.demo.warmup import build_embedded_checkpoint

    train_set, _ = arithmetic_splits(seed=0, test_size=200)
    return build_embedded_checkpoint(tmp_path_factory.mktemp("base"), train_set, steps=30, lr=1e-3, batch_size=32,
                                     seed=0)


def test_fsdp2_gradient_through_the_fused_loss_equals_one_process(base_model, tmp_path):
    """2 gloo ranks, 8 rows each, through the registered forward method: the summed loss, the gradient norm
    and the updated weights (= weights - gradient) equal one process on the 16 rows."""
    from asymgrpo.distributed import SINGLE
    from asymgrpo.policy import load_policy

    result = subprocess.run(_torchrun(str(Path(__file__)), "grad", str(base_model), str(tmp_path / "grad.pt")),
                            capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(tmp_path / "grad.pt", weights_only=False)

    model = load_policy(str(base_model), dtype=torch.float32, attn_implementation="sdpa", device=torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch, advantages = _gradient_batch(model.config.vocab_size)
    metrics = _one_update(model, batch, advantages, SINGLE)
    after = model.state_dict()

    assert sharded["weights"].keys() == after.keys()
    head = "lm_head.weight"
    assert (after[head] - before[head]).abs().max() > 1e-4  # the update moved the LM head: the check is sharp
    for name in after:
        torch.testing.assert_close(sharded["weights"][name], after[name], rtol=1e-5, atol=1e-7, msg=name)
    for key in ("loss", "grad_norm", "tokens", "ratio_mean", "approx_kl"):
        assert sharded["metrics"][key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-9), key


# --- training runs -------------------------------------------------------------------------------

def test_two_processes_learn_the_embedded_task(tmp_path):
    """The embedded task with 2 processes improves held-out accuracy; rank 0 alone writes and prints."""
    out = tmp_path / "run"
    result = _train(out, *LEARNS)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(11))  # one row per step: rank 1 appends none
    first, last = rows[0]["accuracy"], rows[-1]["accuracy"]
    assert last > first + 0.05, (first, last)
    assert all(r["logprob_mismatch"] < 1e-4 for r in rows[1:])  # every rank's engine got the new weights
    assert result.stdout.count("done: 10 steps") == 1 and result.stdout.count("held-out greedy accuracy") == 1
    assert f"{first:.3f} at the start -> {last:.3f} at the end" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "metrics.jsonl", "run.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000010", "warmup"]
    state = torch.load(out / "checkpoints" / "step_000010" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2
    assert state["optimizer"]["state"]  # the full optimizer state, gathered on rank 0


def test_two_process_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM to torchrun after step 1's row: both ranks stop after the same step with a checkpoint; resumed
    with 2 processes, weights and metrics equal an uninterrupted 2-process run. Resuming with 1 process is a
    one-line error naming both world sizes."""
    whole = _train(tmp_path / "whole", *SMALL)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = _train(tmp_path / "cut", *SMALL, stop_after_row=1)
    assert cut.returncode != 0, cut.stderr[-3000:]  # torchrun re-raises the signal it got
    assert cut.stderr.count("SIGTERM: stopped at step ") == 1, cut.stderr[-3000:]
    stopped = int(cut.stderr.split("SIGTERM: stopped at step ")[1].split()[0])
    assert 1 <= stopped < 4
    assert [r["step"] for r in _rows(tmp_path / "cut")] == list(range(stopped + 1))
    assert (tmp_path / "cut" / "checkpoints" / f"step_{stopped:06d}" / "trainer_state.pt").exists()

    single = subprocess.run([sys.executable, "-m", "asymgrpo", "train", "--resume", "--output-dir",
                             str(tmp_path / "cut")], capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S)
    assert single.returncode == 2
    assert single.stderr.strip().count("\n") == 0 and "world size 2" in single.stderr and "world size 1" in single.stderr

    resumed = _train(tmp_path / "cut", "--resume", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"at step {stopped} of 4") == 1
    final = "checkpoints/step_000004"
    a, b = _weights(tmp_path / "whole" / final), _weights(tmp_path / "cut" / final)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    from asymgrpo.trainer import TIMING_KEYS

    rows_a, rows_b = ([{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in _rows(tmp_path / run)]
                      for run in ("whole", "cut"))
    assert rows_a == rows_b and len(rows_a) == 5
    # the comparison is sharp: one more step moves the weights
    assert any(not torch.equal(a[n], _weights(tmp_path / "whole" / "checkpoints/step_000002")[n]) for n in a)


def test_prompts_not_divisible_by_the_world_size_is_one_line_with_exit_code_2(tmp_path):
    """Each rank checks before the process group starts: rank 0 prints one line, every rank exits 2, none waits."""
    out = tmp_path / "run"
    result = subprocess.run(_torchrun("-m", "asymgrpo", "train", "--output-dir", str(out), "--prompts-per-step", "9",
                                      "--updates-per-step", "1"),
                            capture_output=True, text=True, env=_env(), timeout=120)
    message = "asymgrpo: prompts_per_step must be divisible by the world size 2"
    assert result.returncode != 0 and result.stderr.count(message) == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # torchrun's report of the first rank that exited
    assert not out.exists() or not any(out.iterdir())
    # one rank as torchrun starts it: the line (rank 0 only) and the exit code
    for rank, expected in ((0, message), (1, "")):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        worker = subprocess.run([sys.executable, "-m", "asymgrpo", "train", "--output-dir", str(out),
                                 "--prompts-per-step", "12", "--updates-per-step", "4"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert worker.returncode == 2
        if rank == 0:
            assert worker.stderr.startswith("asymgrpo: prompts_per_step / updates_per_step = 3 ")
            assert worker.stderr.count("\n") == 1, worker.stderr
        else:
            assert worker.stderr == ""


if __name__ == "__main__":  # torchrun's worker of the gradient test
    if sys.argv[1] == "grad":
        _gradient_worker(sys.argv[2], sys.argv[3])
