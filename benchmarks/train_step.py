"""One training step of a randomly initialised Qwen2.5-shaped model: fused loss vs materialized logits.

    python benchmarks/train_step.py [--out results.json] [--dry-run] [--batch 8 --seq 1024]
    python benchmarks/train_step.py --cpu-qwen05b [--layers L] [--steps 3] [--out results.json]

A step is backbone forward -> AsymGRPO loss -> backward -> AdamW step, on the same batch for
both loss paths:

* fused: ``fused_linear_asymgrpo_loss(hidden, model.lm_head.weight, ...)``, never [N x V];
* materialized: ``model.lm_head(hidden)`` logits -> ``asymgrpo_loss_reference`` (log_softmax,
  entropy, loss), as plain PyTorch code would do (every row of the logits, scored or not).

Models are built from a transformers Qwen2Config (random weights, no download).

Default (CUDA): Qwen2.5-1.5B's shape (28 layers, hidden 1536, 12 heads / 2 KV heads, MLP
8960, vocabulary 151,936, tied embeddings), bfloat16, batch 8 x 1024 tokens with the last
0-12% of each sequence masked; both paths in this process; reports the median step time and
the peak memory of a step (max allocated: weights and optimizer state included).
--dry-run uses a tiny config on the CPU.

--cpu-qwen05b (the CPU): Qwen2.5-0.5B's shape (24 layers, hidden 896, 14 heads / 2 KV heads,
MLP 4864, vocabulary 151,936, tied embeddings, rope_theta 1e6), float32, an RL batch of
8 sequences of 128 prompt + 256 completion tokens (3,072 tokens through the model; position
t predicts token t + 1, and the loss mask is 1 only where that token is a completion token:
2,048 scored rows of 3,064, so the fused path may skip the prompt rows, while the
materialized path computes the logits of all of them), the fused loss with backend "torch",
AdamW, gradient checkpointing of the decoder layers (as RL trainers run; without it,
--no-grad-checkpointing, the materialized path needs more than 24 GiB). Each path runs in its own fresh subprocess: build the model and the AdamW state
(one step on zero gradients), measure the baseline RSS, then one warm-up step and --steps
timed steps. Reports the median step time, the peak RSS of the steps minus that baseline
(``peak_extra_bytes``; VmHWM reset through /proc/self/clear_refs after the baseline) and the
process's absolute peak RSS (``peak_bytes``, VmHWM over the whole process). --layers L
builds only L of the 24 layers (a quick check; the LM head and the batch stay the same).
The full run takes about 13 minutes on 2 cores; the materialized path peaks near 18.3 GiB RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
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
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
CPU_RL_BATCH = dict(batch=8, prompt=128, completion=256)  # 3,072 tokens per step
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


def make_rl_batch(batch: int, prompt: int, completion: int, vocab: int, device: torch.device) -> dict:
    """``batch`` sequences of ``prompt`` + ``completion`` tokens, as an RL step sees them.

    The model reads all prompt + completion tokens; position t predicts token t + 1, so the
    loss runs over the first prompt + completion - 1 positions (``hidden_slice``), and the
    mask is 1 exactly where token t + 1 is a completion token.
    """
    gen = torch.Generator().manual_seed(1)
    seq = prompt + completion
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = (torch.arange(1, seq)[None, :] >= prompt).float().expand(batch, seq - 1).contiguous()
    return {
        "input_ids": ids.to(device), "targets": ids[:, 1:].contiguous().to(device), "mask": mask.to(device),
        "advantages": torch.randn(batch, generator=gen).to(device), "hidden_slice": slice(0, seq - 1),
    }


def step(model, optimizer, batch: dict, path: str, backend: str = "auto") -> float:
    """Forward, loss, backward and optimizer step; returns the loss value."""
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    if "hidden_slice" in batch:
        hidden = hidden[:, batch["hidden_slice"]]
    weight = model.lm_head.weight  # tied: the embedding matrix
    args = (hidden, weight, batch["targets"], batch["mask"], batch["advantages"])
    if path == "fused":
        loss, _ = fused_linear_asymgrpo_loss(*args, backend=backend, **LOSS)
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


# --------------------------------------------------------------------------- the CPU mode


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_shape(layers: int | None) -> dict:
    return {**QWEN25_05B, "num_hidden_layers": layers or QWEN25_05B["num_hidden_layers"]}


def cpu_child(args) -> dict:
    """One loss path of the CPU mode, in this (fresh) process: time and peak RSS."""
    device = torch.device("cpu")
    shape = cpu_shape(args.layers)
    model = build_model(shape, torch.float32, device)
    model.train()
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    # Build the AdamW state now (one step on zero gradients: no update), so the baseline holds it.
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rl = CPU_RL_BATCH | {k: v for k, v in (("batch", args.batch), ("prompt", args.prompt),
                                            ("completion", args.completion)) if v}
    batch = make_rl_batch(rl["batch"], rl["prompt"], rl["completion"], shape["vocab_size"], device)
    gc.collect()
    baseline = _status_bytes("VmRSS:")
    build_peak = _status_bytes("VmHWM:")
    reset = _reset_peak_rss()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses.append(step(model, optimizer, batch, args.child, backend="torch"))
        times.append(time.perf_counter() - start)
        print(f"[{args.child}] step {i} ({'warm-up' if i < args.warmup else 'timed'}): {times[-1]:.2f} s, "
              f"loss {losses[-1]:.6f}", file=sys.stderr, flush=True)
    step_peak = _status_bytes("VmHWM:")
    timed = times[args.warmup:]
    return {
        "path": args.child, "status": "ok", "step_time_s": statistics.median(timed), "step_times_s": timed,
        "warmup_times_s": times[:args.warmup], "loss": losses[-1], "first_loss": losses[0],
        "baseline_rss_bytes": baseline, "step_peak_rss_bytes": step_peak,
        "peak_extra_bytes": step_peak - baseline if reset else None,
        "peak_bytes": max(build_peak, step_peak), "build_peak_rss_bytes": build_peak, "hwm_reset": reset,
        "torch_threads": torch.get_num_threads(),
    }


def cpu_main(args) -> None:
    """Run each loss path in its own subprocess and collect the rows."""
    shape = cpu_shape(args.layers)
    rl = CPU_RL_BATCH | {k: v for k, v in (("batch", args.batch), ("prompt", args.prompt),
                                            ("completion", args.completion)) if v}
    seq = rl["prompt"] + rl["completion"]
    layers = shape["num_hidden_layers"]
    doc = {
        "kind": "train_step",
        "model": "Qwen2.5-0.5B shape" + ("" if layers == QWEN25_05B["num_hidden_layers"]
                                         else f" ({layers} of {QWEN25_05B['num_hidden_layers']} layers)"),
        "config": shape, "dtype": "float32", "batch": rl["batch"], "seq": seq,
        "prompt": rl["prompt"], "completion": rl["completion"], "tokens_per_step": rl["batch"] * seq,
        "loss_rows": rl["batch"] * (seq - 1), "scored_tokens": rl["batch"] * rl["completion"],
        "warmup_steps": args.warmup, "timed_steps": args.steps, "loss_config": LOSS, "fused_backend": "torch",
        "gradient_checkpointing": args.grad_checkpointing,
        "optimizer": "AdamW (lr 1e-6, torch defaults otherwise), state built before the baseline",
        "memory_method": "peak RSS (VmHWM) of a fresh subprocess per path; peak_extra_bytes = VmHWM over the "
                         "steps (reset after the baseline) minus the RSS after the model and AdamW state are built",
        "kernels": str(Path(sys.modules[fused_linear_asymgrpo_loss.__module__].__file__).resolve().parent),
        "meta": metadata(torch.device("cpu"), "cpu-qwen05b"), "rows": [],
    }
    for path in args.paths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cpu-qwen05b", "--child", path,
               "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--grad-checkpointing" if args.grad_checkpointing else "--no-grad-checkpointing"]
        for flag, value in (("--layers", args.layers), ("--batch", args.batch), ("--prompt", args.prompt),
                            ("--completion", args.completion)):
            if value:
                cmd += [flag, str(value)]
        print(f"=== {path}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (per-step progress) passes through
        if proc.returncode != 0:
            row = {"path": path, "status": "error", "reason": f"subprocess exit status {proc.returncode}"}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_wall_s"] = time.perf_counter() - start
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # after each path, so a run cut short keeps the first
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.out:
        print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--cpu-qwen05b", action="store_true",
                        help="Qwen2.5-0.5B shape, float32 on the CPU, 8 x (128 prompt + 256 completion) tokens")
    parser.add_argument("--layers", type=int, default=None, help="--cpu-qwen05b: build only this many layers")
    parser.add_argument("--prompt", type=int, default=None, help="--cpu-qwen05b: prompt tokens per sequence (128)")
    parser.add_argument("--completion", type=int, default=None, help="--cpu-qwen05b: completion tokens per sequence (256)")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="--cpu-qwen05b: recompute the decoder layers in the backward (default: on; without it "
                             "the layers' activations add ~7 GiB and the materialized path needs more than 24 GiB)")
    parser.add_argument("--paths", type=lambda s: s.split(","), default=["fused", "materialized"],
                        help="comma-separated loss paths (default: fused,materialized)")
    parser.add_argument("--child", choices=("fused", "materialized"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 1 with --cpu-qwen05b, else 2)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.cpu_qwen05b else 2
    if args.cpu_qwen05b:
        if args.child:
            print(json.dumps(cpu_child(args)), flush=True)
        else:
            cpu_main(args)
        return

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
    for path in args.paths:
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
