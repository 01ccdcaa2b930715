"""Several trainer processes (``torchrun``): ranks, the process group, FSDP2 sharding, cross-rank reductions.

Under ``torchrun --nproc-per-node N`` every process runs the whole trainer on its share of the
step's prompts (whole groups). The policy is sharded with FSDP2 (``fully_shard``: each decoder
layer, then the root, which holds the embeddings, the final norm and the LM head). Every call of
the policy goes through one method registered with ``register_fsdp_forward_method``
(``policy.policy_call``), so the fused loss sees the root's all-gathered, plain LM-head weight and
FSDP2 reduce-scatters its gradient like any other.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here starts a process group and every
helper is the identity: the single-process trainer is unchanged.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

POLICY_CALL = "asymgrpo_call"  # the FSDP2-registered forward method (policy.policy_call uses it when present)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands. rank: 0..world_size-1; local_rank: on this node; is_main: rank 0 (writes files)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def env_ranks() -> Ranks:
    """The ranks torchrun announces (RANK, WORLD_SIZE, LOCAL_RANK), without starting anything; SINGLE without them."""
    return Ranks(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env() -> Ranks:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU) when WORLD_SIZE > 1; return the ranks.

    On CUDA each process takes the device of its LOCAL_RANK. Idempotent.
    """
    ranks = env_ranks()
    if not ranks.distributed:
        return ranks
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return ranks


def shutdown() -> None:
    """Leave the process group if it is still there (shutting vLLM's engine down already destroys it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device(ranks: Ranks) -> torch.device:
    return torch.device("cuda", ranks.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# --- FSDP2 ----------------------------------------------------------------------------------

def _call(self, fn: Callable[..., Any], *args, **kwargs):
    """``fn(model, *args, **kwargs)``: registered as an FSDP2 forward method, so every unit it calls is unsharded."""
    return fn(self, *args, **kwargs)


def shard_policy(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """Shard a Hugging Face causal LM in place with FSDP2 over all ranks and register ``POLICY_CALL``.

    Units: each decoder layer (``model.get_decoder().layers``), then the root (embeddings, final
    norm, LM head; a tied LM head is the embedding's parameter, one tensor). Parameters become
    DTensors sharded on dim 0 (Shard(0)) over a 1-D mesh of ``world_size`` devices. The gradient is
    summed over ranks, not averaged (divide factor 1): each rank's loss is already divided by the
    global item count, so the sum is the single-process gradient.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device(ranks).type, (ranks.world_size,))
    for layer in model.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in [*model.get_decoder().layers, model]:
        unit.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is already over the global item count
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM reduce-scatter (gloo has no PREMUL_SUM)
    setattr(model, POLICY_CALL, types.MethodType(_call, model))
    register_fsdp_forward_method(model, POLICY_CALL)
    registered = getattr(model, POLICY_CALL)

    def call(fn: Callable[..., Any], *args, **kwargs):
        out = registered(fn, *args, **kwargs)
        if not torch.is_grad_enabled():
            # FSDP2 keeps the root unsharded after its forward, for the backward; without one (scoring
            # under no_grad) it would stay so, and model.parameters() would hand out the unsharded tensors
            model.reshard()
        return out

    setattr(model, POLICY_CALL, call)
    return model


def full_state_dict(model: torch.nn.Module, ranks: Ranks) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) weights on every rank, Hugging Face names (one all-gather per parameter)."""
    if not ranks.distributed:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ranks: Ranks) -> dict:
    """The optimizer's full state on rank 0, on the CPU ({} on the other ranks); a collective call."""
    if not ranks.distributed:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, ranks: Ranks) -> None:
    """Load a full optimizer state (every rank passes the same one) into a sharded model's optimizer."""
    if not ranks.distributed:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def full_norm(norm: torch.Tensor) -> float:
    """A gradient norm from ``clip_grad_norm_`` as a float; a DTensor one (sharded parameters) is made whole first."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# --- reductions ------------------------------------------------------------------------------

def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in one process."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def all_reduce_max(value: float, ranks: Ranks) -> float:
    """The largest ``value`` over the ranks (e.g. a stop signal, so that every rank stops at the same step)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device(ranks))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """[K] values summed over the ranks (float64 on the communication device; returned on the CPU)."""
    if not ranks.distributed:
        return values
    import torch.distributed as dist

    tensor = values.to(device(ranks), torch.float64)
    dist.all_reduce(tensor)
    return tensor.cpu()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def share(items: list, ranks: Ranks) -> list:
    """This rank's contiguous share of ``items`` (ranks' shares differ by at most one item, in rank order)."""
    size, extra = divmod(len(items), ranks.world_size)
    start = ranks.rank * size + min(ranks.rank, extra)
    return items[start:start + size + (ranks.rank < extra)]
