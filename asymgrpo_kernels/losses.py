"""fused_linear_asymgrpo_loss and AsymGRPOLoss: last hidden states -> AsymGRPO loss, one call.

    hidden, lm_head weight --fused_linear_logprob_entropy--> logp, H   ([B, T] float32)
    logp, H, old/ref logp, advantages, mask --asym_policy_loss--> loss, metrics

The kernel core never holds [tokens x vocab]; its backward receives only the [N] gradients
d loss / d logp and d loss / d H produced by the fused per-token loss (Triton on CUDA).
On the torch backend, when gradients are wanted, the same math runs in one pass
(``_single_pass_loss``): every token's d loss / d logp and d loss / d H are known as soon
as its log-prob and entropy are, so each chunk's gradients are formed while its logits are
at hand, and backward only scales them (three LM-head matmuls instead of four).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import chunked
from .advantages import group_advantages
from .chunked import DEFAULT_WORKSPACE_BYTES
from .dispatch import resolve_backend
from .logprob_entropy import fused_linear_logprob_entropy
from .policy_loss import asym_policy_loss, check_policy_loss_inputs, loss_metrics, token_terms, token_weights
from .presets import preset_kwargs
from .validate import (
    NORMALIZE_MODES,
    check_choice,
    check_integer_dtype,
    check_nonnegative_finite,
    check_policy_loss_options,
    check_positive_finite,
    check_scored_targets,
    check_logprob_entropy_inputs,
    check_tensor,
)

IGNORE_INDEX = -100


def fused_linear_asymgrpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    is_weights: torch.Tensor | None = None,
    loss_agg: str = "token-mean",
    max_len: int | None = None,
    num_items: float | torch.Tensor | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AsymGRPO loss straight from the policy's last hidden states.

    Args:
        hidden: [B, T, H] float32 / bfloat16 / float16, the backbone's output at the
            positions that predict ``targets`` (shift by one yourself, as for any LM loss).
        weight: [V, H], same dtype: ``model.lm_head.weight`` (with tied embeddings this is
            the embedding matrix, and its gradient accumulates there).
        targets: [B, T] integer token ids, in [0, V) wherever mask == 1 (anything elsewhere).
        mask: [B, T] of 0/1; only mask == 1 tokens are scored. Masked tokens are sent to
            the kernels as ignored: they cost no vocabulary work and get no gradient.
        advantages: [B] or [B, T] float, e.g. from ``group_advantages``.
        old_logprobs: [B, T] float from the sampling policy; None = on-policy (detached
            current log-probs).
        ref_logprobs: [B, T] float from the reference policy, for the KL term / metric.
        bias: [V] or None, same dtype as hidden; temperature: > 0, divides the logits.
        backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch" or
            "reference" (materialized logits, for checks).
        clip_low ... num_items: as in ``asym_policy_loss``.
        workspace_bytes: scratch bound of the kernel core's passes.

    Returns:
        (loss, metrics): the 0-dim float32 loss, differentiable with respect to hidden,
        weight and bias; metrics as in ``asym_policy_loss`` (entropy metrics included).
    """
    check_tensor(hidden, "hidden")
    check_tensor(weight, "weight")
    check_tensor(targets, "targets")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {list(hidden.shape)}")
    shape = tuple(hidden.shape[:2])
    valid, adv, options = check_policy_loss_inputs(
        shape, hidden.device, old_logprobs, advantages, mask, ref_logprobs, is_weights, True,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef, kl_estimator=kl_estimator,
        entropy_coef=entropy_coef, loss_agg=loss_agg, max_len=max_len, num_items=num_items, backend=backend,
    )
    targets = _ignore_masked(targets, valid, weight.shape[0] if weight.dim() == 2 else None)
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if wants_grad and backend != "reference" and resolve_backend(backend, hidden.device) == "torch":
        return _single_pass_loss(
            hidden, weight, bias, targets, valid, adv, old_logprobs, ref_logprobs, is_weights, options,
            temperature, workspace_bytes,
        )
    logprobs, entropy = fused_linear_logprob_entropy(
        hidden, weight, targets, bias=bias, temperature=temperature, ignore_index=IGNORE_INDEX,
        backend=backend, workspace_bytes=workspace_bytes,
    )
    return asym_policy_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, ref_logprobs=ref_logprobs,
        kl_coef=kl_coef, kl_estimator=kl_estimator, entropy=entropy, entropy_coef=entropy_coef,
        is_weights=is_weights, loss_agg=loss_agg, max_len=max_len, num_items=num_items,
        backend="torch" if backend == "reference" else backend,
    )


