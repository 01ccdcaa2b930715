"""asymgrpo.integrations.trl: AsymGRPOTrainer against TRL's own GRPOTrainer (TRL 1.16.0), on the CPU.

A tiny Qwen2 (hidden 32, one layer, the character tokenizer's 18-token vocabulary) is built
locally and saved to a folder, so TRL can load it, and a reference model, by path. The central
check: with ``preset="grpo"`` and TRL's std convention, ``compute_loss`` (the fused path) equals
``GRPOTrainer._compute_loss`` on the same batch, in value, in every parameter's gradient and in
the logged metrics, for each supported loss_type, with and without gradient accumulation and an
entropy bonus, and off-policy for GSPO (importance_sampling_level="sequence"), CISPO and
top_entropy_quantile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
import trl.trainer.utils
from datasets import Dataset
from peft import LoraConfig
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig, GRPOTrainer

import asymgrpo.integrations.trl.forward as trl_forward
from asymgrpo.demo.tokenizer import build_char_tokenizer
from asymgrpo.integrations.trl import AsymGRPOTrainer
from asymgrpo.integrations.trl.advantages import completion_advantages, process_slice, weighted_rewards
from asymgrpo.integrations.trl.metrics import clip_flags, global_metrics, local_vector
from asymgrpo.integrations.trl.options import advantage_options, loss_options, unsupported_model, unsupported_options
from asymgrpo_kernels import fused_linear_asymgrpo_loss, group_advantages

TOKENIZER = build_char_tokenizer()
TRL_METRICS = ("entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
               "clip_ratio/low_min", "clip_ratio/high_max")


def tiny_qwen2(*, tied: bool, seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=tied, pad_token_id=TOKENIZER.pad_token_id, eos_token_id=TOKENIZER.eos_token_id,
        bos_token_id=TOKENIZER.eos_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(dtype)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[bool, str]:
    """Saved tiny models by ``tied``: TRL builds the reference model (beta != 0) from the path."""
    dirs = {}
    for tied in (False, True):
        folder = tmp_path_factory.mktemp(f"tiny-qwen2-tied-{tied}")
        tiny_qwen2(tied=tied).save_pretrained(folder)
        TOKENIZER.save_pretrained(folder)
        dirs[tied] = str(folder)
    return dirs


def prompts_dataset(n: int = 16) -> Dataset:
    return Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(n)], "answer": [str(3 * i) for i in range(n)]})


def parity_reward(completions, **kwargs) -> list[float]:
    """0/1: whether the completion has an odd number of characters (a signal a random model varies in)."""
    return [float(len(c) % 2) for c in completions]


def grpo_config(tmp_path, **overrides) -> GRPOConfig:
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, learning_rate=1e-3, report_to="none", use_vllm=False, use_cpu=True, save_strategy="no",
        logging_steps=1, seed=0, use_bias_correction_kl=False, bf16=False,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


def make_trainer(cls, model, tmp_path, *, reward_funcs=(parity_reward,), trainer_kwargs=None, **config):
    return cls(model=model, reward_funcs=list(reward_funcs), args=grpo_config(tmp_path, **config),
               train_dataset=prompts_dataset(), processing_class=TOKENIZER, **(trainer_kwargs or {}))


def loss_batch(trainer, *, seed: int = 0, accumulation: int = 1) -> dict[str, torch.Tensor]:
    """A micro-batch shaped like ``_generate_and_score_completions``'s output: left-padded prompts,
    ragged right-padded completions, mixed-sign advantages, old log-probs perturbed so the ratio is
    clipped on both sides, reference log-probs and the generation batch's token count."""
    g = torch.Generator().manual_seed(seed)
    pad, vocab = TOKENIZER.pad_token_id, len(TOKENIZER)
    prompt_lengths, completion_lengths = [5, 3, 4, 5, 2, 4], [7, 3, 5, 1, 6, 0]
    batch, prompt_len, completion_len = len(prompt_lengths), max(prompt_lengths), max(completion_lengths)
    prompt_mask = (torch.arange(prompt_len) >= prompt_len - torch.tensor(prompt_lengths)[:, None]).long()
    completion_mask = (torch.arange(completion_len) < torch.tensor(completion_lengths)[:, None]).long()
    prompt_ids = torch.randint(2, vocab, (batch, prompt_len), generator=g).masked_fill(prompt_mask == 0, pad)
    completion_ids = torch.randint(2, vocab, (batch, completion_len), generator=g).masked_fill(completion_mask == 0,
                                                                                                pad)
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
            completion_len)

    def perturbed(scale: float) -> torch.Tensor:
        return ((current + scale * torch.randn(batch, completion_len, generator=g)) * completion_mask).detach()

    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.8, 0.4, -1.5, 0.9, -0.2]),
        "old_per_token_logps": perturbed(0.4),
        "ref_per_token_logps": perturbed(0.3),
        "num_items_in_batch": completion_mask.sum() * accumulation + 3,
    }


