"""asymgrpo.integrations.verl: the plugin in verl 0.9's registries, checked against verl's own code.

The estimator against ``compute_grpo_outcome_advantage`` and the closed forms under verl's std
convention; the policy loss against ``compute_policy_loss_vanilla`` (value, gradient, metrics) for
every aggregation mode and global_batch_info, called directly and through verl's ``ppo_loss``; the
estimator through ``ray_trainer.compute_advantage``; the entry point in a fresh process; config
errors; the kernel switch against verl's ``FusedLinearForPPO`` and its model forward.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import math
import os
import re
import shlex
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import verl
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo import core_algos
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig, PolicyLossConfig
from verl.workers.utils.losses import ppo_loss

import asymgrpo.integrations.verl as plugin
from asymgrpo.integrations.verl import estimator as estimator_module
from asymgrpo.integrations.verl import kernels as kernels_module
from asymgrpo.integrations.verl import registry as registry_module

ROOT = Path(__file__).resolve().parent.parent
VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"
VERL_ALGORITHM = OmegaConf.load(VERL_CONFIG_DIR / "_generated_ppo_trainer.yaml").algorithm
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def algorithm(**keys) -> DictConfig:
    """verl's default ``algorithm`` DictConfig with ``keys`` added, as ``+algorithm.<key>=...`` would."""
    config = OmegaConf.create(OmegaConf.to_container(VERL_ALGORITHM))
    OmegaConf.set_struct(config, False)
    for key, value in keys.items():
        config[key] = value
    return config


# ---------------------------------------------------------------- registration and the entry point

FRESH_PROCESS = """
import importlib, sys
import verl
from verl.trainer.ppo import core_algos
import verl.utils.kernel.linear_cross_entropy as lce
import verl.utils.experimental.torch_functional as tf
plugin = sys.modules.get("asymgrpo.integrations.verl")
if plugin is None:  # verl hid the plugin's import error: importing it again shows that error
    importlib.import_module("asymgrpo.integrations.verl")
    raise AssertionError("import verl did not load the asymgrpo plugin")
assert core_algos.ADV_ESTIMATOR_REGISTRY["asymgrpo"] is plugin.asymgrpo_advantage
assert core_algos.POLICY_LOSS_REGISTRY["asymgrpo"] is plugin.asymgrpo_policy_loss
assert lce.linear_cross_entropy is plugin.linear_cross_entropy and tf.FusedLinearForPPO is plugin.FusedLinearForPPO
print("ok")
"""


def test_import_verl_registers_both_and_reads_the_switch_in_a_fresh_process() -> None:
    """A plain ``import verl`` loads the plugin (verl hides its import errors) and honours the env switch."""
    env = {**os.environ, plugin.FUSED_KERNELS_ENV: "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_entry_point_loads_this_module() -> None:
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="verl.plugins") if ep.name == "asymgrpo"]
    assert entry.value == "asymgrpo.integrations.verl"
    assert entry.load() is importlib.import_module("asymgrpo.integrations.verl") is plugin


def test_registration_is_idempotent_and_refuses_a_foreign_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "asymgrpo", plugin.asymgrpo_advantage)
    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "asymgrpo", plugin.asymgrpo_policy_loss)
    plugin.register()
    importlib.reload(plugin)  # importing again runs register() again
    reloaded = importlib.reload(estimator_module).asymgrpo_advantage  # a new function object, same name
    importlib.reload(registry_module).register()
    assert core_algos.ADV_ESTIMATOR_REGISTRY["asymgrpo"] is reloaded
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "asymgrpo", lambda **kw: None)
    with pytest.raises(RuntimeError, match="already holds 'asymgrpo'"):
        registry_module.register()


# ---------------------------------------------------------------- the advantage estimator

GROUP_SIZES = [2, 3, 5, 8, 4]


