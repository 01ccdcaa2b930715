"""fused_linear_asymgrpo_loss and AsymGRPOLoss: last hidden states -> AsymGRPO loss, one call.

    hidden, lm_head weight --LM head on the scored rows--> logp, H   (float32 [n])
    logp, H, old/ref logp, advantages, weights --per-token loss--> loss, metrics

Only the n scored tokens (mask == 1) go through the LM head, forward and backward. The kernel
core never holds [tokens x vocab]; its backward receives only the [n] gradients d loss / d logp
and d loss / d H of the per-token loss. On the torch backend, when gradients are wanted, the
same math runs in one pass (``functions.SinglePassLoss``): every token's d loss / d logp and
d loss / d H are known as soon as its log-prob and entropy are, so each chunk's gradients are
formed while its logits are at hand, and backward only scales them (three LM-head matmuls
instead of four).
"""

from __future__ import annotations

import torch
from torch import nn

from .advantages import group_advantages
from .chunked import DEFAULT_WORKSPACE_BYTES
from .dispatch import get_backend
from .functions import PolicyLoss, SinglePassLoss
from .lm_head import autocast_operands, scored_head
from .options import AdvantageOptions, LossKeywords, LossOptions, Unpack
from .policy_loss import check_policy_batch, loss_metrics, token_weights
from .token_terms import PolicyTokens
from .validate import ValueChecks, check_call_scalars, check_lm_head, check_num_items, check_targets, check_workspace


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
    is_weights: torch.Tensor | None = None,
    num_items: float | torch.Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    options: LossOptions | None = None,
    **loss_options: Unpack[LossKeywords],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AsymGRPO loss straight from the policy's last hidden states.

    Args:
        hidden: [B, T, H] float32 / bfloat16 / float16 (any strides; never copied), the
            backbone's output at the positions that predict ``targets`` (shift by one
            yourself, as for any LM loss).
        weight: [V, H], same dtype: ``model.lm_head.weight`` (with tied embeddings this is
            the embedding matrix, and its gradient accumulates there).
        targets: [B, T] integer token ids, in [0, V) wherever mask == 1 (anything elsewhere).
        mask: [B, T] of 0/1; only mask == 1 tokens are scored. The others (prompt, padding)
            never reach the LM head: they cost no vocabulary work and get exactly zero
            gradient, even if their hidden state is NaN or inf.
        advantages: [B] or [B, T] float, e.g. from ``group_advantages``.
        old_logprobs: [B, T] float from the sampling policy; None = on-policy (detached
            current log-probs).
        ref_logprobs: [B, T] float from the reference policy, for the KL term / metric.
        bias: [V] or None, same dtype as hidden.
        is_weights: [B, T] float importance weights, as in ``asym_policy_loss``.
        num_items: as in ``asym_policy_loss``.
        temperature: positive, divides the logits (use the sampling temperature).
        backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch" or
            "reference" (materialized logits, for checks).
        workspace_bytes: scratch bound of the kernel core's passes.
        options: a ``LossOptions`` (default: ``LossOptions()``).
        **loss_options: its fields as keywords (clip_low, clip_high, dual_clip, kl_coef,
            kl_estimator, entropy_coef, loss_agg, max_len), replacing those of ``options``.

    Returns:
        (loss, metrics): the 0-dim float32 loss, differentiable with respect to hidden,
        weight and bias; metrics as in ``asym_policy_loss`` (entropy metrics included). Under
        ``torch.autocast``, hidden, weight and bias are cast to the autocast dtype (as a
        linear layer's would be) and all the rest is float32.

    Raises:
        TypeError: an argument of the wrong kind (named in the message), before any kernel runs.
        ValueError: an impossible value (named in the message), before any kernel runs.
    """
    options = LossOptions.build(options, loss_options)
    hidden, weight, bias = autocast_operands(hidden, weight, bias)
    temperature = check_lm_head(hidden, weight, bias, temperature)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {list(hidden.shape)}")
    shape, device = tuple(hidden.shape[:2]), hidden.device
    check_targets(targets, hidden)
    valid, adv = check_policy_batch(shape, device, old_logprobs, advantages, mask, ref_logprobs, is_weights, True, options)
    num_items = check_num_items(num_items)
    check_workspace(workspace_bytes)
    chosen = get_backend(backend, device)
    checks = ValueChecks()
    checks.mask(mask)
    checks.targets(targets, valid, weight.shape[0], "where mask == 1")
    checks.num_items(num_items)
    (n_scored,) = checks.run(valid.sum())

    with torch.autocast(device.type, enabled=False):
        head = scored_head(hidden, weight, bias, targets, valid, int(n_scored), temperature, workspace_bytes)
        at_rows = lambda t: None if t is None else t.detach().float().reshape(-1).index_select(0, head.rows)  # noqa: E731
        tokens = PolicyTokens(
            valid=torch.ones(head.n_rows, dtype=torch.bool, device=device), advantages=at_rows(adv),
            old_logprobs=at_rows(old_logprobs), ref_logprobs=at_rows(ref_logprobs), is_weights=at_rows(is_weights),
            weights=at_rows(token_weights(valid, options, num_items, torch.float32)), options=options,
        )
        wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
        if chosen.single_pass_loss and wants_grad:
            loss, logprobs, entropy, ratio, kl, clipped = SinglePassLoss.apply(
                head.hidden, head.weight, head.bias, head.rows, head.targets, head.temperature, head.workspace_bytes,
                tokens, chosen.kernels, chosen.token_terms,
            )
        else:
            logprobs, entropy = chosen.logprob_entropy(head)
            loss, ratio, kl, clipped = PolicyLoss.apply(logprobs, entropy, tokens, chosen.token_terms)
        return loss, loss_metrics(tokens, logprobs, ratio, kl, clipped, entropy)


class AsymGRPOLoss(nn.Module):
    """The AsymGRPO objective as a module: holds the options, computes advantages and loss.

    ``preset`` (a name of ``asymgrpo_kernels.PRESETS``) sets beta_pos, beta_neg and normalize;
    keywords naming an ``AdvantageOptions`` field (beta_pos, beta_neg, normalize,
    unbiased_std, eps) override it, and keywords naming a ``LossOptions`` field (clip_low,
    clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, loss_agg, max_len) override
    ``options``. Every value is checked here, once.

        loss_fn = AsymGRPOLoss("asymgrpo", clip_high=0.28)
        adv = loss_fn.advantages(rewards, group_size=8)            # [B]
        loss, metrics = loss_fn(hidden, model.lm_head.weight, targets, mask, adv,
                                old_logprobs=old_logp)

    Attributes:
        advantage_options: the ``AdvantageOptions`` of ``advantages``.
        options: the ``LossOptions`` of ``forward``.
        temperature, backend, workspace_bytes: as in ``fused_linear_asymgrpo_loss``.
    """

    def __init__(
        self,
        preset: str = "asymgrpo",
        *,
        temperature: float = 1.0,
        backend: str = "auto",
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        options: LossOptions | None = None,
        **overrides,
    ) -> None:
        super().__init__()
        advantage_names = set(AdvantageOptions.field_names())
        unknown = sorted(set(overrides) - advantage_names - set(LossOptions.field_names()))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; AsymGRPOLoss takes the "
                f"AdvantageOptions fields ({', '.join(AdvantageOptions.field_names())}) and the LossOptions "
                f"fields ({', '.join(LossOptions.field_names())})"
            )
        self.preset = preset
        self.advantage_options = AdvantageOptions.from_preset(
            preset, **{k: v for k, v in overrides.items() if k in advantage_names}
        )
        self.options = LossOptions.build(options, {k: v for k, v in overrides.items() if k not in advantage_names})
        self.temperature = check_call_scalars(temperature, backend, workspace_bytes)
        self.backend, self.workspace_bytes = backend, workspace_bytes

    def advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *, group_size: int | None = None
    ) -> torch.Tensor:
        """[B] float32 advantages of ``rewards`` [B] with this module's options (see group_advantages).

        They are computed by this module's backend, so with ``backend="triton"`` the rewards must
        be on the CUDA device (or Triton's interpreter must be on).
        """
        return group_advantages(
            rewards, group_ids, group_size=group_size, backend=self.backend, options=self.advantage_options
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
        """(loss, metrics) of ``fused_linear_asymgrpo_loss`` with this module's options."""
        return fused_linear_asymgrpo_loss(
            hidden, weight, targets, mask, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
            bias=bias, is_weights=is_weights, num_items=num_items, temperature=self.temperature,
            backend=self.backend, workspace_bytes=self.workspace_bytes, options=self.options,
        )

    def extra_repr(self) -> str:
        items = {"preset": self.preset, **vars(self.advantage_options), **vars(self.options),
                 "temperature": self.temperature, "backend": self.backend}
        return ", ".join(f"{k}={v!r}" for k, v in items.items())

