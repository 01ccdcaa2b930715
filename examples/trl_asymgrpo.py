"""AsymGRPO with TRL: AsymGRPOTrainer on the embedded arithmetic task, on the CPU, no download.

    python examples/trl_asymgrpo.py

Builds the tiny local Qwen2 and the character tokenizer, warms the model up with supervised
steps (a random model never writes a correct sum, so every reward would be 0), then runs TRL's
GRPO loop with AsymGRPO advantages (beta_pos 0.9, beta_neg 0.4) and the fused loss. The glue a
TRL user writes is the ``AsymGRPOTrainer(...)`` call: the rest is an ordinary GRPOTrainer script.
docs/trl.md describes the options.
"""

from __future__ import annotations

import time

from datasets import Dataset
from trl import GRPOConfig

from asymgrpo.data.arithmetic import arithmetic_splits
from asymgrpo.demo.model import build_tiny_qwen2
from asymgrpo.demo.tokenizer import build_char_tokenizer
from asymgrpo.demo.warmup import supervised_warmup
from asymgrpo.integrations.trl import AsymGRPOTrainer
from asymgrpo.rewards.builtin import exact_match

SEED = 0
STEPS = 100
LOG_EVERY = 10  # TRL logs the mean of each metric over this many steps


def exact_answer(prompts: list[str], completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """TRL reward function: 1.0 where the completion is the exact sum (``answer`` is a dataset column)."""
    return [exact_match(p, c, a) for p, c, a in zip(prompts, completions, answer, strict=True)]


def main(*, steps: int = STEPS, warmup_steps: int = 500, output_dir: str = "runs/trl_asymgrpo") -> AsymGRPOTrainer:
    """Warm up the tiny model, train ``steps`` AsymGRPO steps with TRL, print a summary; returns the trainer."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=SEED)
    train, _ = arithmetic_splits(seed=SEED, test_size=500)
    supervised_warmup(model, tokenizer, train, steps=warmup_steps, lr=1e-3, batch_size=64, seed=SEED)
    dataset = Dataset.from_dict({"prompt": [e.prompt for e in train], "answer": [e.answer for e in train]})

    args = GRPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=64,   # 8 prompts x 8 completions per micro-batch
        gradient_accumulation_steps=2,    # one generation of 16 prompts per optimizer step
        num_generations=8,
        max_completion_length=6,
        temperature=1.0,
        learning_rate=1e-4,
        epsilon_high=0.28,                # clip-higher, as the paper's best row
        loss_type="dapo",
        bf16=False,                       # float32 on the CPU
        use_cpu=True,
        use_vllm=False,
        logging_steps=min(LOG_EVERY, steps),
        disable_tqdm=True,
        save_strategy="no",
        report_to="none",
        seed=SEED,
    )
    trainer = AsymGRPOTrainer(model=model, reward_funcs=[exact_answer], args=args, train_dataset=dataset,
                              processing_class=tokenizer, preset="asymgrpo")
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start

    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    first, last = logs[0], logs[-1]
    print(f"done: {trainer.state.global_step} steps in {elapsed:.0f} s")
    print(f"reward (mean of {args.logging_steps} steps): {first['reward']:.3f} over the first -> {last['reward']:.3f} "
          "over the last")
    print(f"entropy_pos / entropy_neg: {first['entropy_pos']:.3f} / {first['entropy_neg']:.3f} -> "
          f"{last['entropy_pos']:.3f} / {last['entropy_neg']:.3f}")
    return trainer


if __name__ == "__main__":
    main()
