#!/usr/bin/env bash
# One bounded run on a GPU machine (H100/H200): proves the kernels and writes the headline rows.
#
#   bash scripts/gpu_check.sh [--dry-run] [LOG_DIR]      # LOG_DIR: $OUT/gpu-check, else ./gpu-check
#
# Stages run in order, each under `timeout -s KILL` (a process spinning in a CUDA sync ignores
# SIGTERM) and each writing its log into LOG_DIR as it goes, so a killed stage keeps what it
# finished; stages.txt says each stage's exit status and seconds.  The limits add up to 520 s.
#   1 env       versions, nvidia-smi, install without building the CUDA extension
#   2 smoke     every Triton kernel variant at T=8 on the device against the reference (compiled
#               first in parallel into the run's Triton cache), compile and run time each
#   3 headline  the four benchmark cells, bidirectional with lengths, at the headline shapes:
#               outputs and every gradient against the float32 reference
#   4 bench-*   headline benchmark rows: fastrnn-triton, cuDNN (bf16 and fp16), reference-eager,
#               torch-loop; peak memory and error columns; result files in LOG_DIR/bench
#   5 cuda      build the CUDA extension (ninja, all cores), its tests, its headline rows
#   6 barrier   µs per grid barrier against the number of programs (bench.barrier)
# --dry-run prints the plan and runs each Python stage's own listing (no GPU needed).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
logs="${1:-${OUT:+$OUT/gpu-check}}"
logs="${logs:-gpu-check}"
mkdir -p "$logs/bench"
logs="$(cd "$logs" && pwd)"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TRITON_CACHE_DIR="$logs/triton-cache"
cores="$(nproc)"
: > "$logs/stages.txt"

# stage NAME SECONDS COMMAND: runs COMMAND (a bash string) under a hard limit into NAME.log.
stage() {
    local name="$1" limit="$2" command="$3" start rc
    echo "== $name (limit ${limit}s): $command" | tee -a "$logs/stages.txt"
    if [ "$dry" = 1 ]; then
        return 0
    fi
    start=$(date +%s)
    timeout -s KILL "$limit" bash -c "$command" > "$logs/$name.log" 2>&1
    rc=$?
    echo "$name: rc=$rc in $(( $(date +%s) - start )) s$([ "$rc" = 137 ] && echo ' (killed at the limit)')" \
        | tee -a "$logs/stages.txt"
    tail -n 8 "$logs/$name.log"
    return 0
}

headline_a="-B 64 -H 512 -T 512"    # bfloat16
headline_b="-B 16 -H 768 -T 1024"   # float16
bench="python -m bench.run --cells ln_lstm,gru_reg,lstm,gru --modes train,forward \
--out-dir $logs/bench --no-progress --warmup 2 --repeats 10 --min-repeats 3 --row-seconds 2"
main_impls="fastrnn-triton,cudnn,reference-eager,torch-loop"

stage env 45 "python -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", \
torch.version.cuda, \"triton\", triton.__version__)'; nvidia-smi; \
FASTRNN_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps -e ."

if [ "$dry" = 1 ]; then
    echo "-- dry run: the Python stages list their runs"
    python tests/gpu_stages.py smoke --out "$logs/smoke.jsonl" --dry-run | tail -n 1
    python tests/gpu_stages.py headline --out "$logs/headline.jsonl" --dry-run | tail -n 1
    python -m bench.run --help > /dev/null && echo "bench.run: ready"
    python -m bench.barrier --help > /dev/null && echo "bench.barrier: ready"
fi

# Compiling every variant for sm_90 in parallel fills the run's Triton cache, so the smoke's
# launches find their kernels compiled.
prewarm="for i in \$(seq 0 $((cores - 1))); do \
python tests/static_variants.py --shard \$i/$cores > $logs/prewarm-\$i.jsonl & done; wait"
stage smoke 120 "$prewarm; python tests/gpu_stages.py smoke --out $logs/smoke.jsonl"

stage headline 75 "python tests/gpu_stages.py headline --out $logs/headline.jsonl"

# One stage per invocation: bench.run writes its result file when it ends.
stage bench-a 60 "$bench $headline_a --dtypes bfloat16 --impls $main_impls"
stage bench-a-fp16 15 "$bench $headline_a --dtypes float16 --impls cudnn"
stage bench-b 60 "$bench $headline_b --dtypes float16 --impls $main_impls"
stage bench-b-bf16 15 "$bench $headline_b --dtypes bfloat16 --impls cudnn"

stage cuda 100 "MAX_JOBS=$cores FASTRNN_BUILD_CUDA=1 pip install -v --no-build-isolation --no-deps -e . \
2>&1 | grep -i 'fastrnn\|error' ; python -m pytest -q -x tests/test_cuda_backend.py \
tests/test_module_backends.py -k cuda; \
$bench $headline_a --dtypes bfloat16 --impls fastrnn-cuda; \
$bench $headline_b --dtypes float16 --impls fastrnn-cuda"

stage barrier 30 "python -m bench.barrier --out-dir $logs/bench"

echo "gpu_check: logs in $logs"
cat "$logs/stages.txt"
