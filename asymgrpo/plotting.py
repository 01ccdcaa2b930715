"""Plot the curves of a run's metrics.jsonl into one PNG."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (
    ("reward", ("reward",)),
    ("held-out greedy accuracy", ("accuracy",)),
    ("entropy by advantage sign", ("entropy_pos", "entropy_neg", "entropy")),
    ("clip fraction", ("clip_frac_low", "clip_frac_high")),
    ("KL", ("approx_kl", "ref_kl")),
    ("vLLM / trainer |log-prob| mismatch", ("logprob_mismatch",)),
)


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path:
    """One panel per group of PANELS, x = optimizer step; keys absent from the log are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
