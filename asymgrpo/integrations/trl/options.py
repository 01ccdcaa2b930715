"""GRPOConfig -> the kernels' options: the loss_type mapping, the advantage options, what raises.

Pure functions of a ``trl.GRPOConfig`` (and of the model's text config), so each mapping and each
refusal can be checked on its own. docs/trl.md has the tables.
"""

from __future__ import annotations

from typing import Any

import torch

from asymgrpo_kernels import STD_CONVENTIONS, AdvantageOptions, LossOptions, preset_kwargs

#: TRL's ``loss_type`` -> our ``loss_agg`` (docs/algorithm.md §3, §7); ``normalizers`` gives num_items.
LOSS_AGG = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
}
#: TRL's ``loss_type`` -> our ``policy_loss`` (with importance_sampling_level="sequence", "ppo" becomes "gspo").
POLICY_LOSS = {"grpo": "ppo", "bnpo": "ppo", "dr_grpo": "ppo", "dapo": "ppo", "cispo": "cispo"}
#: The loss types whose policy term TRL divides by ``num_items_in_batch`` (not per micro-batch).
BATCH_NORMALIZED = ("dapo", "cispo")
#: vLLM importance-sampling modes whose ratio is one weight per token ([B, T]); the others give [B, 1].
TOKEN_IS_MODES = ("token_truncate", "token_mask")
#: TRL's ``scale_rewards`` -> our ``normalize``.
NORMALIZE = {"group": "std", "none": "none"}
#: Text-config fields that soft-cap or rescale the logits after the LM head (the ones TRL's fused head reads).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def clip_high(args: Any) -> float:
    """TRL's upper clip: ``epsilon_high``, or ``epsilon`` when it is None."""
    return args.epsilon_high if args.epsilon_high is not None else args.epsilon


def unsupported_options(args: Any, *, num_processes: int | None = None) -> list[str]:
    """One message per ``GRPOConfig`` option the fused AsymGRPO loss cannot honour (empty: all fine).

    ``args`` is a ``trl.GRPOConfig`` after its ``__post_init__`` (``scale_rewards`` is a string);
    ``num_processes`` the number of training processes (None: ``args.world_size``).
    """
    num_processes = args.world_size if num_processes is None else num_processes
    problems = []
    cispo = args.loss_type == "cispo"
    sequence = args.importance_sampling_level == "sequence"
    if args.loss_type not in LOSS_AGG:
        problems.append(
            f"loss_type={args.loss_type!r}: supported are {', '.join(map(repr, LOSS_AGG))}; sapo, luspo and vespo "
            "have per-token losses of their own"
        )
    if args.importance_sampling_level not in ("token", "sequence"):
        problems.append(f"importance_sampling_level={args.importance_sampling_level!r}: 'token' or 'sequence'")
    if sequence and cispo:
        problems.append(
            "importance_sampling_level='sequence' with loss_type='cispo': CISPO's weight is the per-token ratio "
            "in the fused loss (policy_loss='cispo'); a clipped sequence ratio times log p has no policy_loss"
        )
    if cispo and clip_high(args) < 1.0:
        problems.append(
            f"loss_type='cispo' with epsilon_high={args.epsilon_high} (a cap of {clip_high(args)}; epsilon "
            "when unset): TRL caps CISPO's weight at epsilon_high itself, not at 1 + epsilon_high, and a cap "
            "below 1 has no form here (clip_high = epsilon_high - 1 must be >= 0); set epsilon_high >= 1 (the "
            "ScaleRL paper recommends 5.0)"
        )
    if args.delta is not None and not cispo and args.delta <= 1 + clip_high(args):
        problems.append(
            f"delta={args.delta}: two-sided clipping is honoured as the dual clip, which needs "
            f"delta > 1 + epsilon_high = {1 + clip_high(args)}"
        )
    if args.top_entropy_quantile < 1.0:
        if num_processes > 1:
            problems.append(
                f"top_entropy_quantile={args.top_entropy_quantile} with {num_processes} processes: TRL takes the "
                "entropy quantile over the tokens of every process, the fused loss over this process's micro-batch "
                "(it is supported with one process)"
            )
        if args.entropy_coef != 0.0:
            problems.append(
                f"top_entropy_quantile={args.top_entropy_quantile} with entropy_coef={args.entropy_coef}: TRL's "
                "entropy bonus averages over the high-entropy tokens only, the fused loss's over every scored token"
            )
        if sequence:
            problems.append(
                f"top_entropy_quantile={args.top_entropy_quantile} with importance_sampling_level='sequence': "
                "TRL masks the broadcast sequence loss per token, which spreads each kept token's gradient over "
                "the whole sequence; the fused GSPO form gives it to the kept tokens only"
            )
    if (sequence and args.use_vllm and args.vllm_importance_sampling_correction
            and args.vllm_importance_sampling_mode in TOKEN_IS_MODES):
        problems.append(
            f"importance_sampling_level='sequence' with vllm_importance_sampling_mode="
            f"{args.vllm_importance_sampling_mode!r}: per-token IS weights on a sequence ratio spread each token's "
            "weight over the whole sequence in TRL, not in the fused GSPO form; use a 'sequence_*' mode"
        )
    if args.off_policy_mask_threshold is not None:
        problems.append(
            f"off_policy_mask_threshold={args.off_policy_mask_threshold}: the off-policy sequence mask needs the "
            "current log-probs before the loss; the fused loss computes them inside itself"
        )
    if args.beta != 0.0 and args.use_bias_correction_kl:
        problems.append(
            "use_bias_correction_kl=True (the default) with beta != 0: the fused loss does not multiply the KL "
            "term by the importance ratio; set use_bias_correction_kl=False"
        )
    if args.use_adaptive_entropy:
        problems.append("use_adaptive_entropy=True: the entropy coefficient is fixed at construction")
    if args.scale_rewards not in NORMALIZE:
        problems.append(
            f"scale_rewards={args.scale_rewards!r}: advantages are normalized per group ('group') or not at all "
            "('none'); a batch-wide std has no per-group form"
        )
    if args.multi_objective_aggregation != "sum_then_normalize":
        problems.append(
            f"multi_objective_aggregation={args.multi_objective_aggregation!r}: the weighted sum of the rewards "
            "is what gets group advantages ('sum_then_normalize')"
        )
    return problems