def _single_pass_loss(
    hidden, weight, bias, targets, valid, adv, old_logprobs, ref_logprobs, is_weights, options, temperature, workspace_bytes
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The torch path in one pass over the vocabulary (``chunked.forward_with_grads``).

    Every token's d loss / d logp and d loss / d H depend only on that token (and on the
    aggregation weights, known from the mask), so each chunk's gradients are formed while
    its logits are at hand: three LM-head matmuls, as for the plain LM head, instead of four.
    Arguments as validated by ``fused_linear_asymgrpo_loss``; targets carry IGNORE_INDEX.
    """
    shape = tuple(valid.shape)
    check_logprob_entropy_inputs(hidden, weight, targets, bias, temperature, IGNORE_INDEX, "torch")
    flat = lambda t: None if t is None else t.detach().float().reshape(-1)  # noqa: E731
    tokens = _TokenData(
        valid=valid.reshape(-1), advantages=flat(adv), old_logprobs=flat(old_logprobs),
        ref_logprobs=flat(ref_logprobs), is_weights=flat(is_weights),
        weights=token_weights(valid, options["loss_agg"], options["max_len"], options["num_items"], torch.float32).reshape(-1),
        options={k: options[k] for k in ("clip_low", "clip_high", "dual_clip", "kl_coef", "kl_estimator", "entropy_coef")},
    )
    kernel_targets = torch.where(targets == IGNORE_INDEX, -1, targets).reshape(-1)
    loss, logprobs, entropy, ratio, kl, clipped = _SinglePassLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, kernel_targets, tokens, temperature, workspace_bytes
    )
    logprobs, entropy = logprobs.reshape(shape), entropy.reshape(shape)
    old = old_logprobs if old_logprobs is not None else logprobs
    metrics = loss_metrics(valid, adv, logprobs, old, ratio.reshape(shape), kl.reshape(shape), clipped.reshape(shape),
                           entropy, ref_logprobs is not None, options["dual_clip"] is not None)
    return loss, metrics


@dataclass
class _TokenData:
    """Per-token float32 [N] inputs of the policy loss (data, not differentiated) and its options."""

    valid: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None  # None: on-policy, the current log-probs
    ref_logprobs: torch.Tensor | None
    is_weights: torch.Tensor | None
    weights: torch.Tensor  # aggregation weights: loss = sum(weights * token loss)
    options: dict


class _SinglePassLoss(torch.autograd.Function):
    """(hidden [N, H], weight, bias) -> (loss, logprobs, entropy, ratio, kl, clipped); only loss is differentiable.

    Forward computes the gradients of the loss with respect to the inputs chunk by chunk;
    backward scales them by the upstream scalar gradient. Saved: those gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tokens: _TokenData, temperature: float, workspace_bytes: int):
        n_tokens = hidden.shape[0]
        token_loss, ratio, kl = torch.zeros(3, n_tokens, dtype=torch.float32, device=hidden.device)
        clipped = torch.zeros(n_tokens, dtype=torch.int8, device=hidden.device)

        def upstream(start: int, stop: int, logprobs: torch.Tensor, entropy: torch.Tensor):
            rows = slice(start, stop)
            pick = lambda t: None if t is None else t[rows]  # noqa: E731
            old = tokens.old_logprobs[rows] if tokens.old_logprobs is not None else logprobs
            terms = token_terms(
                logprobs, old, tokens.advantages[rows], tokens.valid[rows], pick(tokens.ref_logprobs), entropy,
                pick(tokens.is_weights), **tokens.options,
            )
            token_loss[rows], ratio[rows], kl[rows], clipped[rows] = terms.loss, terms.ratio, terms.kl, terms.clipped
            weights = tokens.weights[rows]
            return terms.grad_logprobs * weights, terms.grad_entropy * weights

        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        logprobs, entropy, grads = chunked.forward_with_grads(
            hidden, weight, bias, targets, temperature, upstream, needs, workspace_bytes
        )
        ctx.grads = grads
        outputs = (logprobs.masked_fill_(targets < 0, 0.0), entropy.masked_fill_(targets < 0, 0.0), ratio, kl, clipped)
        ctx.mark_non_differentiable(*outputs)
        return ((token_loss * tokens.weights).sum(), *outputs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads]
        ctx.grads = None
        return (*scaled, None, None, None, None)


