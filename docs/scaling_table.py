"""The formulas of docs/scaling.md, evaluated: communication per training step.

Run from the repository root (standard library only, no GPU, no download):

    python docs/scaling_table.py

It prints the Markdown tables that docs/scaling.md shows. Every number is a formula evaluated
on the shapes and token counts stated below; nothing here is measured. Bytes are decimal
(1 GB = 10^9 bytes); "wire" bytes are what one rank sends (and, for these symmetric
collectives, receives) under NCCL's ring algorithms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# Model shapes (the models' config.json on the Hugging Face hub).


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int  # H
    vocab: int  # V
    layers: int  # L
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool  # Qwen2 family
    qk_norm: bool  # Qwen3 family
    tied: bool

    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        n = h * q + 2 * h * kv + q * h  # q, k, v, o projections
        n += (q + 2 * kv) if self.qkv_bias else 0
        n += 3 * h * self.intermediate  # gate, up, down
        n += 2 * h  # the two RMSNorms
        n += 2 * self.head_dim if self.qk_norm else 0
        return n

    def layer_tensors(self) -> int:
        return 4 + (3 if self.qkv_bias else 0) + 3 + 2 + (2 if self.qk_norm else 0)

    def root_params(self) -> int:
        """The root FSDP unit: embeddings, final norm and (untied) LM head."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:  # psi
        return self.layers * self.layer_params() + self.root_params()

    def tensors(self) -> int:
        return self.layers * self.layer_tensors() + (2 if self.tied else 3)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


QWEN25_7B = Model("Qwen2.5-7B", 3584, 152064, 28, 18944, 28, 4, 128, True, False, False)
QWEN3_32B = Model("Qwen3-32B", 5120, 151936, 64, 25600, 64, 8, 128, False, True, False)

# --------------------------------------------------------------------------------------------
# Token-count assumptions per training step (every response at its full length: an upper bound).


@dataclass(frozen=True)
class Workload:
    prompts: int  # prompts_per_step
    group: int  # G samples per prompt
    prompt_len: int
    response_len: int
    micro_batch: int  # sequences per forward/backward (micro_batch_size)
    updates: int  # U, updates_per_step

    @property
    def sequences(self) -> int:
        return self.prompts * self.group

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    @property
    def scored_per_call(self) -> int:  # n: scored (response) tokens per micro-batch call
        return self.micro_batch * self.response_len

    def micro_batches(self, sequences: int) -> tuple[int, int]:
        """(M_s, M): scoring micro-batches and training micro-batches over all U updates."""
        scoring = math.ceil(sequences / self.micro_batch)
        training = self.updates * math.ceil(sequences / self.updates / self.micro_batch)
        return scoring, training


WORKLOADS = {
    QWEN25_7B.name: Workload(512, 8, 512, 2048, micro_batch=4, updates=2),
    QWEN3_32B.name: Workload(512, 8, 1024, 4096, micro_batch=2, updates=2),
}
GPUS = (8, 64, 512)
GPUS_PER_NODE = 8

# Assumptions for the time columns only (nominal, not measured): per-GPU link bandwidth, one
# direction, and a sustained dense bf16 rate per GPU.
NVLINK_BYTES_S = 450e9  # H100/H200 SXM NVLink 4: 900 GB/s both directions
IB_BYTES_S = 50e9  # one 400 Gb/s NDR InfiniBand NIC per GPU
SUSTAINED_FLOPS = 400e12  # about 40% of an H100's dense bf16 peak

# Design constants of the vocabulary-parallel loss.
LAYOUT_INT64 = 8  # K: int64 entries of the layout vector
PARTIAL_BYTES = 16  # m, S, Zm, target logit: 4 float32 per scored token
WORKSPACE = 256 * 2**20


def fmt(nbytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes:.0f} B"


