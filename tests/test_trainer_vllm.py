"""The trainer with a real vLLM engine on the CPU: weight sync, end to end, resume, overwrite, failing rewards.

One engine serves the whole module (starting one takes ~30 s); each test pushes its own
policy's weights into it. The policy is the embedded tiny Qwen2 with a few warm-up steps:
these tests check plumbing and exactness, not learning.
"""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from asymgrpo.config import ConfigError, TrainConfig
from asymgrpo.data import arithmetic_splits
from asymgrpo.demo.warmup import build_embedded_checkpoint
from asymgrpo.evaluate import evaluate, pass_at_k
from asymgrpo.rewards import RewardFailure, SafeReward
from asymgrpo.trainer import TIMING_KEYS, train
from trainer_rewards import first_digit_reward

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="vLLM is not installed (the cpu or gpu extra installs it)")

# vLLM's sampled-token log-probs against the trainer's fused ones, same float32 weights:
# measured ~1e-7 mean, a few 1e-6 max; stale weights differ by ~1e-2 and more.
SYNC_TOLERANCE = 1e-4

SMALL = dict(warmup_steps=30, steps=4, prompts_per_step=8, group_size=4, eval_size=40, eval_every=2,
             checkpoint_every=2, keep_checkpoints=5, progress=False, lr=1e-3, embedded_test_size=200,
             reward="trainer_rewards:first_digit_reward")  # rewards run in worker processes: a light module


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    train_set, _ = arithmetic_splits(seed=0, test_size=200)
    return build_embedded_checkpoint(tmp_path_factory.mktemp("base"), train_set, steps=30, lr=1e-3, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def engine(base_model):
    from asymgrpo.rollout import RolloutEngine

    return RolloutEngine(str(base_model), dtype="float32", max_model_len=32, seed=0)


def _trainer_logprobs(model, prompt, completion):
    from asymgrpo.batch import pack
    from asymgrpo.trainer import score_tokens

    batch = pack([prompt], [completion.token_ids], [completion.logprobs], pad_id=0, device=torch.device("cpu"))
    logprobs, _ = score_tokens(model, batch, TrainConfig().loss_module(), micro_batch_size=8)
    return logprobs[batch.mask > 0], batch.vllm_logprobs[batch.mask > 0]


def test_weight_sync_after_an_optimizer_step(engine, base_model):
    """After one optimizer step and a push, vLLM's log-probs of its samples match the trainer's."""
    from asymgrpo.demo.warmup import supervised_warmup
    from asymgrpo.policy import load_policy
    from asymgrpo.policy import load_tokenizer

    tokenizer = load_tokenizer(str(base_model))
    model = load_policy(str(base_model), dtype=torch.float32, attn_implementation="sdpa", device=torch.device("cpu"))
    engine.load_weights(model.state_dict().items())
    train_set, _ = arithmetic_splits(seed=0, test_size=200)
    supervised_warmup(model, tokenizer, train_set, steps=1, lr=1e-2, batch_size=16, seed=5)
    prompt = tokenizer("12+34=")["input_ids"]

    stale = engine.sample([prompt], n=8, max_tokens=6, temperature=1.0, seeds=[0])[0]
    stale_gap = max((a - b).abs().max().item() for a, b in (_trainer_logprobs(model, prompt, c) for c in stale))
    assert stale_gap > 10 * SYNC_TOLERANCE, "the step did not change the policy: the test could not fail"

    engine.load_weights(model.state_dict().items())
    fresh = engine.sample([prompt], n=8, max_tokens=6, temperature=1.0, seeds=[0])[0]
    gaps = [(a - b).abs().max().item() for a, b in (_trainer_logprobs(model, prompt, c) for c in fresh)]
    assert max(gaps) < SYNC_TOLERANCE, gaps


def test_end_to_end(engine, tmp_path):
    """A few steps with every optional input of the loss on: reference-model KL and TIS weights."""
    config = TrainConfig.from_dict({**SMALL, "output_dir": str(tmp_path), "kl_coef": 0.01, "tis_cap": 2.0})
    result = train(config, engine=engine)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and result.steps == 4
    assert rows[0]["accuracy"] == result.initial_accuracy and rows[-1]["accuracy"] == result.final_accuracy
    expected = {"reward", "train_accuracy", "accuracy", "entropy", "entropy_pos", "entropy_neg", "clip_frac_low",
                "clip_frac_high", "approx_kl", "ref_kl", "logprob_mismatch", "tokens_per_s", "step_time",
                "reward_errors"}
    for row in rows[1:]:
        assert expected <= set(row)
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        assert row["logprob_mismatch"] < SYNC_TOLERANCE
        assert row["reward_errors"] == row["reward_timeouts"] == row["reward_non_finite"] == 0
        assert 0 < row["reward"] < 1 and row["grad_norm"] > 0
        assert row["approx_kl"] > 0  # the second update of each step is off-policy (updates_per_step=2)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoints" / "step_000004" / "model.safetensors").exists()

    _, test_set = arithmetic_splits(seed=0, test_size=200)
    from asymgrpo.policy import load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "checkpoints" / "step_000004"))
    with SafeReward(first_digit_reward) as reward:
        scores = evaluate(engine, tokenizer, test_set[:40], reward, prompt_template="{prompt}", max_new_tokens=6,
                          ks=(1, 4))
    assert scores.accuracy == pytest.approx(result.final_accuracy)
    assert 0 <= scores.pass_at_k[1] <= scores.pass_at_k[4] <= 1


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_resume_matches_an_uninterrupted_run(engine, tmp_path, capsys):
    """Stop after step 2 (as if killed mid-write of step 3's row), resume: weights and metrics equal a run
    that never stopped."""
    whole = TrainConfig.from_dict({**SMALL, "output_dir": str(tmp_path / "whole")})
    train(whole, engine=engine)
    cut = TrainConfig.from_dict({**SMALL, "output_dir": str(tmp_path / "cut")})
    assert train(cut, engine=engine, stop_after=2).steps == 2
    assert not (tmp_path / "cut" / "checkpoints" / "step_000004").exists()
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward": 0.2')  # torn: no newline, no closing brace
    capsys.readouterr()
    resumed = train(TrainConfig.load(None, {"output_dir": str(tmp_path / "cut"), "resume": True}), engine=engine)
    assert (resumed.start_step, resumed.steps) == (2, 4)
    printed = capsys.readouterr().out
    assert "dropped the torn last line" in printed and "resuming" in printed and "at step 2 of 4" in printed

    final = "checkpoints/step_000004"
    a, b = _weights(tmp_path / "whole" / final), _weights(tmp_path / "cut" / final)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    rows_a, rows_b = ([{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                       for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("whole", "cut"))
    assert rows_a == rows_b
    # the comparison is sharp: one more step moves the weights
    assert any(not torch.equal(a[n], _weights(tmp_path / "whole" / "checkpoints/step_000002")[n]) for n in a)


def test_failing_reward_scores_zero_is_counted_apart_and_the_run_goes_on(engine, tmp_path):
    """Training and evaluation failures are counted apart, the starting evaluation's too."""
    config = TrainConfig.from_dict({**SMALL, "steps": 2, "eval_every": 0, "output_dir": str(tmp_path),
                                    "reward": "trainer_rewards:flaky_reward", "reward_timeout_s": 0.2})
    result = train(config, engine=engine)
    assert result.steps == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [rows[0], rows[2]]  # the start and the end (eval_every 0)
    batch, eval_size = SMALL["prompts_per_step"] * SMALL["group_size"], SMALL["eval_size"]
    assert all(0 < r["eval_reward_errors"] + r["eval_reward_non_finite"] + r["eval_reward_timeouts"] < eval_size
               for r in evaluations)
    assert "eval_reward_errors" not in rows[1]
    for row in rows[1:]:
        assert row["reward_errors"] > 0 and row["reward_non_finite"] > 0
        assert row["reward_errors"] + row["reward_non_finite"] + row["reward_timeouts"] < batch
        assert math.isfinite(row["reward"]) and math.isfinite(row["loss"])


@pytest.mark.parametrize("reward, failure", [("always_raises", "raised RuntimeError: checker crashed"),
                                             ("always_hangs", "ran past the 0.3 s timeout")])
def test_a_reward_that_always_fails_stops_the_run_at_once(engine, tmp_path, reward, failure):
    config = TrainConfig.from_dict({**SMALL, "output_dir": str(tmp_path), "reward": f"trainer_rewards:{reward}",
                                    "reward_timeout_s": 0.3})
    started = time.perf_counter()
    with pytest.raises(RewardFailure, match=f"stopped at step 0 .the starting evaluation.: .*{failure}.*--resume"):
        train(config, engine=engine)
    assert time.perf_counter() - started < 30  # fail-fast: not 40 evaluation calls x 0.3 s, one after another


def test_allow_reward_failures_goes_on(engine, tmp_path):
    config = TrainConfig.from_dict({**SMALL, "steps": 1, "output_dir": str(tmp_path), "allow_reward_failures": True,
                                    "reward": "trainer_rewards:always_raises"})
    assert train(config, engine=engine).final_accuracy == 0.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_reward_errors"] == rows[1]["eval_reward_errors"] == SMALL["eval_size"]
    assert rows[1]["reward_errors"] == SMALL["prompts_per_step"] * SMALL["group_size"]


def test_a_second_run_needs_overwrite_and_overwrite_replaces_the_run(engine, tmp_path):
    config = {**SMALL, "steps": 2, "output_dir": str(tmp_path)}
    train(TrainConfig.from_dict(config), engine=engine)
    (tmp_path / "notes.txt").write_text("mine")
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run checkpointed at step 2 of 2"):
        train(TrainConfig.from_dict({**config, "steps": 1}), engine=engine)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    train(TrainConfig.from_dict({**config, "steps": 1, "overwrite": True}), engine=engine)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001", "warmup"]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["steps"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # overwrite deletes only what a run writes


def test_pass_at_k_estimator():
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))


def test_eval_pass_k_at_the_final_step(engine, tmp_path):
    """eval_pass_k: the final step's row alone holds eval_pass@1, @2, @4, @8, monotone in k, within [0, 1];
    the greedy accuracy is the same as without it (tests/test_pass_at_k_eval.py holds the fast checks)."""
    config = TrainConfig.from_dict({**SMALL, "steps": 2, "eval_every": 1, "checkpoint_every": 0, "eval_size": 20,
                                    "eval_pass_k": 8, "output_dir": str(tmp_path)})
    result = train(config, engine=engine)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["accuracy"] is not None for r in rows)
    for row in rows[:-1]:
        assert not any(key.startswith("eval_pass@") for key in row)
    passes = {key: value for key, value in rows[-1].items() if key.startswith("eval_pass@")}
    assert list(passes) == ["eval_pass@1", "eval_pass@2", "eval_pass@4", "eval_pass@8"]
    values = list(passes.values())
    assert all(0 <= v <= 1 for v in values) and all(a <= b for a, b in zip(values, values[1:]))
    assert 0 < values[-1]  # a barely trained model still gets first digits right
    assert rows[-1]["accuracy"] == result.final_accuracy
