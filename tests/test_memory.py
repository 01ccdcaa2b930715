"""The torch path never holds [tokens x vocab]: peak memory of forward + backward, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

N_TOKENS, HIDDEN, VOCAB = 16_384, 32, 32_768  # float32 logits would take N * V * 4 = 2 GiB
LOGITS_BYTES = N_TOKENS * VOCAB * 4

SCRIPT = textwrap.dedent(
    f"""
    import json, torch
    from asymgrpo_kernels import fused_linear_logprob_entropy

    def rss(field):
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith(field))
        return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    hidden = torch.randn({N_TOKENS}, {HIDDEN}, requires_grad=True)
    weight = (torch.randn({VOCAB}, {HIDDEN}) / {HIDDEN} ** 0.5).requires_grad_()
    targets = torch.randint(0, {VOCAB}, ({N_TOKENS},))
    grads_bytes = hidden.numel() * 4 + weight.numel() * 4
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = rss("VmRSS:")
    logprobs, entropy = fused_linear_logprob_entropy(hidden, weight, targets, backend="torch")
    (logprobs.sum() + entropy.sum()).backward()
    peak = rss("VmHWM:")
    print(json.dumps({{"extra_bytes": peak - before - grads_bytes, "finite": bool(hidden.grad.isfinite().all())}}))
    """
)


@pytest.mark.slow
def test_forward_backward_peak_memory_is_a_fraction_of_the_logits():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["extra_bytes"] < LOGITS_BYTES / 4, (
        f"peak extra memory {result['extra_bytes'] / 2**20:.0f} MiB is not under a quarter of the "
        f"{LOGITS_BYTES / 2**20:.0f} MiB the float32 logits would take"
    )
