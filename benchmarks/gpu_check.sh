#!/usr/bin/env bash
# One command for a CUDA machine:
#   benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
#
# 1. installs the carried peer wheels (.whl/*.whl: liger-kernel, cut-cross-entropy) if present;
# 2. runs the test suite natively (TRITON_INTERPRET unset), the files that use CUDA first, over
#    pytest-xdist workers where it is installed; junit XML to OUT_DIR/tests.xml;
# 3. runs the kernel, loss and peer benchmarks at the GPU sizes (benchmarks/cases.py);
# 4. runs one training step of a randomly initialised Qwen2.5-1.5B-shaped model, fused loss
#    vs materialized logits (benchmarks/train_step.py);
# 5. writes a Markdown summary of the JSON files (benchmarks/plot.py --no-png).
# Everything lands in OUT_DIR (default: $OUT, else benchmarks/results/gpu-check): at most
# 8 files. Each step has a time limit (LIMIT_<STEP> seconds, defaults below) so the whole
# run fits in about 9 minutes; a step that fails or times out does not stop the others,
# and the benchmark JSON files are rewritten after every case, so a cut-short step keeps
# what it measured. Exit status: 0 if every step succeeded.
#
# --dry-run (or DRY_RUN=1): the same steps on the CPU with tiny shapes (Triton through the
# interpreter, the non-slow tests only), to catch mistakes before spending device time.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${DRY_RUN:-0}
POSITIONAL=()
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -h | --help) sed -n 2,19p "$0"; exit 0 ;;
        *) POSITIONAL+=("$arg") ;;
    esac
done
OUT_DIR=${POSITIONAL[0]:-${OUT:-benchmarks/results/gpu-check}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# The docs build, the wheel check and the TRL / verl integrations need packages the device image
# lacks (mkdocs, build, trl, verl); CI runs them on the CPU.
CPU_ONLY_TESTS=(--ignore=tests/test_docs.py --ignore=tests/test_packaging.py
                --ignore=tests/test_integration_trl.py --ignore=tests/test_integration_verl.py
                --ignore=tests/test_examples.py)
# The files whose tests run on CUDA when the machine has one go first (the rest run on the CPU
# there, as in CI), so a step cut at its limit has still checked the kernels. With pytest-xdist
# (the device image has it), files are spread over worker processes, whole files per worker.
CUDA_TESTS=(tests/test_triton_logprob_entropy.py tests/test_logprob_entropy.py tests/test_fused_loss.py
            tests/test_policy_loss.py tests/test_policy_methods.py tests/test_user_calls.py
            tests/test_advantages.py tests/test_peers_smoke.py tests/test_vocab_parallel.py)
WORKERS=()
if "$PY" -c "import xdist" 2>/dev/null; then
    WORKERS=(-n "${TEST_WORKERS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}" --dist loadfile)
fi
if [ "$DRY" = 1 ]; then
    SIZE=tiny
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
    TEST_ARGS=(-x -m "not slow" "${CPU_ONLY_TESTS[@]}")
    TRAIN_ARGS=(--dry-run)
    : "${LIMIT_TESTS:=1200}" "${LIMIT_KERNEL:=600}" "${LIMIT_LOSS:=600}" "${LIMIT_PEERS:=900}" "${LIMIT_TRAIN:=300}"
else
    SIZE=${BENCH_SIZE:-gpu}
    unset TRITON_INTERPRET
    TEST_ARGS=("${CPU_ONLY_TESTS[@]}")
    TRAIN_ARGS=()
    : "${LIMIT_TESTS:=110}" "${LIMIT_KERNEL:=90}" "${LIMIT_LOSS:=70}" "${LIMIT_PEERS:=150}" "${LIMIT_TRAIN:=60}"
fi

STATUS=()
step() { # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*"
    # SIGINT first: pytest then stops cleanly and still writes its junit XML and summary.
    timeout -s INT -k 15 "$limit" "$@"
    rc=$?
    echo "=== [$name] rc=$rc after $((SECONDS - start))s"
    STATUS+=("$name=$rc")
}

if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=${TMPDIR:-/tmp}/asymgrpo-peer-wheels
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:$SITE
else
    echo "=== [wheels] no .whl/*.whl carried: peers missing here are skipped by the benchmarks"
fi

"$PY" - <<'EOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
for dist in ("triton", "liger-kernel", "cut-cross-entropy", "transformers", "pytest-benchmark"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
SLUG=$("$PY" -c "import torch; from benchmarks.results import device_slug; print(device_slug(torch.device('cuda' if torch.cuda.is_available() else 'cpu')))")

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
BENCH=(--bench-size "$SIZE" --bench-out "$OUT_DIR" --benchmark-columns=min,median,rounds --benchmark-sort=name)
step tests "$LIMIT_TESTS" "${PYTEST[@]}" "${CUDA_TESTS[@]}" tests "${TEST_ARGS[@]}" "${WORKERS[@]}" \
    --junitxml="$OUT_DIR/tests.xml"
step bench_kernel "$LIMIT_KERNEL" "${PYTEST[@]}" benchmarks/test_bench_logprob_entropy.py "${BENCH[@]}"
step bench_loss "$LIMIT_LOSS" "${PYTEST[@]}" benchmarks/test_bench_loss.py "${BENCH[@]}"
step bench_peers "$LIMIT_PEERS" "${PYTEST[@]}" benchmarks/test_bench_peers.py "${BENCH[@]}"
step train_step "$LIMIT_TRAIN" "$PY" benchmarks/train_step.py "${TRAIN_ARGS[@]}" --out "$OUT_DIR/train_step-$SLUG.json"
step summary 30 "$PY" benchmarks/plot.py "$OUT_DIR"/*.json --md "$OUT_DIR/summary.md" --no-png

echo "=== steps: ${STATUS[*]}"
ls -la "$OUT_DIR"
for s in "${STATUS[@]}"; do [ "${s##*=}" = 0 ] || exit 1; done
exit 0
