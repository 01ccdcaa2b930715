"""fused_linear_asymgrpo_loss and AsymGRPOLoss: last hidden states -> AsymGRPO loss, one call.

    hidden, lm_head weight --LM head on the scored rows--> logp, H   (float32 [n])
    logp, H, old/ref logp, advantages, weights --per-token loss--> loss, metrics

Only the n scored tokens (mask == 1) go through the LM head, forward and backward. The kernel
core never holds [tokens x vocab]; its backward receives only the [n] gradients d loss / d logp
and d loss / d H of the per-token loss. On the torch backend, when gradients are wanted, the
same math runs in one pass (``functions.SinglePassLoss``): every token's d loss / d logp and
d loss / d H are known as soon as its log-prob and entropy are, so each chunk's gradients are
formed while its logits are at hand, and backward only scales them (three LM-head matmuls
instead of four). With a ``process_group`` (a vocabulary-parallel LM head, ``vocab_parallel``)
the kernel core combines the ranks' shards and the loss runs in two passes on every backend:
the per-token gradients need the whole vocabulary's log-probs first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from .advantages import group_advantages
from .batch_statistics import batch_statistics
from .chunked import DEFAULT_WORKSPACE_BYTES
from .dispatch import get_backend
from .functions import PolicyLoss, SinglePassLoss
from .lm_head import autocast_operands, replicated_operands, scatter_rows, scored_head
from .options import AdvantageOptions, LossKeywords, LossOptions, Unpack
from .policy_loss import check_entropy_num_items, check_policy_batch, loss_metrics, policy_tokens
from .validate import ValueChecks, check_call_scalars, check_lm_head, check_num_items, check_targets, check_workspace
from .vocab_parallel import check_parallel_args, vocab_layout

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class TokenValues(NamedTuple):
    """Per-token values of a fused loss call (``return_token_values=True``): [B, T] float32 each,
    detached, 0 where mask == 0. logprobs: log p(target) under the current policy (the
    sampler's temperature applied); entropy: the full-vocabulary entropy."""

    logprobs: torch.Tensor
    entropy: torch.Tensor


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
    entropy_num_items: float | torch.Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    return_token_values: bool = False,
    process_group: ProcessGroup | None = None,
    vocab_start: int | None = None,
    options: LossOptions | None = None,
    **loss_options: Unpack[LossKeywords],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | tuple[torch.Tensor, dict[str, torch.Tensor], TokenValues]:
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
        entropy_num_items: as in ``asym_policy_loss`` (with ``entropy_agg`` set).
        temperature: positive, divides the logits (use the sampling temperature).
        backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch" or
            "reference" (materialized logits, for checks).
        workspace_bytes: scratch bound of the kernel core's passes.
        return_token_values: also return the per-token log-probs and entropies
            (``TokenValues``), e.g. to log them or to check them against a sampler's.
        process_group: a vocabulary-parallel LM head, as in ``fused_linear_logprob_entropy``:
            every rank passes the same arguments except its own weight (and bias) shard, and
            gets the same loss, metrics and hidden gradient, and its shard's weight gradient.
        vocab_start: with process_group, the global index of this rank's first vocabulary
            row (None: derived from the shard sizes).
        options: a ``LossOptions`` (default: ``LossOptions()``).
        **loss_options: its fields as keywords (clip_low, clip_high, dual_clip, kl_coef,
            kl_estimator, entropy_coef, loss_agg, max_len, entropy_agg), replacing those of
            ``options``.

    Returns:
        (loss, metrics), or (loss, metrics, TokenValues) with ``return_token_values``: the
        0-dim float32 loss, differentiable with respect to hidden, weight and bias; metrics as
        in ``asym_policy_loss``, entropy metrics included (``entropy``, ``entropy_pos``,
        ``entropy_neg``). Under ``torch.autocast``, hidden, weight and bias are cast to the
        autocast dtype (as a linear layer's would be) and all the rest is float32. A ``DTensor``
        weight / bias (FSDP2's sharded parameter) is gathered, its gradient averaged over its
        mesh as FSDP2 averages.

    Raises:
        TypeError: an argument of the wrong kind (named in the message), before any kernel runs.
        ValueError: an impossible value (named in the message), before any kernel runs; with
            process_group, on every rank when the ranks' layouts disagree.
    """
    options = LossOptions.build(options, loss_options)
    if process_group is not None and options.policy_loss == "clip_cov":
        raise ValueError("policy_loss='clip_cov' draws its tokens from torch's global CPU generator, which the ranks "
                         "of a process_group do not share: their losses would differ; use it without process_group")
    check_parallel_args(process_group, vocab_start, backend, weight)
    hidden, weight, bias = autocast_operands(hidden, weight, bias)
    weight, bias = replicated_operands(weight, bias)
    temperature = check_lm_head(hidden, weight, bias, temperature, vocab_shard=process_group is not None)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {list(hidden.shape)}")
    shape, device = tuple(hidden.shape[:2]), hidden.device
    check_targets(targets, hidden)
    valid, adv = check_policy_batch(shape, device, old_logprobs, advantages, mask, ref_logprobs, is_weights, True, options)
    num_items = check_num_items(num_items)
    entropy_num_items = check_entropy_num_items(entropy_num_items, options)
    check_workspace(workspace_bytes)
    if not isinstance(return_token_values, bool):
        raise TypeError(f"return_token_values must be a bool, got {type(return_token_values).__name__}")
    chosen = get_backend(backend, device)
    shard, vocab_size = vocab_layout(process_group, vocab_start, hidden, weight, targets, valid)
    checks = ValueChecks()
    checks.mask(mask)
    checks.targets(targets, valid, vocab_size, "where mask == 1")
    checks.num_items(num_items)
    checks.num_items(entropy_num_items, "entropy_num_items")
    (n_scored,) = checks.run(valid.sum())

    with torch.autocast(device.type, enabled=False):
        head = scored_head(hidden, weight, bias, targets, valid, int(n_scored), temperature, workspace_bytes)
        tokens = policy_tokens(
            valid, adv, old_logprobs, ref_logprobs, is_weights, options, num_items, entropy_num_items, torch.float32,
            rows=head.rows,
        )
        wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
        if chosen.single_pass_loss and wants_grad and shard is None and not options.needs_batch_statistics:
            selection = {}  # no batch statistic: batch_statistics would return the tokens as they are
            loss, logprobs, entropy, ratio, kl, clipped = SinglePassLoss.apply(
                head.hidden, head.weight, head.bias, head.rows, head.targets, head.temperature, head.workspace_bytes,
                tokens, chosen.kernels, chosen.token_terms,
            )
        else:
            logprobs, entropy = chosen.logprob_entropy(head, shard)
            tokens, selection = batch_statistics(tokens, logprobs, entropy)
            loss, ratio, kl, clipped = PolicyLoss.apply(logprobs, entropy, tokens, chosen.token_terms)
        metrics = {**loss_metrics(tokens, logprobs, ratio, kl, clipped, entropy), **selection}
        if not return_token_values:
            return loss, metrics
        values = TokenValues(scatter_rows(logprobs.detach(), head), scatter_rows(entropy.detach(), head))
        return loss, metrics, values


class AsymGRPOLoss(nn.Module):
    """The AsymGRPO objective as a module: holds the options, computes advantages and loss.

    ``preset`` (a name of ``asymgrpo_kernels.PRESETS``) sets beta_pos, beta_neg and normalize;
    keywords naming an ``AdvantageOptions`` field (beta_pos, beta_neg, normalize, std, eps,
    nan_rewards) override it, and keywords naming a ``LossOptions`` field (clip_low,
    clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef, loss_agg, max_len,
    entropy_agg) override ``options``. Every value is checked here, once.

        loss_fn = AsymGRPOLoss("asymgrpo", clip_high=0.28)
        adv = loss_fn.advantages(rewards, group_size=8)            # [B]
        loss, metrics = loss_fn(hidden, model.lm_head.weight, targets, mask, adv,
                                old_logprobs=old_logp)

    Attributes:
        advantage_options: the ``AdvantageOptions`` of ``advantages``.
        options: the ``LossOptions`` of ``forward``.
        temperature, backend, workspace_bytes: as in ``fused_linear_asymgrpo_loss``.
        process_group, vocab_start: the vocabulary-parallel layout ``forward`` uses unless it
            is given its own (as in ``fused_linear_asymgrpo_loss``; None: not parallel).
    """

    def __init__(
        self,
        preset: str = "asymgrpo",
        *,
        temperature: float = 1.0,
        backend: str = "auto",
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        process_group: ProcessGroup | None = None,
        vocab_start: int | None = None,
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
        self.process_group, self.vocab_start = process_group, vocab_start

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
        entropy_num_items: float | torch.Tensor | None = None,
        return_token_values: bool = False,
        process_group: ProcessGroup | None = None,
        vocab_start: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | tuple[torch.Tensor, dict[str, torch.Tensor], TokenValues]:
        """(loss, metrics) of ``fused_linear_asymgrpo_loss`` with this module's options
        ((loss, metrics, TokenValues) with ``return_token_values``). ``process_group`` and
        ``vocab_start`` replace the module's when ``process_group`` is given."""
        if process_group is None:
            process_group, vocab_start = self.process_group, (self.vocab_start if vocab_start is None else vocab_start)
        return fused_linear_asymgrpo_loss(
            hidden, weight, targets, mask, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
            bias=bias, is_weights=is_weights, num_items=num_items, entropy_num_items=entropy_num_items,
            temperature=self.temperature, backend=self.backend, workspace_bytes=self.workspace_bytes,
            return_token_values=return_token_values, process_group=process_group, vocab_start=vocab_start,
            options=self.options,
        )

    def extra_repr(self) -> str:
        items = {"preset": self.preset, **vars(self.advantage_options), **vars(self.options),
                 "temperature": self.temperature, "backend": self.backend}
        return ", ".join(f"{k}={v!r}" for k, v in items.items())

