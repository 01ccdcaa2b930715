"""fused_linear_logprob_entropy: log p(target) and entropy straight from hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .chunked import DEFAULT_WORKSPACE_BYTES
from .dispatch import get_backend
from .lm_head import autocast_operands, replicated_operands, scatter_rows, scored_head
from .options import IGNORE_INDEX
from .validate import ValueChecks, check_lm_head, check_targets, check_workspace
from .vocab_parallel import check_parallel_args, vocab_layout

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def fused_linear_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "auto",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    process_group: ProcessGroup | None = None,
    vocab_start: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target and the full-vocabulary entropy, without [N x V] logits.

    With s = (hidden @ weight.T + bias) / temperature and p = softmax(s):
    ``logprobs = log p[target]`` and ``entropy = -sum_v p_v log p_v``.

    Only positions whose target is not ``ignore_index`` go through the vocabulary work, forward
    and backward; the others cost nothing, give 0 and 0, and get exactly zero gradient, even if
    their hidden state is NaN or inf.

    Args:
        hidden: [..., H] float32, bfloat16 or float16 (any strides; never copied).
        weight: [V, H], same dtype as hidden (the LM head; tied embeddings work as they are).
        targets: [...] = hidden.shape[:-1], integer; each in [0, V) or equal to ``ignore_index``.
        bias: [V] or None, same dtype as hidden. Entries of -inf give probability 0 (and a
            very negative finite log-prob, docs/algorithm.md §6).
        temperature: positive, applied inside the kernels.
        ignore_index: positions whose target equals it are not scored.
        backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch" or "reference".
        workspace_bytes: bound on the scratch memory of one pass (triton and torch backends).
        process_group: a vocabulary-parallel LM head over this group's ranks (None: the whole
            vocabulary is here). Every rank passes the same hidden and full-vocabulary targets
            and its own contiguous shard of weight [V_r, H] (and bias [V_r]), shards in rank
            order, of any sizes; every rank gets the same log-probs, entropies and hidden
            gradient, and its shard's weight / bias gradients. Three collectives per call, two
            forward, one backward (docs/scaling.md); torch and triton backends.
        vocab_start: with process_group, the global index of this rank's first vocabulary row
            (None: derived from the shard sizes); checked against the other ranks'.

    Returns:
        (logprobs, entropy): float32 tensors shaped like targets. Both are differentiable with
        respect to hidden, weight and bias. A ``DTensor`` weight / bias (FSDP2's sharded
        parameter) is gathered, and its gradient reduce-scattered back, averaged over its mesh
        as FSDP2 averages. Logits and everything after them are float32 on
        every backend; under ``torch.autocast`` hidden, weight and bias are first cast to the
        autocast dtype, as a linear layer's would be.

    Raises:
        TypeError: an argument of the wrong kind (named in the message), before any kernel runs.
        ValueError: an impossible value (named in the message), before any kernel runs; with
            process_group, on every rank when the ranks' layouts disagree (shards that overlap
            or leave a gap, different hidden shapes or targets).
    """
    check_parallel_args(process_group, vocab_start, backend, weight)
    hidden, weight, bias = autocast_operands(hidden, weight, bias)
    weight, bias = replicated_operands(weight, bias)
    temperature = check_lm_head(hidden, weight, bias, temperature, vocab_shard=process_group is not None)
    check_targets(targets, hidden)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_workspace(workspace_bytes)
    chosen = get_backend(backend, hidden.device)

    scored = targets != ignore_index
    shard, vocab_size = vocab_layout(process_group, vocab_start, hidden, weight, targets, scored)
    checks = ValueChecks()
    checks.targets(targets, scored, vocab_size, f"or equal ignore_index={ignore_index}")
    (n_scored,) = checks.run(scored.sum())
    with torch.autocast(hidden.device.type, enabled=False):
        head = scored_head(hidden, weight, bias, targets, scored, int(n_scored), temperature, workspace_bytes)
        logprobs, entropy = chosen.logprob_entropy(head, shard)
        return scatter_rows(logprobs, head), scatter_rows(entropy, head)