def make_groups(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
    """(token_level_rewards [B, T], response_mask [B, T], uid strings shuffled, rewards [B]).

    The reward sits on the last response token, responses have different lengths; 0/1 rewards
    include an all-wrong group.
    """
    gen = torch.Generator().manual_seed(seed)
    uids = np.array([f"prompt-{g}" for g, size in enumerate(GROUP_SIZES) for _ in range(size)], dtype=object)
    batch, seq_len = len(uids), 6
    if kind == "binary":
        rewards = (torch.rand(batch, generator=gen) > 0.5).float()
        rewards[torch.from_numpy(uids == "prompt-0")] = torch.tensor([1.0, 0.0])
        rewards[torch.from_numpy(uids == "prompt-4")] = 0.0
    else:
        rewards = torch.randn(batch, generator=gen) * 2 + 0.5
    order = torch.randperm(batch, generator=gen)
    uids, rewards = uids[order.numpy()], rewards[order]
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    token_rewards = torch.zeros(batch, seq_len)
    token_rewards[torch.arange(batch), lengths - 1] = rewards
    return token_rewards, mask, uids, rewards


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("by_std", [True, False])
def test_estimator_at_half_half_is_verl_grpo(kind: str, by_std: bool) -> None:
    token_rewards, mask, uids, _ = make_groups(kind)
    ours, returns = plugin.asymgrpo_advantage(
        token_level_rewards=token_rewards,
        response_mask=mask,
        index=uids,
        config=algorithm(beta_pos=0.5, beta_neg=0.5, norm_adv_by_std_in_grpo=by_std),
    )
    theirs, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, uids, norm_adv_by_std_in_grpo=by_std)
    assert ours.dtype == torch.float32 and ours.shape == mask.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert returns is ours


def closed_form(rewards: np.ndarray, uids: np.ndarray, beta_pos: float, beta_neg: float, by_std: bool) -> np.ndarray:
    """AsymGRPO advantages in float64 under verl's std convention: z = (r - mean) / (Bessel std + 1e-6)."""
    out = np.zeros_like(rewards)
    for uid in set(uids.tolist()):
        at = uids == uid
        r = rewards[at]
        z = r - r.mean()
        if by_std:
            z = z / (r.std(ddof=1) + 1e-6)
        out[at] = np.where(z > 0, np.abs(z) ** (2 * beta_pos), -(np.abs(z) ** (2 * beta_neg)))
        out[at] = np.where(np.abs(z) < 1e-12, 0.0, out[at])
    return out


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("by_std", [True, False])
def test_estimator_at_paper_betas_is_the_closed_form(kind: str, by_std: bool) -> None:
    token_rewards, mask, uids, rewards = make_groups(kind, seed=1)
    ours, _ = plugin.asymgrpo_advantage(token_rewards, mask, uids, algorithm(norm_adv_by_std_in_grpo=by_std))
    expected = closed_form(rewards.double().numpy(), uids, 0.9, 0.4, by_std)
    torch.testing.assert_close(ours, torch.from_numpy(expected).float()[:, None] * mask, rtol=2e-5, atol=1e-6)


