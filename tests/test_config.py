"""TrainConfig: unknown keys, wrong types and impossible values are rejected before anything loads."""

import subprocess
import sys
import textwrap

import pytest

from asymgrpo.config import ConfigError, TrainConfig, config_fields
from asymgrpo_kernels import AdvantageOptions, LossOptions


def test_defaults_are_valid_and_documented():
    config = TrainConfig.from_dict({})
    assert config == TrainConfig()
    for name, _, _, help_text in config_fields():
        assert help_text, f"{name} has no help text"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key.*grop_size"):
        TrainConfig.from_dict({"grop_size": 8})


@pytest.mark.parametrize("key, value, expected", [
    ("group_size", 2.5, "group_size must be int"),
    ("group_size", True, "group_size must be int"),
    ("lr", "fast", "lr must be float"),
    ("resume", "maybe", "resume must be bool"),
    ("model", 3, "model must be str"),
    ("beta_pos", [0.9], "beta_pos must be float or null"),
    ("lr", float("nan"), "lr must be a finite number"),
])
def test_wrong_type_is_named(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize("key, value, expected", [
    ("group_size", 1, "group_size must be >= 2"),
    ("updates_per_step", 3, "updates_per_step must be > 0 and divide prompts_per_step=32"),
    ("steps", 0, "steps must be > 0"),
    ("lr", -1e-4, "lr must be > 0"),
    ("clip_low", 1.0, "clip_low must be < 1"),
    ("top_p", 1.5, "top_p must be in"),
    ("clip_high", -0.1, "clip_high must be a finite number >= 0"),
    ("dual_clip", 0.5, "dual_clip must be > 1"),
    ("preset", "ppo", "preset must be one of"),
    ("beta_neg", -0.5, "beta_neg must be a finite number >= 0"),
    ("loss_agg", "mean", "loss_agg must be one of"),
    ("kl_estimator", "k4", "kl_estimator must be one of"),
    ("normalize", "minmax", "normalize must be one of"),
    ("loss_backend", "cuda", "loss_backend must be one of"),
    ("prompt_template", "Q: {question}", "prompt_template must contain"),
    ("prompt_template", "{prompt} in \\boxed{}", "only field is"),
    ("dataset", "/nonexistent/data.jsonl", "does not exist"),
    ("embedded_test_size", 10_000, "embedded_test_size must be <"),
    ("reward", "nonsense", "reward must be"),
])
def test_impossible_value_is_named(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.from_dict({key: value})


def test_objective_errors_are_the_kernels_own():
    """The objective's keys are checked by asymgrpo_kernels: same rule, same message, as a ConfigError."""
    with pytest.raises(ValueError) as kernel_error:
        LossOptions(clip_low=1.0)
    with pytest.raises(ConfigError) as config_error:
        TrainConfig.from_dict({"clip_low": 1.0})
    assert str(config_error.value) == str(kernel_error.value)


def test_objective_accepts_what_the_loss_accepts():
    """entropy_coef is any finite number, as in LossOptions (negative penalizes entropy); kl_coef is >= 0."""
    config = TrainConfig.from_dict({"entropy_coef": -0.01, "kl_coef": 0.1})
    assert (config.loss_module().options.entropy_coef, config.loss_module().options.kl_coef) == (-0.01, 0.1)
    with pytest.raises(ConfigError, match="kl_coef must be a finite number >= 0"):
        TrainConfig.from_dict({"kl_coef": -0.1})


def test_loss_module_carries_the_objective():
    config = TrainConfig.from_dict({"preset": "dr_grpo", "beta_pos": 0.7, "clip_low": 0.1, "clip_high": 0.3,
                                    "dual_clip": 3.0, "kl_coef": 0.05, "kl_estimator": "k2", "entropy_coef": 0.01,
                                    "loss_agg": "seq-mean-token-sum-norm", "max_new_tokens": 12, "temperature": 0.7,
                                    "loss_backend": "torch"})
    loss_fn = config.loss_module()
    assert loss_fn.advantage_options == AdvantageOptions(beta_pos=0.7, beta_neg=0.5, normalize="none")
    assert loss_fn.options == LossOptions(clip_low=0.1, clip_high=0.3, dual_clip=3.0, kl_coef=0.05, kl_estimator="k2",
                                          entropy_coef=0.01, loss_agg="seq-mean-token-sum-norm", max_len=12)
    assert (loss_fn.temperature, loss_fn.backend) == (0.7, "torch")
    # Dr. GRPO's constant is max_new_tokens only for the aggregation that uses one
    assert TrainConfig(loss_agg="seq-mean-token-sum").loss_module().options.max_len is None


def test_command_line_strings_are_parsed():
    config = TrainConfig.from_dict({"group_size": "4", "lr": "1e-3", "resume": "true", "beta_pos": "null",
                                    "dual_clip": "3"})
    assert (config.group_size, config.lr, config.resume, config.beta_pos, config.dual_clip) == (4, 1e-3, True, None, 3.0)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("group_size: 4\npreset: grpo\nbeta_neg: 0.3\n")
    config = TrainConfig.load(path, {"group_size": "6"})
    assert config.group_size == 6 and config.preset == "grpo"
    assert config.loss_module().advantage_options == AdvantageOptions(beta_pos=0.5, beta_neg=0.3, normalize="std")
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.load(path)


def test_cli_rejects_bad_config_before_loading_anything():
    """A bad value exits with status 2 and a message, without importing transformers or vLLM."""
    code = textwrap.dedent("""
        import sys
        from asymgrpo.cli import main
        rc = main(["train", "--group-size", "1"])
        heavy = [m for m in ("transformers", "vllm") if m in sys.modules]
        print("rc", rc, "heavy", heavy)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "rc 2 heavy []" in result.stdout, result.stdout + result.stderr
    assert "group_size must be >= 2" in result.stderr


def test_cli_rejects_unknown_option():
    from asymgrpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-such-key", "1"])
    assert exit_info.value.code == 2


def test_world_size_must_divide_each_optimizer_steps_prompts():
    config = TrainConfig.from_dict({"prompts_per_step": 12, "updates_per_step": 2})
    config.check_world_size(1)
    config.check_world_size(2)  # 6 prompts per optimizer step, 3 per rank
    with pytest.raises(ConfigError, match="prompts_per_step must be divisible by the world size 5"):
        config.check_world_size(5)
    with pytest.raises(ConfigError, match=r"prompts_per_step / updates_per_step = 6 .* world size 4"):
        config.check_world_size(4)