def unsupported_model(text_config: Any, *, aux_loss_enabled: bool, deepspeed_zero3: bool,
                      multimodal: bool) -> list[str]:
    """One message per property of the model, its processor or its sharding the fused loss cannot honour."""
    problems = []
    for name in LOGIT_TRANSFORMS:
        value = getattr(text_config, name, None)
        if value is not None and value != 1.0:
            problems.append(
                f"{name}={value} in the model config: the fused loss uses the plain LM-head logits, without "
                "soft-capping or scaling"
            )
    if aux_loss_enabled:
        problems.append(
            "router_aux_loss_coef != 0 (a Mixture-of-Experts model with router logits): the load-balancing loss "
            "is not added; set router_aux_loss_coef=0.0"
        )
    if deepspeed_zero3:
        problems.append(
            "DeepSpeed ZeRO-3: the LM-head weight is partitioned outside its module's forward, and the fused "
            "loss reads it directly; use FSDP or ZeRO-1/2"
        )
    if multimodal:
        problems.append("a processor (vision-language model) as processing_class: only text models are supported")
    return problems


def raise_unsupported(problems: list[str]) -> None:
    """Raise one ValueError listing every problem, or return when there is none."""
    if problems:
        raise ValueError("AsymGRPOTrainer cannot honour " + "; ".join(problems) + " (see docs/trl.md)")