def loss_grads_metrics(trainer, loss_fn, inputs):
    """(loss, {parameter: grad}, logged metrics) of ``loss_fn(trainer.model, inputs)``."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    for store in trainer._metrics.values():
        store.clear()
    loss = loss_fn(model, inputs)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    mode = "train" if model.training else "eval"
    return loss.detach(), grads, {name: values[-1] for name, values in trainer._metrics[mode].items()}


def assert_matches_trl(trainer, inputs, *, check_grads: bool = True):
    ours = loss_grads_metrics(trainer, trainer.compute_loss, inputs)
    theirs = loss_grads_metrics(trainer, lambda model, batch: GRPOTrainer._compute_loss(trainer, model, batch), inputs)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    if check_grads:
        assert ours[1].keys() == theirs[1].keys()
        for name, grad in theirs[1].items():
            torch.testing.assert_close(ours[1][name], grad, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")
    assert set(theirs[2]) <= set(ours[2]), f"TRL logs {set(theirs[2]) - set(ours[2])} that we do not"
    for name, value in theirs[2].items():
        assert ours[2][name] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), name
    return ours, theirs


# ----- the loss: equal to TRL's --------------------------------------------------------------------


@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])
@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_compute_loss_equals_trl(model_dirs, tmp_path, loss_type, accumulation, entropy_coef):
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, trainer_kwargs={"preset": "grpo"},
                           loss_type=loss_type, beta=0.04, entropy_coef=entropy_coef, epsilon_high=0.28,
                           gradient_accumulation_steps=accumulation)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation
    inputs = loss_batch(trainer, accumulation=accumulation)
    ours, _ = assert_matches_trl(trainer, inputs)
    metrics = ours[2]
    assert metrics["clip_ratio/low_mean"] > 0 and metrics["clip_ratio/high_mean"] > 0, "the batch clips both sides"
    assert metrics["kl"] > 0
    assert ("policy_loss" in metrics) == (entropy_coef != 0)


def test_compute_loss_equals_trl_in_eval_tied_with_delta(model_dirs, tmp_path):
    """Eval mode (no accumulation: dapo's count is the eval batch's), tied embeddings, delta = the dual clip."""
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[True], tmp_path, trainer_kwargs={"preset": "grpo"},
                           loss_type="dapo", beta=0.04, delta=1.3, gradient_accumulation_steps=2)
    assert trainer.loss_options.dual_clip == 1.3
    trainer.current_gradient_accumulation_steps = 2
    trainer.model.train()
    inputs = loss_batch(trainer, seed=1, accumulation=2)
    inputs["old_per_token_logps"] = inputs["old_per_token_logps"] - 0.8 * inputs["completion_mask"]  # ratios > delta
    assert_matches_trl(trainer, inputs)
    trainer.model.eval()
    assert_matches_trl(trainer, inputs)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_compute_loss_equals_trl_with_vllm_weights_on_policy(model_dirs, tmp_path, level):
    """TRL's vLLM importance-sampling ratio ([B, T] token modes, [B, 1] sequence modes) and no old log-probs."""
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, trainer_kwargs={"preset": "grpo"},
                           loss_type="bnpo", entropy_coef=0.02)
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # as a vLLM run sets them
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = loss_batch(trainer, seed=2)
    del inputs["old_per_token_logps"]
    shape = inputs["completion_mask"].shape if level == "token" else (inputs["completion_mask"].shape[0], 1)
    inputs["importance_sampling_ratio"] = torch.rand(shape, generator=torch.Generator().manual_seed(3)) + 0.5
    assert_matches_trl(trainer, inputs)


