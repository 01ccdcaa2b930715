"""The objective's options: one frozen object each for the loss and the advantages, validated once.

``LossOptions`` holds every scalar option of the clipped AsymGRPO policy loss; ``asym_policy_loss``,
``fused_linear_asymgrpo_loss`` and ``AsymGRPOLoss`` accept it whole (``options=``) or build it from
their keyword arguments (``clip_high=0.28``, ...), which then override the object's fields.
``AdvantageOptions`` holds the keywords of ``group_advantages`` and merges a preset with explicit
overrides. Both check every value where they are built, so an impossible value never reaches a
kernel, and everything downstream can trust them.

Formulas: docs/algorithm.md §2 (advantages) and §3 (policy loss and aggregation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, TypedDict

try:  # Python >= 3.11
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

from .presets import preset_kwargs

__all__ = ["LossOptions", "AdvantageOptions", "LossKeywords", "AdvantageKeywords", "STD_CONVENTIONS", "Unpack"]

IGNORE_INDEX = -100
BACKENDS = ("auto", "triton", "torch", "reference")
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
NORMALIZE_MODES = ("std", "none")
STD_MODES = ("population", "unbiased")
NAN_REWARD_POLICIES = ("raise", "exclude")
#: The policy-gradient surrogates of ``LossOptions.policy_loss`` (docs/algorithm.md §8).
POLICY_LOSSES = ("ppo", "gspo", "cispo", "clip_cov", "kl_cov")
#: |log-ratio| and |k3 exponent| limit (docs/algorithm.md §3): exp(20) ~ 4.9e8 keeps float32 finite.
LOG_RATIO_LIMIT = 20.0


def _real(value: Any, name: str, condition: str, accept) -> float:
    """``value`` as a float; raise unless it is a finite Python number for which ``accept`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or not accept(value):
        raise ValueError(f"{name} must be a finite number{condition}, got {value}")
    return float(value)


def _number(value: Any, name: str) -> float:
    return _real(value, name, "", lambda v: True)


def nonnegative(value: Any, name: str) -> float:
    """``value`` as a float; raise unless it is a finite number >= 0."""
    return _real(value, name, " >= 0", lambda v: v >= 0)


def positive(value: Any, name: str) -> float:
    """``value`` as a float; raise unless it is a finite number > 0."""
    return _real(value, name, " > 0", lambda v: v > 0)


def choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """``value`` unchanged; raise unless it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def positive_int(value: Any, name: str) -> int:
    """``value`` unchanged; raise unless it is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value}")
    return value


class _Validated:
    """Frozen-dataclass mixin: ``_checked`` normalizes every field in ``__post_init__``."""

    def __post_init__(self) -> None:
        for name, value in self._checked().items():
            object.__setattr__(self, name, value)

    def _checked(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def build(cls, options: Any, overrides: Mapping[str, Any]) -> Any:
        """``options`` (default: ``cls()``) with the fields named in ``overrides`` replaced.

        Raises TypeError naming an unknown keyword, and the field checks' errors.
        """
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"the {cls.__name__} fields are {', '.join(cls.field_names())}"
            )
        base = options if options is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class LossOptions(_Validated):
    """Options of the clipped AsymGRPO policy loss (docs/algorithm.md §3).

    Attributes:
        clip_low: in [0, 1); the ratio's lower clip is 1 - clip_low (with policy_loss "cispo"
            also 1: no lower bound, CISPO's usual choice).
        clip_high: non-negative; the ratio's upper clip is 1 + clip_high (clip_high > clip_low is
            DAPO's clip-higher).
        dual_clip: None, or c > 1: for A < 0 the token loss is capped at -A * c.
        kl_coef: non-negative weight of the KL term to the reference policy (needs
            ref_logprobs when != 0).
        kl_estimator: "k1", "k2" or "k3" of d = ref_logp - logp (k1 = -d, k2 = d^2 / 2,
            k3 = exp(d) - d - 1).
        entropy_coef: the token loss gets -entropy_coef * H (needs the entropy when != 0): a
            bonus when positive, a penalty when negative.
        loss_agg: "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum" or
            "seq-mean-token-sum-norm" (sum / (B * max_len), Dr. GRPO).
        max_len: Dr. GRPO's constant for "seq-mean-token-sum-norm" (None: the batch's T);
            only valid when loss_agg or entropy_agg is that mode.
        entropy_agg: None (default) aggregates the entropy term -entropy_coef * H with the
            policy term's weights (verl's convention); a ``loss_agg`` mode aggregates it on its
            own, over its own count ``entropy_num_items`` ("token-mean": TRL's mean entropy of
            the scored tokens). docs/algorithm.md §3.
        policy_loss: the policy-gradient surrogate (docs/algorithm.md §8): "ppo" (the clipped
            ratio above), "gspo" (GSPO's sequence-level ratio), "cispo" (CISPO's clipped,
            stop-gradient importance weight times log p), "clip_cov" (Clip-Cov: PPO with the
            gradient of a random clip_cov_ratio share of the tokens whose covariance of
            log p and advantage lies in (clip_cov_lb, clip_cov_ub) cut) or "kl_cov" (KL-Cov:
            the unclipped surrogate plus kl_cov_coef * |log r| on the kl_cov_ratio share of
            tokens of largest covariance).
        top_entropy_quantile: in (0, 1]; below 1, only the policy term of the tokens whose
            entropy is at or above the batch's (1 - top_entropy_quantile) quantile is trained
            (TRL's top_entropy_quantile, "80/20" high-entropy tokens); needs the entropy.
        clip_cov_ratio, clip_cov_lb, clip_cov_ub: Clip-Cov's share of tokens and its
            covariance window (verl's defaults 2e-4, 1, 5).
        kl_cov_ratio, kl_cov_coef: KL-Cov's share of tokens and its penalty weight (verl's
            defaults 2e-4 and 1).

    Raises:
        TypeError: a field of the wrong kind (named in the message).
        ValueError: an impossible value (named in the message).
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    max_len: int | None = None
    entropy_agg: str | None = None
    policy_loss: str = "ppo"
    top_entropy_quantile: float = 1.0
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    kl_cov_coef: float = 1.0

    @property
    def needs_batch_statistics(self) -> bool:
        """Whether the per-token loss depends on the whole batch's log-probs or entropies
        (GSPO's sequence ratios, the covariance selections, the entropy quantile): then the
        fused loss cannot form gradients chunk by chunk and runs its two passes."""
        return self.policy_loss in ("gspo", "clip_cov", "kl_cov") or self.top_entropy_quantile < 1.0

    def _checked(self) -> dict[str, Any]:
        clip_low = nonnegative(self.clip_low, "clip_low")
        if clip_low > 1 or (clip_low == 1 and self.policy_loss != "cispo"):
            raise ValueError(
                f"clip_low must be < 1 (the ratio is clipped to [1 - clip_low, 1 + clip_high]; 1, no lower bound, "
                f"only with policy_loss='cispo'), got {clip_low}"
            )
        dual_clip = self.dual_clip
        if dual_clip is not None:
            dual_clip = _number(dual_clip, "dual_clip")
            if dual_clip <= 1:
                raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
        loss_agg = choice(self.loss_agg, "loss_agg", LOSS_AGG_MODES)
        entropy_agg = self.entropy_agg
        if entropy_agg is not None:
            choice(entropy_agg, "entropy_agg", LOSS_AGG_MODES)
        if self.max_len is not None:
            positive_int(self.max_len, "max_len")
            if "seq-mean-token-sum-norm" not in (loss_agg, entropy_agg):
                raise ValueError(
                    f"max_len applies only to loss_agg='seq-mean-token-sum-norm' (or that entropy_agg), "
                    f"got loss_agg={loss_agg!r}"
                )
        policy_loss = choice(self.policy_loss, "policy_loss", POLICY_LOSSES)
        if dual_clip is not None and policy_loss in ("cispo", "kl_cov"):
            raise ValueError(f"dual_clip applies to the clipped surrogates (policy_loss 'ppo', 'gspo', 'clip_cov'), "
                             f"not to policy_loss={policy_loss!r}")
        quantile = positive(self.top_entropy_quantile, "top_entropy_quantile")
        if quantile > 1:
            raise ValueError(f"top_entropy_quantile must be in (0, 1] (1 trains every token), got {quantile}")
        clip_cov_lb = _number(self.clip_cov_lb, "clip_cov_lb")
        clip_cov_ub = _number(self.clip_cov_ub, "clip_cov_ub")
        if clip_cov_ub <= clip_cov_lb:
            raise ValueError(f"clip_cov_ub must be > clip_cov_lb, got clip_cov_lb={clip_cov_lb}, clip_cov_ub={clip_cov_ub}")
        shares = {}
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            shares[name] = positive(getattr(self, name), name)
            if shares[name] > 1:
                raise ValueError(f"{name} must be in (0, 1] (a share of the scored tokens), got {shares[name]}")
        return {
            "policy_loss": policy_loss,
            "top_entropy_quantile": quantile,
            "clip_cov_lb": clip_cov_lb,
            "clip_cov_ub": clip_cov_ub,
            **shares,
            "kl_cov_coef": nonnegative(self.kl_cov_coef, "kl_cov_coef"),
            "clip_low": clip_low,
            "clip_high": nonnegative(self.clip_high, "clip_high"),
            "dual_clip": dual_clip,
            "kl_coef": nonnegative(self.kl_coef, "kl_coef"),
            "kl_estimator": choice(self.kl_estimator, "kl_estimator", KL_ESTIMATORS),
            "entropy_coef": _number(self.entropy_coef, "entropy_coef"),
            "loss_agg": loss_agg,
        }


class LossKeywords(TypedDict, total=False):
    """The fields of ``LossOptions`` as keyword arguments (for type checkers and IDEs)."""

    clip_low: float
    clip_high: float
    dual_clip: float | None
    kl_coef: float
    kl_estimator: str
    entropy_coef: float
    loss_agg: str
    max_len: int | None
    entropy_agg: str | None
    policy_loss: str
    top_entropy_quantile: float
    clip_cov_ratio: float
    clip_cov_lb: float
    clip_cov_ub: float
    kl_cov_ratio: float
    kl_cov_coef: float


@dataclass(frozen=True)
class AdvantageOptions(_Validated):
    """Keywords of ``group_advantages`` (docs/algorithm.md §2).

    Attributes:
        beta_pos: non-negative exponent of the positive channel (0.5 is GRPO's, 0 gives +1).
        beta_neg: non-negative exponent of the negative channel (0.5 is GRPO's, 0 gives -1).
        normalize: "std" (divide by the group's std) or "none" (only subtract the mean).
        std: the std convention: "population" for max(population std, eps) (the closed forms of
            docs/algorithm.md §2 hold exactly), "unbiased" for Bessel std + eps (TRL's and
            verl's; see ``STD_CONVENTIONS``). With asymmetric betas the choice changes the
            balance of the two channels, not only the scale (docs/algorithm.md §7).
        eps: non-negative; how it enters depends on std.
        nan_rewards: "raise" (a NaN reward is an error naming its group) or "exclude" (NaN
            rewards, e.g. a reward function that returned None, are left out of their group's
            statistics and get advantage 0). Infinite rewards always raise.
    """

    beta_pos: float = 0.9
    beta_neg: float = 0.4
    normalize: str = "std"
    std: str = "population"
    eps: float = 1e-6
    nan_rewards: str = "raise"

    def _checked(self) -> dict[str, Any]:
        return {
            "beta_pos": nonnegative(self.beta_pos, "beta_pos"),
            "beta_neg": nonnegative(self.beta_neg, "beta_neg"),
            "normalize": choice(self.normalize, "normalize", NORMALIZE_MODES),
            "std": choice(self.std, "std", STD_MODES),
            "eps": nonnegative(self.eps, "eps"),
            "nan_rewards": choice(self.nan_rewards, "nan_rewards", NAN_REWARD_POLICIES),
        }

    @classmethod
    def from_preset(cls, preset: str = "asymgrpo", **overrides: Any) -> "AdvantageOptions":
        """A preset's beta_pos / beta_neg / normalize (``presets.PRESETS``) with ``overrides`` on top.

        An override of None keeps the preset's value. Raises ValueError listing the presets when
        ``preset`` is unknown, and TypeError naming an unknown keyword.
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        return cls.build(None, {**preset_kwargs(preset), **values})


class AdvantageKeywords(TypedDict, total=False):
    """The fields of ``AdvantageOptions`` as keyword arguments (for type checkers and IDEs)."""

    beta_pos: float
    beta_neg: float
    normalize: str
    std: str
    eps: float
    nan_rewards: str


#: The std conventions of the trainers users come from, as ``AdvantageOptions`` fields:
#: ``AdvantageOptions.from_preset("grpo", **STD_CONVENTIONS["trl"])`` is TRL's GRPO advantage.
#: "population" is this package's default; TRL's GRPOTrainer divides by the Bessel std + 1e-4,
#: verl's GRPO estimator by the Bessel std + 1e-6 (docs/algorithm.md §7).
STD_CONVENTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "population": MappingProxyType({"std": "population", "eps": 1e-6}),
        "trl": MappingProxyType({"std": "unbiased", "eps": 1e-4}),
        "verl": MappingProxyType({"std": "unbiased", "eps": 1e-6}),
    }
)
