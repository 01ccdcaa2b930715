#!/usr/bin/env bash
# AsymGRPO in verl 0.9.1: verl's PPO trainer with asymgrpo's advantage estimator and policy loss,
# both registered under the name "asymgrpo" when verl is imported (docs/verl.md).
#
# This needs what every verl PPO run needs: CUDA GPUs, a vLLM rollout, and verl installed with its
# own dependencies (pip install "verl==0.9.1" asymgrpo). It cannot run on a CPU-only machine and
# has not been run here. What the repository checks on its CPU (tests/test_integration_verl.py):
# these overrides compose with verl's own config, and the estimator, the policy loss and the kernel
# switch give verl's results where they should.
#
# Data: parquet files in verl's RL dataset format (prompt, data_source, reward_model.ground_truth)
# for a task its default reward function scores, e.g. MATH. Extra overrides go after the script's
# name: bash examples/verl_asymgrpo.sh trainer.total_epochs=1
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
TRAIN_FILE=${TRAIN_FILE:-$HOME/data/math/train.parquet}
VAL_FILE=${VAL_FILE:-$HOME/data/math/test.parquet}
N_GPUS=${N_GPUS:-8}

# Optional: verl's fused log-prob / entropy path (use_fused_kernels=True below) computed by
# asymgrpo's fused_linear_logprob_entropy. Every process reads it when it imports verl; the Ray
# cluster that main_ppo starts inherits it. On a cluster started beforehand, pass it to the job
# instead: +ray_kwargs.ray_init.runtime_env.env_vars.ASYMGRPO_VERL_FUSED_KERNELS="'1'"
export ASYMGRPO_VERL_FUSED_KERNELS=${ASYMGRPO_VERL_FUSED_KERNELS:-1}

# algorithm.*: the asymgrpo estimator, with the paper's exponents (beta 0.5 / 0.5 is verl's GRPO).
# actor.*: the asymgrpo policy loss, with DAPO's clip-higher (0.2 / 0.28); verl's dual clip
#   clip_ratio_c (default 3) applies to A < 0 as in its vanilla loss.
# Neither a KL loss nor an entropy bonus (asymgrpo's own trainer has neither by default either).
python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=asymgrpo \
    +algorithm.beta_pos=0.9 \
    +algorithm.beta_neg=0.4 \
    algorithm.use_kl_in_reward=False \
    data.train_files="$TRAIN_FILE" \
    data.val_files="$VAL_FILE" \
    data.train_batch_size=128 \
    data.max_prompt_length=1024 \
    data.max_response_length=3072 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_fused_kernels=True \
    actor_rollout_ref.model.fused_kernel_options.impl_backend=torch \
    actor_rollout_ref.actor.policy_loss.loss_mode=asymgrpo \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.optim.lr=2e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    trainer.n_gpus_per_node="$N_GPUS" \
    trainer.nnodes=1 \
    trainer.logger='["console"]' \
    trainer.project_name=asymgrpo \
    trainer.experiment_name=asymgrpo-qwen25-math-1p5b \
    trainer.total_epochs=15 \
    "$@"
