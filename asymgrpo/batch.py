"""Pack prompts and sampled completions into right-padded training tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """Sequences prompt + completion, right-padded, with next-token targets.

    input_ids      [B, T]   int64, padded with ``pad_id``
    targets        [B, T-1] int64, input_ids shifted left; ``pad_id`` where unscored
    mask           [B, T-1] float32, 1 on completion tokens (the ones the policy chose)
    vllm_logprobs  [B, T-1] float32, vLLM's log-prob of each completion token (0 elsewhere)
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    vllm_logprobs: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> "PackedBatch":
        """Rows start:stop, trimmed to their longest sequence."""
        rows = slice(start, stop)
        width = int(self.mask[rows].nonzero()[:, 1].max()) + 2 if self.mask[rows].any() else 2
        return PackedBatch(self.input_ids[rows, :width], self.targets[rows, : width - 1],
                           self.mask[rows, : width - 1], self.vllm_logprobs[rows, : width - 1])


def pack(prompts: list[list[int]], completions: list[list[int]], logprobs: list[list[float]], *, pad_id: int,
         device: torch.device) -> PackedBatch:
    """One row per (prompt, completion); ``logprobs`` are vLLM's, one per completion token."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    batch, width = len(prompts), max(lengths)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width - 1)
    vllm_lp = torch.zeros(batch, width - 1)
    for i, (prompt, completion, lps) in enumerate(zip(prompts, completions, logprobs, strict=True)):
        start, stop = len(prompt), len(prompt) + len(completion)
        input_ids[i, :stop] = torch.tensor(list(prompt) + list(completion))
        mask[i, start - 1 : stop - 1] = 1.0
        vllm_lp[i, start - 1 : stop - 1] = torch.tensor(lps, dtype=torch.float32)
    targets = input_ids[:, 1:].clone()
    return PackedBatch(input_ids.to(device), targets.to(device), mask.to(device), vllm_lp.to(device))