def current_ratios(trainer, inputs, *, sequence: bool) -> torch.Tensor:
    """[B, T] token ratios exp(logp - old_logp) of the current model, or [B] sequence ratios (GSPO's s_i)."""
    mask = inputs["completion_mask"]
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], mask], 1), mask.shape[1])
    log_ratio = (current - inputs["old_per_token_logps"]) * mask
    if sequence:
        return torch.exp(log_ratio.sum(1) / mask.sum(1).clamp(min=1))
    return torch.where(mask.bool(), torch.exp(log_ratio), torch.ones_like(log_ratio))


# Off-policy cases of GSPO (importance_sampling_level="sequence"), CISPO and the high-entropy mask; old_shift is
# added to the old log-probs of the scored tokens (-0.3 multiplies every ratio by 1.35: past delta for some);
# vllm_weights: TRL's [B, 1] vLLM importance-sampling ratio of its sequence modes.
POLICY_CASES = {
    "cispo": {"loss_type": "cispo", "epsilon_high": 1.2},
    "cispo-bonus-delta": {"loss_type": "cispo", "epsilon_high": 1.2, "entropy_coef": 0.05, "delta": 1.5},
    "gspo-grpo": {"loss_type": "grpo", "importance_sampling_level": "sequence"},
    "gspo-dapo-delta": {"loss_type": "dapo", "importance_sampling_level": "sequence", "epsilon_high": 0.28,
                        "delta": 1.3, "old_shift": -0.3},
    "gspo-dr_grpo-bonus": {"loss_type": "dr_grpo", "importance_sampling_level": "sequence", "entropy_coef": 0.05},
    "gspo-bnpo-vllm": {"loss_type": "bnpo", "importance_sampling_level": "sequence", "vllm_weights": True},
    "entropy-0.2-grpo": {"loss_type": "grpo", "top_entropy_quantile": 0.2},
    "entropy-0.5-dapo": {"loss_type": "dapo", "top_entropy_quantile": 0.5, "epsilon_high": 0.28},
    "entropy-0.5-cispo": {"loss_type": "cispo", "top_entropy_quantile": 0.5, "epsilon_high": 1.2},
}


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_policy_methods_equal_trl(model_dirs, tmp_path, case):
    """GSPO, CISPO and top_entropy_quantile: value, every gradient and TRL's metrics equal TRL's, off-policy,
    under gradient accumulation (2), with the KL term. For GSPO this checks the token-level form's claim: its
    per-token gradients equal those of TRL's [B, 1] sequence coefficient broadcast over the tokens."""
    config = dict(POLICY_CASES[case])
    old_shift = config.pop("old_shift", 0.0)
    vllm_weights = config.pop("vllm_weights", False)
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, trainer_kwargs={"preset": "grpo"},
                           beta=0.04, gradient_accumulation_steps=2, **config)
    options = trainer.loss_options
    sequence = config.get("importance_sampling_level") == "sequence"
    cispo = config["loss_type"] == "cispo"
    assert options.policy_loss == ("gspo" if sequence else "cispo" if cispo else "ppo")
    assert options.top_entropy_quantile == config.get("top_entropy_quantile", 1.0)
    if cispo:
        assert (options.clip_low, options.dual_clip) == (1.0, None)
        assert options.clip_high == pytest.approx(config["epsilon_high"] - 1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    inputs = loss_batch(trainer, seed=4, accumulation=2)
    inputs["old_per_token_logps"] = inputs["old_per_token_logps"] + old_shift * inputs["completion_mask"]
    if vllm_weights:
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # as a vLLM run sets them
        inputs["importance_sampling_ratio"] = torch.rand(len(inputs["advantages"]), 1,
                                                         generator=torch.Generator().manual_seed(3)) + 0.5
    ratios = current_ratios(trainer, inputs, sequence=sequence)
    assert (ratios - 1).abs().max() > 0.1, "off-policy"
    ours, _ = assert_matches_trl(trainer, inputs)
    metrics = ours[2]
    signs = inputs["advantages"] if sequence else inputs["advantages"][:, None].expand_as(ratios)
    if cispo:  # the weight's cap is active (where A > 0 TRL counts it)
        assert metrics["cispo_clip_ratio"] > 0 and "clip_ratio/low_mean" not in metrics
    else:
        assert metrics["clip_ratio/region_mean"] > 0, "the ratio is clipped somewhere"
    if "delta" in config and not cispo:
        assert ((ratios > config["delta"]) & (signs < 0)).any(), "the dual clip is active"
    if "top_entropy_quantile" in config:  # the mask matters
        trainer.loss_options = dataclasses.replace(options, top_entropy_quantile=1.0)
        unmasked = trainer.compute_loss(trainer.model, inputs).detach()
        assert abs(unmasked - ours[0]) > 1e-4


def test_gspo_differs_from_token_level(model_dirs, tmp_path):
    """The sequence ratio matters: on the same off-policy batch GSPO's loss is not PPO's."""
    losses = {}
    for level in ("token", "sequence"):
        trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, trainer_kwargs={"preset": "grpo"},
                               loss_type="grpo", importance_sampling_level=level)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        losses[level] = trainer.compute_loss(trainer.model, loss_batch(trainer, seed=4)).item()
    assert abs(losses["token"] - losses["sequence"]) > 1e-4


