"""Vocabulary-parallel LM head: each rank of a process group holds one contiguous vocabulary shard.

Every rank passes the same hidden states [..., H] and full-vocabulary targets, and its own rows
[V_r, H] of the weight (and [V_r] of the bias); shards are contiguous, in rank order, of any
sizes (zero included). Per call, on the ranks of ``process_group`` only:

    forward   1. all-gather of an int64 [8] layout per rank (checked on the host: shards tile
                 [0, V), the ranks agree on the shapes, the scored count and the targets);
              2. all-gather of float32 [4, n] softmax partials (``partials.py``); every rank
                 merges the P shards' partials in rank order, so all get the same bits;
    backward  3. all-reduce (sum) of the float32 [n, H] hidden-gradient rows of the scored
                 tokens, when hidden needs a gradient; the weight and bias gradients stay local.

The collectives and their sizes depend on n, H and P only, never on the local shard size, so
ranks whose shards (and hence chunking) differ still issue the same sequence. Bad layouts raise
the same ``ValueError`` on every rank after collective 1, never a hang. (Checks of one rank's own
arguments, a wrong dtype say, raise before it, on that rank only; its peers then wait in
collective 1 until the process group's timeout, as with any collective a rank leaves.) Set
``ASYMGRPO_CHECK_REPLICAS=1`` to also compare a float64 checksum of hidden across ranks (one
extra read of hidden per call). Formulas and volumes: docs/scaling.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import torch

from .lm_head import is_dtensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

#: Set to "1" to compare a checksum of the hidden states across ranks in every call.
CHECK_REPLICAS_ENV = "ASYMGRPO_CHECK_REPLICAS"
_NO_START = -1
_START, _ROWS, _HIDDEN, _POSITIONS, _DTYPE, _SCORED, _TARGETS, _CHECKSUM = range(8)  # the layout columns
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class VocabShard(NamedTuple):
    """This rank's place in a vocabulary-parallel LM head.

    group: the process group (None: the default group); rank / world_size: within that group;
    start: the global index of this rank's first vocabulary row; rows: V_r; vocab_size: the
    full V, the sum of every rank's rows.
    """

    group: ProcessGroup
    rank: int
    world_size: int
    start: int
    rows: int
    vocab_size: int


def check_parallel_args(process_group, vocab_start, backend: str, weight: torch.Tensor) -> None:
    """Kind checks of ``process_group`` / ``vocab_start`` (no communication)."""
    if process_group is None:
        if vocab_start is not None:
            raise ValueError("vocab_start is only meaningful with process_group (a vocabulary-parallel LM head)")
        return
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group needs torch.distributed initialised (torch.distributed.init_process_group)")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup, got {type(process_group).__name__}")
    if vocab_start is not None and (isinstance(vocab_start, bool) or not isinstance(vocab_start, int)):
        raise TypeError(f"vocab_start must be None or an int, got {type(vocab_start).__name__}")
    if vocab_start is not None and vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")
    if backend == "reference":
        raise ValueError("backend='reference' runs on one process only; with process_group use 'torch' or 'triton'")
    if is_dtensor(weight):
        raise TypeError("with process_group, weight must be this rank's shard as a plain tensor "
                        "(weight.to_local() of a DTensor); a DTensor weight without process_group is gathered whole")


def vocab_layout(process_group, vocab_start: int | None, hidden: torch.Tensor, weight: torch.Tensor,
                 targets: torch.Tensor, scored: torch.Tensor) -> tuple[VocabShard | None, int]:
    """(this rank's shard or None, the full vocabulary size V) of a call's LM head."""
    if process_group is None:
        return None, weight.shape[0]
    shard = resolve_shard(process_group, vocab_start, hidden, weight, targets, scored)
    return shard, shard.vocab_size


def resolve_shard(process_group, vocab_start: int | None, hidden: torch.Tensor, weight: torch.Tensor,
                  targets: torch.Tensor, scored: torch.Tensor) -> VocabShard:
    """Gather every rank's layout (collective 1) and check it; the same ``ValueError`` on every rank.

    hidden [..., H], weight [V_r, H] (this rank's shard), targets (hidden.shape[:-1], full
    vocabulary ids) and scored (bool, the positions that are scored) are this rank's arguments.
    Checks: every rank gives vocab_start or none does; the shards tile [0, V) in rank order
    (no overlap, no gap); H, the number of positions, the scored count, the dtype and a checksum
    of the scored targets agree across ranks (and of hidden, with ``ASYMGRPO_CHECK_REPLICAS=1``).
    """
    import torch.distributed as dist

    rank, world_size = dist.get_rank(process_group), dist.get_world_size(process_group)
    if rank < 0:
        raise ValueError("process_group must contain this process (its rank in the group is -1)")
    start = _NO_START if vocab_start is None else vocab_start
    known = [start, weight.shape[0], hidden.shape[-1], targets.numel(), _DTYPE_CODES[hidden.dtype]]
    checksum = torch.zeros((), dtype=torch.int64, device=hidden.device)
    if os.environ.get(CHECK_REPLICAS_ENV) == "1":
        checksum = hidden.detach().sum(dtype=torch.float64).view(torch.int64)
    counted = torch.stack([scored.sum(), torch.where(scored, targets.long(), 0).sum(), checksum.long()])
    layout = torch.cat([torch.tensor(known, dtype=torch.int64, device=hidden.device), counted])
    gathered = all_gather(layout, process_group).view(world_size, layout.numel()).tolist()
    starts = _check_layout(gathered)
    return VocabShard(process_group, rank, world_size, starts[rank], weight.shape[0],
                      sum(row[_ROWS] for row in gathered))


def _check_layout(layouts: list[list[int]]) -> list[int]:
    """Every rank's vocab_start, derived or checked; raise ValueError on any disagreement."""
    agree = {_HIDDEN: "hidden size H", _POSITIONS: "number of positions of hidden / targets",
             _SCORED: "number of scored positions", _DTYPE: "dtype of hidden and weight",
             _TARGETS: "targets at the scored positions (checksums differ)",
             _CHECKSUM: f"hidden states (float64 checksums differ; {CHECK_REPLICAS_ENV}=1)"}
    for column, what in agree.items():
        values = [row[column] for row in layouts]
        if len(set(values)) > 1:
            shown = "" if column in (_TARGETS, _CHECKSUM) else f": {values}"
            raise ValueError(
                f"every rank of process_group must pass the same {what}, got different values by rank{shown}")
    rows = [row[_ROWS] for row in layouts]
    derived = [sum(rows[:r]) for r in range(len(rows))]
    given = [row[_START] for row in layouts]
    if all(start == _NO_START for start in given):
        return derived
    if any(start == _NO_START for start in given):
        raise ValueError("vocab_start must be given on every rank of process_group or on none; "
                         f"ranks {[r for r, s in enumerate(given) if s == _NO_START]} left it None")
    for r, (start, size) in enumerate(zip(given, rows)):
        expected = derived[r] if r == 0 else given[r - 1] + rows[r - 1]
        if start != expected:
            kind = "overlaps the previous shard" if start < expected else "leaves a gap after the previous shard"
            previous = "" if r == 0 else f"; rank {r - 1} holds [{given[r - 1]}, {given[r - 1] + rows[r - 1]})"
            raise ValueError(
                f"vocabulary shards must tile [0, V) in rank order: rank {r}'s shard [{start}, {start + size}) "
                f"{kind if r else 'must start at 0'}{previous}"
            )
    return given


def all_gather(local: torch.Tensor, group) -> torch.Tensor:
    """[P * local.shape[0], ...]: every rank's ``local`` (same shape on every rank), in rank order."""
    import torch.distributed as dist

    local = local.contiguous()
    out = local.new_empty((dist.get_world_size(group) * local.shape[0], *local.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, local, group=group)
    return out


def gather_partials(local: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    """Collective 2: this rank's [4, n] partials -> every rank's, [4, P, n] in rank order."""
    return all_gather(local, shard.group).view(shard.world_size, *local.shape).transpose(0, 1)


def reduce_hidden_rows(rows: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    """Collective 3: the sum over ranks of float32 [n, H] hidden-gradient rows, in place."""
    import torch.distributed as dist

    dist.all_reduce(rows, group=shard.group)
    return rows