def test_binary_rewards_carry_sqrt_of_g_minus_one_over_g() -> None:
    """One correct of G = 4: z+ = sqrt((1-p)/p) * sqrt((G-1)/G) (Bessel std), docs/algorithm.md §2, §7."""
    rewards = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    ours, _ = plugin.asymgrpo_advantage(rewards, torch.ones(4, 1), np.array(["u"] * 4, dtype=object), algorithm())
    p, g = 0.25, 4
    z_pos, z_neg = math.sqrt((1 - p) / p) * math.sqrt((g - 1) / g), math.sqrt(p / (1 - p)) * math.sqrt((g - 1) / g)
    expected = torch.tensor([z_pos**1.8, -(z_neg**0.8), -(z_neg**0.8), -(z_neg**0.8)])
    torch.testing.assert_close(ours[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert ours[0, 0] / -ours[1, 0] == pytest.approx(3.61, abs=0.01)  # 4.17 with the population std
    population_std = algorithm(asymgrpo_std="population")
    population, _ = plugin.asymgrpo_advantage(rewards, torch.ones(4, 1), ["u"] * 4, population_std)
    assert population[0, 0] / -population[1, 0] == pytest.approx(4.17, abs=0.01)


def test_group_of_one_gets_zero_where_verl_grpo_keeps_the_reward() -> None:
    rewards = torch.tensor([[0.7], [1.0], [0.0]])
    uids = np.array(["alone", "pair", "pair"], dtype=object)
    ours, _ = plugin.asymgrpo_advantage(rewards, torch.ones(3, 1), uids, algorithm(beta_pos=0.5, beta_neg=0.5))
    theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards, torch.ones(3, 1), uids)
    assert ours[0, 0] == 0 and theirs[0, 0] == pytest.approx(0.7 / (1 + 1e-6))
    torch.testing.assert_close(ours[1:], theirs[1:])


def test_estimator_through_compute_advantage() -> None:
    """verl's ``compute_advantage`` with a DataProto, as its trainer calls a registered estimator."""
    from verl.trainer.ppo.ray_trainer import compute_advantage  # needs torchdata

    token_rewards, mask, uids, _ = make_groups("binary")
    for keys, reference in (({"beta_pos": 0.9, "beta_neg": 0.4}, None), ({"beta_pos": 0.5, "beta_neg": 0.5}, "grpo")):
        data = verl.DataProto.from_dict(
            tensors={"token_level_rewards": token_rewards, "response_mask": mask}, non_tensors={"uid": uids}
        )
        config = algorithm(adv_estimator="asymgrpo", **keys)
        out = compute_advantage(data, adv_estimator=config.adv_estimator, config=config)
        direct, _ = plugin.asymgrpo_advantage(token_rewards, mask, uids, config)
        torch.testing.assert_close(out.batch["advantages"], direct)
        torch.testing.assert_close(out.batch["returns"], direct)
        if reference is not None:
            data = verl.DataProto.from_dict(
                tensors={"token_level_rewards": token_rewards, "response_mask": mask}, non_tensors={"uid": uids}
            )
            grpo = compute_advantage(data, adv_estimator=reference, config=config)
            torch.testing.assert_close(out.batch["advantages"], grpo.batch["advantages"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("keys", "error", "named"),
    [
        ({"beta_pos": -0.1}, ValueError, "algorithm.beta_pos"),
        ({"beta_neg": "high"}, TypeError, "algorithm.beta_neg"),
        ({"beta_pos": None}, TypeError, "algorithm.beta_pos"),
        ({"asymgrpo_eps": -1.0}, ValueError, "algorithm.asymgrpo_eps"),
        ({"asymgrpo_std": "bessel"}, ValueError, "algorithm.asymgrpo_std"),
        ({"norm_adv_by_std_in_grpo": "yes"}, TypeError, "algorithm.norm_adv_by_std_in_grpo"),
        ({"beta_poss": 0.9}, ValueError, r"algorithm.beta_poss .*beta_pos, beta_neg, asymgrpo_eps, asymgrpo_std"),
        ({"betaneg": 0.4}, ValueError, "algorithm.betaneg"),
        ({"asymgrpo_stdd": "trl"}, ValueError, "algorithm.asymgrpo_stdd"),
    ],
)
def test_bad_algorithm_key_or_value_names_the_key(keys: dict, error: type, named: str) -> None:
    token_rewards, mask, uids, _ = make_groups("binary")
    with pytest.raises(error, match=named):
        plugin.asymgrpo_advantage(token_rewards, mask, uids, algorithm(**keys))


def test_other_keys_are_left_alone_and_uids_may_be_any_labels() -> None:
    token_rewards, mask, uids, _ = make_groups("continuous")
    expected, _ = plugin.asymgrpo_advantage(token_rewards, mask, uids, None)  # defaults 0.9 / 0.4, verl's std
    config = algorithm(another_plugin_coef=1.0, beta_pos=0.9, beta_neg=0.4, asymgrpo_std="verl", asymgrpo_eps=1e-6)
    as_ints = np.array([int(u.split("-")[1]) for u in uids])
    ours, _ = plugin.asymgrpo_advantage(token_rewards, mask.bool(), as_ints, config)
    torch.testing.assert_close(ours, expected)
    with pytest.raises(ValueError, match="index"):
        plugin.asymgrpo_advantage(token_rewards, mask, None, config)
    with pytest.raises(ValueError, match="index"):
        plugin.asymgrpo_advantage(token_rewards, mask, uids[:-1], config)


# ---------------------------------------------------------------- the policy loss


def make_policy_batch(mask_kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """[B, T] data with an empty sequence, ratios past both clips, both dual clips (3, 10) and +-20."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq_len = 6, 7
    old = -torch.rand(batch, seq_len, generator=gen) * 3
    mask = torch.rand(batch, seq_len, generator=gen) > 0.25
    mask[2] = False
    mask[0, 0] = mask[1, 3] = True
    adv = torch.randn(batch, 1, generator=gen) * mask
    log_prob = old + torch.randn(batch, seq_len, generator=gen) * 1.2
    log_prob[1, 3] = old[1, 3] + 25.0  # a log-ratio beyond verl's clamp of +-20
    return {
        "old_log_prob": old,
        "log_prob": log_prob,
        "advantages": adv,
        "response_mask": mask if mask_kind == "bool" else mask.float(),
        "rollout_is_weights": 0.5 + torch.rand(batch, seq_len, generator=gen),
    }


def actor_config(loss_mode: str, loss_agg_mode: str, clip: str, clip_ratio_c: float, loss_scale_factor=None):
    """A real ``ActorConfig``: symmetric clip through clip_ratio alone, or clip-higher 0.2 / 0.28."""
    clips = {"symmetric": dict(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None),
             "higher": dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28)}[clip]
    return ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, loss_agg_mode=loss_agg_mode,
        clip_ratio_c=clip_ratio_c, loss_scale_factor=loss_scale_factor,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode), **clips,
    )  # fmt: skip


#: global_batch_info variants: absent (a direct call), local (as ppo_loss fills it without global
#: counts), the global counts of 3 micro-batches on one rank, and of 2 ranks.
BATCH_INFO = {
    "absent": lambda tokens, seqs: {},
    "local": lambda tokens, seqs: dict(dp_size=1, batch_num_tokens=None, global_batch_size=None,
                                       loss_scale_factor=None),
    "global-dp1": lambda tokens, seqs: dict(dp_size=1, batch_num_tokens=3 * tokens, global_batch_size=3 * seqs,
                                            loss_scale_factor=16),
    "global-dp2": lambda tokens, seqs: dict(dp_size=2, batch_num_tokens=5 * tokens, global_batch_size=4 * seqs,
                                            loss_scale_factor=None),
}  # fmt: skip
VERL_METRICS = ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower")


def call_loss(
    loss_mode: str, config: ActorConfig, data: dict, weights: bool
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The registered loss called with ppo_loss's keywords: (loss, d loss / d log_prob, metrics)."""
    log_prob = data["log_prob"].clone().requires_grad_()
    loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
        old_log_prob=data["old_log_prob"],
        log_prob=log_prob,
        advantages=data["advantages"].expand_as(log_prob),
        response_mask=data["response_mask"],
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=data["rollout_is_weights"] if weights else None,
    )
    loss.backward()
    return loss.detach(), log_prob.grad, metrics


@pytest.mark.parametrize("info", BATCH_INFO)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_is_verl_vanilla(mode: str, info: str) -> None:
    for clip, clip_ratio_c, weights, mask_kind in itertools.product(["symmetric", "higher"], [3.0, 10.0],
                                                                     [False, True], ["bool", "float"]):
        case = f"{mode} {info} clip={clip} c={clip_ratio_c} weights={weights} mask={mask_kind}"
        data = make_policy_batch(mask_kind)
        counts = BATCH_INFO[info](int(data["response_mask"].sum()), data["response_mask"].shape[0])
        results = {}
        for loss_mode in ("vanilla", "asymgrpo"):
            config = actor_config(loss_mode, mode, clip, clip_ratio_c)
            config.global_batch_info.update(counts)
            results[loss_mode] = call_loss(loss_mode, config, data, weights)
        (loss, grad, metrics), (ref_loss, ref_grad, ref_metrics) = results["asymgrpo"], results["vanilla"]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=case)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6, msg=case)
        for name in VERL_METRICS:
            assert isinstance(metrics[name], float), (case, name)
            assert metrics[name] == pytest.approx(ref_metrics[name], abs=1e-6), (case, name)
        assert ref_metrics["actor/pg_clipfrac"] > 0 and ref_metrics["actor/pg_clipfrac_lower"] > 0, case  # covered