def test_lm_head_never_runs_in_compute_loss(model_dirs, tmp_path, monkeypatch):
    calls = {"head": 0, "chunked": 0, "fused": 0}
    chunked_apply = trl.trainer.utils._ChunkedLogProbFunction.apply

    def count(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(trl.trainer.utils._ChunkedLogProbFunction, "apply", count("chunked", chunked_apply))
    monkeypatch.setattr(trl_forward, "fused_linear_asymgrpo_loss", count("fused", fused_linear_asymgrpo_loss))
    for tied in (False, True):
        trainer = make_trainer(AsymGRPOTrainer, model_dirs[tied], tmp_path, beta=0.04)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        inputs = loss_batch(trainer)
        trainer.model.get_output_embeddings().register_forward_hook(lambda *args: calls.__setitem__(
            "head", calls["head"] + 1))
        calls.update(head=0, chunked=0, fused=0)
        trainer.compute_loss(trainer.model, inputs).backward()
        assert calls == {"head": 0, "chunked": 0, "fused": 1}, f"tied={tied}"
        GRPOTrainer._compute_loss(trainer, trainer.model, inputs)  # the counters do see TRL's path
        assert calls["chunked"] == 1


def test_head_operands_dtypes():
    """Outside autocast a bfloat16 backbone meets a float32 head in float32; under autocast the loss casts both."""
    hidden, weight = torch.ones(2, 3, 4, dtype=torch.bfloat16), torch.ones(5, 4)
    cast, context = trl_forward.head_operands(hidden, weight, cast_lm_head_to_fp32=False)
    assert cast.dtype == torch.float32 and isinstance(context, contextlib.nullcontext)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept, _ = trl_forward.head_operands(hidden, weight, cast_lm_head_to_fp32=False)
        assert kept.dtype == torch.bfloat16
        fp32, context = trl_forward.head_operands(hidden, weight, cast_lm_head_to_fp32=True)
        with context:
            assert fp32.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


# ----- training ---------------------------------------------------------------------------------


def test_train_asymgrpo_preset_logs_metrics(model_dirs, tmp_path):
    """Two optimizer steps of 2 micro-batches; old log-probs exist (4 micro-batches per generation)."""
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, beta=0.04, gradient_accumulation_steps=2,
                           steps_per_generation=4, epsilon_high=0.28)
    assert (trainer.advantage_options.beta_pos, trainer.advantage_options.beta_neg) == (0.9, 0.4)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert math.isfinite(entry["loss"])
        for name in TRL_METRICS + ("kl", "entropy_pos", "entropy_neg"):
            assert math.isfinite(entry[name]), name
    assert any(entry["entropy_pos"] > 0 and entry["entropy_neg"] > 0 for entry in logs)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_peft_lora_equals_trl_and_trains(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(AsymGRPOTrainer, tiny_qwen2(tied=False), tmp_path, max_steps=1, entropy_coef=0.01,
                           trainer_kwargs={"peft_config": lora, "preset": "grpo"})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    assert_matches_trl(trainer, loss_batch(trainer))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def test_bfloat16_model_with_fp32_head(tmp_path):
    trainer = make_trainer(AsymGRPOTrainer, tiny_qwen2(tied=False, dtype=torch.bfloat16), tmp_path, max_steps=1,
                           cast_lm_head_to_fp32=True, trainer_kwargs={"preset": "grpo"})
    assert trainer.model.lm_head.weight.dtype == torch.float32
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    # The bfloat16 backbone's gradients round differently once the head's float32 gradients differ by 1e-7.
    assert_matches_trl(trainer, loss_batch(trainer), check_grads=False)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


# ----- advantages -------------------------------------------------------------------------------


def binary_groups(group_size: int) -> torch.Tensor:
    """0/1 rewards, one group per number of correct completions k = 1 .. G - 1, correct ones first."""
    return torch.tensor([float(i < k) for k in range(1, group_size) for i in range(group_size)])


def asymgrpo_advantages(rewards: torch.Tensor, group_size: int, std_convention: str) -> torch.Tensor:
    options = advantage_options("asymgrpo", beta_pos=None, beta_neg=None, std_convention=std_convention,
                                scale_rewards="group")
    return completion_advantages(rewards[:, None], torch.ones(1), group_size=group_size, options=options)


@pytest.mark.parametrize("group_size", [4, 8])
def test_asymgrpo_advantages_closed_forms(group_size):
    """docs/algorithm.md §2: ((1-p)/p)^0.9 and -(p/(1-p))^0.4 with the population std; with TRL's the z carries
    the Bessel factor sqrt((G-1)/G) and eps 1e-4."""
    rewards = binary_groups(group_size)
    p = rewards.view(-1, group_size).mean(1, keepdim=True).expand(-1, group_size).reshape(-1).double()
    correct = rewards == 1
    population = asymgrpo_advantages(rewards, group_size, "population")
    expected = torch.where(correct, ((1 - p) / p) ** 0.9, -((p / (1 - p)) ** 0.4))
    torch.testing.assert_close(population.double(), expected, rtol=1e-6, atol=0)
    trl_std = asymgrpo_advantages(rewards, group_size, "trl")
    z = (rewards.double() - p) / (math.sqrt(group_size / (group_size - 1)) * torch.sqrt(p * (1 - p)) + 1e-4)
    expected = torch.where(correct, z.abs() ** 1.8, -(z.abs() ** 0.8))
    torch.testing.assert_close(trl_std.double(), expected, rtol=1e-6, atol=0)
    assert not torch.allclose(trl_std, population, rtol=1e-3)


def test_reward_weights_and_none_rewards():
    nan = float("nan")
    rewards_per_func = torch.tensor([[1.0, 2.0], [nan, 1.0], [nan, nan], [0.0, nan],   # group 0: one unscored
                                     [nan, nan], [nan, nan], [3.0, 0.0], [1.0, 1.0]])  # group 1: two unscored
    weights = torch.tensor([1.0, 0.5])
    combined = weighted_rewards(rewards_per_func, weights)
    torch.testing.assert_close(combined, torch.tensor([2.0, 0.5, nan, 0.0, nan, nan, 3.0, 1.5]), equal_nan=True)
    options = advantage_options("asymgrpo", beta_pos=0.7, beta_neg=0.3, std_convention="population",
                                scale_rewards="group")
    advantages = completion_advantages(rewards_per_func, weights, group_size=4, options=options)
    scored = torch.tensor([0, 1, 3, 6, 7])
    expected = torch.zeros(8)
    for rows in (scored[:3], scored[3:]):  # each group's scored completions, normalized among themselves
        expected[rows] = group_advantages(combined[rows], group_size=len(rows), options=options)
    torch.testing.assert_close(advantages, expected)
    assert (advantages[[2, 4, 5]] == 0).all()


def test_process_slice():
    gathered = torch.arange(12.0)
    assert process_slice(gathered, 0, 4).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert process_slice(gathered, 2, 4).tolist() == [8.0, 9.0, 10.0, 11.0]


def sparse_reward(completion_ids, **kwargs) -> list[float | None]:
    return [None if ids[0] % 3 == 0 else float(ids[0] % 5) for ids in completion_ids]


def other_reward(completion_ids, **kwargs) -> list[float | None]:
    return [None if ids[-1] % 2 == 0 else 0.5 * ids[-1] for ids in completion_ids]


def generation_inputs(trainer):
    """One generation batch, each prompt repeated num_generations times in a row (as TRL's sampler does)."""
    rows = prompts_dataset()
    prompts = trainer.args.generation_batch_size // trainer.num_generations
    return [rows[i] for i in range(prompts) for _ in range(trainer.num_generations)]


def test_generated_batch_advantages(model_dirs, tmp_path):
    """preset="grpo" gives GRPOTrainer's advantages on the same generation (weights, None rewards); the
    AsymGRPO preset gives group_advantages of the logged rewards; the logged advantages are ours."""
    funcs, weights = (sparse_reward, other_reward), [1.0, 0.3]
    outputs = {}
    for name, cls, extra in (("trl", GRPOTrainer, {}), ("grpo", AsymGRPOTrainer, {"preset": "grpo"}),
                             ("asymgrpo", AsymGRPOTrainer, {})):
        trainer = make_trainer(cls, model_dirs[False], tmp_path, reward_funcs=funcs, reward_weights=weights,
                               per_device_train_batch_size=12, trainer_kwargs=extra)
        trainer.model.train()
        torch.manual_seed(5)
        outputs[name] = (trainer, trainer._generate_and_score_completions(generation_inputs(trainer)))
    trl_out, grpo_out, asym_out = (outputs[name][1] for name in ("trl", "grpo", "asymgrpo"))
    assert torch.equal(trl_out["completion_ids"], grpo_out["completion_ids"])
    torch.testing.assert_close(grpo_out["advantages"], trl_out["advantages"], rtol=1e-5, atol=1e-6)
    trainer = outputs["asymgrpo"][0]
    rewards_per_func = torch.tensor([list(trainer._logs["rewards"][f.__name__]) for f in funcs]).T
    assert torch.isnan(rewards_per_func).all(1).any() and torch.isnan(rewards_per_func).any(1).sum() > 1
    expected = completion_advantages(rewards_per_func, torch.tensor(weights), group_size=4,
                                     options=trainer.advantage_options)
    torch.testing.assert_close(asym_out["advantages"], expected)
    assert list(trainer._logs["advantages"]) == expected.tolist()
    assert not torch.allclose(asym_out["advantages"], grpo_out["advantages"])


# ----- metrics over processes -------------------------------------------------------------------


# Six sequences of 5 tokens, processes 0 (rows 0-2) and 1 (rows 3-5); row 2 has no scored token.
REDUCE_MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0],
                            [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
# old - current log-prob: +0.5 gives ratio 0.61 < 1 - 0.2 (clipped low where A < 0), -0.5 gives 1.65 > 1 + 0.28
REDUCE_SHIFT = torch.tensor([[.5, .5, -.5, 0, 0], [.5, 0, -.5, 0, 0], [0, 0, 0, 0, 0],
                             [.5, .5, .5, -.5, 0], [.5, -.5, 0, 0, 0], [.5, .5, .5, .5, 0]])


@pytest.mark.parametrize("advantages, low_min, high_max, low_tokens, high_tokens", [
    ([-1.0] * 6, 1 / 3, 0.0, 11, 0),     # low shares 2/4, 1/3 | 3/5, 1/2, 4/4: the min is process 0's
    ([1.0] * 6, 0.0, 1 / 2, 0, 4),       # high shares 1/4, 1/3 | 1/5, 1/2, 0: the max is process 1's
    ([1.0, -1.0, 0.5, -0.3, 0.8, -2.0], 0.0, 1 / 2, 8, 2),
])
def test_metrics_reduce_over_processes(advantages, low_min, high_max, low_tokens, high_tokens):
    """Two processes' vectors, summed as accelerator.reduce does, give the metrics of the joined batch."""
    advantages = torch.tensor(advantages)
    logprobs = -0.1 * torch.arange(30.0).view(6, 5) * REDUCE_MASK
    old = logprobs + REDUCE_SHIFT
    entropy = (1 + 0.1 * torch.arange(30.0).view(6, 5)) * REDUCE_MASK
    positive, negative = ((advantages > 0)[:, None] * REDUCE_MASK), ((advantages < 0)[:, None] * REDUCE_MASK)

    def vector(rows, process_index):
        low, high = clip_flags(logprobs[rows], old[rows], advantages[rows], REDUCE_MASK[rows], 0.2, 0.28)
        pos, neg = positive[rows].float(), negative[rows].float()
        metrics = {"tokens": REDUCE_MASK[rows].sum().float(),
                   "entropy_pos": (entropy[rows] * pos).sum() / pos.sum().clamp(min=1), "tokens_pos": pos.sum(),
                   "entropy_neg": (entropy[rows] * neg).sum() / neg.sum().clamp(min=1), "tokens_neg": neg.sum()}
        return local_vector(metrics, entropy[rows], low, high, REDUCE_MASK[rows],
                            torch.tensor(float(process_index)), num_processes=2, process_index=process_index)

    reduced = global_metrics((vector(slice(0, 3), 0) + vector(slice(3, 6), 1)).tolist(), num_processes=2,
                             kl=False, policy_loss=True)
    tokens = REDUCE_MASK.sum().item()
    assert reduced["entropy"] == pytest.approx(entropy.sum().item() / tokens)
    assert reduced["clip_ratio/low_mean"] == pytest.approx(low_tokens / tokens)
    assert reduced["clip_ratio/high_mean"] == pytest.approx(high_tokens / tokens)
    assert reduced["clip_ratio/region_mean"] == pytest.approx((low_tokens + high_tokens) / tokens)
    assert reduced["clip_ratio/low_min"] == pytest.approx(low_min)
    assert reduced["clip_ratio/high_max"] == pytest.approx(high_max)
    for name, channel in (("entropy_pos", positive), ("entropy_neg", negative)):
        expected = (entropy * channel).sum().item() / max(channel.sum().item(), 1)
        assert reduced[name] == pytest.approx(expected)
    assert reduced["policy_loss"] == pytest.approx(0.5)  # the mean of the processes' values 0 and 1


# ----- what raises ------------------------------------------------------------------------------


@pytest.mark.parametrize("config, named", [
    ({"loss_type": "luspo"}, "loss_type"),
    ({"loss_type": "sapo"}, "loss_type"),
    ({"loss_type": "cispo"}, "epsilon_high=None"),  # TRL's cap is epsilon_high itself: 0.2 here
    ({"loss_type": "cispo", "epsilon_high": 0.28}, "epsilon_high >= 1"),
    ({"loss_type": "cispo", "epsilon_high": 5.0, "importance_sampling_level": "sequence"}, "loss_type='cispo'"),
    ({"top_entropy_quantile": 0.2, "entropy_coef": 0.01}, "entropy bonus"),
    ({"top_entropy_quantile": 0.2, "importance_sampling_level": "sequence"}, "top_entropy_quantile"),
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
    ({"delta": 1.1}, "delta"),
    ({"delta": 1.2, "importance_sampling_level": "sequence"}, "delta"),
    ({"beta": 0.04, "use_bias_correction_kl": True}, "use_bias_correction_kl"),
    ({"use_adaptive_entropy": True}, "use_adaptive_entropy"),
    ({"scale_rewards": "batch"}, "scale_rewards"),
    ({"multi_objective_aggregation": "normalize_then_sum"}, "multi_objective_aggregation"),
    ({"scale_rewards": "none"}, "scale_rewards"),  # the asymgrpo preset normalizes by the std
])
def test_unsupported_options_raise(model_dirs, tmp_path, config, named):
    with pytest.raises(ValueError, match=named):
        make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, **config)


