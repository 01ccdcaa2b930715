"""asymgrpo_kernels: fused, memory-lean kernels for AsymGRPO-style policy-gradient losses."""

from ._version import __version__
from .advantages import group_advantages
from .logprob_entropy import fused_linear_logprob_entropy
from .losses import AsymGRPOLoss, fused_linear_asymgrpo_loss
from .options import AdvantageOptions, LossOptions
from .policy_loss import asym_policy_loss
from .presets import PRESETS, preset_kwargs

__all__ = [
    "fused_linear_logprob_entropy",
    "group_advantages",
    "asym_policy_loss",
    "fused_linear_asymgrpo_loss",
    "AsymGRPOLoss",
    "LossOptions",
    "AdvantageOptions",
    "PRESETS",
    "preset_kwargs",
    "__version__",
]
