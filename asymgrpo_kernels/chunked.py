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
    """s = (h @ W^T + b) / T for one chunk, as float32 [rows, V]."""
    logits = torch.addmm(bias, h, weight.T) if bias is not None else h @ weight.T
    return logits.float().div_(temperature)


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
        s = _tempered_logits(hidden[start:stop], weight, bias, temperature)
        chunk_lse = torch.logsumexp(s, dim=-1)
        log_p = s.sub_(chunk_lse[:, None])  # in place: s is not needed any more
        p = torch.exp(log_p)
        target = targets[start:stop].clamp(min=0)
        lse[start:stop] = chunk_lse
        # H = -sum p log p on the shifted logits: the form lse - E_p[s] cancels two numbers of
        # the logits' magnitude and loses ~|s| * 1e-7 per token in float32.
        entropy[start:stop] = torch.einsum("nv,nv->n", p, log_p).neg_()
        logprobs[start:stop] = log_p.gather(1, target[:, None]).squeeze(1)
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
    expected_s = lse - entropy
    rows = rows_per_chunk(vocab_size, workspace_bytes)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        g_logp, g_ent = grad_logprobs[start:stop, None], grad_entropy[start:stop, None]
        ds = _tempered_logits(hidden[start:stop], weight, bias, temperature)
        p = torch.sub(ds, lse[start:stop, None]).exp_()
        # ds = p * (-g_H * (s - E_p[s]) - g_logp), then + g_logp at the target column.
        ds.sub_(expected_s[start:stop, None]).mul_(-g_ent).sub_(g_logp).mul_(p)
        del p
        target = targets[start:stop].clamp(min=0)[:, None]
        ds.scatter_add_(1, target, g_logp.expand(-1, 1))
        ds.div_(temperature)
        h = hidden[start:stop]
        if need_hidden:  # [rows, V] @ [V, H] in the input dtype, fp32 accumulation in the matmul
            torch.mm(ds.to(hidden.dtype), weight, out=grad_hidden[start:stop])
        if need_weight:  # accumulated over chunks in float32
            grad_weight.addmm_(ds.T, h.float())
        if need_bias:
            grad_bias.add_(ds.sum(0))
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(weight.dtype)
    return grad_hidden, grad_weight, grad_bias
