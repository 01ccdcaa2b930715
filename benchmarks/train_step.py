"""One training step of a randomly initialised Qwen2.5-1.5B-shaped model: fused loss vs materialized logits.

    python benchmarks/train_step.py [--out results.json] [--dry-run] [--batch 8 --seq 1024]

The model is built from a transformers Qwen2Config with Qwen2.5-1.5B's shape (28 layers,
hidden 1536, 12 heads / 2 KV heads, MLP 8960, vocabulary 151,936, tied embeddings): no
download. A step is backbone forward -> AsymGRPO loss -> backward -> AdamW step, on the
same batch for both loss paths:

* fused: ``fused_linear_asymgrpo_loss(hidden, model.lm_head.weight, ...)``, never [N x V];
* materialized: ``model.lm_head(hidden)`` logits -> ``asymgrpo_loss_reference`` (log_softmax,
  entropy, loss), as plain PyTorch code would do.

Reports per path the median step time and the peak memory of a step (CUDA: max allocated,
weights and optimizer state included). --dry-run uses a tiny config on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asymgrpo_kernels import fused_linear_asymgrpo_loss  # noqa: E402
from asymgrpo_kernels.reference import asymgrpo_loss_reference  # noqa: E402
from benchmarks.results import metadata  # noqa: E402

QWEN25_15B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, vocab_size=1000, max_position_embeddings=256, tie_word_embeddings=True,
)
LOSS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.0, entropy_coef=0.0, loss_agg="token-mean")


def build_model(shape: dict, dtype: torch.dtype, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.config.use_cache = False
    return model


def make_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    lengths = torch.randint(seq - seq // 8, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).float()
    return {
        "input_ids": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device), "mask": mask.to(device),
        "advantages": torch.randn(batch, generator=gen).to(device),
    }


def step(model, optimizer, batch: dict, path: str) -> float:
    """Forward, loss, backward and optimizer step; returns the loss value."""
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    weight = model.lm_head.weight  # tied: the embedding matrix
    args = (hidden, weight, batch["targets"], batch["mask"], batch["advantages"])
    if path == "fused":
        loss, _ = fused_linear_asymgrpo_loss(*args, **LOSS)
    else:
        loss = asymgrpo_loss_reference(*args, **LOSS)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def measure(model, batch: dict, path: str, device: torch.device, warmup: int, steps: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(model, optimizer, batch, path)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for _ in range(steps):
        start = time.perf_counter()
        loss = step(model, optimizer, batch, path)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    del optimizer
    return {"path": path, "status": "ok", "step_time_s": statistics.median(times), "step_times_s": times,
            "peak_bytes": peak, "loss": loss}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    shape, dtype = (TINY, torch.float32) if args.dry_run else (QWEN25_15B, torch.bfloat16)
    batch_size, seq = args.batch or (2 if args.dry_run else 8), args.seq or (16 if args.dry_run else 1024)
    model = build_model(shape, dtype, device)
    batch = make_batch(batch_size, seq, shape["vocab_size"], device)
    doc = {
        "kind": "train_step", "model": "Qwen2.5-1.5B shape" if not args.dry_run else "tiny Qwen2 (dry run)",
        "config": shape, "dtype": str(dtype).removeprefix("torch."), "batch": batch_size, "seq": seq,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "loss_config": LOSS,
        "meta": metadata(device, "dry-run" if args.dry_run else "gpu"), "rows": [],
    }
    for path in ("fused", "materialized"):
        try:
            row = measure(model, batch, path, device, args.warmup, args.steps)
        except torch.OutOfMemoryError as exc:
            row = {"path": path, "status": "oom", "reason": str(exc).splitlines()[0]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        doc["rows"].append(row)
        print(json.dumps(row))
        if args.out:  # after each path, so a run cut short keeps the first
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
