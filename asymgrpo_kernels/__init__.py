"""asymgrpo_kernels: fused, memory-lean kernels for AsymGRPO-style policy-gradient losses."""

from ._version import __version__
from .advantages import group_advantages, modulate_advantages
from .logprob_entropy import fused_linear_logprob_entropy
from .losses import AsymGRPOLoss, TokenValues, fused_linear_asymgrpo_loss
from .options import STD_CONVENTIONS, AdvantageOptions, LossOptions
from .policy_loss import asym_policy_loss, metric_values
from .presets import PRESETS, preset_kwargs

__all__ = [
    "fused_linear_logprob_entropy",
    "group_advantages",
    "modulate_advantages",
    "asym_policy_loss",
    "fused_linear_asymgrpo_loss",
    "AsymGRPOLoss",
    "TokenValues",
    "metric_values",
    "LossOptions",
    "AdvantageOptions",
    "STD_CONVENTIONS",
    "PRESETS",
    "preset_kwargs",
    "__version__",
]
