"""Benchmark JSON -> PNG plots (time and memory against N and V) and a Markdown table.

    python benchmarks/plot.py [FILES...] [--md benchmarks/results/results.md] [--png-dir DIR] [--no-png]

FILES default to benchmarks/results/*.json. Suite files (written by the pytest suites) give
one table each and, where N or V takes several values, one figure per task: forward +
backward time and peak extra memory against N (at the most common H, V) and against V (at
the most common N, H), one line per implementation; prompt shapes (and suites with a single
plain shape) get bar charts per shape instead. train_step and compare_revisions files give a
small table each. Where the suites measured any of the GPU goals (benchmarks/goals.py), their
table comes first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/plot.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import goals  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _check_cell(row: dict) -> str:
    check = row.get("check") or {}
    verdict = check.get("verdict", "")
    if "errors" in check:
        return f"{verdict} ({max(check['errors'].values()):.0e} <= {check['tolerance']:g})" if verdict == "agrees" else (
            f"**{verdict}** (max err {max(check['errors'].values()):.1e}, tol {check['tolerance']:g})"
        )
    return verdict.split(" (")[0]


def _n_cell(row: dict) -> str:
    """N, with the prompt share on prompt shapes (e.g. "4096, prompt 50%")."""
    pct = _prompt_pct(row)
    return f"{row['n_tokens']}, prompt {pct}%" if pct else str(row["n_tokens"])


def _scored_cell(row: dict) -> str:
    """Tokens whose result counts for the task (the floor projects them all)."""
    scored = row.get("scored_tokens")
    return "-" if scored is None else str(scored)


def prompt_table(rows: list[dict]) -> list[str]:
    """Lines of a second table for prompt-shape rows: each against its full-mask twin."""
    prompt = [r for r in rows if r["status"] in ("ok", "mismatch") and _prompt_pct(r)]
    if not prompt:
        return []
    pcts = "/".join(f"{p}%" for p in sorted({_prompt_pct(r) for r in prompt}))
    lines = [
        "",
        f"Prompt tokens: the same inputs with the first {pcts} of every sequence prompt (mask 0 for the loss, "
        "target -100 for the kernel). The floor and the materialized reference still project all N tokens; "
        "`x full mask` divides by the same implementation's time at the plain shape (close to the scored share "
        "when only scored rows are projected).",
        "",
        "| task | implementation | shape | mode | scored / N | time (ms) | full mask (ms) | x full mask "
        "| x floor (all N) | x reference | peak extra (MiB) | memory x full mask |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    full = {(r["task"], r["impl"], r["shape_id"], r["mode"]): r for r in rows if r["status"] in ("ok", "mismatch")}
    for r in prompt:
        base_id = r["shape_id"].rsplit("-prompt", 1)[0]
        twin = full.get((r["task"], r["impl"], base_id, r["mode"]))
        lines.append(
            f"| {r['task']} | {r['label']} | {r['shape_id']} | {r['mode']} | {_scored_cell(r)} / {r['n_tokens']} "
            f"| {r['time_s'] * 1e3:.1f} | {_fmt(twin and twin['time_s'] * 1e3, '.1f')} "
            f"| {_fmt(r.get('time_vs_full_mask'), '.2f')} | {_fmt(r.get('time_vs_floor'), '.2f')} "
            f"| {_fmt(r.get('time_vs_reference'), '.2f')} | {r['peak_extra_bytes'] / MIB:.0f} "
            f"| {_fmt(r.get('memory_vs_full_mask'), '.2f')} |"
        )
    return lines


def suite_table(doc: dict) -> str:
    """Markdown for one suite file: a header with the run's metadata, the table, the skips."""
    meta = doc["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines = [
        f"### {doc['suite']} on {meta['device_name']}",
        "",
        f"{meta['date_utc']}, commit {meta.get('git_commit')}, preset `{meta['preset']}`, torch {meta['torch']}"
        + (f" (CUDA {meta['cuda']})" if meta.get("cuda") else "") + f", {versions}.",
        "",
        "| task | implementation | N | scored | H | V | dtype | mode | time (ms) | x reference | x floor | TFLOP/s "
        "| peak extra (MiB) | memory x reference | entropy | agrees with ours |",
        "|---|---|--:|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    skipped = defaultdict(list)
    for r in doc["rows"]:
        if r["status"] not in ("ok", "mismatch"):
            skipped[(r["label"], r["status"], r.get("reason", ""))].append(f"{r['shape_id']} {r['mode']}")
            continue
        lines.append(
            f"| {r['task']} | {r['label']} | {_n_cell(r)} | {_scored_cell(r)} | {r['hidden']} | {r['vocab']} | {r['dtype']} "
            f"| {r['mode']} "
            f"| {r['time_s'] * 1e3:.1f} | {_fmt(r.get('time_vs_reference'), '.2f')} | {_fmt(r.get('time_vs_floor'), '.2f')} "
            f"| {r['tflops']:.3g} | {r['peak_extra_bytes'] / MIB:.0f} | {_fmt(r.get('memory_vs_reference'), '.3f')} "
            f"| {r['entropy']} | {_check_cell(r)} |"
        )
    lines += prompt_table(doc["rows"])
    if skipped:
        lines += ["", "Not measured:"]
        for (label, status, reason), where in skipped.items():
            lines.append(f"- {label} ({status}, {len(where)} cases): {reason}")
    notes = sorted({f"{r['label']}: {r['notes']}" for r in doc["rows"] if r.get("notes")})
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    methods = sorted({r["memory_method"] for r in doc["rows"] if r.get("memory_method")})
    lines += ["", "Peak extra memory: peak during the call minus what was allocated before it (the inputs) and minus "
              "what it returns (outputs, or the gradients); measured by " + "; ".join(methods) + "."]
    return "\n".join(lines)


def train_step_table(doc: dict) -> str:
    meta = doc["meta"]
    tokens = f"{doc['batch']} x {doc['seq']} tokens"
    if "prompt" in doc:
        tokens = (f"{doc['batch']} x ({doc['prompt']} prompt + {doc['completion']} completion) tokens, "
                  f"{doc['scored_tokens']} of {doc['loss_rows']} loss rows scored")
    cpu = any("peak_extra_bytes" in r for r in doc["rows"])
    lines = [
        f"### Training step of a randomly initialised {doc['model']} on {meta['device_name']}",
        "",
        f"{meta['date_utc']}, torch {meta['torch']}, {tokens}, {doc['dtype']}, "
        f"median of {doc['timed_steps']} steps after {doc['warmup_steps']} warm-up steps"
        + (", gradient checkpointing" if doc.get("gradient_checkpointing") else "")
        + (", each path in a fresh process (peak RSS)." if cpu else "."),
        "",
        "| loss path | step time (s) | peak memory (GiB) |" + (" peak extra over model + AdamW state (GiB) |" if cpu else "")
        + " loss |",
        "|---|--:|--:|" + ("--:|" if cpu else "") + "--:|",
    ]
    for r in doc["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['path']} | {r['status']}: {r.get('reason', '')} | |" + (" |" if cpu else "") + " |")
            continue
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
        extra = f" {_fmt(r.get('peak_extra_bytes') and r['peak_extra_bytes'] / 2**30, '.2f')} |" if cpu else ""
        lines.append(f"| {r['path']} | {r['step_time_s']:.3f} | {peak} |{extra} {r['loss']:.4f} |")
    return "\n".join(lines)


def compare_table(doc: dict) -> str:
    """Markdown for a compare_revisions.py file: base revision vs working tree, per case."""
    meta, base, new = doc["meta"], doc["base"], doc["new"]
    tree = f"working tree (HEAD {new['head'][:12]}{', with uncommitted changes' if new.get('uncommitted_changes') else ''})"
    lines = [
        f"### asymgrpo_kernels: {tree} vs {base['rev']} ({base['commit'][:12]}) on {meta['device_name']}",
        "",
        f"{meta['date_utc']}, torch {meta['torch']}, backend {doc['backend']}, {doc['mode']}, size `{doc['size']}`, "
        f"median of {doc['rounds']} rounds per side, the two sides alternating round by round in one process.",
        "",
        "| task | shape | scored / N | base (ms) | new (ms) | new / base | base min (ms) | new min (ms) "
        "| base peak extra (MiB) | new peak extra (MiB) | memory new / base | new agrees with base |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in doc["rows"]:
        check = r["check"]
        err = max(check["errors"].values())
        agree = f"{check['verdict']} ({err:.0e}, tol {check['tolerance']:g})"
        mem = [r.get(f"{side}_peak_extra_bytes") for side in ("base", "new")]
        lines.append(
            f"| {r['task']} | {r['shape_id']} | {r['scored_tokens']} / {r['n_tokens']} "
            f"| {r['base_time_s'] * 1e3:.1f} | {r['new_time_s'] * 1e3:.1f} | {r['time_ratio']:.3f} "
            f"| {r['base_time_min_s'] * 1e3:.1f} | {r['new_time_min_s'] * 1e3:.1f} "
            f"| {_fmt(mem[0] and mem[0] / MIB, '.0f')} | {_fmt(mem[1] and mem[1] / MIB, '.0f')} "
            f"| {_fmt(r.get('memory_ratio'), '.2f')} | {agree} |"
        )
    return "\n".join(lines)


def _slices(rows: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """The N slice (most common H, V) and the V slice (most common N, H) of measured rows."""
    hv = Counter((r["hidden"], r["vocab"]) for r in rows).most_common(1)[0][0]
    nh = Counter((r["n_tokens"], r["hidden"]) for r in rows).most_common(1)[0][0]
    return {
        "n_tokens": (f"H={hv[0]}, V={hv[1]}", [r for r in rows if (r["hidden"], r["vocab"]) == hv]),
        "vocab": (f"N={nh[0]}, H={nh[1]}", [r for r in rows if (r["n_tokens"], r["hidden"]) == nh]),
    }


def _prompt_pct(row: dict) -> int:
    return row.get("prompt_pct") or (row.get("shape") or {}).get("prompt_pct", 0)


def suite_plots(doc: dict, png_dir: Path, stem: str, mode: str = "fwd+bwd") -> list[Path]:
    """One PNG per task with 2 x 2 panels: time and memory against N and against V."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in doc["rows"] if r["status"] in ("ok", "mismatch")]
    prompt = [r for r in ok if _prompt_pct(r)]
    measured = [r for r in ok if r["mode"] == mode and not _prompt_pct(r)]
    paths = []
    for task in sorted({r["task"] for r in measured} - {"floor"}):
        rows = [r for r in measured if r["task"] in (task, "floor")]
        slices = _slices(rows)
        # Prompt shapes share N, H, V with a plain one: bars of their own, never points on the lines.
        bars = [r for r in prompt if r["task"] in (task, "floor")]
        if all(len({r[axis] for r in sl}) < 2 for axis, (_, sl) in slices.items()):
            bars += [r for r in ok if r["task"] in (task, "floor") and not _prompt_pct(r)]
        if bars:
            paths += _shape_bars(doc, bars, png_dir, f"{stem}-{task}", plt)
        if all(len({r[axis] for r in sl}) < 2 for axis, (_, sl) in slices.items()):
            continue
        fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
        for col, (axis, (fixed, sl)) in enumerate(slices.items()):
            for label in sorted({r["label"] for r in sl}):
                pts = sorted((r[axis], r) for r in sl if r["label"] == label)
                xs = [x for x, _ in pts]
                style = {"linestyle": "--", "color": "black"} if label == "3-matmul floor" else {"marker": "o"}
                axes[0, col].plot(xs, [r["time_s"] * 1e3 for _, r in pts], label=label, **style)
                if label != "3-matmul floor":
                    axes[1, col].plot(xs, [max(r["peak_extra_bytes"], 0) / MIB for _, r in pts], label=label, **style)
            name = "tokens N" if axis == "n_tokens" else "vocabulary V"
            axes[0, col].set(title=f"time vs {name} ({fixed})", xlabel=name, ylabel="time (ms)", xscale="log", yscale="log")
            axes[1, col].set(title=f"peak extra memory vs {name} ({fixed})", xlabel=name, ylabel="MiB",
                             xscale="log", yscale="symlog")
            for ax in axes[:, col]:
                ax.grid(True, which="both", alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        meta = doc["meta"]
        fig.suptitle(f"{doc['suite']}: {task} ({mode}), {meta['device_name']}, {meta['date_utc']}")
        fig.tight_layout()
        path = png_dir / f"{stem}-{task}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _shape_bars(doc: dict, rows: list[dict], png_dir: Path, stem: str, plt) -> list[Path]:
    """Bars of time and peak extra memory per implementation, for each shape of a suite."""
    paths = []
    for shape_id in sorted({r["shape_id"] for r in rows}):
        at = [r for r in rows if r["shape_id"] == shape_id]
        labels = list(dict.fromkeys(r["label"] for r in at))
        fig, axes = plt.subplots(1, 2, figsize=(13, 0.6 * len(labels) + 2.2))
        for i, mode in enumerate(("fwd+bwd", "fwd")):
            by_label = {r["label"]: r for r in at if r["mode"] == mode}
            ys = [j + 0.4 * i for j in range(len(labels))]
            times = [by_label[lb]["time_s"] * 1e3 if lb in by_label else 0 for lb in labels]
            mems = [max(by_label[lb]["peak_extra_bytes"], 0) / MIB if lb in by_label and lb != "3-matmul floor" else 0
                    for lb in labels]
            axes[0].barh(ys, times, height=0.4, label=mode)
            axes[1].barh(ys, mems, height=0.4, label=mode)
        for ax, title in zip(axes, ("time (ms)", "peak extra memory (MiB)")):
            ax.set_yticks([j + 0.2 for j in range(len(labels))], labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(title)
            ax.grid(True, axis="x", alpha=0.3)
        axes[0].legend(fontsize=8)
        meta = doc["meta"]
        fig.suptitle(f"{doc['suite']} {shape_id}, {meta['device_name']}, {meta['date_utc']}", fontsize=10)
        fig.tight_layout()
        path = png_dir / f"{stem}-{shape_id}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--md", type=Path, default=RESULTS / "results.md")
    parser.add_argument("--png-dir", type=Path, default=None, help="default: next to each JSON file")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*.json"))
    sections, docs = [], []
    for path in files:
        doc = json.loads(path.read_text())
        docs.append(doc)
        if "suite" in doc:
            sections.append(suite_table(doc))
            if not args.no_png:
                for png in suite_plots(doc, args.png_dir or path.parent, path.stem):
                    sections[-1] += f"\n\n![{doc['suite']} {png.stem}]({png.name})"
                    print(f"wrote {png}")
        elif doc.get("kind") == "train_step":
            sections.append(train_step_table(doc))
        elif doc.get("kind") == "compare_revisions":
            sections.append(compare_table(doc))
    if any(verdict.met is not None for _, verdict in goals.verdicts(docs)):
        sections.insert(0, goals.goals_table(docs))
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("# Benchmark results\n\nGenerated by `python benchmarks/plot.py` from the JSON files beside it.\n\n"
                       + "\n\n".join(sections) + "\n")
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