def test_policy_loss_metrics_are_ours_besides_verls() -> None:
    data = make_policy_batch("bool")
    _, _, metrics = call_loss("asymgrpo", actor_config("asymgrpo", "token-mean", "higher", 3.0), data, weights=False)
    assert set(metrics) == {*VERL_METRICS, *(f"actor/{name}" for name in plugin.policy_loss.OWN_METRICS)}
    assert all(isinstance(value, float) for value in metrics.values())
    clip_frac = metrics["actor/clip_frac_low"] + metrics["actor/clip_frac_high"]
    assert metrics["actor/pg_clipfrac"] == pytest.approx(clip_frac)
    mask = data["response_mask"]
    ratio = torch.exp((data["log_prob"] - data["old_log_prob"]).clamp(-20, 20))[mask]
    assert metrics["actor/ratio_max"] == pytest.approx(ratio.max().item(), rel=1e-5)
    assert metrics["actor/approx_kl"] == pytest.approx((ratio - 1 - ratio.log()).mean().item(), rel=1e-5)


def test_policy_loss_reads_one_host_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics come back through ``metric_values`` (one transfer), never one ``.item()`` each."""
    calls = []
    real = plugin.policy_loss.metric_values
    monkeypatch.setattr(plugin.policy_loss, "metric_values", lambda values: calls.append(len(values)) or real(values))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a metric read with .item()"))
    data = make_policy_batch("bool")
    call_loss("asymgrpo", actor_config("asymgrpo", "seq-mean-token-mean", "higher", 3.0), data, weights=True)
    assert calls == [8]


def test_an_all_masked_batch_gives_zero_where_verl_gives_nan() -> None:
    data = make_policy_batch("bool")
    data["response_mask"] = torch.zeros_like(data["response_mask"])
    for mode in AGG_MODES:
        loss, grad, metrics = call_loss("asymgrpo", actor_config("asymgrpo", mode, "higher", 3.0), data, weights=False)
        assert loss == 0 and not grad.any() and all(value == 0 for value in metrics.values()), mode
        if mode != "token-sum":  # verl divides 0 by 0
            ref_loss, _, _ = call_loss("vanilla", actor_config("vanilla", mode, "higher", 3.0), data, weights=False)
            assert ref_loss.isnan(), mode


@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        (dict(clip_ratio_c=1.0), ValueError, "actor.clip_ratio_c"),
        (dict(clip_ratio_low=1.5), ValueError, "actor.clip_ratio_low"),
        (dict(clip_ratio_high=-0.1), ValueError, "actor.clip_ratio_high"),
        (dict(clip_ratio_low=None, clip_ratio="0.2"), TypeError, "actor.clip_ratio:"),
        (dict(loss_agg_mode="token-avg"), ValueError, "loss_agg_mode: loss_agg must be one of"),
        (dict(global_batch_info={"dp_size": 2}), ValueError, r"global_batch_info\['batch_num_tokens'\]"),
        (dict(global_batch_info={"dp_size": 0}), ValueError, r"global_batch_info\['dp_size'\]"),
        (dict(loss_agg_mode="seq-mean-token-sum-norm", global_batch_info={"loss_scale_factor": 0}), ValueError,
         "actor.loss_scale_factor"),
        (dict(loss_agg_mode="seq-mean-token-mean", global_batch_info={"dp_size": 2, "global_batch_size": None}),
         ValueError, r"global_batch_info\['global_batch_size'\]"),
    ],
)  # fmt: skip
def test_bad_actor_value_names_the_key(change: dict, error: type, named: str) -> None:
    config = OmegaConf.create(dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                                   loss_agg_mode="token-mean", global_batch_info={}) | change)  # fmt: skip
    data = make_policy_batch("bool")
    with pytest.raises(error, match=named):
        plugin.asymgrpo_policy_loss(
            data["old_log_prob"], data["log_prob"], data["advantages"], data["response_mask"],
            loss_agg_mode=config.loss_agg_mode, config=config,
        )  # fmt: skip
    with pytest.raises(ValueError, match="config is required"):
        plugin.asymgrpo_policy_loss(data["old_log_prob"], data["log_prob"], data["advantages"], data["response_mask"])


def ppo_loss_data(data: dict, prompt_len: int, counts: dict) -> tuple[TensorDict, torch.Tensor]:
    """verl's actor micro-batch for ``ppo_loss``: right-padded responses, log-probs of the packed tokens."""
    mask = data["response_mask"].long()
    batch, seq_len = mask.shape
    lengths = mask.sum(dim=1)
    response_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()  # right-padded, same lengths
    attention = torch.cat([torch.ones(batch, prompt_len, dtype=torch.long), response_mask], dim=1)
    # packed sequence i holds prompt_len + length_i tokens; position prompt_len - 1 + t predicts response token t
    packed = [torch.cat([torch.zeros(prompt_len - 1), data["log_prob"][i, : lengths[i]], torch.zeros(1)])
              for i in range(batch)]  # fmt: skip
    flat = torch.cat(packed).requires_grad_()
    td = TensorDict(
        {
            "prompts": torch.zeros(batch, prompt_len, dtype=torch.long),
            "responses": torch.zeros(batch, seq_len, dtype=torch.long),
            "attention_mask": attention,
            "response_mask": response_mask,
            "old_log_probs": data["old_log_prob"],
            "advantages": data["advantages"].expand(batch, seq_len) * response_mask,
            "rollout_is_weights": data["rollout_is_weights"],
        },
        batch_size=[batch],
    )
    for key, value in counts.items():
        tu.assign_non_tensor_data(td, key, value)
    return td, flat


