"""Benchmark shapes, size presets and the inputs every implementation receives.

A shape is (B sequences x T tokens, hidden H, vocabulary V, dtype); N = B * T tokens.
Presets: ``tiny`` (a dry run on any device), ``cpu`` (float32, about a minute per suite)
and ``gpu`` (bfloat16, the sizes of issues 2, 3 and 5, trimmed to a few minutes). The peer
grid on the GPU is two slices through N = 16,384, H = 4096, V = 151,936 (N varies, then V
varies); ``gpu-full`` is the whole N x H x V grid of issue 5 (much longer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import torch

SEQ_LEN = 1024  # tokens per sequence at the cpu and gpu sizes (a typical completion length)


@dataclass(frozen=True)
class Shape:
    """B sequences of T tokens, hidden size H, vocabulary V, input dtype name."""

    batch: int
    seq: int
    hidden: int
    vocab: int
    dtype: str

    @property
    def n_tokens(self) -> int:
        return self.batch * self.seq

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def id(self) -> str:
        return f"N{self.n_tokens}-H{self.hidden}-V{self.vocab}-{self.dtype}"

    def as_dict(self) -> dict:
        return {**asdict(self), "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(d["batch"], d["seq"], d["hidden"], d["vocab"], d["dtype"])

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

# GPU sizes are chosen to fit gpu_check.sh in a few minutes of device time.
KERNEL_SHAPES = {
    "tiny": _TINY,
    "cpu": _CPU,
    "gpu": [tokens(n, _GPU_H, _GPU_V, "bfloat16") for n in (4096, 16_384, 32_768)]
    + [tokens(_GPU_N, _GPU_H, 262_144, "bfloat16")],
}
LOSS_SHAPES = {
    "tiny": _TINY,
    "cpu": _CPU,
    "gpu": [tokens(_GPU_N, _GPU_H, v, "bfloat16") for v in (_GPU_V, 262_144)],
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

    @cached_property
    def current_logprobs(self) -> torch.Tensor:
        from asymgrpo_kernels import fused_linear_logprob_entropy

        with torch.no_grad():
            logp, _ = fused_linear_logprob_entropy(self.hidden, self.weight, self.targets)
        return logp

    @cached_property
    def old_logprobs(self) -> torch.Tensor:
        return (self.current_logprobs + self._noise[0]).contiguous()

    @cached_property
    def ref_logprobs(self) -> torch.Tensor:
        return (self.current_logprobs + self._noise[1]).contiguous()

    @property
    def params(self) -> list[torch.Tensor]:
        """The tensors every forward + backward differentiates: hidden and weight."""
        return [self.hidden, self.weight]
