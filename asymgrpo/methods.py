"""Named training methods: the one registry mapping a method name to ``TrainConfig`` keys.

A method is an advantage preset plus loss options: the objectives ``asymgrpo sweep`` compares
side by side (docs/research.md). Every method fixes the clip range itself, so that only what the
method changes differs between two methods; ``*_clip_higher`` are DAPO's clip-higher (0.28).

    method                 preset     what it changes
    grpo                   grpo       nothing: the baseline every paired difference is taken against
    asymgrpo               asymgrpo   beta_pos 0.9, beta_neg 0.4 (the paper's defaults)
    asymgrpo_clip_higher   asymgrpo   and clip_high 0.28 (the paper's best row)
    grpo_clip_higher       grpo       clip_high 0.28
    pos_only / neg_only    pos_only / neg_only  one channel modulated, the other constant
    reinforce              reinforce  +1 / -1 per channel
    grpo_entropy           grpo       entropy bonus 0.01
    clip_cov               grpo       Clip-Cov, 2% of the tokens (the paper's 2e-4 is for 10^5-token batches)
    kl_cov                 grpo       KL-Cov, 2% of the tokens, coefficient 1
    top_entropy            grpo       only the top 20% tokens by entropy train (80/20)
    gspo                   grpo       GSPO's sequence ratio, clip 3e-4 / 4e-4, seq-mean-token-mean
    cispo                  grpo       CISPO's clipped weight: no lower bound (clip_low 1), at most 5 (clip_high 4)
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

_SYMMETRIC = {"clip_low": 0.2, "clip_high": 0.2}
_HIGHER = {"clip_low": 0.2, "clip_high": 0.28}

METHODS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    name: MappingProxyType(keys) for name, keys in {
        "grpo": {"preset": "grpo", **_SYMMETRIC},
        "asymgrpo": {"preset": "asymgrpo", **_SYMMETRIC},
        "asymgrpo_clip_higher": {"preset": "asymgrpo", **_HIGHER},
        "grpo_clip_higher": {"preset": "grpo", **_HIGHER},
        "pos_only": {"preset": "pos_only", **_SYMMETRIC},
        "neg_only": {"preset": "neg_only", **_SYMMETRIC},
        "reinforce": {"preset": "reinforce", **_SYMMETRIC},
        "grpo_entropy": {"preset": "grpo", **_SYMMETRIC, "entropy_coef": 0.01},
        "clip_cov": {"preset": "grpo", **_SYMMETRIC, "policy_loss": "clip_cov", "clip_cov_ratio": 0.02},
        "kl_cov": {"preset": "grpo", **_SYMMETRIC, "policy_loss": "kl_cov", "kl_cov_ratio": 0.02, "kl_cov_coef": 1.0},
        "top_entropy": {"preset": "grpo", **_SYMMETRIC, "top_entropy_quantile": 0.2},
        "gspo": {"preset": "grpo", "clip_low": 3e-4, "clip_high": 4e-4, "policy_loss": "gspo",
                 "loss_agg": "seq-mean-token-mean"},
        "cispo": {"preset": "grpo", "clip_low": 1.0, "clip_high": 4.0, "policy_loss": "cispo"},
    }.items()
})

#: The methods of the committed sweep (benchmarks/results/research/), in report order.
SWEEP_METHODS = ("grpo", "asymgrpo", "pos_only", "neg_only", "reinforce", "grpo_entropy", "clip_cov", "kl_cov",
                 "top_entropy")


def method_keys(name: str) -> dict[str, Any]:
    """The ``TrainConfig`` keys of a method (a fresh dict); ValueError listing the methods when unknown."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return dict(METHODS[name])
