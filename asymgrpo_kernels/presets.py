"""Named advantage presets: the one registry mapping a name to ``group_advantages`` keywords.

    name        beta_pos  beta_neg  normalize   what it is
    asymgrpo    0.9       0.4       "std"       AsymGRPO, the paper's defaults
    grpo        0.5       0.5       "std"       GRPO (population std, see group_advantages)
    reinforce   0         0         "std"       constant +1 / -1 per channel
    dr_grpo     0.5       0.5       "none"      Dr. GRPO's r - mean (pair it with
                                                loss_agg="seq-mean-token-sum-norm")
    pos_only    0.5       0         "std"       only the positive channel depends on accuracy
    neg_only    0         0.5       "std"       only the negative channel depends on accuracy
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "asymgrpo": MappingProxyType({"beta_pos": 0.9, "beta_neg": 0.4, "normalize": "std"}),
        "grpo": MappingProxyType({"beta_pos": 0.5, "beta_neg": 0.5, "normalize": "std"}),
        "reinforce": MappingProxyType({"beta_pos": 0.0, "beta_neg": 0.0, "normalize": "std"}),
        "dr_grpo": MappingProxyType({"beta_pos": 0.5, "beta_neg": 0.5, "normalize": "none"}),
        "pos_only": MappingProxyType({"beta_pos": 0.5, "beta_neg": 0.0, "normalize": "std"}),
        "neg_only": MappingProxyType({"beta_pos": 0.0, "beta_neg": 0.5, "normalize": "std"}),
    }
)


def preset_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments of ``group_advantages`` for a preset name (a fresh dict).

    Raises ValueError listing the valid names when ``name`` is unknown.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}; got {name!r}")
    return dict(PRESETS[name])
