"""Benchmark shapes, size presets and the inputs every implementation receives.

A shape is (B sequences x T tokens, hidden H, vocabulary V, dtype); N = B * T tokens.
Presets: ``tiny`` (a dry run on any device), ``cpu`` (float32, a few minutes per suite)
and ``gpu`` (bfloat16, trimmed to a few minutes). The peer grid on the GPU is two slices
through N = 16,384, H = 4096, V = 151,936 (N varies, then V varies); ``gpu-full`` is the
whole N x H x V grid (much longer).

Prompt variant: a shape with ``prompt_pct = P`` (id suffix ``-promptP``) has the same
tensors as its plain twin, but the first P% of every sequence is prompt: mask 0 for the
loss, target ``IGNORE_INDEX`` for the log-prob / entropy kernel. The kernel and loss suites
run one such shape (P = 50) after their plain ones, with the floor, the reference and ours
only (``PROMPT_IMPLS``): the floor and the materialized reference still project every
token, an implementation that skips unscored rows does half the LM-head work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cached_property

import torch

SEQ_LEN = 1024  # tokens per sequence at the cpu and gpu sizes (a typical completion length)
IGNORE_INDEX = -100  # the kernel's default ignore_index: prompt targets of the prompt variant


@dataclass(frozen=True)
class Shape:
    """B sequences of T tokens, hidden size H, vocabulary V, input dtype name.

    ``prompt_pct``: the first ``prompt_pct``% of every sequence is unscored prompt (0: the
    plain inputs, where every kernel target is scored and the loss mask covers 88-100% of
    each sequence).
    """

    batch: int
    seq: int
    hidden: int
    vocab: int
    dtype: str
    prompt_pct: int = 0

    @property
    def n_tokens(self) -> int:
        return self.batch * self.seq

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def prompt_len(self) -> int:
        """Prompt tokens at the start of every sequence (unscored)."""
        return self.seq * self.prompt_pct // 100

    @property
    def base_id(self) -> str:
        """The id of the plain twin (no prompt)."""
        return f"N{self.n_tokens}-H{self.hidden}-V{self.vocab}-{self.dtype}"

    @property
    def id(self) -> str:
        return self.base_id + (f"-prompt{self.prompt_pct}" if self.prompt_pct else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(d["batch"], d["seq"], d["hidden"], d["vocab"], d["dtype"], d.get("prompt_pct", 0))

    def with_prompt(self, pct: int = 50) -> "Shape":
        """The same tensors with the first ``pct``% of every sequence unscored."""
        return replace(self, prompt_pct=pct)

    def logits_bytes(self, itemsize: int = 4) -> int:
        """Size of the materialized [N, V] logits at ``itemsize`` bytes per element."""
        return self.n_tokens * self.vocab * itemsize


def tokens(n: int, hidden: int, vocab: int, dtype: str, seq: int = SEQ_LEN) -> Shape:
    """A shape with N = n tokens split into sequences of ``seq`` tokens (fewer if n < seq)."""
    seq = min(seq, n)
    if n % seq:
        raise ValueError(f"n={n} is not a multiple of the sequence length {seq}")
    return Shape(n // seq, seq, hidden, vocab, dtype)


_TINY = [tokens(16, 32, 300, "float32", seq=8)]
_CPU = [tokens(4096, 512, 32_768, "float32")]
_GPU_H, _GPU_V, _GPU_N = 4096, 151_936, 16_384
PROMPT_PCT = 50
# The prompt variant of each preset (kernel and loss suites): first half of every sequence prompt.
PROMPT_SHAPES = {
    "tiny": [_TINY[0].with_prompt(PROMPT_PCT)],
    "cpu": [_CPU[0].with_prompt(PROMPT_PCT)],
    "gpu": [tokens(_GPU_N, _GPU_H, _GPU_V, "bfloat16").with_prompt(PROMPT_PCT)],
}
# Implementations timed on prompt shapes: the floor and the reference (they project every
# token) and ours (torch everywhere, triton where it runs).
PROMPT_IMPLS = ("floor", "reference", "ours_torch", "ours_triton")
# Modes timed on prompt shapes; on the CPU only fwd+bwd, to keep the cpu run a few minutes shorter.
PROMPT_MODES = {"tiny": ("fwd+bwd", "fwd"), "cpu": ("fwd+bwd",), "gpu": ("fwd+bwd", "fwd")}

# The shape at which peer kernels publish their log-prob + entropy forward + backward figures
# (N = 4096, H = 4096, V = 131,072, bf16), so that ours can be set beside them.
PUBLISHED_KERNEL_SHAPE = tokens(4096, _GPU_H, 131_072, "bfloat16")
# GPU sizes are chosen to fit gpu_check.sh in a few minutes of device time.
KERNEL_SHAPES = {
    "tiny": _TINY + PROMPT_SHAPES["tiny"],
    "cpu": _CPU + PROMPT_SHAPES["cpu"],
    "gpu": [PUBLISHED_KERNEL_SHAPE] + [tokens(n, _GPU_H, _GPU_V, "bfloat16") for n in (4096, 16_384, 32_768)]
    + [tokens(_GPU_N, _GPU_H, 262_144, "bfloat16")] + PROMPT_SHAPES["gpu"],
}
LOSS_SHAPES = {
    "tiny": _TINY + PROMPT_SHAPES["tiny"],
    "cpu": _CPU + PROMPT_SHAPES["cpu"],
    "gpu": [tokens(_GPU_N, _GPU_H, v, "bfloat16") for v in (_GPU_V, 262_144)] + PROMPT_SHAPES["gpu"],
}
PEER_SHAPES = {
    # Two sizes of N and of V, so that the plots have lines even in a dry run.
    "tiny": [tokens(16, 32, 300, "float32", seq=8), tokens(32, 32, 300, "float32", seq=8), tokens(16, 32, 500, "float32", seq=8)],
    # A reduced float32 grid (2 shared cores): N slice at V = 32,768, V slice at N = 2048, H = 512.
    "cpu": [tokens(n, 512, 32_768, "float32") for n in (1024, 2048)] + [tokens(2048, 512, 8192, "float32")],
    "gpu": [tokens(n, _GPU_H, _GPU_V, "bfloat16") for n in (2048, 8192, 16_384, 32_768)]
    + [tokens(_GPU_N, _GPU_H, v, "bfloat16") for v in (32_000, 262_144)],
    "gpu-full": [
        tokens(n, h, v, "bfloat16")
        for n in (2048, 8192, 16_384, 32_768)
        for h in (2048, 4096)
        for v in (32_000, 128_256, 151_936, 262_144)
    ],
}
PRESETS = ("tiny", "cpu", "gpu", "gpu-full")


def shapes_for(suite: str, preset: str) -> list[Shape]:
    """The shapes one suite ("logprob_entropy", "loss" or "peers") runs at a preset."""
    table = {"logprob_entropy": KERNEL_SHAPES, "loss": LOSS_SHAPES, "peers": PEER_SHAPES}[suite]
    if preset == "gpu-full" and suite != "peers":
        preset = "gpu"
    return table[preset]


def modes_for(shape: Shape, preset: str, modes: tuple[str, ...]) -> tuple[str, ...]:
    """The modes timed at ``shape``: all of ``modes``, fewer on a prompt shape (``PROMPT_MODES``)."""
    if not shape.prompt_pct:
        return modes
    keep = PROMPT_MODES["gpu" if preset == "gpu-full" else preset]
    return tuple(m for m in modes if m in keep)


def impl_runs_at(shape: Shape, name: str) -> bool:
    """Whether implementation ``name`` is timed at ``shape`` (prompt shapes: ``PROMPT_IMPLS`` only)."""
    return not shape.prompt_pct or name in PROMPT_IMPLS


def matmul_flops(shape: Shape, mode: str) -> int:
    """Useful FLOPs of the LM head: 2NHV for the forward, 3x that for forward + backward."""
    one = 2 * shape.n_tokens * shape.hidden * shape.vocab
    return one if mode == "fwd" else 3 * one


class Inputs:
    """Every tensor an implementation may read, built once per shape from one seed.

    hidden [B, T, H] (requires grad), weight [V, H] (requires grad), targets [B, T] int64,
    mask [B, T] float32 0/1 (sequence b keeps its first L_b tokens, L_b in [7T/8, T]),
    advantages [B] float32, upstream weights g_logp / g_entropy [B, T] float32 for the
    kernel objective, and old / ref log-probs [B, T] float32 (current log-probs plus noise,
    so that ratios differ from 1 and clipping happens), built on first use.

    The targets of the log-prob / entropy kernel are ``kernel_targets``: ``targets`` itself
    (every token scored), or on a prompt shape ``targets`` with ``IGNORE_INDEX`` on the
    prompt. On a prompt shape the mask is 0 on the prompt and 1 on the rest, and the old /
    ref log-probs are 0 on the prompt (as a sampler leaves them); every other tensor equals
    the plain twin's.
    """

    def __init__(self, shape: Shape, device: torch.device, seed: int = 0):
        self.shape, self.device = shape, device
        # Drawn on the device itself (fast for a [262144, 4096] weight); the same seed on the
        # same device type gives the same inputs, which the CPU memory subprocess relies on.
        gen = torch.Generator(device=device).manual_seed(seed)
        b, t, h, v = shape.batch, shape.seq, shape.hidden, shape.vocab

        def randn(*size, scale=1.0):
            return torch.randn(*size, generator=gen, device=device).mul_(scale)

        # Logits of standard deviation about 2: a peaked but not degenerate softmax.
        self.hidden = randn(b, t, h).to(shape.torch_dtype).requires_grad_()
        self.weight = randn(v, h, scale=2.0 / h**0.5).to(shape.torch_dtype).requires_grad_()
        self.targets = torch.randint(0, v, (b, t), generator=gen, device=device)
        lengths = torch.randint(t - t // 8, t + 1, (b,), generator=gen, device=device)
        self.mask = (torch.arange(t, device=device)[None, :] < lengths[:, None]).float()
        self.advantages = randn(b)
        self.g_logp = randn(b, t)
        self.g_entropy = randn(b, t)
        self._noise = (randn(b, t, scale=0.05), randn(b, t, scale=0.1))
        self.kernel_targets = self.targets
        if shape.prompt_pct:
            completion = torch.arange(t, device=device)[None, :].expand(b, t) >= shape.prompt_len
            self.mask = completion.float()
            self.kernel_targets = self.targets.masked_fill(~completion, IGNORE_INDEX)
            self._noise = tuple(n * self.mask for n in self._noise)

    @cached_property
    def current_logprobs(self) -> torch.Tensor:
        from asymgrpo_kernels import fused_linear_logprob_entropy

        with torch.no_grad():
            logp, _ = fused_linear_logprob_entropy(self.hidden, self.weight, self.kernel_targets)
        return logp

    @cached_property
    def old_logprobs(self) -> torch.Tensor:
        return (self.current_logprobs + self._noise[0]).contiguous()

    @cached_property
    def ref_logprobs(self) -> torch.Tensor:
        return (self.current_logprobs + self._noise[1]).contiguous()

    def scored_tokens(self, task: str) -> int:
        """Tokens whose result counts for ``task``: every token for the floor (it projects
        them all) and for log-probs alone, non-ignored targets for the log-prob / entropy
        kernel, mask != 0 for the losses."""
        if task == "floor" or task == "logprob":
            return self.shape.n_tokens
        if task == "logprob_entropy":
            return int((self.kernel_targets != IGNORE_INDEX).sum())
        return int((self.mask != 0).sum())

    @property
    def params(self) -> list[torch.Tensor]:
        """The tensors every forward + backward differentiates: hidden and weight."""
        return [self.hidden, self.weight]
