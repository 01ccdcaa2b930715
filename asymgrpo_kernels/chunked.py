"""Pure-PyTorch path that never holds [tokens x vocab]: runs on any device.

Tokens are processed in chunks of ``rows`` rows, chosen so the chunk's float32 [rows, V]
buffers (logits, probabilities and the temporaries of logsumexp / exp) fit in
``workspace_bytes``. Forward keeps per token only
log p(target), the entropy (as -sum p log p over the shifted logits) and the log-sum-exp; backward recomputes each chunk's logits and
forms the logit gradient of ALGORITHM.md section 5 in place:

    ds = g_logp * (onehot(y) - p) - g_H * p * (s - E_p[s]),   E_p[s] = lse - H.

Extra memory: O(N) per-token floats + ``workspace_bytes`` (+ an fp32 [V, H] accumulator for
the weight gradient when the weight is not float32).
"""

from __future__ import annotations

import torch

DEFAULT_WORKSPACE_BYTES = 256 * 2**20
_BUFFERS_PER_ROW = 4  # float32 [rows, V]: logits, probabilities, and the temporaries of logsumexp/exp


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
    n_tokens, vocab_size = hidden.shape[0], weight.shape[0]
    logprobs = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(logprobs)
    lse = torch.empty_like(logprobs)
    rows = rows_per_chunk(vocab_size, workspace_bytes)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        shifted = _tempered_logits(hidden[start:stop], weight, bias, temperature)
        row_max = shifted.amax(dim=1)
        shifted.sub_(row_max[:, None])  # d = s - max(s) <= 0, in place
        unnormalized = torch.exp(shifted)
        log_sum = unnormalized.sum(dim=1).log_()
        # H = log S - sum_j e^d_j d_j / S: on shifted logits, so no cancellation of two numbers of
        # the logits' magnitude (lse - E_p[s] loses ~|s| * 1e-7 per token in float32).
        weighted = torch.einsum("nv,nv->n", unnormalized, shifted)
        entropy[start:stop] = log_sum - weighted / log_sum.exp()
        lse[start:stop] = row_max + log_sum
        target = targets[start:stop].clamp(min=0)[:, None]
        logprobs[start:stop] = shifted.gather(1, target).squeeze(1) - log_sum
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
    need_hidden, need_weight, need_bias = needs_grad
    n_tokens, vocab_size = hidden.shape[0], weight.shape[0]
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(vocab_size, dtype=torch.float32, device=weight.device) if need_bias else None
    # dlogits = ds / T = p * (a * log p + b) + onehot(y) * g_logp / T, with
    # a = -g_H / T and b = (-g_H * H - g_logp) / T, since s - E_p[s] = log p + H.
    inv_t = 1.0 / temperature
    slope = grad_entropy * -inv_t
    offset = (grad_entropy * entropy + grad_logprobs) * -inv_t
    target_grad = grad_logprobs * inv_t
    rows = rows_per_chunk(vocab_size, workspace_bytes)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        log_p = _tempered_logits(hidden[start:stop], weight, bias, temperature).sub_(lse[start:stop, None])
        dlogits = torch.exp(log_p)
        dlogits.mul_(log_p.mul_(slope[start:stop, None]).add_(offset[start:stop, None]))
        del log_p
        target = targets[start:stop].clamp(min=0)[:, None]
        dlogits.scatter_add_(1, target, target_grad[start:stop, None])
        h = hidden[start:stop]
        if need_hidden:  # [rows, V] @ [V, H] in the input dtype, fp32 accumulation in the matmul
            torch.mm(dlogits.to(hidden.dtype), weight, out=grad_hidden[start:stop])
        if need_weight:  # accumulated over chunks in float32
            grad_weight.addmm_(dlogits.T, h.float())
        if need_bias:
            grad_bias.add_(dlogits.sum(0))
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(weight.dtype)
    return grad_hidden, grad_weight, grad_bias