def _ignore_masked(targets: torch.Tensor, valid: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """targets with IGNORE_INDEX where mask == 0; scored targets must lie in [0, V)."""
    check_integer_dtype(targets, "targets")
    if targets.shape != valid.shape:
        raise ValueError(f"targets must have shape [B, T] = {list(valid.shape)}, got {list(targets.shape)}")
    if targets.device != valid.device:
        raise ValueError(f"targets must be on {valid.device} like hidden, got {targets.device}")
    if vocab_size is not None:
        check_scored_targets(targets, valid, vocab_size, "where mask == 1")
    return torch.where(valid, targets.long(), IGNORE_INDEX)


class AsymGRPOLoss(nn.Module):
    """The AsymGRPO objective as a module: holds the hyperparameters, computes advantages and loss.

    ``preset`` (a name from ``asymgrpo_kernels.presets.PRESETS``) sets beta_pos, beta_neg
    and normalize; explicit ``beta_pos`` / ``beta_neg`` / ``normalize`` override it.

        loss_fn = AsymGRPOLoss("asymgrpo", clip_high=0.28)
        adv = loss_fn.advantages(rewards, group_size=8)            # [B]
        loss, metrics = loss_fn(hidden, model.lm_head.weight, targets, mask, adv,
                                old_logprobs=old_logp)
    """

    def __init__(
        self,
        preset: str = "asymgrpo",
        *,
        beta_pos: float | None = None,
        beta_neg: float | None = None,
        normalize: str | None = None,
        unbiased_std: bool = False,
        eps: float = 1e-6,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        dual_clip: float | None = None,
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        entropy_coef: float = 0.0,
        loss_agg: str = "token-mean",
        max_len: int | None = None,
        temperature: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        adv = preset_kwargs(preset)
        for key, value in (("beta_pos", beta_pos), ("beta_neg", beta_neg), ("normalize", normalize)):
            if value is not None:
                adv[key] = value
        check_nonnegative_finite(adv["beta_pos"], "beta_pos")
        check_nonnegative_finite(adv["beta_neg"], "beta_neg")
        check_choice(adv["normalize"], "normalize", NORMALIZE_MODES)
        check_nonnegative_finite(eps, "eps")
        if not isinstance(unbiased_std, bool):
            raise TypeError(f"unbiased_std must be a bool, got {type(unbiased_std).__name__}")
        check_policy_loss_options(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, loss_agg, max_len, None)
        check_positive_finite(temperature, "temperature")
        self.preset = preset
        self.advantage_kwargs = {**adv, "unbiased_std": unbiased_std, "eps": eps}
        self.loss_kwargs = {
            "clip_low": clip_low, "clip_high": clip_high, "dual_clip": dual_clip, "kl_coef": kl_coef,
            "kl_estimator": kl_estimator, "entropy_coef": entropy_coef, "loss_agg": loss_agg,
            "max_len": max_len, "temperature": temperature, "backend": backend,
        }

    def advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *, group_size: int | None = None
    ) -> torch.Tensor:
        """[B] float32 advantages of ``rewards`` [B] with this module's betas (see group_advantages)."""
        backend = self.loss_kwargs["backend"]
        return group_advantages(
            rewards, group_ids, group_size=group_size, **self.advantage_kwargs,
            backend="torch" if backend == "reference" else backend,
        )

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        *,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        is_weights: torch.Tensor | None = None,
        num_items: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of ``fused_linear_asymgrpo_loss`` with this module's hyperparameters."""
        return fused_linear_asymgrpo_loss(
            hidden, weight, targets, mask, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
            bias=bias, is_weights=is_weights, num_items=num_items, **self.loss_kwargs,
        )

    def extra_repr(self) -> str:
        items = {"preset": self.preset, **self.advantage_kwargs, **self.loss_kwargs}
        return ", ".join(f"{k}={v!r}" for k, v in items.items())
