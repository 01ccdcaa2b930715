"""AsymGRPOTrainer: TRL's GRPOTrainer with AsymGRPO advantages and the fused loss."""

from __future__ import annotations

import functools
from collections import deque
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import ProcessorMixin
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import GRPOTrainer

from asymgrpo_kernels import TokenValues

from .advantages import completion_advantages, process_slice
from .forward import add_fused_loss_forward, completion_loss
from .metrics import clip_flags, global_metrics, local_vector
from .options import (
    BATCH_NORMALIZED,
    advantage_options,
    loss_options,
    normalizers,
    raise_unsupported,
    unsupported_model,
    unsupported_options,
)


class AsymGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with asymmetric group advantages and the fused AsymGRPO loss.

    Generation, rewards, reference / old log-probs, batching, logging and checkpoints are TRL's.
    Two things differ: the advantages are ``group_advantages`` of TRL's weighted rewards with
    this trainer's ``advantage_options`` (docs/algorithm.md §2), and ``compute_loss`` runs the
    backbone through ``model(...)`` and ``fused_linear_asymgrpo_loss`` on the completion
    positions: the LM head never runs in the training step and no [tokens x vocab] logits
    exist. With ``preset="grpo"`` and ``std_convention="trl"`` the loss, its gradients and the
    logged metrics are GRPOTrainer's. docs/trl.md maps every option.

    Args:
        model: the policy, as for ``GRPOTrainer`` (a model, or a path / hub name).
        reward_funcs: TRL reward functions (returning None marks an unscorable completion).
        args: a ``trl.GRPOConfig``; what it sets maps onto the loss as docs/trl.md says.
        train_dataset: as for ``GRPOTrainer``.
        *trainer_args: further positional arguments of ``GRPOTrainer``, passed on unchanged.
        preset: a name of ``asymgrpo_kernels.PRESETS`` ("asymgrpo": beta_pos 0.9, beta_neg 0.4;
            "grpo": 0.5 / 0.5, GRPOTrainer's advantages; ...).
        beta_pos: overrides the preset's positive-channel exponent (None keeps it).
        beta_neg: overrides the preset's negative-channel exponent (None keeps it).
        std_convention: a key of ``asymgrpo_kernels.STD_CONVENTIONS``: "trl" (default, Bessel
            std + 1e-4, TRL's), "population" (max(population std, 1e-6): the closed forms of
            docs/algorithm.md §2 hold exactly) or "verl". With asymmetric betas the choice changes
            the balance of the two channels (docs/algorithm.md §7).
        **trainer_kwargs: the other keyword arguments of ``GRPOTrainer`` (``eval_dataset``,
            ``processing_class``, ``peft_config``, ``callbacks``, ...), passed on unchanged.

    Attributes:
        advantage_options: the ``AdvantageOptions`` of the advantages.
        loss_options: the ``LossOptions`` of the loss (clip = epsilon / epsilon_high, kl_coef =
            beta, entropy_coef, loss_agg and policy_loss from loss_type and
            importance_sampling_level, top_entropy_quantile).

    Raises:
        ValueError: at construction, naming every option that cannot be honoured (docs/trl.md).
    """

    _tag_names = ["trl", "grpo", "asymgrpo"]
    _name = "AsymGRPO"

    def __init__(self, model: Any, reward_funcs: Any = None, args: Any = None, train_dataset: Any = None,
                 *trainer_args: Any, preset: str = "asymgrpo", beta_pos: float | None = None,
                 beta_neg: float | None = None, std_convention: str = "trl", **trainer_kwargs: Any) -> None:
        super().__init__(model, reward_funcs, args, train_dataset, *trainer_args, **trainer_kwargs)
        raise_unsupported(unsupported_options(self.args, num_processes=self.accelerator.num_processes)
                          + unsupported_model(self.model.config.get_text_config(),
                                              aux_loss_enabled=self.aux_loss_enabled,
                                              deepspeed_zero3=is_deepspeed_zero3_enabled(),
                                              multimodal=isinstance(self.processing_class, ProcessorMixin)))
        self.advantage_options = advantage_options(preset, beta_pos=beta_pos, beta_neg=beta_neg,
                                                   std_convention=std_convention,
                                                   scale_rewards=self.args.scale_rewards)
        self.loss_options = loss_options(self.args)
        self._gathered_rewards: torch.Tensor | None = None
        add_fused_loss_forward(self.model.get_base_model() if is_peft_model(self.model) else self.model,
                               cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)

    # ----- advantages -----

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's gathered [N, F] rewards per function, kept for this batch's advantages."""
        self._gathered_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._gathered_rewards

    def _generate_and_score_completions(self, inputs):
        """TRL's batch, with ``advantages`` (and the logged ones) replaced by the AsymGRPO advantages."""
        output = super()._generate_and_score_completions(inputs)
        rewards, self._gathered_rewards = self._gathered_rewards, None
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        gathered = completion_advantages(rewards, self.reward_weights, group_size=group_size,
                                         options=self.advantage_options)
        output["advantages"] = process_slice(gathered, self.accelerator.process_index, len(output["prompt_ids"]))
        _replace_newest(self._logs["advantages"], gathered.tolist())
        return output

    # ----- loss -----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The fused AsymGRPO loss of one micro-batch (TRL's aggregation for its loss_type); logs TRL's metrics."""
        if return_outputs:
            raise ValueError("AsymGRPOTrainer.compute_loss does not return outputs (return_outputs=True)")
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        num_items, entropy_num_items = normalizers(
            self.loss_type, mask, accumulation=accumulation, training=training,
            num_items_in_batch=inputs["num_items_in_batch"], num_processes=self.accelerator.num_processes,
            steps_per_generation=self.args.steps_per_generation,
        )
        head_loss = functools.partial(
            completion_loss, completion_ids=inputs["completion_ids"], mask=mask, advantages=inputs["advantages"],
            options=self.loss_options, old_logprobs=inputs.get("old_per_token_logps"),
            ref_logprobs=inputs.get("ref_per_token_logps"),
            is_weights=self._is_weights(inputs, mask), num_items=num_items, entropy_num_items=entropy_num_items,
            temperature=self.temperature,
        )
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with self.accelerator.autocast():
            loss, metrics, values = model(input_ids=input_ids, attention_mask=attention_mask, asymgrpo_loss=head_loss)
        self._log_loss_metrics(loss, metrics, values, inputs, mask, accumulation, entropy_num_items)
        return loss

    def _is_weights(self, inputs: dict, mask: torch.Tensor) -> torch.Tensor | None:
        """TRL's vLLM importance-sampling ratio as [B, T] weights (sequence modes give [B, 1]), or None."""
        if not (self.use_vllm and self.vllm_importance_sampling_correction):
            return None
        return inputs["importance_sampling_ratio"].expand(mask.shape)

    def _log_loss_metrics(self, loss: torch.Tensor, metrics: dict, values: TokenValues, inputs: dict,
                          mask: torch.Tensor, accumulation: int, entropy_num_items: torch.Tensor) -> None:
        """Append TRL's loss metrics (and entropy_pos / entropy_neg): one reduce, one host read."""
        mode = "train" if self.model.training else "eval"
        options = self.loss_options
        # TRL's flags: of the sequence ratio ([B, 1], counted per sequence) with importance_sampling_level
        # "sequence"; for cispo only the high one, of the weight's cap epsilon_high = 1 + clip_high
        sequence = options.policy_loss == "gspo"
        low, high = clip_flags(values.logprobs, inputs.get("old_per_token_logps"), inputs["advantages"], mask,
                               options.clip_low, options.clip_high, sequence=sequence)
        bonus = options.entropy_coef != 0.0
        # TRL's policy_loss: the loss without the entropy bonus, before the accumulation scaling (not dapo's)
        policy_loss = loss.detach() + options.entropy_coef * values.entropy.sum() / entropy_num_items
        if self.loss_type not in BATCH_NORMALIZED:
            policy_loss = policy_loss * accumulation
        vector = local_vector(metrics, values.entropy, low, high, mask, policy_loss,
                              num_processes=self.accelerator.num_processes,
                              process_index=self.accelerator.process_index,
                              clip_mask=torch.ones_like(low) if sequence else None)
        reduced = self.accelerator.reduce(vector, reduction="sum").tolist()
        logged = global_metrics(reduced, num_processes=self.accelerator.num_processes, kl=self.beta != 0.0,
                                policy_loss=bonus, cispo=options.policy_loss == "cispo")
        for name, value in logged.items():
            self._metrics[mode][name].append(value)
        if bonus and mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)


def _replace_newest(logged: deque, values: list[float]) -> None:
    """Replace the newest ``len(values)`` entries of a bounded deque (those just extended) with ``values``."""
    for _ in range(min(len(values), len(logged))):
        logged.pop()
    logged.extend(values)
