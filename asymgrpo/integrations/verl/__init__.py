"""AsymGRPO inside verl 0.9 through its plugin registries (docs/verl.md).

asymgrpo's ``verl.plugins`` entry point names this module, so a plain ``import verl`` (in the
driver and in every Ray worker) imports it, and it registers under the name ``asymgrpo``:

* the advantage estimator ``asymgrpo_advantage`` (``algorithm.adv_estimator=asymgrpo``), which
  reads these keys at the top level of verl's ``algorithm`` config (``+algorithm.beta_pos=0.9``):
  ``beta_pos`` (default 0.9), ``beta_neg`` (0.4), ``asymgrpo_std`` (a name of
  ``STD_CONVENTIONS``, default "verl": Bessel std + eps), ``asymgrpo_eps`` (default: the
  convention's, 1e-6) and verl's own ``norm_adv_by_std_in_grpo`` (False: Dr. GRPO's r - mean);
* the policy loss ``asymgrpo_policy_loss`` (``actor_rollout_ref.actor.policy_loss.loss_mode=asymgrpo``),
  which reads verl's ``clip_ratio`` / ``clip_ratio_low`` / ``clip_ratio_high``, ``clip_ratio_c``
  (the dual clip), ``loss_agg_mode`` and ``global_batch_info``, as its vanilla loss does.

``use_asymgrpo_fused_kernels()`` (or ``ASYMGRPO_VERL_FUSED_KERNELS=1`` in the environment, read
here at import) makes verl's fused log-prob / entropy path (``model.use_fused_kernels=True``)
run ``asymgrpo_kernels.fused_linear_logprob_entropy``.

Modules: ``config`` (reading verl's configs), ``estimator``, ``policy_loss``, ``kernels`` (the
switch), ``registry``.
"""

from .config import ALGORITHM_KEYS
from .estimator import asymgrpo_advantage
from .kernels import (
    FUSED_KERNELS_ENV,
    FusedLinearForPPO,
    asymgrpo_fused_kernels_enabled,
    linear_cross_entropy,
    switch_from_environment,
    use_asymgrpo_fused_kernels,
)
from .policy_loss import asymgrpo_policy_loss
from .registry import NAME, register

__all__ = [
    "NAME",
    "ALGORITHM_KEYS",
    "FUSED_KERNELS_ENV",
    "asymgrpo_advantage",
    "asymgrpo_policy_loss",
    "use_asymgrpo_fused_kernels",
    "asymgrpo_fused_kernels_enabled",
    "linear_cross_entropy",
    "FusedLinearForPPO",
    "register",
]

register()
switch_from_environment()
