"""Pure-PyTorch path that never holds [tokens x vocab]: runs on any device.

Tokens are processed in chunks of ``rows`` rows, chosen so the chunk's float32 [rows, V]
buffers (shifted logits, their exponentials and the temporaries of the reductions) fit in
``workspace_bytes``. Per chunk, with s = (h W^T + b) / T and d = s - c for a per-row shift c
(the row max in the forward, the log-sum-exp when it is already known):

    S = sum exp(d),  log p = d - log S,  H = log S - sum exp(d) d / S   (no cancellation at large |s|)
    ds / T = p * (a log p + b) + onehot(y) g_logp / T,  a = -g_H / T,  b = -(g_H H + g_logp) / T

which is ALGORITHM.md section 5's ds = g_logp (onehot - p) - g_H p (s - E_p[s]) with
s - E_p[s] = log p + H. Three entry points share these chunk helpers:

* ``forward`` keeps per token only log p(target), the entropy and the log-sum-exp;
* ``backward`` recomputes each chunk's logits from them and forms the gradients;
* ``forward_with_grads`` does both in one pass when the upstream gradients of a chunk are
  known as soon as its log-probs and entropies are (a per-token loss such as AsymGRPO's):
  three LM-head matmuls instead of four.

Extra memory: O(N) per-token floats + ``workspace_bytes`` (+ an fp32 [V, H] accumulator for
the weight gradient when the weight is not float32).
"""

from __future__ import annotations

from typing import Callable

import torch

DEFAULT_WORKSPACE_BYTES = 256 * 2**20
_BUFFERS_PER_ROW = 4  # float32 [rows, V]: shifted logits, exponentials, reduction temporaries

