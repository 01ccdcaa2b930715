"""What each rank runs in tests/test_vocab_parallel.py (module level, so spawned ranks can import it).

Every worker builds the same problem on every rank (``cpu_problem``: ``test_fused_loss.make_problem``,
seeded, on the CPU), keeps its own contiguous rows of the weight and bias, calls the fused
functions with a process group (gloo), and returns values and gradients (on the CPU) for the test
process to compare with the float64 single-process reference. The triton backend runs on CUDA
tensors where a GPU exists (gloo moves them through the host), else under the interpreter.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from asymgrpo_kernels import AsymGRPOLoss, fused_linear_asymgrpo_loss, fused_linear_logprob_entropy
from asymgrpo_kernels.vocab_parallel import CHECK_REPLICAS_ENV
from test_fused_loss import AGGS, OPTIONS, make_problem

BACKENDS = ("torch", "triton")
TEMPERATURES = (0.7, 1.0)
#: small enough that ranks with different shard sizes chunk their rows differently (torch backend)
SMALL_WORKSPACE = 1024


def cpu_problem(seed: int, **kwargs) -> dict:
    """``make_problem`` on the CPU, whatever device the test session uses."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in make_problem(seed=seed, **kwargs).items()}


def on_device(problem: dict, backend: str) -> dict:
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in problem.items()}


