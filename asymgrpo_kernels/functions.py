"""The autograd Functions, all in one place: each runs a backend's passes and saves what backward needs.

* ``LinearLogprobEntropy``: LM head -> log-probs and entropies of the scored rows (kernel core).
* ``VocabParallelLogprobEntropy``: the same with the vocabulary sharded over a process group.
* ``PolicyLoss``: log-probs and entropies -> the aggregated AsymGRPO loss (per-token terms).
* ``SinglePassLoss``: LM head -> the aggregated loss in one pass over the vocabulary (torch path).

Every backward runs with autocast off, as every forward does (the public functions disable it):
the math is float32 whatever the caller's autocast state when it calls ``backward()``.
Saved tensors go through ``save_for_backward``, so a graph can be differentiated twice with
``retain_graph=True``.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from .lm_head import LMHead
from .partials import empty_partials, finish, merge_partials
from .token_terms import PolicyTokens, TokenTermsFn
from .vocab_parallel import gather_partials, reduce_hidden_rows


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, enabled=False)


class _SavedBackward(NamedTuple):
    """A kernel backward's arguments, rebuilt from what the forward saved."""

    head: LMHead
    grad_logprobs: torch.Tensor  # float32 [n], contiguous
    grad_entropy: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    needs: tuple[bool, bool, bool]  # gradients wanted for (hidden, weight, bias)


def _saved_backward(ctx, grad_logprobs, grad_entropy) -> _SavedBackward | None:
    """The kernel backward's arguments from ``ctx.saved_tensors`` (hidden, weight, bias, rows, targets,
    lse, entropy) and the upstream gradients (None: zero); None when no input wants a gradient."""
    hidden, weight, bias, rows, targets, lse, entropy = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
    if not any(needs):
        return None
    zeros = torch.zeros_like(lse)
    grad_logprobs = zeros if grad_logprobs is None else grad_logprobs.float().contiguous()
    grad_entropy = zeros if grad_entropy is None else grad_entropy.float().contiguous()
    head = LMHead(hidden, weight, bias, rows, targets, ctx.temperature, ctx.workspace_bytes)
    return _SavedBackward(head, grad_logprobs, grad_entropy, lse, entropy, needs)


class LinearLogprobEntropy(torch.autograd.Function):
    """(hidden [..., H], weight [V, H], bias [V] | None) -> (logprobs [n], entropy [n]), float32.

    ``kernels`` is a module with ``forward(LMHead)`` and ``backward(LMHead, ...)`` (``chunked``
    or ``triton.logprob_entropy``); rows [n] int64 are the scored positions (``LMHead``) and
    targets [n] their targets. Saved for backward: the inputs (no copies) and the float32 [n] lse and entropy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, temperature: float, kernels: ModuleType, workspace_bytes: int):
        head = LMHead(hidden, weight, bias, rows, targets, temperature, workspace_bytes)
        logprobs, entropy, lse = kernels.forward(head)
        ctx.save_for_backward(hidden, weight, bias, rows, targets, lse, entropy)
        ctx.temperature, ctx.kernels, ctx.workspace_bytes = temperature, kernels, workspace_bytes
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        saved = _saved_backward(ctx, grad_logprobs, grad_entropy)
        if saved is None:
            return (None,) * 8
        with _no_autocast(saved.head.hidden.device):
            grads = ctx.kernels.backward(*saved)
        return (*grads, None, None, None, None, None)


class VocabParallelLogprobEntropy(torch.autograd.Function):
    """(hidden [..., H], weight shard [V_r, H], bias shard [V_r] | None) -> (logprobs [n], entropy [n]).

    The vocabulary-parallel kernel core (``vocab_parallel``): every rank of ``shard.group``
    calls it with the same hidden, rows and full-vocabulary targets [n]. The forward gathers
    the shards' partials (collective 2) and merges them; the backward runs the kernels on this
    shard and all-reduces the hidden-gradient rows (collective 3). Outputs, and the hidden
    gradient, are the same bits on every rank; weight and bias gradients are this shard's.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, temperature: float, kernels: ModuleType,
                workspace_bytes: int, shard):
        head = LMHead(hidden, weight, bias, rows, targets - shard.start, temperature, workspace_bytes)
        local = kernels.partials(head) if shard.rows else empty_partials(head.n_rows, hidden.device)
        logprobs, entropy, lse = finish(merge_partials(gather_partials(local, shard)))
        ctx.save_for_backward(hidden, weight, bias, rows, head.targets, lse, entropy)
        ctx.temperature, ctx.kernels, ctx.workspace_bytes, ctx.shard = temperature, kernels, workspace_bytes, shard
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        saved = _saved_backward(ctx, grad_logprobs, grad_entropy)
        if saved is None:
            return (None,) * 9
        head = saved.head
        with _no_autocast(head.hidden.device):
            if ctx.shard.rows:
                grad_rows, grad_weight, grad_bias = ctx.kernels.backward(*saved, shard=True)
            else:  # an empty shard adds nothing, but still takes part in the reduction
                grad_rows, grad_weight, grad_bias = _empty_shard_grads(head, saved.needs)
            grad_hidden = None
            if grad_rows is not None:  # collective 3, then the rows go back to their positions
                grad_rows = reduce_hidden_rows(grad_rows, ctx.shard).to(head.hidden.dtype)
                grad_hidden = head.zeros_like_hidden().index_copy_(0, head.rows, grad_rows).view(head.hidden.shape)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _empty_shard_grads(head: LMHead, needs: tuple[bool, bool, bool]):
    """Zero (hidden rows [n, H] float32, weight [0, H], bias [0]) gradients of a shard with no rows."""
    rows = torch.zeros(head.n_rows, head.hidden.shape[-1], dtype=torch.float32, device=head.hidden.device)
    return (rows if needs[0] else None, torch.zeros_like(head.weight) if needs[1] else None,
            torch.zeros_like(head.bias) if needs[2] else None)


