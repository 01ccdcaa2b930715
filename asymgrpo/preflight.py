"""A run's inputs, checked before anything heavy loads: the model, the data, the reward, the run folder.

``check_inputs`` loads the data and the reward function (both light) and raises ``ConfigError``
with one line naming what is wrong; nothing has been written or deleted by then, so a typo
never costs an earlier run. The trainer then starts from the ``RunInputs`` it returns.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .config import EMBEDDED, ConfigError, TrainConfig
from .data import Example, check_tokenizable, embedded_splits, load_examples
from .distributed import env_ranks
from .rewards import resolve_reward
from .run_dir import check_resumable, describe_run, holds_run

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RunInputs:
    """What a checked config resolves to. resume_step: the checkpoint's step (0 for a new run);
    texts_checked: whether the data was checked against the model's tokenizer (not yet for a hub model)."""

    train_set: list[Example]
    eval_set: list[Example]
    reward_fn: Callable[[str, str, str], float]
    reward_name: str
    resume_step: int
    texts_checked: bool


def check_inputs(config: TrainConfig, world_size: int | None = None) -> RunInputs:
    """Check everything a run reads and the folder it writes; raise ConfigError on the first problem.

    world_size: trainer processes (default: torchrun's WORLD_SIZE, 1 without it). Every rank runs
    these checks on its own, before the process group starts, so they fail alike and none waits.
    """
    world_size = env_ranks().world_size if world_size is None else world_size
    config.check_world_size(world_size)
    check_model(config.model)
    train_set, eval_set = load_data(config)
    reward_fn, name = load_reward(config)
    texts_checked = check_vocabulary(config, train_set, eval_set)  # may load transformers: after the light checks
    resume_step = check_output_dir(config, world_size)
    return RunInputs(train_set=train_set, eval_set=eval_set, reward_fn=reward_fn, reward_name=name,
                     resume_step=resume_step, texts_checked=texts_checked)


def check_model(name: str, key: str = "model") -> None:
    """``name`` is 'embedded', a local Hugging Face model folder, or a hub name this machine can fetch.

    A hub name that is not in the local cache fails at once when the hub cannot be reached,
    instead of after the download library's retries.
    """
    if name == EMBEDDED:
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key} {name!r} is not a Hugging Face model folder (it holds no config.json)")
        return
    if not HUB_NAME.match(name):
        raise ConfigError(f"{key} folder {name!r} does not exist")
    _check_hub(name, key)


def _check_hub(name: str, key: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    where = f"{key} {name!r} is neither a local folder nor in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise ConfigError(f"{where}, and the hub is off (HF_HUB_OFFLINE): download it first and pass its folder")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(f"{where}, and {endpoint.hostname} cannot be reached from this machine ({error}): "
                          f"download the model where there is network and pass its folder") from None


def load_data(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples; held-out: eval_dataset, else the embedded task's test split, else none."""

    def examples(source: str, split: str, part: int) -> list[Example]:
        if source == EMBEDDED:
            return embedded_splits(config.embedded_task, seed=config.seed, test_size=config.embedded_test_size,
                                   max_operand=config.embedded_max_operand)[part]
        return load_examples(source, split=split, prompt_field=config.prompt_field, answer_field=config.answer_field)

    try:
        train_set = examples(config.dataset, config.train_split, 0)
        if config.eval_dataset is not None:
            eval_set = examples(config.eval_dataset, config.eval_split, 1)
        else:
            eval_set = examples(EMBEDDED, config.eval_split, 1) if config.dataset == EMBEDDED else []
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.eval_pass_k and not eval_set:
        raise ConfigError(f"eval_pass_k {config.eval_pass_k} needs held-out data: pass eval_dataset (or set eval_pass_k 0)")
    return train_set, eval_set


def check_vocabulary(config: TrainConfig, train_set: list[Example], eval_set: list[Example]) -> bool:
    """Every prompt and answer can be written with the model's tokenizer; False when it is not local (a hub
    model: the trainer checks once it has loaded the tokenizer)."""
    if config.model == EMBEDDED:
        from .demo.tokenizer import build_char_tokenizer

        tokenizer = build_char_tokenizer()
    elif Path(config.model).expanduser().is_dir():
        tokenizer = load_tokenizer(config.model)
    else:
        return False
    check_texts(tokenizer, config, train_set, eval_set)
    return True


def load_tokenizer(path: str):
    """The model's tokenizer (``policy.load_tokenizer``); ConfigError (one line) when it cannot be loaded."""
    from .policy import load_tokenizer as load

    try:
        return load(path)
    except OSError as error:
        raise ConfigError(f"model {path!r} could not be loaded: {str(error).splitlines()[0]}") from None


def check_texts(tokenizer, config: TrainConfig, train_set: list[Example], eval_set: list[Example]) -> None:
    """ConfigError when ``tokenizer`` cannot represent a formatted prompt or an answer."""
    parts = {"prompt": train_set, "held-out prompt": eval_set}
    try:
        for what, examples in parts.items():
            check_tokenizable(tokenizer, [config.prompt_template.format(prompt=e.prompt) for e in examples], what=what)
        check_tokenizable(tokenizer, [e.answer for e in train_set + eval_set], what="answer")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def load_reward(config: TrainConfig) -> tuple[Callable[[str, str, str], float], str]:
    """(the reward function, its name); 'auto' is exact on embedded data, math-verify otherwise."""
    name = config.reward
    if name == "auto":
        name = "exact" if config.dataset == EMBEDDED else "math"
    try:
        return resolve_reward(name), name
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_output_dir(config: TrainConfig, world_size: int = 1) -> int:
    """The run folder allows what the config asks, and is writable; return the step a resume starts from."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {str(out)!r} is a file, not a folder")
    if config.resume:
        step = check_resumable(out, config.to_dict(), world_size)
    elif holds_run(out) and not config.overwrite:
        raise ConfigError(f"output_dir {str(out)!r} already holds {describe_run(out)}: pass --resume to continue "
                          f"it or --overwrite to replace it, or choose another --output-dir")
    else:
        step = 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"  # one per process: torchrun's ranks check at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output_dir {str(out)!r} is not writable: {error.strerror or error}") from None
    return step