def test_options_refused_by_process_count_and_vllm_mode(tmp_path):
    """top_entropy_quantile: one process only (TRL's quantile spans every process's tokens); GSPO with TRL's
    per-token vLLM IS weights; the process count defaults to args.world_size."""
    args = grpo_config(tmp_path, top_entropy_quantile=0.2)
    assert args.world_size == 1 and unsupported_options(args) == []
    (several,) = unsupported_options(args, num_processes=2)
    assert "top_entropy_quantile=0.2 with 2 processes" in several
    assert loss_options(args).top_entropy_quantile == 0.2
    for mode, refused in (("token_truncate", True), ("sequence_mask", False)):
        args = grpo_config(tmp_path, importance_sampling_level="sequence", use_vllm=True,
                           vllm_importance_sampling_correction=True, vllm_importance_sampling_mode=mode)
        problems = unsupported_options(args, num_processes=1)
        assert bool(problems) == refused and all("vllm_importance_sampling_mode" in p for p in problems)


@pytest.mark.parametrize("field, value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.5),
                                          ("logits_scaling", 4.0)])
def test_logit_transforms_raise(tmp_path, field, value):
    model = tiny_qwen2(tied=False)
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=field):
        make_trainer(AsymGRPOTrainer, model, tmp_path)


def test_router_aux_loss_and_lm_head_adapter_raise(tmp_path):
    model = tiny_qwen2(tied=False)
    model.config.output_router_logits = False  # the config of a Mixture-of-Experts model
    with pytest.raises(ValueError, match="router_aux_loss_coef"):
        make_trainer(AsymGRPOTrainer, model, tmp_path, router_aux_loss_coef=0.01)
    lora = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="lm_head"):
        make_trainer(AsymGRPOTrainer, tiny_qwen2(tied=False), tmp_path, trainer_kwargs={"peft_config": lora})