class PolicyLoss(torch.autograd.Function):
    """(logprobs [n], entropy [n] | None) -> (loss, ratio [n], kl [n], clipped [n] int8).

    loss = sum(tokens.weights * token loss) (``PolicyTokens.weighted``), 0-dim in the compute
    dtype of ``tokens``. Only logprobs and entropy are differentiable; ``tokens`` holds the data.
    ``compute`` is a backend's ``token_terms``. Backward scales the saved weighted
    d loss / d logp and d loss / d H by the upstream scalar.
    """

    @staticmethod
    def forward(ctx, logprobs, entropy, tokens: PolicyTokens, compute: TokenTermsFn):
        dtype = tokens.advantages.dtype
        entropy_values = None if entropy is None else entropy.detach().to(dtype)
        terms = tokens.terms(logprobs.detach().to(dtype), entropy_values, compute)
        loss, grad_logprobs, grad_entropy = tokens.weighted(terms, entropy_values)
        ctx.save_for_backward(grad_logprobs, grad_entropy)
        ctx.dtypes = (logprobs.dtype, None if entropy is None else entropy.dtype)
        ctx.mark_non_differentiable(terms.ratio, terms.kl, terms.clipped)
        return loss.sum(), terms.ratio, terms.kl, terms.clipped

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grads = [None if dtype is None or not needed else (grad_loss * g).to(dtype)
                 for g, dtype, needed in zip(ctx.saved_tensors, ctx.dtypes, ctx.needs_input_grad)]
        return (*grads, None, None)


class SinglePassLoss(torch.autograd.Function):
    """(hidden [..., H], weight, bias) -> (loss, logprobs, entropy, ratio, kl, clipped), torch path only.

    The forward forms the gradients of the aggregated loss with respect to the inputs chunk by
    chunk (``chunked.forward_with_grads``); backward scales them by the upstream scalar. Only
    the loss is differentiable; the per-token outputs are [n] over the scored rows, and the
    loss is the sum of the weighted per-token losses (``PolicyTokens.weighted``).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, temperature: float, workspace_bytes: int,
                tokens: PolicyTokens, kernels: ModuleType, compute: TokenTermsFn):
        head = LMHead(hidden, weight, bias, rows, targets, temperature, workspace_bytes)
        token_loss, ratio, kl = torch.zeros(3, head.n_rows, dtype=torch.float32, device=hidden.device)
        clipped = torch.zeros(head.n_rows, dtype=torch.int8, device=hidden.device)

        def upstream(chunk: slice, logprobs: torch.Tensor, entropy: torch.Tensor):
            terms = tokens.terms(logprobs, entropy, compute, chunk)
            ratio[chunk], kl[chunk], clipped[chunk] = terms.ratio, terms.kl, terms.clipped
            token_loss[chunk], grad_logprobs, grad_entropy = tokens.weighted(terms, entropy, chunk)
            return grad_logprobs, grad_entropy

        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        logprobs, entropy, grads = kernels.forward_with_grads(head, upstream, needs)
        ctx.save_for_backward(*grads)
        outputs = (logprobs, entropy, ratio, kl, clipped)
        ctx.mark_non_differentiable(*outputs)
        return (token_loss.sum(), *outputs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors]
        return (*scaled, None, None, None, None, None, None, None)
