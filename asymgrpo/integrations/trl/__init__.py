"""AsymGRPO for TRL: ``AsymGRPOTrainer``, a drop-in for ``trl.GRPOTrainer`` (pinned: TRL 1.16.0).

    from asymgrpo.integrations.trl import AsymGRPOTrainer
    trainer = AsymGRPOTrainer(model=model, reward_funcs=[reward], args=GRPOConfig(...),
                              train_dataset=dataset, preset="asymgrpo")
    trainer.train()

TRL generates, scores and batches; this trainer replaces the advantages by the AsymGRPO ones
(docs/algorithm.md §2) of TRL's weighted rewards, and the loss by ``fused_linear_asymgrpo_loss``
on the backbone's hidden states (the LM head never runs in the training step). The loss equals
TRL's for each supported ``loss_type`` (docs/algorithm.md §3, §7), with GA the gradient-
accumulation steps (1 in eval), B this process's micro-batch and W the number of processes:

    loss_type   loss_agg                   num_items
    grpo        seq-mean-token-mean        B * GA
    bnpo        token-mean                 max(micro-batch tokens, 1) * GA
    dr_grpo     seq-mean-token-sum-norm    B * GA, max_len = max_completion_length
    dapo        token-mean                 max(num_items_in_batch, 1) / W * GA / steps_per_generation
                                           (train; eval: max(num_items_in_batch, 1) / W)
    cispo       token-mean                 as dapo

policy_loss is "ppo", "gspo" with importance_sampling_level="sequence", "cispo" for loss_type
"cispo" (clip_low 1, clip_high = epsilon_high - 1: TRL caps CISPO's weight at epsilon_high);
top_entropy_quantile is TRL's (one process only).
clip_low / clip_high = epsilon / epsilon_high, dual_clip = delta, kl_coef = beta (k3, reference
log-probs from TRL), is_weights = TRL's vLLM importance-sampling ratio when TRL applies it, and
the entropy bonus is TRL's: entropy_coef times the micro-batch's mean entropy, divided by GA
(``entropy_agg="token-mean"``). Options the fused loss cannot honour raise at construction.
"""

from .trainer import AsymGRPOTrainer

__all__ = ["AsymGRPOTrainer"]