#: (start, stop, logprobs [rows], entropy [rows]) -> (grad_logprobs [rows], grad_entropy [rows]), float32
UpstreamGrads = Callable[[int, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rows_per_chunk(vocab_size: int, workspace_bytes: int) -> int:
    """Token rows per chunk so that the chunk's float32 buffers fit in ``workspace_bytes``."""
    return max(1, workspace_bytes // (vocab_size * 4 * _BUFFERS_PER_ROW))


def _tempered_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """s = (h @ W^T + b) / T for one chunk, as float32 [rows, V].

    In float32 the 1/T scale rides inside the matmul (alpha/beta), saving a pass over [rows, V].
    """
    inv_t = 1.0 / temperature
    if h.dtype == torch.float32:
        if bias is not None:
            return torch.addmm(bias, h, weight.T, beta=inv_t, alpha=inv_t)
        return h.mul(inv_t) @ weight.T if temperature != 1.0 else h @ weight.T
    logits = (torch.addmm(bias, h, weight.T) if bias is not None else h @ weight.T).float()
    return logits.mul_(inv_t) if temperature != 1.0 else logits


class _ChunkStats:
    """One chunk's shifted logits d [rows, V], exp(d) [rows, V] and per-row statistics.

    ``exact`` builds them from the logits (shift: the row max; also gives lse and log-probs),
    ``recomputed`` from the saved lse and entropy (shift: the lse, so S = 1).
    """

    def __init__(self, shifted: torch.Tensor, log_sum: torch.Tensor, entropy: torch.Tensor, targets: torch.Tensor):
        self.shifted, self.log_sum, self.entropy = shifted, log_sum, entropy
        self.exps = torch.exp(shifted)
        self.target = targets.clamp(min=0)[:, None]

    @classmethod
    def exact(cls, h, weight, bias, temperature: float, targets: torch.Tensor) -> "_ChunkStats":
        shifted = _tempered_logits(h, weight, bias, temperature)
        row_max = shifted.amax(dim=1)
        stats = cls(shifted.sub_(row_max[:, None]), None, None, targets)
        stats.log_sum = stats.exps.sum(dim=1).log_()
        weighted = torch.einsum("nv,nv->n", stats.exps, stats.shifted)
        stats.entropy = stats.log_sum - weighted / stats.log_sum.exp()
        stats.lse = row_max + stats.log_sum
        stats.logprobs = stats.shifted.gather(1, stats.target).squeeze(1) - stats.log_sum
        return stats

    @classmethod
    def recomputed(cls, h, weight, bias, temperature: float, targets, lse, entropy) -> "_ChunkStats":
        shifted = _tempered_logits(h, weight, bias, temperature).sub_(lse[:, None])
        return cls(shifted, torch.zeros_like(lse), entropy, targets)

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
        return grad.scatter_add_(1, self.target, (grad_logprobs * inv_t)[:, None])


class _GradAccumulator:
    """Gradients of (hidden, weight, bias), filled chunk by chunk from d loss / d logits."""

    def __init__(self, hidden, weight, bias, needs_grad: tuple[bool, bool, bool]):
        need_hidden, need_weight, need_bias = needs_grad
        f32 = dict(dtype=torch.float32, device=weight.device)
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.grad_hidden = torch.empty_like(hidden) if need_hidden else None
        self.grad_weight = torch.zeros(weight.shape, **f32) if need_weight else None  # accumulated in float32
        self.grad_bias = torch.zeros(weight.shape[0], **f32) if need_bias else None

    def add(self, start: int, stop: int, dlogits: torch.Tensor) -> None:
        h = self.hidden[start:stop]
        if self.grad_hidden is not None:  # [rows, V] @ [V, H] in the input dtype, fp32 accumulation
            torch.mm(dlogits.to(h.dtype), self.weight, out=self.grad_hidden[start:stop])
        if self.grad_weight is not None:
            self.grad_weight.addmm_(dlogits.T, h.float())
        if self.grad_bias is not None:
            self.grad_bias.add_(dlogits.sum(0))

    def result(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        cast = lambda g: None if g is None else g.to(self.weight.dtype)  # noqa: E731
        return self.grad_hidden, cast(self.grad_weight), cast(self.grad_bias)


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], bias [V] | None, targets [N] int64 (negative = ignored).

    Returns (logprobs, entropy, lse), each float32 [N]. Ignored rows hold unspecified values.
    """
    n_tokens = hidden.shape[0]
    logprobs, entropy, lse = torch.empty(3, n_tokens, dtype=torch.float32, device=hidden.device)
    rows = rows_per_chunk(weight.shape[0], workspace_bytes)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        stats = _ChunkStats.exact(hidden[start:stop], weight, bias, temperature, targets[start:stop])
        logprobs[start:stop], entropy[start:stop], lse[start:stop] = stats.logprobs, stats.entropy, stats.lse
    return logprobs, entropy, lse


def backward(
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    needs_grad: tuple[bool, bool, bool],
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (hidden, weight, bias) given float32 [N] upstream gradients.

    The upstream gradients must already be zero on ignored rows. Returns tensors in the
    dtype of the matching input, or None where ``needs_grad`` is False.
    """
    grads = _GradAccumulator(hidden, weight, bias, needs_grad)
    rows = rows_per_chunk(weight.shape[0], workspace_bytes)
    for start in range(0, hidden.shape[0], rows):
        stop = min(start + rows, hidden.shape[0])
        chunk = slice(start, stop)
        stats = _ChunkStats.recomputed(hidden[chunk], weight, bias, temperature, targets[chunk], lse[chunk], entropy[chunk])
        grads.add(start, stop, stats.dlogits(grad_logprobs[chunk], grad_entropy[chunk], temperature))
    return grads.result()


def forward_with_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    upstream: UpstreamGrads,
    needs_grad: tuple[bool, bool, bool],
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """``forward`` and ``backward`` in one pass over the chunks.

    ``upstream(start, stop, logprobs, entropy)`` returns the float32 upstream gradients of
    rows start..stop given their log-probs and entropies (zero on ignored rows). Returns
    (logprobs [N], entropy [N], (grad_hidden, grad_weight, grad_bias)).
    """
    n_tokens = hidden.shape[0]
    logprobs, entropy = torch.empty(2, n_tokens, dtype=torch.float32, device=hidden.device)
    grads = _GradAccumulator(hidden, weight, bias, needs_grad)
    rows = rows_per_chunk(weight.shape[0], workspace_bytes)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        stats = _ChunkStats.exact(hidden[start:stop], weight, bias, temperature, targets[start:stop])
        logprobs[start:stop], entropy[start:stop] = stats.logprobs, stats.entropy
        grad_logprobs, grad_entropy = upstream(start, stop, stats.logprobs, stats.entropy)
        grads.add(start, stop, stats.dlogits(grad_logprobs, grad_entropy, temperature))
    return logprobs, entropy, grads.result()