@pytest.mark.parametrize(
    ("mode", "counts", "loss_scale_factor"),
    [
        ("token-mean", dict(dp_size=2, batch_num_tokens=60, global_batch_size=12), None),
        ("seq-mean-token-sum-norm", dict(dp_size=1, batch_num_tokens=None, global_batch_size=None), 16),
        ("token-sum", dict(dp_size=2, batch_num_tokens=60, global_batch_size=12), None),
    ],
)
def test_policy_loss_through_verl_ppo_loss(mode: str, counts: dict, loss_scale_factor: int | None) -> None:
    """verl's actor loss (``ppo_loss``) with a real ActorConfig and TensorDict micro-batch."""
    data = make_policy_batch("bool")
    results = {}
    for loss_mode in ("vanilla", "asymgrpo"):
        config = actor_config(loss_mode, mode, "higher", 3.0, loss_scale_factor=loss_scale_factor)
        td, flat = ppo_loss_data(data, prompt_len=3, counts=counts)
        loss, metrics = ppo_loss(config, {"log_probs": flat}, td)
        loss.backward()
        results[loss_mode] = (loss.detach(), flat.grad, {k: v.aggregate() for k, v in metrics.items()})
    (loss, grad, metrics), (ref_loss, ref_grad, ref_metrics) = results["asymgrpo"], results["vanilla"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert grad.any()
    for name in (*VERL_METRICS, "actor/pg_loss"):
        assert metrics[name] == pytest.approx(ref_metrics[name], abs=1e-6), name


# ---------------------------------------------------------------- the kernel switch


@pytest.fixture
def verl_kernels():
    """verl's own functions, with the switch guaranteed off before and after the test."""
    import verl.utils.experimental.torch_functional as torch_functional
    import verl.utils.kernel.linear_cross_entropy as lce

    plugin.use_asymgrpo_fused_kernels(False)
    yield lce, torch_functional, lce.linear_cross_entropy, torch_functional.FusedLinearForPPO
    plugin.use_asymgrpo_fused_kernels(False)


def lm_head_case(shape: tuple[int, ...], dtype=torch.float32, seed: int = 0):
    """hidden [*shape, 16] and weight [40, 16] (leaves), target ids [*shape], upstream gradients for both outputs."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*shape, 16, generator=gen) * 2).to(dtype).requires_grad_()
    weight = torch.randn(40, 16, generator=gen).to(dtype).requires_grad_()
    ids = torch.randint(0, 40, shape, generator=gen)
    upstream = (torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen))
    return hidden, weight, ids, upstream


def values_and_grads(fn, hidden, weight, ids, upstream, temperature):
    hidden.grad = weight.grad = None
    log_probs, entropy = fn(hidden, weight, ids, temperature)
    ((log_probs * upstream[0].reshape(log_probs.shape)).sum() + (entropy * upstream[1].reshape(entropy.shape)).sum()
     ).backward()  # fmt: skip
    return log_probs.detach(), entropy.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("shape", [(3, 5), (11,)])
def test_switch_routes_verl_to_ours_with_verls_results(verl_kernels, shape: tuple[int, ...]) -> None:
    lce, torch_functional, verl_lce, verl_fused = verl_kernels
    hidden, weight, ids, upstream = lm_head_case(shape)
    expected = values_and_grads(lambda *a: verl_fused().forward(*a), hidden, weight, ids, upstream, 0.7)
    plugin.use_asymgrpo_fused_kernels()
    plugin.use_asymgrpo_fused_kernels()  # idempotent
    assert plugin.asymgrpo_fused_kernels_enabled()
    assert lce.linear_cross_entropy is plugin.linear_cross_entropy
    assert torch_functional.FusedLinearForPPO is plugin.FusedLinearForPPO
    switched = torch_functional.FusedLinearForPPO(impl_backend="torch")
    fused = values_and_grads(lambda *a: switched.forward(*a), hidden, weight, ids, upstream, 0.7)
    flat = values_and_grads(lambda *a: lce.linear_cross_entropy(*a, "none"), hidden, weight, ids, upstream, 0.7)
    for ours, name in ((fused, "FusedLinearForPPO"), (flat, "linear_cross_entropy")):
        for got, want in zip(ours, expected, strict=True):
            scale = want.abs().max().item()  # float32 rounding, relative to the tensor's magnitude
            torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5 * scale, msg=name)
    assert fused[0].shape == ids.shape and fused[0].dtype == torch.float32
    assert flat[0].shape == flat[1].shape == (ids.numel(),) and flat[1].dtype == torch.float32
    plugin.use_asymgrpo_fused_kernels(False)
    assert lce.linear_cross_entropy is verl_lce and torch_functional.FusedLinearForPPO is verl_fused
    assert not plugin.asymgrpo_fused_kernels_enabled()


def test_fused_linear_entropy_dtype_is_verls(verl_kernels) -> None:
    _, _, _, verl_fused = verl_kernels
    hidden, weight, ids, _ = lm_head_case((2, 4), dtype=torch.bfloat16)
    theirs = verl_fused().forward(hidden, weight, ids, 1.0)
    ours = plugin.FusedLinearForPPO().forward(hidden, weight, ids, 1.0)
    assert [(t.shape, t.dtype) for t in ours] == [(t.shape, t.dtype) for t in theirs]
    torch.testing.assert_close(ours[1].float(), theirs[1].float(), rtol=0.05, atol=0.05)


def test_switch_environment_variable(verl_kernels, monkeypatch: pytest.MonkeyPatch) -> None:
    lce = verl_kernels[0]
    for value in ("0", "yes"):
        monkeypatch.setenv(plugin.FUSED_KERNELS_ENV, value)
        with pytest.warns(RuntimeWarning, match=plugin.FUSED_KERNELS_ENV) if value == "yes" else nullcontext():
            kernels_module.switch_from_environment()
        assert not plugin.asymgrpo_fused_kernels_enabled()
    monkeypatch.setenv(plugin.FUSED_KERNELS_ENV, "1")
    kernels_module.switch_from_environment()
    assert lce.linear_cross_entropy is plugin.linear_cross_entropy


def test_switch_refuses_what_it_does_not_do() -> None:
    hidden, weight, ids, _ = lm_head_case((4,))
    with pytest.raises(ValueError, match="needs torch.distributed initialised"):
        plugin.linear_cross_entropy(hidden, weight, ids, 1.0, "none", object())
    with pytest.raises(ValueError, match="reduction"):
        plugin.linear_cross_entropy(hidden, weight, ids, 1.0, "mean")
    with pytest.raises(TypeError, match="temperature"):
        plugin.linear_cross_entropy(hidden, weight, ids, torch.tensor(1.0))
    with pytest.raises(ValueError, match="labels"):
        plugin.linear_cross_entropy(hidden, weight, ids[:3])
    with pytest.raises(ValueError, match="impl_backend"):
        plugin.FusedLinearForPPO(impl_backend="cuda")


def test_verl_model_forward_runs_our_kernel_when_switched(verl_kernels, monkeypatch: pytest.MonkeyPatch) -> None:
    """verl's patched HF forward (torch and triton backends) looks the functions up at call time."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from verl.models.transformers.dense_common import forward_with_torch_backend, forward_with_triton_backend

    config = Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=32)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    input_ids = torch.randint(0, 48, (2, 9))
    expected = forward_with_torch_backend(model, input_ids=input_ids, return_dict=True, temperature=0.8)
    calls = []
    real = kernels_module.fused_linear_logprob_entropy
    spy = lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(kernels_module, "fused_linear_logprob_entropy", spy)
    plugin.use_asymgrpo_fused_kernels()
    for forward in (forward_with_torch_backend, forward_with_triton_backend):
        out = forward(model, input_ids=input_ids, return_dict=True, temperature=0.8)
        for name in ("log_probs", "entropy"):
            want = getattr(expected, name)
            torch.testing.assert_close(getattr(out, name).reshape(want.shape), want, rtol=1e-5, atol=1e-5, msg=name)
    assert len(calls) == 2


