"""Bad input to fused_linear_logprob_entropy: a clear error naming the argument, before any launch."""

from __future__ import annotations

import pytest
import torch

from asymgrpo_kernels import fused_linear_logprob_entropy


def good(**overrides):
    args = dict(
        hidden=torch.randn(2, 5, 8),
        weight=torch.randn(11, 8),
        targets=torch.randint(0, 11, (2, 5)),
    )
    kwargs = {k: overrides.pop(k) for k in list(overrides) if k not in args}
    args.update(overrides)
    return args, kwargs


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (dict(hidden=torch.randn(2, 5, 9)), ValueError, "weight must have shape [V, H] with H"),
        (dict(weight=torch.randn(11, 8, 1)), ValueError, "weight must have shape [V, H]"),
        (dict(targets=torch.randint(0, 11, (2, 4))), ValueError, "targets must have shape"),
        (dict(targets=torch.rand(2, 5)), TypeError, "targets must be an integer tensor"),
        (dict(targets=torch.full((2, 5), 11)), ValueError, "targets must lie in [0, 11)"),
        (dict(targets=torch.full((2, 5), -1)), ValueError, "targets must lie in [0, 11)"),
        (dict(hidden=torch.randn(2, 5, 8, dtype=torch.float64), weight=torch.randn(11, 8, dtype=torch.float64)), TypeError, "hidden must have dtype in"),
        (dict(weight=torch.randn(11, 8, dtype=torch.bfloat16)), TypeError, "weight must have the dtype of hidden"),
        (dict(bias=torch.randn(10)), ValueError, "bias must have shape [V]"),
        (dict(bias=torch.randn(11, dtype=torch.float16)), TypeError, "bias must have the dtype"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=torch.tensor(1.0)), TypeError, "temperature must be a Python float"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
        (dict(workspace_bytes=0), ValueError, "workspace_bytes must be a positive int"),
        (dict(hidden=[[1.0] * 8]), TypeError, "hidden must be a torch.Tensor"),
        (dict(targets=torch.zeros(2, 5, dtype=torch.bool)), TypeError, "targets must be an integer tensor"),
    ],
)
def test_bad_input_names_the_argument(overrides, error, words):
    args, kwargs = good(**overrides)
    with pytest.raises(error) as info:
        fused_linear_logprob_entropy(**args, **kwargs)
    assert words in str(info.value)


def test_tensors_on_different_devices_are_rejected():
    args, _ = good()
    with pytest.raises(ValueError, match="one device"):
        fused_linear_logprob_entropy(args["hidden"], args["weight"], args["targets"].to("meta"))


def test_triton_without_a_runnable_triton_is_a_clear_error(monkeypatch):
    from asymgrpo_kernels import dispatch

    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    args, _ = good()
    with pytest.raises(ValueError, match="backend='triton' needs"):
        fused_linear_logprob_entropy(**args, backend="triton")


def test_ignore_index_inside_the_vocabulary_is_honoured():
    """A target equal to ignore_index is ignored even when it is a valid vocabulary id."""
    args, _ = good()
    args["targets"][0, 0] = 3
    logp, ent = fused_linear_logprob_entropy(**args, ignore_index=3, backend="torch")
    assert logp[0, 0] == 0 and ent[0, 0] == 0


def test_int32_targets_are_accepted():
    args, _ = good()
    args["targets"] = args["targets"].int()
    logp, _ = fused_linear_logprob_entropy(**args, backend="torch")
    assert logp.shape == (2, 5) and (logp < 0).all()


# --- value checks: one device-to-host read per public call, none under torch.compile -----------


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the Python-level reads of tensor contents (each a device sync on CUDA)."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


def _loss_inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 8, generator=gen, requires_grad=True)
    weight = torch.randn(19, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 19, (3, 7), generator=gen)
    mask = (torch.rand(3, 7, generator=gen) > 0.3).float()
    return hidden, weight, targets, mask, torch.randn(3, generator=gen), -torch.rand(3, 7, generator=gen)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_one_host_read_per_call(host_reads, backend):
    """The mask, target-range and num_items checks and the scored-row count come back together."""
    from asymgrpo_kernels import asym_policy_loss, fused_linear_asymgrpo_loss

    hidden, weight, targets, mask, adv, old = _loss_inputs()
    loss, metrics = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, adv, old_logprobs=old,
                                               num_items=torch.tensor(9.0), backend=backend, clip_high=0.28)
    assert host_reads == ["tolist"]
    loss.backward()
    assert host_reads == ["tolist"], "backward read tensor contents on the host"
    host_reads.clear()
    fused_linear_logprob_entropy(hidden, weight, targets, backend=backend)
    assert host_reads == ["tolist"]
    host_reads.clear()
    asym_policy_loss(old.clone().requires_grad_(), old, adv, mask, num_items=torch.tensor(9.0), backend=backend)
    assert host_reads == ["tolist"]


def test_metric_values_read_every_metric_at_once(host_reads):
    """Logging the metrics costs one device-to-host transfer, not one per metric."""
    from asymgrpo_kernels import fused_linear_asymgrpo_loss, metric_values

    hidden, weight, targets, mask, adv, old = _loss_inputs()
    _, metrics = fused_linear_asymgrpo_loss(hidden, weight, targets, mask, adv, old_logprobs=old, dual_clip=3.0)
    host_reads.clear()
    values = metric_values(metrics)
    assert host_reads == ["tolist"]
    assert list(values) == list(metrics) and len(values) > 10
    for name, value in values.items():
        assert isinstance(value, float) and value == pytest.approx(float(metrics[name]), rel=1e-7), name


def test_policy_loss_compiles_without_graph_breaks():
    """Under torch.compile the value checks step aside: no graph break comes from validation."""
    import torch._dynamo

    from asymgrpo_kernels import asym_policy_loss

    _, _, _, mask, adv, old = _loss_inputs()

    def step(logprobs):
        loss, metrics = asym_policy_loss(logprobs, old, adv, mask, clip_high=0.28, backend="torch")
        return loss, metrics["clip_frac_high"]

    explanation = torch._dynamo.explain(step)(old.clone().requires_grad_())
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
