"""Pure-PyTorch path that never holds [tokens x vocab]: runs on any device.

The scored rows (``LMHead.rows``) are processed in chunks, sized so the chunk's float32 [rows, V]
buffers (logits, their exponentials and the temporaries of the reductions) fit in
``workspace_bytes``; rows that are not scored are never read. Per chunk, with s = (h W^T + b) / T
and d = s - c for a per-row shift c (the row max in the forward, the log-sum-exp when it is
already known):

    S = sum exp(d),  log p = d - log S,  H = log S - sum exp(d) d / S   (no cancellation at large |s|)
    ds / T = p * (a log p + b) + onehot(y) g_logp / T,  a = -g_H / T,  b = -(g_H H + g_logp) / T

which is docs/algorithm.md §5's ds = g_logp (onehot - p) - g_H p (s - E_p[s]) with
s - E_p[s] = log p + H. Four entry points share these chunk helpers:

* ``partials`` keeps per scored row the softmax statistics of this vocabulary (``partials.py``),
  which vocabulary shards merge;
* ``forward`` keeps per scored row only log p(target), the entropy and the log-sum-exp;
* ``backward`` recomputes each chunk's logits from them and forms the gradients;
* ``forward_with_grads`` does both in one pass when the upstream gradients of a chunk are
  known as soon as its log-probs and entropies are (a per-token loss such as AsymGRPO's):
  three LM-head matmuls instead of four.

Logits are float32 for every input dtype (docs/algorithm.md §6): float32 operands use one
addmm with 1/T folded in; on CUDA, bfloat16 / float16 operands are multiplied by cuBLAS into a
float32 result; elsewhere (the CPU) a low-precision weight is upcast once per call.

Extra memory: O(n) per-row floats + ``workspace_bytes``; when the weight is not float32, a float32
[V, H] accumulator for its gradient, and on the CPU the float32 copy of the weight.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .lm_head import LMHead
from .partials import PARTIALS

DEFAULT_WORKSPACE_BYTES = 256 * 2**20
_BUFFERS_PER_ROW = 4  # float32 [rows, V]: shifted logits, exponentials, reduction temporaries
#: cuBLAS writes float32 products of bfloat16 / float16 operands (torch.mm(..., out_dtype=)).
_MM_HAS_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()

#: (chunk of the scored rows, logprobs [rows], entropy [rows]) -> (grad_logprobs, grad_entropy), float32 [rows]
UpstreamGrads = Callable[[slice, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def rows_per_chunk(vocab_size: int, workspace_bytes: int) -> int:
    """Token rows per chunk so that the chunk's float32 buffers fit in ``workspace_bytes``."""
    return max(1, workspace_bytes // (vocab_size * 4 * _BUFFERS_PER_ROW))


def _chunks(head: LMHead) -> Iterator[slice]:
    rows = rows_per_chunk(head.weight.shape[0], head.workspace_bytes)
    for start in range(0, head.n_rows, rows):
        yield slice(start, min(start + rows, head.n_rows))


class _Projection:
    """The LM head as this path applies it: float32 logits of a chunk's rows, and backward's products."""

    def __init__(self, head: LMHead):
        self.head = head
        low_precision = head.weight.dtype != torch.float32
        on_cublas = low_precision and head.weight.is_cuda and _MM_HAS_OUT_DTYPE
        self.weight = head.weight.float() if low_precision and not on_cublas else head.weight
        self.bias = None if head.bias is None else head.bias.float()
        self.inv_t = 1.0 / head.temperature

    def hidden(self, chunk: slice) -> torch.Tensor:
        """[rows, H] hidden states of a chunk of the scored rows, in the weight operand's dtype."""
        h = self.head.gather(self.head.rows[chunk])
        return h if h.dtype == self.weight.dtype else h.float()

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """s = (h W^T + b) / T as float32 [rows, V]."""
        if self.weight.dtype != torch.float32:
            s = torch.mm(h, self.weight.T, out_dtype=torch.float32)
            if self.bias is not None:
                s.add_(self.bias)
            return s.mul_(self.inv_t) if self.inv_t != 1.0 else s
        if self.bias is not None:  # the 1/T scale rides inside the matmul (alpha / beta)
            return torch.addmm(self.bias, h, self.weight.T, beta=self.inv_t, alpha=self.inv_t)
        return (h.mul(self.inv_t) if self.inv_t != 1.0 else h) @ self.weight.T


class _ChunkStats:
    """One chunk's shifted logits d [rows, V], exp(d) [rows, V] and per-row statistics.

    ``exact`` builds them from the logits (shift: the row max; also gives lse and log-probs),
    ``recomputed`` from the saved lse and entropy (shift: the lse, so S = 1).
    """

    def __init__(self, shifted: torch.Tensor, log_sum: torch.Tensor, entropy: torch.Tensor, targets: torch.Tensor):
        self.shifted, self.log_sum, self.entropy = shifted, log_sum, entropy
        self.exps = torch.exp(shifted)
        self.target = targets[:, None]
        self.held = None  # which targets lie in [0, V): all of them unless the vocabulary is a shard

    @classmethod
    def exact(cls, logits: torch.Tensor, targets: torch.Tensor) -> "_ChunkStats":
        row_max = logits.amax(dim=1)
        stats = cls(logits.sub_(row_max[:, None]), None, None, targets)
        stats.log_sum = stats.exps.sum(dim=1).log_()
        weighted = torch.einsum("nv,nv->n", stats.exps, stats.shifted)
        stats.entropy = stats.log_sum - weighted / stats.log_sum.exp()
        stats.lse = row_max + stats.log_sum
        stats.logprobs = stats.shifted.gather(1, stats.target).squeeze(1) - stats.log_sum
        return stats

    @classmethod
    def recomputed(cls, logits: torch.Tensor, targets, lse, entropy, shard: bool = False) -> "_ChunkStats":
        """``shard``: the vocabulary is a shard, and targets outside [0, V) get no one-hot term."""
        stats = cls(logits.sub_(lse[:, None]), torch.zeros_like(lse), entropy, targets)
        if shard:
            stats.held = (targets >= 0) & (targets < logits.shape[1])
        return stats

    def dlogits(self, grad_logprobs: torch.Tensor, grad_entropy: torch.Tensor, temperature: float) -> torch.Tensor:
        """d loss / d logits [rows, V] float32, written over this chunk's buffers."""
        inv_t = 1.0 / temperature
        inv_sum = torch.exp(-self.log_sum)
        slope = grad_entropy * -inv_t
        offset = (grad_entropy * self.entropy + grad_logprobs) * -inv_t
        # p (a log p + b) = exp(d) * ((a / S) d + (b - a log S) / S)
        self.shifted.mul_((slope * inv_sum)[:, None]).add_(((offset - slope * self.log_sum) * inv_sum)[:, None])
        grad = self.exps.mul_(self.shifted)
        self.shifted = self.exps = None
        onehot = grad_logprobs * inv_t
        if self.held is None:
            return grad.scatter_add_(1, self.target, onehot[:, None])
        onehot = torch.where(self.held, onehot, 0.0)
        return grad.scatter_add_(1, self.target.clamp(0, grad.shape[1] - 1), onehot[:, None])


class _GradAccumulator:
    """Gradients of (hidden, weight, bias), filled chunk by chunk from d loss / d logits.

    The hidden gradient is contiguous, shaped like hidden, and zero at every position not scored;
    with ``shard``, float32 [n, H] rows of the scored positions instead.
    """

    def __init__(self, projection: _Projection, needs_grad: tuple[bool, bool, bool], shard: bool = False):
        need_hidden, need_weight, need_bias = needs_grad
        head = projection.head
        f32 = dict(dtype=torch.float32, device=head.weight.device)
        self.projection, self.shard = projection, shard
        if not need_hidden:
            self.grad_hidden = None
        elif shard:  # [n, H] float32
            self.grad_hidden = torch.zeros(head.n_rows, head.hidden.shape[-1], **f32)
        else:  # [N, H] in hidden's dtype
            self.grad_hidden = head.zeros_like_hidden()
        self.grad_weight = torch.zeros(head.weight.shape, **f32) if need_weight else None  # accumulated in float32
        self.grad_bias = torch.zeros(head.weight.shape[0], **f32) if need_bias else None

    def add(self, chunk: slice, h: torch.Tensor, dlogits: torch.Tensor) -> None:
        weight = self.projection.weight
        if self.grad_hidden is not None:  # [rows, V] @ [V, H] in the weight operand's dtype, fp32 accumulation
            grad = torch.mm(dlogits.to(weight.dtype), weight)
            if self.shard:
                self.grad_hidden[chunk] = grad
            else:
                self.grad_hidden.index_copy_(0, self.projection.head.rows[chunk], grad.to(self.grad_hidden.dtype))
        if self.grad_weight is not None:
            self.grad_weight.addmm_(dlogits.T, h.float())
        if self.grad_bias is not None:
            self.grad_bias.add_(dlogits.sum(0))

    def result(self) -> Grads:
        head = self.projection.head
        cast = lambda g: None if g is None else g.to(head.weight.dtype)  # noqa: E731
        grad_hidden = self.grad_hidden
        if grad_hidden is not None and not self.shard:
            grad_hidden = grad_hidden.view(head.hidden.shape)
        return grad_hidden, cast(self.grad_weight), cast(self.grad_bias)


def partials(head: LMHead) -> torch.Tensor:
    """[4, n] float32 partials (m, S, Zm, s_y; ``asymgrpo_kernels.partials``) of the head's vocabulary.

    Targets outside [0, V) (a vocabulary shard that does not hold them) contribute s_y = 0.
    """
    projection = _Projection(head)
    vocab_size = head.weight.shape[0]
    held = (head.targets >= 0) & (head.targets < vocab_size)
    local_targets = head.targets.clamp(0, vocab_size - 1)[:, None]
    out = torch.empty(PARTIALS, head.n_rows, dtype=torch.float32, device=head.weight.device)
    for chunk in _chunks(head):
        logits = projection.logits(projection.hidden(chunk))
        out[3, chunk] = torch.where(held[chunk], logits.gather(1, local_targets[chunk]).squeeze(1), 0.0)
        out[0, chunk] = row_max = logits.amax(dim=1)
        shifted = logits.sub_(row_max[:, None])
        exps = torch.exp(shifted)
        out[1, chunk] = exps.sum(dim=1)
        out[2, chunk] = torch.einsum("nv,nv->n", exps, shifted)
    return out


def forward(head: LMHead) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, lse) of the scored rows, each float32 [n]."""
    projection = _Projection(head)
    logprobs, entropy, lse = torch.empty(3, head.n_rows, dtype=torch.float32, device=head.weight.device)
    for chunk in _chunks(head):
        stats = _ChunkStats.exact(projection.logits(projection.hidden(chunk)), head.targets[chunk])
        logprobs[chunk], entropy[chunk], lse[chunk] = stats.logprobs, stats.entropy, stats.lse
    return logprobs, entropy, lse


def backward(
    head: LMHead,
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    needs_grad: tuple[bool, bool, bool],
    shard: bool = False,
) -> Grads:
    """Gradients for (hidden, weight, bias) given float32 [n] upstream gradients of the scored rows.

    Returns tensors in the dtype of the matching input, or None where ``needs_grad`` is False.
    With ``shard`` the head's weight is one vocabulary shard: targets outside [0, V) get no
    one-hot term, and the hidden gradient is the float32 [n, H] rows of the scored positions, in
    the order of ``head.rows`` (the partial sum a vocabulary-parallel backward all-reduces).
    """
    projection = _Projection(head)
    grads = _GradAccumulator(projection, needs_grad, shard)
    for chunk in _chunks(head):
        h = projection.hidden(chunk)
        stats = _ChunkStats.recomputed(projection.logits(h), head.targets[chunk], lse[chunk], entropy[chunk],
                                       shard=shard)
        grads.add(chunk, h, stats.dlogits(grad_logprobs[chunk], grad_entropy[chunk], head.temperature))
    return grads.result()


def forward_with_grads(
    head: LMHead, upstream: UpstreamGrads, needs_grad: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, Grads]:
    """``forward`` and ``backward`` in one pass over the chunks.

    ``upstream(chunk, logprobs, entropy)`` returns the float32 upstream gradients of a chunk of
    the scored rows given their log-probs and entropies. Returns (logprobs [n], entropy [n],
    (grad_hidden, grad_weight, grad_bias)).
    """
    projection = _Projection(head)
    logprobs, entropy = torch.empty(2, head.n_rows, dtype=torch.float32, device=head.weight.device)
    grads = _GradAccumulator(projection, needs_grad)
    for chunk in _chunks(head):
        h = projection.hidden(chunk)
        stats = _ChunkStats.exact(projection.logits(h), head.targets[chunk])
        logprobs[chunk], entropy[chunk] = stats.logprobs, stats.entropy
        grad_logprobs, grad_entropy = upstream(chunk, stats.logprobs, stats.entropy)
        grads.add(chunk, h, stats.dlogits(grad_logprobs, grad_entropy, head.temperature))
    return logprobs, entropy, grads.result()
