"""The policy update without vLLM: no logits, gradient accumulation, mixed precision, metric merging."""

import pytest
import torch

from asymgrpo.batch import pack
from asymgrpo.config import TrainConfig
from asymgrpo.demo.model import build_tiny_qwen2
from asymgrpo.demo.tokenizer import build_char_tokenizer
from asymgrpo.policy import last_hidden, lm_head_weight
from asymgrpo.trainer import merge_metrics, policy_update, score_tokens


def _batch(seed=0, rows=8):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, 18, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(rows)]
    completions = [torch.randint(1, 18, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist() for _ in range(rows)]
    return pack(prompts, completions, [[0.0] * len(c) for c in completions], pad_id=0, device=torch.device("cpu"))


def _model():
    model = build_tiny_qwen2(build_char_tokenizer(), seed=0)
    model.config._attn_implementation = "sdpa"
    return model


def _no_logits(model):
    def refuse(*args, **kwargs):
        raise AssertionError("the trainer asked the model for logits")

    model.lm_head.forward = refuse
    model.forward = refuse
    return model


def _grads_after_update(micro_batch_size, loss_agg, checkpointing=False):
    model = _no_logits(_model())
    if checkpointing:
        model.gradient_checkpointing_enable()
    batch = _batch()
    loss_fn = TrainConfig(loss_agg=loss_agg).loss_module()
    advantages = torch.linspace(-1.5, 2.0, len(batch))
    old_logprobs, _ = score_tokens(model, batch, loss_fn, micro_batch_size)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    metrics = policy_update(model, optimizer, loss_fn, batch, advantages, old_logprobs,
                            micro_batch_size=micro_batch_size, max_grad_norm=0.0, compute_dtype=torch.float32)
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}, metrics


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(loss_agg):
    """Gradients of 3 micro-batches (3 + 3 + 2 rows) equal those of one batch of 8: num_items normalizes the step."""
    whole, whole_metrics = _grads_after_update(8, loss_agg)
    split, split_metrics = _grads_after_update(3, loss_agg)
    assert any(d.abs().max() > 0 for d in whole.values())
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert split_metrics["loss"] == pytest.approx(whole_metrics["loss"], rel=1e-4, abs=1e-6)
    for key in ("entropy_pos", "entropy_neg", "tokens_pos", "tokens_neg", "ratio_mean"):
        assert split_metrics[key] == pytest.approx(whole_metrics[key], rel=1e-4), key


def test_bfloat16_compute_keeps_float32_master_weights():
    model = _model()
    batch = _batch()
    hidden = last_hidden(model, batch.input_ids[:, :-1], torch.bfloat16)
    assert hidden.dtype == torch.bfloat16 and lm_head_weight(model, torch.bfloat16).dtype == torch.bfloat16
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = TrainConfig().loss_module()
    old_logprobs, _ = score_tokens(model, batch, loss_fn, 256, torch.bfloat16)
    metrics = policy_update(model, optimizer, loss_fn, batch, torch.linspace(-1, 1, len(batch)), old_logprobs,
                            micro_batch_size=256, max_grad_norm=1.0, compute_dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.parameters())
    assert metrics["grad_norm"] > 0


def test_merge_metrics_weights_by_tokens():
    parts = [
        {"tokens": torch.tensor(2.0), "tokens_pos": torch.tensor(2.0), "tokens_neg": torch.tensor(0.0),
         "entropy_pos": torch.tensor(1.0), "entropy_neg": torch.tensor(0.0), "approx_kl": torch.tensor(0.5),
         "ratio_max": torch.tensor(1.5)},
        {"tokens": torch.tensor(6.0), "tokens_pos": torch.tensor(2.0), "tokens_neg": torch.tensor(4.0),
         "entropy_pos": torch.tensor(3.0), "entropy_neg": torch.tensor(2.0), "approx_kl": torch.tensor(0.1),
         "ratio_max": torch.tensor(1.2)},
    ]
    merged = merge_metrics(parts)
    assert merged["tokens"] == 8 and merged["tokens_neg"] == 4
    assert merged["entropy_pos"] == pytest.approx(2.0)
    assert merged["entropy_neg"] == pytest.approx(2.0)
    assert merged["approx_kl"] == pytest.approx((0.5 * 2 + 0.1 * 6) / 8)
    assert merged["ratio_max"] == pytest.approx(1.5)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, _ = _grads_after_update(4, "token-mean")
    recomputed, _ = _grads_after_update(4, "token-mean", checkpointing=True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
