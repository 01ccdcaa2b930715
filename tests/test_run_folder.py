"""The trainer as users run it, without an engine: run folders are never lost, resume restores its
config, bad inputs end in one line and exit code 2, metrics and checkpoints survive crashes."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from asymgrpo.cli import main
from asymgrpo.config import ConfigError, TrainConfig
from asymgrpo.preflight import check_inputs
from asymgrpo.run_dir import RunFolderError, keep_metrics_until, read_metrics

ASYMGRPO = shutil.which("asymgrpo")


def fake_run(out: Path, steps: int = 4, checkpoint: int | None = 4, **config) -> Path:
    """A run folder as the trainer leaves it: run.json, metrics rows, curves.png, a checkpoint marker."""
    out.mkdir(parents=True, exist_ok=True)
    saved = TrainConfig.from_dict({"steps": steps, "output_dir": str(out), **config}).to_dict()
    (out / "run.json").write_text(json.dumps({"base_model": str(out / "checkpoints" / "warmup"), "config": saved}))
    rows = [{"step": 0, "accuracy": 0.1}] + [{"step": s, "accuracy": 0.3 if s == steps else None}
                                            for s in range(1, (checkpoint or 0) + 1)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "curves.png").write_bytes(b"png")
    if checkpoint:
        folder = out / "checkpoints" / f"step_{checkpoint:06d}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.pt").write_bytes(b"state")
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, pattern: str) -> None:
    import re

    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("asymgrpo: "), (rc, err)
    assert re.search(pattern, lines[0]), lines[0]


# --- 1. an existing run is never destroyed implicitly -------------------------------------

@pytest.mark.parametrize("extra", [[], ["--model", "/nonexistent_dir"], ["--group-size", "4"]])
def test_a_new_run_into_a_run_folder_refuses_and_keeps_it(tmp_path, capsys, extra):
    out = fake_run(tmp_path / "run")
    before = snapshot(out)
    rc, _, err = run_cli(capsys, "train", "--output-dir", str(out), "--progress", "false", *extra)
    pattern = "does not exist" if "--model" in extra else "already holds a run checkpointed at step 4 of 4.*--resume.*--overwrite"
    assert_one_line_error(rc, err, pattern)
    assert snapshot(out) == before


def test_overwrite_is_checked_like_everything_else(tmp_path):
    out = fake_run(tmp_path / "run")
    config = TrainConfig.from_dict({"output_dir": str(out), "overwrite": True})
    assert check_inputs(config).resume_step == 0  # allowed; the trainer clears the run's files when it starts
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        TrainConfig.from_dict({"output_dir": str(out), "overwrite": True, "resume": True})


# --- 3. --resume restores the run's config ----------------------------------------------------

def test_resume_restores_the_saved_config(tmp_path):
    out = fake_run(tmp_path / "run", steps=30, checkpoint=20, group_size=4, lr=3e-4, seed=5)
    config = TrainConfig.load(None, {"resume": "true", "output_dir": str(out)})
    assert (config.steps, config.group_size, config.lr, config.seed, config.resume) == (30, 4, 3e-4, 5, True)
    assert check_inputs(config).resume_step == 20
    extended = TrainConfig.load(None, {"resume": "true", "output_dir": f"{out}/", "steps": "40", "eval_every": "2"})
    assert (extended.steps, extended.eval_every, extended.group_size) == (40, 2, 4)
    assert check_inputs(extended).resume_step == 20


def test_resume_refuses_changed_options_naming_them(tmp_path, capsys):
    out = fake_run(tmp_path / "run", steps=30, checkpoint=20)
    rc, _, err = run_cli(capsys, "train", "--resume", "--output-dir", str(out), "--seed", "7", "--group-size", "4")
    assert_one_line_error(rc, err, r"seed 7 \(run.json: 0\); group_size 4 \(run.json: 8\)\. Only .*steps")
    with pytest.raises(ConfigError, match="steps 10 is below step 20"):
        check_inputs(TrainConfig.load(None, {"resume": True, "output_dir": str(out), "steps": 10}))
    with pytest.raises(ConfigError, match="seed 7 .run.json: 0."):  # from Python: the whole config is compared
        check_inputs(TrainConfig(output_dir=str(out), resume=True, steps=30, seed=7))


def test_resume_with_nothing_to_resume_refuses(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", "--resume", "--output-dir", str(tmp_path / "typo"))
    assert_one_line_error(rc, err, "nothing to resume in .*typo: it holds no run.json")
    assert not (tmp_path / "typo").exists()


def test_resume_of_a_finished_run_says_so(tmp_path, capsys):
    out = fake_run(tmp_path / "run", steps=4, checkpoint=4)
    rc, stdout, _ = run_cli(capsys, "train", "--resume", "--output-dir", str(out))
    assert rc == 0
    assert "has already finished its 4 steps (held-out greedy accuracy 0.100 -> 0.300): nothing to resume" in stdout


# --- 5, 6. user errors: one line on stderr, exit code 2 ----------------------------------------

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A local Hugging Face folder with the embedded model's character tokenizer (untrained)."""
    from asymgrpo.demo.model import build_tiny_qwen2
    from asymgrpo.demo.tokenizer import build_char_tokenizer

    folder = tmp_path_factory.mktemp("model")
    tokenizer = build_char_tokenizer()
    build_tiny_qwen2(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "malformed jsonl line": (lambda t, m: ["--model", m, "--dataset", _write(t / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": \n')],
                             r"d\.jsonl line 2: not valid JSON"),
    "record without its answer": (lambda t, m: ["--model", m, "--dataset", _write(t / "d.jsonl", '{"prompt": "1+1=", "solution": "2"}\n')],
                                  r"d\.jsonl line 1: no field 'answer'"),
    "missing model folder": (lambda t, m: ["--model", str(t / "no_such_model")], r"model folder .*no_such_model' does not exist"),
    "folder that is no model": (lambda t, m: ["--model", str(t)], r"is not a Hugging Face model folder"),
    "missing config file": (lambda t, m: ["--config", str(t / "none.yaml")], r"config file .*none\.yaml' cannot be read: No such file"),
    "yaml syntax error": (lambda t, m: ["--config", _write(t / "bad.yaml", "steps: 3\ngroup_size: [4\n")],
                          r"bad\.yaml' is not valid YAML: .* at line 3"),
    "output dir under a file": (lambda t, m: ["--output-dir", _write(t / "file", "") + "/run"], r"output_dir .* is not writable"),
    "unimportable reward": (lambda t, m: ["--reward", "no_such_module_xyz:fn"], r"reward 'no_such_module_xyz:fn' could not be loaded"),
    "missing eval dataset beside embedded data": (lambda t, m: ["--eval-dataset", str(t / "held_out.jsonl")],
                                                  r"eval_dataset file .*held_out\.jsonl' does not exist"),
    "embedded model on user data": (lambda t, m: ["--dataset", _write(t / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}\n')],
                                    r"start from its warm-up checkpoint.*--model runs/asymgrpo/checkpoints/warmup"),
    "characters the embedded model does not know": (
        lambda t, m: ["--eval-dataset", _write(t / "e.jsonl", '{"prompt": "Compute 12+34=", "answer": "46"}\n')],
        r"held-out prompt.*does not know: 'C'.*'u'"),
    "characters the warm-up checkpoint does not know": (
        lambda t, m: ["--model", m, "--dataset", _write(t / "d.jsonl", '{"prompt": "Compute 12+34=", "answer": "46"}\n')],
        r"prompt.*does not know: 'C'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, capsys, model_folder):
    argv, pattern = BAD_INPUTS[case]
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "train", "--output-dir", str(out), *argv(tmp_path, str(model_folder)))
    assert_one_line_error(rc, err, pattern)
    assert not (out / "run.json").exists()


def test_eval_of_a_missing_checkpoint(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "eval", str(tmp_path / "checkpoints" / "step_000040"))
    assert_one_line_error(rc, err, r"checkpoint folder .*step_000040' does not exist")


@pytest.mark.parametrize("env, pattern", [({"HF_HUB_OFFLINE": "1"}, "the hub is off"),
                                          ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "127.0.0.1 cannot be reached")])
def test_a_hub_name_without_network_fails_at_once(env, pattern, tmp_path, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    started = time.perf_counter()
    rc, _, err = run_cli(capsys, "train", "--model", "someone/some-model-xyz", "--dataset",
                         _write(tmp_path / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}\n'),
                         "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(rc, err, f"model 'someone/some-model-xyz' is neither a local folder nor in the Hugging Face cache.*{pattern}")
    assert time.perf_counter() - started < 10


@pytest.mark.skipif(ASYMGRPO is None, reason="the asymgrpo console script is not installed")
def test_the_console_script_finds_a_reward_in_the_current_folder(tmp_path):
    """`asymgrpo train --reward my_rewards:fn` imports my_rewards.py from the current folder, as `python -m` does.

    The function named is missing, so the run stops at once: the message shows the module itself was found.
    """
    (tmp_path / "my_rewards.py").write_text("def score(prompt, completion, answer):\n    return 1.0\n")
    result = subprocess.run([ASYMGRPO, "train", "--reward", "my_rewards:scores"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "has no attribute 'scores'" in result.stderr and "Traceback" not in result.stderr, result.stderr


# --- 8. crash safety: a torn metrics line, fsync'd checkpoints --------------------------------

def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_named(tmp_path):
    rows = [{"step": s, "reward": 0.5} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    assert read_metrics(tmp_path) == (rows, True)
    assert keep_metrics_until(tmp_path, 2) is True
    assert read_metrics(tmp_path) == (rows[:3], False)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"st\n{"step": 2}\n')
    with pytest.raises(RunFolderError, match="line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_checkpoints_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from asymgrpo import checkpoint, durable
    from asymgrpo.demo.model import build_tiny_qwen2
    from asymgrpo.demo.tokenizer import build_char_tokenizer

    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                        real_fsync(fd)))
    monkeypatch.setattr(Path, "rename", lambda self, target: (events.append(("rename", str(self))),
                                                              real_rename(self, target))[1])
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    final = checkpoint.save_checkpoint(tmp_path, 3, model, tokenizer, optimizer, keep=2)

    rename = events.index(("rename", str(tmp_path / "checkpoints" / ".tmp_step_000003")))
    synced_before = {path for kind, path in events[:rename] if kind == "fsync"}
    written = {str(tmp_path / "checkpoints" / ".tmp_step_000003" / p.relative_to(final)) for p in final.rglob("*")}
    assert written and written <= synced_before
    assert ("fsync", str(tmp_path / "checkpoints")) in events[rename:]


def test_input_errors_come_before_the_heavy_imports(tmp_path):
    """A missing model folder or an unimportable reward exits 2 before transformers or vLLM is imported."""
    code = textwrap.dedent(f"""
        import sys
        from asymgrpo.cli import main
        codes = [main(["train", "--model", "/nonexistent_dir", "--output-dir", {str(tmp_path)!r}]),
                 main(["train", "--reward", "no_such_module_xyz:fn", "--output-dir", {str(tmp_path)!r}])]
        print("rc", codes, "heavy", [m for m in ("transformers", "vllm") if m in sys.modules])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "rc [2, 2] heavy []" in result.stdout, result.stdout + result.stderr
