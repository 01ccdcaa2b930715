"""The problem a kernel backend solves: the LM head applied to the scored rows of the hidden states."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LMHead(NamedTuple):
    """One call's inputs, as the torch and Triton kernel backends receive them.

    hidden [..., H] (float32 / bfloat16 / float16, any strides: never copied) and weight
    [V, H] of the same dtype, bias [V] or None; rows [n] int64, the positions to score as flat
    indices into hidden.shape[:-1] (ascending, distinct), and targets [n] int64 in [0, V), the
    target of each. Only those n rows of hidden are read: the other positions cost nothing and
    get exactly zero gradient. temperature > 0 divides the logits; workspace_bytes bounds the
    scratch memory of one pass.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    rows: torch.Tensor
    targets: torch.Tensor
    temperature: float
    workspace_bytes: int

    @property
    def n_rows(self) -> int:
        """n, the number of scored rows."""
        return self.rows.shape[0]

    @property
    def n_positions(self) -> int:
        """N, the number of positions of hidden (scored or not)."""
        return self.hidden[..., 0].numel()

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """[r, H] hidden states at ``rows`` (flat positions), whatever hidden's strides."""
        if self.hidden.dim() == 2:
            return self.hidden.index_select(0, rows)
        return self.hidden[torch.unravel_index(rows, self.hidden.shape[:-1])]

    def row_offsets(self) -> torch.Tensor:
        """[n] int64 element offsets of the scored rows in hidden's storage (from its strides)."""
        index = torch.unravel_index(self.rows, self.hidden.shape[:-1])
        return sum(i * stride for i, stride in zip(index, self.hidden.stride()[:-1]))

    def zeros_like_hidden(self) -> torch.Tensor:
        """A contiguous zero [N, H] tensor in hidden's dtype: the hidden gradient before its rows are added."""
        return torch.zeros(self.n_positions, self.hidden.shape[-1], dtype=self.hidden.dtype, device=self.hidden.device)


def autocast_operands(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The LM head's operands as autocast would hand them to a linear layer.

    Under ``torch.autocast`` on hidden's device, hidden, weight and bias are cast
    (differentiably) to the autocast dtype, as ``torch.nn.functional.linear`` would cast them;
    the public functions then run everything else with autocast off, in float32
    (docs/algorithm.md §6). Outside autocast they are returned unchanged.
    """
    device_type = hidden.device.type if isinstance(hidden, torch.Tensor) else "cpu"
    if not isinstance(hidden, torch.Tensor) or not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


def replicated_operands(
    weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """weight and bias as whole local tensors: a ``DTensor`` (FSDP2's sharded parameter) is gathered.

    The gather is differentiable: its backward reduce-scatters the gradient back onto the
    DTensor's shards, averaged over its device mesh (``Partial("avg")``), which is how FSDP2
    reduces the gradients of the parameters it runs itself; so an LM head used outside the
    model's forward gets the gradient it would have had inside it. Plain tensors pass unchanged.
    """
    return _replicated(weight), _replicated(bias)


def is_dtensor(tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor``."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _replicated(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if not is_dtensor(tensor):
        return tensor
    from torch.distributed.tensor import Partial

    return tensor.full_tensor(grad_placements=[Partial("avg")] * tensor.device_mesh.ndim)


def finite_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """bias with -inf entries replaced by max(finfo(dtype).min, -1e30) (docs/algorithm.md §6).

    Such a token keeps probability exactly 0, but its entropy term 0 * log 0 stays 0 instead
    of 0 * -inf = NaN, and its log-prob is a very negative finite number.
    """
    if bias is None:
        return None
    return bias.clamp(min=max(torch.finfo(bias.dtype).min, -1e30))


def scored_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    scored: torch.Tensor,
    n_scored: int,
    temperature: float,
    workspace_bytes: int,
) -> LMHead:
    """The LMHead of the ``n_scored`` positions where ``scored`` (bool, hidden.shape[:-1]) is True.

    The rows are found without a host sync (``n_scored`` is already known).
    """
    flat = scored.reshape(-1)
    rows = torch.argsort(flat.logical_not().to(torch.uint8), stable=True)[:n_scored]
    return LMHead(
        hidden, weight, finite_bias(bias), rows, targets.reshape(-1).index_select(0, rows).long(),
        temperature, workspace_bytes,
    )


def scatter_rows(values: torch.Tensor, head: LMHead) -> torch.Tensor:
    """[n] per-scored-row values -> hidden.shape[:-1], 0 at positions not scored; differentiable."""
    full = values.new_zeros(head.n_positions)
    return full.index_copy(0, head.rows, values).reshape(head.hidden.shape[:-1])