# ---------------------------------------------------------------- the example and the docs snippet


def example_overrides() -> list[str]:
    """The Hydra overrides of examples/verl_asymgrpo.sh's main_ppo command, shell variables filled in."""
    script = (ROOT / "examples" / "verl_asymgrpo.sh").read_text(encoding="utf-8")
    command = script.split("python3 -m verl.trainer.main_ppo", 1)[1].replace("\\\n", " ")
    values = {"N_GPUS": "8", "@": ""}
    command = re.sub(r"\$\{?(\w+|@)\}?", lambda m: values.get(m.group(1), f"/placeholder/{m.group(1)}"), command)
    return [token for token in shlex.split(command) if token]


def test_example_overrides_compose_with_verls_config() -> None:
    """The example's overrides are valid for verl 0.9.1's trainer config and select asymgrpo."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=str(VERL_CONFIG_DIR), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=example_overrides())
    assert config.algorithm.adv_estimator == "asymgrpo" and config.actor_rollout_ref.model.use_fused_kernels
    options = plugin.config.advantage_options(config.algorithm)
    assert (options.beta_pos, options.beta_neg, options.std, options.eps) == (0.9, 0.4, "unbiased", 1e-6)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "asymgrpo"
    loss = plugin.config.loss_options(actor, actor.loss_agg_mode)
    assert (loss.clip_low, loss.clip_high, loss.dual_clip, loss.loss_agg) == (0.2, 0.28, 3.0, "token-mean")
    assert f"export {plugin.FUSED_KERNELS_ENV}=" in (ROOT / "examples" / "verl_asymgrpo.sh").read_text()



def test_docs_cpu_snippet_runs() -> None:
    text = (ROOT / "docs" / "verl.md").read_text(encoding="utf-8")
    section = text.split("## Try it on a CPU", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/verl.md", "exec"), namespace)  # noqa: S102
    assert torch.isfinite(namespace["loss"]) and namespace["log_prob"].grad.any()
    assert set(VERL_METRICS) <= set(namespace["metrics"])