def test_deepspeed_zero3_and_processors_are_refused():
    """The wiring passes is_deepspeed_zero3_enabled() and isinstance(processing_class, ProcessorMixin)."""
    config = tiny_qwen2(tied=False).config
    assert unsupported_model(config, aux_loss_enabled=False, deepspeed_zero3=False, multimodal=False) == []
    (zero3,) = unsupported_model(config, aux_loss_enabled=False, deepspeed_zero3=True, multimodal=False)
    (processor,) = unsupported_model(config, aux_loss_enabled=False, deepspeed_zero3=False, multimodal=True)
    assert "ZeRO-3" in zero3 and "processor" in processor


def test_preset_choices(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="std_convention"):
        make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, trainer_kwargs={"std_convention": "bessel"})
    trainer = make_trainer(AsymGRPOTrainer, model_dirs[False], tmp_path, scale_rewards="none", loss_type="dr_grpo",
                           trainer_kwargs={"preset": "dr_grpo", "beta_neg": 0.3, "std_convention": "population"})
    options = trainer.advantage_options
    assert (options.beta_pos, options.beta_neg, options.normalize, options.std) == (0.5, 0.3, "none", "population")
    assert (trainer.loss_options.loss_agg, trainer.loss_options.max_len) == ("seq-mean-token-sum-norm", 6)
