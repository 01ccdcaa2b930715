"""The sweep's curves: one PNG per quantity, the methods overlaid (matplotlib, Agg backend).

Each method (and grid value) is one line, the mean over its finished seeds at each step, in a
band from the smallest to the largest seed's value at that step (min..max, not an interval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .stats import band, curve

#: (file name, metrics key, y label)
PLOTS = (
    ("accuracy.png", "accuracy", "held-out greedy accuracy"),
    ("entropy.png", "entropy", "entropy (all sampled tokens)"),
    ("entropy_pos.png", "entropy_pos", "entropy of positive-advantage tokens"),
    ("entropy_neg.png", "entropy_neg", "entropy of negative-advantage tokens"),
)
CAPTION = "line: mean over seeds; band: min..max across seeds"


def write_plots(groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], folder: str | Path) -> list[Path]:
    """One PNG per entry of PLOTS in ``folder``; ``groups`` maps a line's label to its runs' metrics rows.

    Returns the files written (a quantity no run logged is still drawn, empty, so the set is fixed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, key, label in PLOTS:
        fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
        for index, (name, runs) in enumerate(groups.items()):
            curves = [curve(rows, key) for rows in runs]
            summary = band([c for c in curves if c[0]])
            if not summary["steps"]:
                continue
            color = f"C{index % 10}"
            seeds = max(summary["n"])
            few = len(summary["steps"]) < 30
            ax.plot(summary["steps"], summary["mean"], color=color, marker="o" if few else None, markersize=3,
                    label=f"{name} (n={seeds})")
            if seeds > 1:
                ax.fill_between(summary["steps"], summary["low"], summary["high"], color=color, alpha=0.2,
                                linewidth=0)
        ax.set_title(f"{label}\n{CAPTION}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        path = folder / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