def fmt_s(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds >= 100 else f"{seconds:.3g} s"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# (a) The vocabulary-parallel fused loss, per call.


def vocab_parallel_call(model: Model, n: int, p: int) -> dict[str, float]:
    h, v = model.hidden, model.vocab
    ring_ar = 2 * (p - 1) / p
    return {
        "layout": (p - 1) * LAYOUT_INT64 * 8,  # all_gather of K int64 per rank
        "partials": (p - 1) * PARTIAL_BYTES * n,  # all_gather of 16 n bytes per rank
        "partials_buffer": PARTIAL_BYTES * n * p,  # what each rank holds after it
        "dh": ring_ar * 4 * n * h,  # all_reduce of the float32 [n, H] rows
        "megatron_forward": 4 * ring_ar * 4 * n,  # max, sum-exp, target logit, entropy sum
        "megatron_logits": 4 * n * v / p,  # float32 [n, V/P] per rank
        "materialized_wire": (p - 1) / p * 4 * n * v,  # all_gather of float32 [n, V]
        "materialized_logits": 4 * n * v,
    }


def table_vocab_parallel_call() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        n = WORKLOADS[model.name].scored_per_call
        for p in GPUS:
            c = vocab_parallel_call(model, n, p)
            ours_fwd = c["layout"] + c["partials"]
            rows.append([
                f"{model.name}, n = {n:,}", str(p), fmt(c["layout"]), fmt(c["partials"]),
                fmt(c["partials_buffer"] + WORKSPACE), fmt(c["dh"]), fmt(ours_fwd + c["dh"]),
                fmt(c["megatron_forward"]), fmt(c["megatron_logits"]),
                fmt(c["materialized_wire"]), fmt(c["materialized_logits"]),
            ])
    return table(
        ["shape", "P", "layout AG", "partials AG", "ours: memory, at most", "dh AR", "ours: call",
         "Megatron CE fwd", "Megatron: logits", "gather logits: wire", "gather logits: memory"],
        rows,
    )


def table_vocab_parallel_step(p: int = GPUS_PER_NODE) -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        work = WORKLOADS[model.name]
        n = work.scored_per_call
        c = vocab_parallel_call(model, n, p)
        for gpus in GPUS:
            replicas = gpus // p
            scoring, training = work.micro_batches(work.sequences // replicas)
            calls = scoring + training
            fwd = calls * (c["layout"] + c["partials"])
            bwd = training * c["dh"]
            rows.append([
                model.name, str(gpus), str(replicas), f"{scoring} + {training}",
                f"{2 * calls:,}", f"{training:,}", f"{2 * calls:,}", fmt(fwd), fmt(bwd),
            ])
    return table(
        ["model", "GPUs", "replicas D", "calls M_s + M", "all_gathers", "all_reduces",
         "host syncs", "forward wire", "backward wire"],
        rows,
    )


def table_dtensor_head() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        vh = model.vocab * model.hidden
        rows.append([model.name, f"{vh / 1e6:,.0f} M", fmt(2 * vh), fmt(4 * vh), fmt(4 * vh)])
    return table(["model", "V x H", "forward AG, bf16", "forward AG, float32", "backward RS, float32 grad"], rows)


# --------------------------------------------------------------------------------------------
# (b) The FSDP2 trainer, per step and per rank.


def fsdp_step(model: Model, work: Workload, gpus: int, *, gather_bytes: int = 4, grad_bytes: int = 4,
              sync_bytes: int = 4, root_resharded: bool = False) -> dict[str, float]:
    """Wire bytes and collectives per rank per step of the FSDP2 trainer.

    Defaults follow asymgrpo/distributed.py: FSDP2's default reshard_after_forward (True for the
    decoder layers, False for the root), float32 gathers and reduce-scatters, and the weight
    sync as a float32 full state dict (one all_gather per parameter tensor).
    root_resharded=True is reshard_after_forward=True on the root as well.
    """
    psi, root, layers = model.params(), model.root_params(), model.layers
    f = (gpus - 1) / gpus
    sequences = work.sequences // gpus
    scoring, training = work.micro_batches(sequences)
    if root_resharded:
        score_gathered, score_gathers = scoring * psi, scoring * (layers + 1)
        bwd_gathered, bwd_gathers = training * psi, training * (layers + 1)
    else:  # the root stays unsharded across a forward-only pass and between forward and backward
        score_gathered, score_gathers = scoring * (psi - root) + root, scoring * layers + 1
        bwd_gathered, bwd_gathers = training * (psi - root), training * layers
    volume = {
        "score_ag": f * gather_bytes * score_gathered,
        "fwd_ag": training * f * gather_bytes * psi,
        "bwd_ag": f * gather_bytes * bwd_gathered,
        "rs": training * f * grad_bytes * psi,
        "sync": f * sync_bytes * psi,
    }
    volume["total"] = sum(volume.values())
    tokens = sequences * work.seq_len
    volume.update(
        sequences=sequences, scoring=scoring, training=training,
        all_gathers=score_gathers + training * (layers + 1) + bwd_gathers,
        sync_gathers=model.tensors(),
        reduce_scatters=training * (layers + 1),
        flops=(2 + 6) * psi * tokens,  # scoring forward + training forward/backward, no attention
        bandwidth=NVLINK_BYTES_S if gpus <= GPUS_PER_NODE else IB_BYTES_S,
    )
    return volume


def table_fsdp_step() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        work = WORKLOADS[model.name]
        for gpus in GPUS:
            s = fsdp_step(model, work, gpus)
            rows.append([
                model.name, str(gpus), str(s["sequences"]), f"{s['scoring']} + {s['training']}",
                f"{s['all_gathers']:,} + {s['sync_gathers']}", f"{s['reduce_scatters']:,}",
                fmt(s["score_ag"]), fmt(s["fwd_ag"] + s["bwd_ag"]), fmt(s["rs"]), fmt(s["sync"]),
                fmt(s["total"]),
            ])
    return table(
        ["model", "GPUs N", "seqs/rank", "M_s + M", "all_gathers (units + sync)", "reduce_scatters", "scoring AG",
         "training AG", "gradient RS", "weight sync", "total per rank"],
        rows,
    )


def table_fsdp_time() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        work = WORKLOADS[model.name]
        for gpus in GPUS:
            s = fsdp_step(model, work, gpus)
            t_comm, t_comp = s["total"] / s["bandwidth"], s["flops"] / SUSTAINED_FLOPS
            link = "NVLink, 450 GB/s" if gpus <= GPUS_PER_NODE else "InfiniBand, 50 GB/s"
            rows.append([model.name, str(gpus), fmt(s["total"]), link, fmt_s(t_comm), fmt_s(t_comp),
                         f"{t_comm / t_comp:.2f}"])
    return table(
        ["model", "GPUs N", "total per rank", "slowest link", "communication at link rate",
         "compute at 400 TFLOP/s", "communication / compute"],
        rows,
    )


def table_break_even() -> str:
    """Tokens per micro-batch at which one scoring + one training micro-batch compute as long as
    their parameter traffic takes: 8 psi FLOPs per token against the bytes of the four passes."""
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        share = model.root_params() / model.params()
        for label, gather, grad in (("float32 (asymgrpo/distributed.py)", 4, 4), ("bf16 gathers, float32 reduce", 2, 4)):
            per_param = 3 * gather + grad - 2 * gather * share  # scoring and backward gathers skip the root
            for link, bw in (("NVLink 450 GB/s", NVLINK_BYTES_S), ("InfiniBand 50 GB/s", IB_BYTES_S)):
                tokens = per_param * SUSTAINED_FLOPS / (8 * bw)
                rows.append([model.name, label, f"{per_param:.1f} psi", link, f"{tokens:,.0f}"])
    return table(["model", "parameter traffic", "bytes per micro-batch pair", "link",
                  "tokens per micro-batch to break even"], rows)


def table_memory() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        work = WORKLOADS[model.name]
        psi = model.params()
        for gpus in GPUS:
            sequences = work.sequences // gpus
            kv = sequences * work.seq_len * model.kv_bytes_per_token()
            rows.append([
                model.name, str(gpus), fmt(16 * psi / gpus), fmt(4 * model.root_params()),
                fmt(2 * psi), fmt(model.kv_bytes_per_token() * work.seq_len), fmt(kv),
            ])
    return table(
        ["model", "GPUs N", "trainer state (16 psi / N)", "gathered root unit (float32)",
         "vLLM weights, TP=1 (bf16)", "KV cache per sequence", "KV cache, the rank's sequences at once"],
        rows,
    )


def table_models() -> str:
    rows = []
    for model in (QWEN25_7B, QWEN3_32B):
        work = WORKLOADS[model.name]
        rows.append([
            model.name, f"{model.hidden:,}", f"{model.vocab:,}", str(model.layers),
            f"{model.params() / 1e9:.3f} B", f"{model.root_params() / 1e9:.3f} B", str(model.tensors()),
            f"{work.prompts} x {work.group} x ({work.prompt_len} + {work.response_len})",
            f"{work.sequences * work.seq_len / 1e6:.2f} M", str(work.micro_batch),
            f"{work.scored_per_call:,}", str(work.updates),
        ])
    return table(
        ["model", "H", "V", "L", "psi", "root unit", "tensors", "sequences x (prompt + response)",
         "tokens/step", "micro-batch (seqs)", "n per call", "U"],
        rows,
    )


def main() -> None:
    sections = [
        ("Shapes and token counts", table_models()),
        ("(a) Vocabulary-parallel loss, per call (wire bytes per rank)", table_vocab_parallel_call()),
        (f"(a) Vocabulary-parallel loss, per step, head split over P = {GPUS_PER_NODE}", table_vocab_parallel_step()),
        ("(a) A DTensor LM-head weight, gathered per call", table_dtensor_head()),
        ("(b) FSDP2 trainer, per step and per rank", table_fsdp_step()),
        ("(b) Lower bounds on time per step, per rank", table_fsdp_time()),
        ("(b) Break-even tokens per micro-batch", table_break_even()),
        ("(b) Memory per GPU, colocated vLLM with TP=1", table_memory()),
    ]
    for title, body in sections:
        print(f"### {title}\n\n{body}\n")


if __name__ == "__main__":
    main()
