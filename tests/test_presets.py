"""Named advantage presets: values, the keyword helper, unknown names, use with the module."""

from __future__ import annotations

import pytest
import torch

from asymgrpo_kernels import PRESETS, AsymGRPOLoss, group_advantages, preset_kwargs

EXPECTED = {
    "asymgrpo": (0.9, 0.4, "std"),
    "grpo": (0.5, 0.5, "std"),
    "reinforce": (0.0, 0.0, "std"),
    "dr_grpo": (0.5, 0.5, "none"),
    "pos_only": (0.5, 0.0, "std"),
    "neg_only": (0.0, 0.5, "std"),
}


def test_registry_holds_exactly_the_documented_presets():
    assert set(PRESETS) == set(EXPECTED)
    for name, (beta_pos, beta_neg, normalize) in EXPECTED.items():
        assert preset_kwargs(name) == {"beta_pos": beta_pos, "beta_neg": beta_neg, "normalize": normalize}


def test_helper_returns_a_fresh_dict_and_registry_is_read_only():
    kwargs = preset_kwargs("grpo")
    kwargs["beta_pos"] = 2.0
    assert preset_kwargs("grpo")["beta_pos"] == 0.5
    with pytest.raises(TypeError):
        PRESETS["grpo"]["beta_pos"] = 2.0  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["mine"] = {}  # type: ignore[index]


@pytest.mark.parametrize("name", ["GRPO", "dapo", "", None])
def test_unknown_preset_lists_valid_names(name):
    with pytest.raises(ValueError, match="preset must be one of 'asymgrpo', 'grpo', 'reinforce', 'dr_grpo', 'pos_only', 'neg_only'"):
        preset_kwargs(name)
    with pytest.raises(ValueError, match="preset must be one of"):
        AsymGRPOLoss(name)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_keywords_feed_group_advantages(name):
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.3, 0.9, 0.5, 0.1])
    direct = group_advantages(rewards, group_size=4, **preset_kwargs(name))
    assert torch.equal(AsymGRPOLoss(name).advantages(rewards, group_size=4), direct)


def test_channel_semantics_of_the_ablation_presets():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])  # p = 1/4
    pos_only = group_advantages(rewards, group_size=4, **preset_kwargs("pos_only"))
    neg_only = group_advantages(rewards, group_size=4, **preset_kwargs("neg_only"))
    torch.testing.assert_close(pos_only, torch.tensor([3.0**0.5, -1.0, -1.0, -1.0]))
    torch.testing.assert_close(neg_only, torch.tensor([1.0] + [-(1 / 3) ** 0.5] * 3))


def test_module_overrides_take_precedence_over_the_preset():
    module = AsymGRPOLoss("grpo", beta_neg=0.0, normalize="none")
    assert module.advantage_options.beta_pos == 0.5
    assert module.advantage_options.beta_neg == 0.0
    assert module.advantage_options.normalize == "none"
    assert "preset='grpo'" in repr(module)
