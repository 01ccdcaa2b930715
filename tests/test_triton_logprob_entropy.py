"""The Triton backend's forward/backward, called directly, against float64 and the torch backend.

On a machine without CUDA these run under ``TRITON_INTERPRET=1`` (set by conftest.py), which
executes the kernels with numpy, one program at a time: shapes stay tiny. What we found there:

* ``tl.dot`` on bfloat16 tiles returns garbage under the interpreter (errors of ~1e10 on a
  16x32 @ 32x16 product), while float16 and float32 tiles give correct products. The kernels
  therefore upcast every loaded tile to float32 before ``tl.dot`` when interpreting (the
  ``UPCAST`` constexpr); on CUDA tiles stay bfloat16/float16 with float32 accumulation.
* So the interpreter checks the algorithm, masking, strides, the split merge and the chunked
  accumulation, with float32 products. It cannot check the tensor-core numerics of bfloat16
  (nor the cast of the logit gradient to bfloat16 before the dh/dW products on CUDA), atomics
  under real concurrency, offsets past 2**31 elements (numpy computes them in int64 whatever
  the kernel says, and such shapes are far too slow to emulate), nor speed: those need a GPU
  run of this file without the interpreter (the tolerances below hold for either).
  ``test_kernels_compile_for_hopper_with_pipelined_loads`` covers what compiling shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from asymgrpo_kernels import chunked
from asymgrpo_kernels.dispatch import triton_available
from asymgrpo_kernels.lm_head import LMHead
from asymgrpo_kernels.reference import logprob_entropy_reference

if not triton_available():
    pytest.skip("triton cannot run here (no CUDA device and TRITON_INTERPRET is not 1)", allow_module_level=True)

from asymgrpo_kernels.triton import logprob_entropy as triton_backend  # noqa: E402
from asymgrpo_kernels.triton.configs import VOCAB_ALIGN  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG_WORKSPACE = 256 * 2**20
# Absolute tolerances relative to each quantity's own scale: float32 kernels accumulate in
# float32; half-precision gradients are returned in their dtype (~3 significant digits).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_case(n, h, v, dtype, *, bias=True, ignored=(), scale=1.0, seed=0):
    """Inputs in ``dtype`` plus float32 upstream gradients (zero on ignored rows, -1 targets)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen) * scale
    weight = torch.randn(v, h, generator=gen) / h**0.5
    b = torch.randn(v, generator=gen) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[list(ignored)] = -1
    grads = torch.randn(2, n, generator=gen)
    grads[:, targets < 0] = 0.0
    cast = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), targets.to(DEVICE), grads[0].to(DEVICE), grads[1].to(DEVICE)