def loss_options(args: Any) -> LossOptions:
    """The ``LossOptions`` of a supported ``GRPOConfig``.

    ``epsilon`` / ``epsilon_high`` -> clip_low / clip_high, ``delta`` -> dual_clip, ``beta`` ->
    kl_coef (k3), ``entropy_coef`` with TRL's mean-entropy bonus (``entropy_agg="token-mean"``),
    ``loss_type`` -> ``loss_agg`` (dr_grpo: max_len = max_completion_length) and ``policy_loss``
    ("ppo"; "gspo" with importance_sampling_level="sequence"; "cispo": clip_low 1, no lower
    bound, and clip_high = epsilon_high - 1, TRL's cap of the weight at epsilon_high; delta does not
    enter TRL's CISPO loss, nor ours), ``top_entropy_quantile`` as it is.
    """
    loss_agg = LOSS_AGG[args.loss_type]
    policy_loss = POLICY_LOSS[args.loss_type]
    if policy_loss == "ppo" and args.importance_sampling_level == "sequence":
        policy_loss = "gspo"
    cispo = policy_loss == "cispo"
    return LossOptions(
        clip_low=1.0 if cispo else args.epsilon,
        clip_high=clip_high(args) - 1.0 if cispo else clip_high(args),
        dual_clip=None if cispo else args.delta,
        kl_coef=args.beta,
        kl_estimator="k3",
        entropy_coef=args.entropy_coef,
        loss_agg=loss_agg,
        max_len=args.max_completion_length if loss_agg == "seq-mean-token-sum-norm" else None,
        entropy_agg="token-mean",
        policy_loss=policy_loss,
        top_entropy_quantile=float(args.top_entropy_quantile),
    )


def advantage_options(preset: str, *, beta_pos: float | None, beta_neg: float | None, std_convention: str,
                      scale_rewards: str) -> AdvantageOptions:
    """The ``AdvantageOptions`` of a preset (betas overridable) under TRL's ``scale_rewards``.

    ``std_convention`` names an entry of ``STD_CONVENTIONS`` ("trl": Bessel std + 1e-4, TRL's own;
    "population": the closed forms of docs/algorithm.md §2; "verl"). Rewards that are NaN (every
    reward function returned None) are left out of their group (``nan_rewards="exclude"``).

    Raises:
        ValueError: an unknown ``std_convention`` or ``preset``, or a preset whose ``normalize``
            disagrees with ``scale_rewards`` (e.g. preset "dr_grpo" with scale_rewards="group").
    """
    if std_convention not in STD_CONVENTIONS:
        raise ValueError(f"std_convention must be one of {', '.join(map(repr, STD_CONVENTIONS))}; "
                         f"got {std_convention!r}")
    normalize = NORMALIZE[scale_rewards]
    preset_normalize = preset_kwargs(preset)["normalize"]
    if preset_normalize != normalize:
        raise ValueError(
            f"preset={preset!r} normalizes with {preset_normalize!r} but scale_rewards={scale_rewards!r} means "
            f"normalize={normalize!r}; set scale_rewards={_scale_rewards_for(preset_normalize)!r} or pick another "
            "preset"
        )
    return AdvantageOptions.from_preset(preset, beta_pos=beta_pos, beta_neg=beta_neg,
                                        **STD_CONVENTIONS[std_convention], nan_rewards="exclude")


def _scale_rewards_for(normalize: str) -> str:
    return next(name for name, value in NORMALIZE.items() if value == normalize)


def normalizers(loss_type: str, mask: torch.Tensor, *, accumulation: int, training: bool,
                num_items_in_batch: torch.Tensor, num_processes: int,
                steps_per_generation: int) -> tuple[float | torch.Tensor, torch.Tensor]:
    """(num_items, entropy_num_items) of one micro-batch, so that our loss equals TRL's (docs/trl.md).

    Args:
        loss_type: a key of ``LOSS_AGG``.
        mask: [B, T] 0/1, the scored completion tokens of this process's micro-batch.
        accumulation: gradient-accumulation steps of the optimizer step (1 in eval).
        training: train mode (dapo and cispo rescale the generation batch's count to one accumulation
            window).
        num_items_in_batch: 0-dim, TRL's count of scored tokens of the generation batch over all processes.
        num_processes: the number of processes whose gradients are averaged.
        steps_per_generation: TRL's ``steps_per_generation``.

    Returns:
        num_items: sequences (grpo, dr_grpo) or tokens (bnpo, dapo and cispo alike) that the policy
            term is averaged over; entropy_num_items: this micro-batch's tokens (at least 1) times
            ``accumulation``, TRL's mean-entropy bonus.
    """
    tokens = mask.sum().float().clamp(min=1.0)
    if loss_type in BATCH_NORMALIZED:
        num_items = num_items_in_batch.float().clamp(min=1.0) / num_processes
        if training:
            num_items = num_items * accumulation / steps_per_generation
    elif loss_type == "bnpo":
        num_items = tokens * accumulation
    else:
        num_items = float(mask.shape[0] * accumulation)
    return num_items, tokens * accumulation
