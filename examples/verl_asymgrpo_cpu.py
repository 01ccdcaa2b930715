"""AsymGRPO through verl's own code paths on the CPU: policy updates of the tiny local model, no download.

    python examples/verl_asymgrpo_cpu.py

A verl training run needs GPUs and a vLLM rollout (examples/verl_asymgrpo.sh). This script runs,
on the CPU, the three places where verl calls into asymgrpo, with verl's own functions around
them, on the embedded task (a tiny Qwen2 and a character tokenizer built locally, warmed up with
supervised steps so that some sampled answers are right):

1. verl's fused model forward (``use_fused_kernels=True``) with the kernel switch on, so that
   verl's ``FusedLinearForPPO`` is ``fused_linear_logprob_entropy``: response log-probs and
   entropies without [tokens x vocab] logits;
2. verl's ``compute_advantage`` with ``algorithm.adv_estimator=asymgrpo`` on a ``DataProto``
   (uid groups, ``+algorithm.beta_pos`` / ``beta_neg``);
3. the policy loss that ``actor.policy_loss.loss_mode=asymgrpo`` selects, looked up in verl's
   registry and called with the keywords of verl's actor loss and a real ``ActorConfig``
   (clip-higher, the dual clip), then an optimizer step; UPDATES of them per rollout.

docs/verl.md describes the keys.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

import verl  # loads the asymgrpo plugin: the "asymgrpo" estimator and policy loss are registered
from verl.models.transformers.dense_common import forward_with_torch_backend
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.workers.config import ActorConfig, PolicyLossConfig

from asymgrpo.data.arithmetic import arithmetic_splits
from asymgrpo.demo.model import build_tiny_qwen2
from asymgrpo.demo.tokenizer import build_char_tokenizer
from asymgrpo.demo.warmup import supervised_warmup
from asymgrpo.integrations.verl import use_asymgrpo_fused_kernels
from asymgrpo.rewards.builtin import exact_match

SEED = 0
PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS = 16, 8, 6
UPDATES = 2  # optimizer steps per rollout: the second one is off-policy, so the ratio clip can act


def rollout(model, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, list[str]]:
    """GROUP_SIZE sampled completions per prompt: ids [B, P + R] (prompts left-padded), their attention
    mask, P, the response mask [B, R] (tokens up to and including the first <eos>) and the responses."""
    tokenizer.padding_side = "left"
    encoded = tokenizer([p for p in prompts for _ in range(GROUP_SIZE)], return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**encoded, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=MAX_NEW_TOKENS,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    prompt_len = encoded["input_ids"].shape[1]
    response = ids[:, prompt_len:]
    is_eos = (response == tokenizer.eos_token_id).long()
    response_mask = ((is_eos.cumsum(dim=1) - is_eos) == 0).float()
    attention_mask = torch.cat([encoded["attention_mask"], response_mask.long()], dim=1)
    return ids, attention_mask, prompt_len, response_mask, tokenizer.batch_decode(response, skip_special_tokens=True)


def response_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's fused forward: log-probs and entropies [B, R] of the response tokens."""
    out = forward_with_torch_backend(model, input_ids=ids, attention_mask=attention_mask, return_dict=True,
                                     temperature=1.0)
    # position t scores token t + 1 (verl rolls the labels), so the response tokens are P - 1 .. L - 2
    return out.log_probs[:, prompt_len - 1:-1], out.entropy[:, prompt_len - 1:-1]


def run(*, steps: int = 5, warmup_steps: int = 500) -> list[dict[str, float]]:
    """Warm up, then ``steps`` AsymGRPO updates through verl's functions; returns one row per step."""
    torch.manual_seed(SEED)
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=SEED)
    train, _ = arithmetic_splits(seed=SEED, test_size=500)
    supervised_warmup(model, tokenizer, train, steps=warmup_steps, lr=1e-3, batch_size=64, seed=SEED)
    use_asymgrpo_fused_kernels()

    algorithm = OmegaConf.create({"adv_estimator": "asymgrpo", "beta_pos": 0.9, "beta_neg": 0.4,
                                  "norm_adv_by_std_in_grpo": True})
    actor = ActorConfig(strategy="fsdp", rollout_n=GROUP_SIZE, ppo_micro_batch_size_per_gpu=PROMPTS * GROUP_SIZE,
                        clip_ratio_low=0.2, clip_ratio_high=0.28, policy_loss=PolicyLossConfig(loss_mode="asymgrpo"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    for step in range(steps):
        examples = train[step * PROMPTS:(step + 1) * PROMPTS]
        model.eval()
        ids, attention_mask, prompt_len, response_mask, responses = rollout(model, tokenizer, [e.prompt for e in examples])
        rewards = torch.tensor([exact_match(e.prompt, responses[i * GROUP_SIZE + j], e.answer)
                                for i, e in enumerate(examples) for j in range(GROUP_SIZE)])
        token_level_rewards = torch.zeros_like(response_mask)
        token_level_rewards[torch.arange(len(rewards)), response_mask.sum(dim=1).long() - 1] = rewards

        model.train()
        with torch.no_grad():
            old_log_probs, _ = response_logprobs(model, ids, attention_mask, prompt_len)
        data = verl.DataProto.from_dict(
            tensors={"token_level_rewards": token_level_rewards, "response_mask": response_mask},
            non_tensors={"uid": np.array([f"prompt-{i}" for i in range(PROMPTS) for _ in range(GROUP_SIZE)],
                                         dtype=object)},
        )
        data = compute_advantage(data, adv_estimator=algorithm.adv_estimator, num_repeat=GROUP_SIZE,
                                 config=algorithm)
        loss_fn = core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode)
        for _ in range(UPDATES):
            log_probs, entropy = response_logprobs(model, ids, attention_mask, prompt_len)
            loss, metrics = loss_fn(old_log_prob=old_log_probs, log_prob=log_probs,
                                    advantages=data.batch["advantages"], response_mask=response_mask.bool(),
                                    loss_agg_mode=actor.loss_agg_mode, config=actor, rollout_is_weights=None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        mean_entropy = (entropy.detach() * response_mask).sum() / response_mask.sum()
        rows.append({"step": step + 1, "reward": rewards.mean().item(), "loss": loss.item(),
                     "entropy": mean_entropy.item(), **metrics})
        print(f"step {step + 1}: reward {rows[-1]['reward']:.3f}  loss {rows[-1]['loss']:+.4f}  "
              f"entropy {rows[-1]['entropy']:.3f}  clipfrac {metrics['actor/pg_clipfrac']:.3f}")
    use_asymgrpo_fused_kernels(False)
    return rows


if __name__ == "__main__":
    run()