def float64_truth(hidden, weight, bias, targets, temperature, g_logp, g_ent):
    """(logprobs, entropy, lse, [grad_hidden, grad_weight, grad_bias]) in float64 by autograd."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    logp, ent = logprob_entropy_reference(leaves[0], leaves[1], targets, leaves[2], temperature, ignore_index=-1)
    (logp * g_logp.double() + ent * g_ent.double()).sum().backward()
    logits = leaves[0] @ leaves[1].T + (leaves[2] if bias is not None else 0)
    lse = torch.logsumexp(logits.detach() / temperature, dim=-1)
    return logp.detach(), ent.detach(), lse, [t.grad if t is not None else None for t in leaves]


def scored(hidden, weight, bias, targets, temperature, workspace=BIG_WORKSPACE):
    """The LMHead of the rows whose target is >= 0, as the public functions build it."""
    rows = (targets >= 0).nonzero().squeeze(1)
    return LMHead(hidden, weight, bias, rows, targets[rows], temperature, workspace)


def run_backend(kernels, hidden, weight, bias, targets, temperature, g_logp, g_ent, workspace=BIG_WORKSPACE, needs=None):
    """(logprobs, entropy, lse) of the scored rows [n] and the gradients, from a kernels module."""
    needs = needs or (True, True, bias is not None)
    head = scored(hidden, weight, bias, targets, temperature, workspace)
    logp, ent, lse = kernels.forward(head)
    grads = kernels.backward(head, g_logp[head.rows], g_ent[head.rows], lse, ent, needs)
    return logp, ent, lse, list(grads)


def run_triton(*args, **kwargs):
    return run_backend(triton_backend, *args, **kwargs)


def assert_close_scaled(got, want, tol, name):
    atol = tol * max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=tol, msg=lambda m: f"{name}: {m}")


def assert_matches_float64(case, temperature, dtype, **kw):
    hidden, weight, bias, targets, g_logp, g_ent = case
    logp, ent, lse, grads = run_triton(hidden, weight, bias, targets, temperature, g_logp, g_ent, **kw)
    ref_logp, ref_ent, ref_lse, ref_grads = float64_truth(hidden, weight, bias, targets, temperature, g_logp, g_ent)
    valid = targets >= 0
    assert logp.dtype == ent.dtype == lse.dtype == torch.float32
    # the forward accumulates in float32 for every input dtype
    assert_close_scaled(logp, ref_logp[valid], 2e-5, "logprobs")
    assert_close_scaled(ent, ref_ent[valid], 2e-5, "entropy")
    assert_close_scaled(lse, ref_lse[valid], 2e-5, "lse")
    for name, g, g_ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        if g_ref is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == g_ref.shape and g.is_contiguous(), name
        assert_close_scaled(g, g_ref, TOL[dtype], f"grad {name}")
    return grads


@pytest.mark.parametrize(
    "n,h,v,dtype,temperature,bias,ignored",
    [
        (1, 48, 50, torch.float32, 1.0, True, ()),
        (37, 48, 301, torch.float32, 0.5, False, tuple(range(16)) + (20,)),
        (29, 40, 300, torch.bfloat16, 2.0, True, (3, 7)),
        (29, 48, 257, torch.float16, 0.5, False, (0,)),
        (18, 48, 97, torch.bfloat16, 1.0, False, ()),
    ],
    ids=["N=1", "odd-ignored-block", "bf16-T2", "fp16-T0.5", "bf16-T1"],
)
def test_matches_float64(n, h, v, dtype, temperature, bias, ignored):
    """Odd N, V and H (H = 48 leaves a BLOCK_K tail), every dtype, T in {0.5, 1, 2}, ignored rows
    (the second case ignores rows 0-15, a whole token block under the interpreter's BLOCK_N =
    16: never read, their hidden gradient exactly zero)."""
    case = make_case(n, h, v, dtype, bias=bias, ignored=ignored)
    assert_matches_float64(case, temperature, dtype)


def test_agrees_with_torch_backend():
    case = make_case(37, 48, 301, torch.float32, ignored=(5,))
    ours = run_triton(*case[:4], 0.7, *case[4:])
    theirs = run_backend(chunked, *case[:4], 0.7, *case[4:])
    for a, b in zip([*ours[:3], *ours[3]], [*theirs[:3], *theirs[3]]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_logits_that_overflow_a_naive_exp():
    """|logits| ~ 1e3 / T: exp overflows in float32, most probabilities underflow to 0."""
    case = make_case(9, 16, 129, torch.float32, scale=300.0, ignored=(4,))
    hidden, weight, bias, targets, g_logp, g_ent = case
    logp, ent, lse, grads = run_triton(hidden, weight, bias, targets, 0.5, g_logp, g_ent)
    assert lse.abs().max() > 500  # the case really is in the overflow regime
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert all(torch.isfinite(g).all() for g in grads)
    ref_logp, ref_ent, _, ref_grads = float64_truth(hidden, weight, bias, targets, 0.5, g_logp, g_ent)
    valid = targets >= 0
    # float32 logits of size ~2e3 carry ~1e-4 absolute error; the entropy must not lose more
    torch.testing.assert_close(logp.double(), ref_logp[valid], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent[valid], atol=1e-3, rtol=1e-3)
    for g, g_ref in zip(grads, ref_grads):
        assert_close_scaled(g, g_ref, 1e-4, "grad")


@pytest.mark.parametrize("layout", ["transposed", "column-sliced"])
def test_non_contiguous_hidden_is_read_through_its_strides(layout):
    hidden, weight, bias, targets, g_logp, g_ent = make_case(21, 48, 130, torch.bfloat16, ignored=(2,))
    if layout == "transposed":
        strided = hidden.T.contiguous().T  # strides (1, N)
    else:
        strided = torch.zeros(21, 96, dtype=hidden.dtype, device=DEVICE)[:, ::2]  # strides (96, 2)
        strided.copy_(hidden)
    assert not strided.is_contiguous() and torch.equal(strided, hidden)
    assert_matches_float64((strided, weight, bias, targets, g_logp, g_ent), 1.3, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_tiny_workspace_forces_weight_chunks(dtype):
    n, h, v = 20, 40, 130  # chunks of VOCAB_ALIGN rows, the last one partial
    tiny = 4 * h * VOCAB_ALIGN  # one VOCAB_ALIGN-row float32 accumulator of the weight gradient
    assert triton_backend.weight_chunk_rows(v, h, tiny) == VOCAB_ALIGN < v  # several vocabulary chunks
    case = make_case(n, h, v, dtype, ignored=(1,))
    chunked_grads = assert_matches_float64(case, 0.9, dtype, workspace=tiny)
    whole_grads = run_triton(*case[:4], 0.9, *case[4:])[3]
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=TOL[dtype] * b.abs().max().item(), rtol=0)


def test_several_splits_agree_with_one():
    """The cross-split merge of (m, S, Zm, s_y) equals a single pass over the vocabulary."""
    hidden, weight, bias, targets, _, _ = make_case(3, 32, 250, torch.float32, scale=20.0)
    device = torch.device(DEVICE)
    assert triton_backend.forward_split_span(3, 250, BIG_WORKSPACE, device) < 250 // 2  # >= 3 splits
    assert triton_backend.forward_split_span(3, 250, 1, device) >= 250
    split = triton_backend.forward(scored(hidden, weight, bias, targets, 1.0, BIG_WORKSPACE))
    single = triton_backend.forward(scored(hidden, weight, bias, targets, 1.0, 1))
    for a, b in zip(split, single):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-6)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_only_the_requested_gradients(needs):
    case = make_case(17, 24, 90, torch.bfloat16)
    hidden, weight, bias, targets, g_logp, g_ent = case
    full = run_triton(*case[:4], 1.0, g_logp, g_ent)[3]
    part = run_triton(*case[:4], 1.0, g_logp, g_ent, needs=needs)[3]
    for wanted, g, g_full in zip(needs, part, full):
        if wanted:
            torch.testing.assert_close(g, g_full, atol=1e-2 * g_full.abs().max().item(), rtol=0)
        else:
            assert g is None


def test_empty_batch():
    hidden, weight, bias, targets, g_logp, g_ent = make_case(0, 16, 40, torch.float32)
    logp, ent, lse, grads = run_triton(hidden, weight, bias, targets, 1.0, g_logp, g_ent)
    assert logp.shape == ent.shape == lse.shape == (0,)
    assert grads[0].shape == (0, 16) and (grads[1] == 0).all() and (grads[2] == 0).all()


SM90_COMPILE_SCRIPT = textwrap.dedent(
    """
    import json, re, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from asymgrpo_kernels.triton.configs import BACKWARD_CONFIGS, FORWARD_CONFIGS
    from asymgrpo_kernels.triton.logprob_entropy_bwd import _backward_kernel
    from asymgrpo_kernels.triton.logprob_entropy_fwd import _forward_kernel

    def compile_for_sm90(kernel, config, pointer_dtypes, flags):
        # what the JIT specializes for contiguous, 16-byte aligned inputs: unit strides become
        # constants, other integers and pointers carry divisibility-by-16
        consts = {**flags, **config.kwargs, "stride_hk": 1, "stride_wk": 1}
        sig, attrs = {}, {}
        for i, name in enumerate(kernel.fn.arg_names):
            if name in consts:
                sig[name] = "constexpr"
            elif name == "inv_temperature":
                sig[name] = "fp32"
            else:
                sig[name] = "*" + pointer_dtypes[name] if name in pointer_dtypes else "i32"
                attrs[(i,)] = [["tt.divisibility", 16]]
        source = ASTSource(kernel.fn, sig, consts, attrs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        ir = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ttgir"]
        return {op: len(re.findall(op, ir)) for op in ("async_copy_global_to_local", "warp_group_dot ", "atomic_rmw")}

    bf16 = {"h_ptr": "bf16", "w_ptr": "bf16", "b_ptr": "bf16", "targets_ptr": "i64", "h_offsets_ptr": "i64",
            "positions_ptr": "i64"}
    fp32 = ("partials_ptr", "lse_ptr", "entropy_ptr", "g_logp_ptr", "g_ent_ptr", "dh_ptr", "dw_ptr", "db_ptr")
    pointers = {**bf16, **{name: "fp32" for name in fp32}}
    flags = {"HAS_BIAS": True, "UPCAST": False, "DOT_PRECISION": "tf32"}
    need = {"NEED_H": True, "NEED_W": True, "NEED_B": True}
    print(json.dumps({
        "forward": compile_for_sm90(_forward_kernel, FORWARD_CONFIGS[0], pointers, flags),
        "backward": compile_for_sm90(_backward_kernel, BACKWARD_CONFIGS[0], pointers, {**flags, **need}),
    }))
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the tests above compile and run the kernels natively")
def test_kernels_compile_for_hopper_with_pipelined_loads():
    """The interpreter never compiles: build both kernels for sm_90 (bf16, first CUDA config).

    Checks what only compilation shows: the kernels type-check and lower, their tl.dot become
    Hopper warp-group MMAs, their H loops are software-pipelined (asynchronous global-to-shared
    copies) and the backward's gradient updates are atomics.
    """
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SM90_COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    for kernel in ("forward", "backward"):
        assert ops[kernel]["async_copy_global_to_local"] > 0, (kernel, ops)
        assert ops[kernel]["warp_group_dot "] > 0, (kernel, ops)
    assert ops["backward"]["atomic_rmw"] >= 3, ops  # dh, dW, db