def cpu(result: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def shard_of(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def upstream(problem) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    shape = problem["targets"].shape
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def scored_targets(problem) -> torch.Tensor:
    """Targets with -100 (ignored) wherever the mask is 0: the kernel core's ignored positions."""
    return torch.where(problem["mask"] == 1, problem["targets"], -100)


def leaves(problem, rows: slice):
    """Fresh leaves: the full hidden states, and this rank's shard of weight and bias."""
    return (problem["hidden"].clone().requires_grad_(), problem["weight"][rows].clone().requires_grad_(),
            problem["bias"][rows].clone().requires_grad_())


def logprob_case(problem, sizes, rank, *, backend, group=None, give_start=False, workspace_bytes=SMALL_WORKSPACE):
    problem = on_device(problem, backend)
    rows = shard_of(sizes, rank)
    hidden, weight, bias = leaves(problem, rows)
    logp, ent = fused_linear_logprob_entropy(
        hidden, weight, scored_targets(problem), bias=bias, temperature=problem["temperature"], backend=backend,
        workspace_bytes=workspace_bytes, process_group=group, vocab_start=rows.start if give_start else None,
    )
    g_logp, g_ent = (g.to(logp.device) for g in upstream(problem))
    ((logp * g_logp).sum() + (ent * g_ent).sum()).backward()
    return cpu(dict(logp=logp.detach(), ent=ent.detach(), dh=hidden.grad, dw=weight.grad, db=bias.grad, rows=rows))


def loss_case(problem, sizes, rank, *, backend, agg, group=None, module=False):
    problem = on_device(problem, backend)
    rows = shard_of(sizes, rank)
    hidden, weight, bias = leaves(problem, rows)
    options = dict(OPTIONS["everything"], loss_agg=agg)
    options.pop("is_weights")
    call = dict(old_logprobs=problem["old_logprobs"], ref_logprobs=problem["ref_logprobs"], bias=bias,
                is_weights=problem["is_weights"])
    args = (hidden, weight, problem["targets"], problem["mask"], problem["advantages"])
    if module:
        loss_fn = AsymGRPOLoss("asymgrpo", temperature=problem["temperature"], backend=backend,
                               process_group=group, **options)
        loss, metrics = loss_fn(*args, **call)
    else:
        loss, metrics = fused_linear_asymgrpo_loss(*args, temperature=problem["temperature"], backend=backend,
                                                   workspace_bytes=SMALL_WORKSPACE, process_group=group,
                                                   **call, **options)
    loss.backward()
    return cpu(dict(loss=loss.detach(), metrics={k: v.detach().cpu() for k, v in metrics.items()},
                    dh=hidden.grad, dw=weight.grad, db=bias.grad, rows=rows))


def parallel_cases(rank: int, world_size: int, sizes: list[int], empty_sizes: list[int] | None) -> dict:
    """Values and gradients of every case, keyed by case name, on the whole group (and a sub-group)."""
    group = dist.group.WORLD
    out = {}
    for backend in BACKENDS:
        for temperature in TEMPERATURES:
            case = cpu_problem(seed=3, temperature=temperature)
            out[f"logprob/{backend}/T={temperature}"] = logprob_case(case, sizes, rank, backend=backend, group=group)
        case = cpu_problem(seed=5)
        out[f"logprob/{backend}/vocab_start"] = logprob_case(case, sizes, rank, backend=backend, group=group,
                                                             give_start=True, workspace_bytes=2**20)
        if empty_sizes is not None:
            out[f"logprob/{backend}/empty-shard"] = logprob_case(case, empty_sizes, rank, backend=backend,
                                                                 group=group)
        for agg in AGGS:
            out[f"loss/{backend}/{agg}"] = loss_case(cpu_problem(seed=len(agg)), sizes, rank, backend=backend,
                                                     agg=agg, group=group)
    out["module/torch"] = loss_case(cpu_problem(seed=11), sizes, rank, backend="torch", agg="token-mean",
                                    group=group, module=True)
    if world_size > 2:  # a sub-group of ranks 0 and 2: rank 1 takes no part
        members = [0, 2]
        sub = dist.new_group(members)
        if rank in members:
            out["subgroup"] = logprob_case(cpu_problem(seed=7), [20, 17], members.index(rank), backend="torch",
                                           group=sub)
    return out


def error_cases(rank: int, world_size: int, sizes: list[int]) -> dict[str, tuple[str, str]]:
    """(exception type, message) of each bad input, as this rank saw it."""
    case = cpu_problem(seed=3)
    rows = shard_of(sizes, rank)
    hidden, weight, bias = leaves(case, rows)
    targets = scored_targets(case)

    def call(**kw):
        args = dict(hidden=hidden, weight=weight, targets=targets, bias=bias, backend="torch",
                    process_group=dist.group.WORLD)
        args.update(kw)
        fused_linear_logprob_entropy(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)

    bad_target = targets.clone()
    bad_target[0, 0] = sum(sizes)  # == V
    perturbed = hidden.detach().clone()
    perturbed[0, 0, 0] += rank  # different on every rank but rank 0
    cases = {
        "overlap": lambda: call(vocab_start=rows.start - (1 if rank == 1 else 0)),
        "gap": lambda: call(vocab_start=rows.start + (1 if rank >= 1 else 0)),
        "start-on-some-ranks": lambda: call(vocab_start=rows.start if rank == 0 else None),
        "target-out-of-range": lambda: call(targets=bad_target),
        "targets-differ": lambda: call(targets=torch.where(targets >= 0, (targets + rank) % sum(sizes), targets)),
        "hidden-differs": lambda: call(hidden=perturbed),
        "hidden-shape-differs": lambda: call(hidden=hidden[:, : 5 - rank], targets=targets[:, : 5 - rank]),
    }
    seen = {}
    for name, case in cases.items():
        os.environ[CHECK_REPLICAS_ENV] = "1" if name == "hidden-differs" else "0"
        try:
            case()
            seen[name] = ("no error", "")
        except Exception as error:  # noqa: BLE001 - the test compares what every rank raised
            seen[name] = (type(error).__name__, str(error))
    return seen


def fsdp2_head(rank: int, world_size: int) -> dict:
    """An LM head sharded by FSDP2 (DTensor weight) used outside any forward: each rank its own batch."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    full = cpu_problem(seed=3)
    head = nn.Linear(full["weight"].shape[1], full["weight"].shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(full["weight"])
    fully_shard(head)
    own = cpu_problem(seed=20 + rank)
    out = {"is_dtensor": isinstance(head.weight, DTensor)}
    logp, ent = fused_linear_logprob_entropy(own["hidden"], head.weight, scored_targets(own),
                                             temperature=own["temperature"], backend="torch")
    g_logp, g_ent = upstream(own)
    ((logp * g_logp).sum() + (ent * g_ent).sum()).backward()
    out["grad_is_dtensor"] = isinstance(head.weight.grad, DTensor)
    out["grad"] = head.weight.grad.full_tensor()
    head.weight.grad = None
    loss, _ = fused_linear_asymgrpo_loss(own["hidden"], head.weight, own["targets"], own["mask"],
                                         own["advantages"], old_logprobs=own["old_logprobs"],
                                         temperature=own["temperature"], backend="torch")
    loss.backward()
    out["loss_grad"] = head.weight.grad.full_tensor()
    return out


def peak_memory(rank: int, world_size: int, n_tokens: int, hidden_size: int, vocab: int) -> dict:
    """Peak extra resident memory of one forward + backward on this rank's even shard (bytes)."""

    def rss(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(field)).split()[1]) * 1024

    rows = shard_of([vocab // world_size] * world_size, rank)
    torch.manual_seed(0)
    hidden = torch.randn(n_tokens, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) / hidden_size**0.5)[rows].clone().requires_grad_()
    targets = torch.randint(0, vocab, (n_tokens,))
    grads_bytes = hidden.numel() * 4 + weight.numel() * 4
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = rss("VmRSS:")
    logp, ent = fused_linear_logprob_entropy(hidden, weight, targets, backend="torch", process_group=dist.group.WORLD)
    (logp.sum() + ent.sum()).backward()
    return {"extra_bytes": rss("VmHWM:") - before - grads_bytes, "finite": bool(hidden.grad.isfinite().all())}


def verl_linear_cross_entropy(rank: int, world_size: int, sizes: list[int]) -> dict:
    """verl's fused-kernel signature (our replacement) with a ``dist_process_group``."""
    from asymgrpo.integrations.verl import linear_cross_entropy

    case = cpu_problem(seed=3)
    rows = shard_of(sizes, rank)
    hidden, weight, _ = leaves(case, rows)
    logp, ent = linear_cross_entropy(hidden, weight, scored_targets(case), case["temperature"], "none",
                                     dist.group.WORLD)
    g_logp, g_ent = upstream(case)
    ((logp * g_logp.reshape(-1)).sum() + (ent * g_ent.reshape(-1)).sum()).backward()
    return dict(logp=logp.detach().view(g_logp.shape), ent=ent.detach().view(g_logp.shape), dh=hidden.grad,
                dw=weight.grad, rows=rows)
