#!/usr/bin/env bash
# The one bounded run on a GPU machine (H100/H200, one command of at most 10 minutes): installs
# fastrnn, proves the kernels against the reference and measures the headline rows.
#
#   bash scripts/gpu_check.sh [--dry-run | --collect] [OUT]   # OUT: $OUT, else ./gpu-check-out
#
# OUT receives at most 8 files, always the same names (OUT_FILES below), refreshed after every
# stage so that a run cut short still returns what it finished.  Everything else — stage logs,
# the Triton cache (1000+ files), bench.run's files — stays under WORK ($GPU_CHECK_WORK, default
# /tmp/gpu-check), its logs and bench files packed into OUT/logs.tar.gz.
#
# Stages run one after another, each under `timeout -s KILL` (a process spinning in a CUDA sync
# ignores SIGTERM); their limits add up to at most 540 s.  Measured on 2 CPU cores: the 32
# headline-shape kernels compile in ~134 s (a layer-norm forward at H=768 alone ~20 s), the ~180
# of the smoke variants in 1-14 s each (~550 s in all), over the GPU machine's 16 cores ~50 s;
# the reference backend's Python loop (the headline references, the float64 rows of bench) and
# the torch loop cost 2-10 ms per step each on such a core.
#   install   pip install -e . without the CUDA extension; import fastrnn and fastrnn.kernels:
#             a failure stops the run here, saying why
#   prewarm   records the Triton launches of smoke, headline, bench and check on this GPU and
#             compiles each distinct one into the Triton cache, one shard per core
#   smoke     every Triton kernel variant (T <= 8) against the reference (fastrnn.check.compare)
#   headline  the four benchmark cells, bidirectional with lengths, at the headline shapes
#   cuda      the tests of the CUDA extension, which is built in place in the background from
#             the end of prewarm (setup.py build_ext: the installation the stages import stays
#             untouched; at most four nvcc jobs, beside stages that use a core and the GPU)
#   check     python -m fastrnn.check --device cuda: the report a user would paste
#   bench-a/b the headline shapes (B=64 H=512 T=512 bfloat16, B=16 H=768 T=1024 float16), every
#             cell (ln_lstm, gru_reg, lstm, gru), train and forward: fastrnn-triton (and
#             fastrnn-cuda where its tests passed) and cuDNN, each row written as it finishes
#   barrier   µs per grid barrier against the number of programs (bench.barrier)
#   loop-a/b  the eager baseline of the headline rows: the torch loop of ln_lstm and gru_reg
#             (train at shape a, train and forward at shape b), last: its rows take seconds each
# stdout: per stage its exit status, seconds, the Triton cache entries it added (kernels the
# prewarm missed) and a digest (pass/fail counts, the first error of each kind, at the end the
# bench rows), the same as OUT/summary.txt.  --dry-run prints the plan and what comes back and
# runs no stage; --collect refreshes OUT from WORK (after a run that was cut off).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=run
case "${1:-}" in --dry-run) mode=dry; shift ;; --collect) mode=collect; shift ;; esac
out="${1:-${OUT:-gpu-check-out}}"
work="${GPU_CHECK_WORK:-/tmp/gpu-check}"
logs="$work/logs"
OUT_FILES="summary.txt smoke.jsonl headline.jsonl check.json bench.json bench.md barrier.json logs.tar.gz"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$mode" = run ]; then rm -rf "$work"; fi
mkdir -p "$logs" "$work/bench" "$work/barrier"
summary="$work/summary.txt"
[ "$mode" = collect ] || : > "$summary"
cores="$(nproc)"
total=0
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR="$work/triton-cache" MAX_JOBS="$cores"

say() { echo "$*" | tee -a "$summary"; }

# collect: OUT gets the fixed files, nothing else.
collect() {
    local from name
    cp -f "$summary" "$out/summary.txt"
    for name in smoke.jsonl headline.jsonl check.json; do
        [ -e "$work/$name" ] && cp -f "$work/$name" "$out/$name"
    done
    # bench.run merges a day's runs on one GPU into one <gpu>-<date>.json (and .md).
    from="$(ls "$work"/bench/*.json 2>/dev/null | head -n 1)"
    [ -n "$from" ] && cp -f "$from" "$out/bench.json" && cp -f "${from%.json}.md" "$out/bench.md"
    from="$(ls "$work"/barrier/*.json 2>/dev/null | head -n 1)"
    [ -n "$from" ] && cp -f "$from" "$out/barrier.json"
    tar -czf "$out/logs.tar.gz" -C "$work" --exclude=./triton-cache .
}

cache_entries() { ls "$TRITON_CACHE_DIR" 2>/dev/null | wc -l; }

# stage NAME SECONDS COMMAND [DIGESTED FILES...]: runs COMMAND (a bash string) under a hard
# limit into logs/NAME.log, then says how it ended and digests the files (default: its log).
stage() {
    local name="$1" limit="$2" command="$3" start rc before
    shift 3
    total=$((total + limit))
    say "== $name (limit ${limit}s): $command"
    [ "$mode" = dry ] && return 0
    before="$(cache_entries)"
    start=$(date +%s)
    # In a subshell (not replaced by timeout: a second command) whose stderr is dropped: bash's
    # own "Killed" line is said better below.
    ( timeout -s KILL "$limit" bash -c "$command" > "$logs/$name.log" 2>&1; exit $? ) 2> /dev/null
    rc=$?
    say "$name: rc=$rc in $(( $(date +%s) - start )) s$([ "$rc" = 137 ] && echo ' (KILLED at the limit)');" \
        "$(( $(cache_entries) - before )) Triton cache entries added"
    python tests/gpu_stages.py summary "${@:-$logs/$name.log}" | tee -a "$summary"
    collect
    return "$rc"
}

# in_background NAME SECONDS COMMAND: starts COMMAND under its own limit into logs/NAME.log;
# WORK/NAME.rc holds its exit status once it ends, WORK/NAME.pid the group to stop it early.
in_background() {
    local name="$1" limit="$2" command="$3"
    say "== $name (in the background, limit ${limit}s, not counted): $command"
    [ "$mode" = dry ] && return 0
    ( timeout -s KILL "$limit" bash -c "$command" < /dev/null > "$logs/$name.log" 2>&1 &
      echo $! > "$work/$name.pid"; wait $!; echo $? > "$work/$name.rc" ) 2> /dev/null &
}

if [ "$mode" = collect ]; then collect; ls "$out"; exit 0; fi

stage install 35 "FASTRNN_BUILD_CUDA=0 pip install --no-build-isolation --no-deps -e . \
&& python -c 'import fastrnn, fastrnn.kernels, torch, triton; \
print(\"fastrnn at\", fastrnn.__path__[0], \"| torch\", torch.__version__, \
\"CUDA\", torch.version.cuda, \"| triton\", triton.__version__, \"|\", \
torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")' \
&& nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv"
if [ $? != 0 ]; then
    say "INSTALL FAILED: every later stage needs 'pip install -e .' and 'import fastrnn.kernels';" \
        "stopping. The log's end:"
    tail -n 40 "$logs/install.log" | tee -a "$summary"
    collect
    exit 1
fi

stage prewarm 120 "for i in \$(seq 0 $((cores - 1))); do \
python tests/gpu_stages.py prewarm --device cuda --shard \$i/$cores --out $logs/prewarm-\$i.jsonl \
> $logs/prewarm-\$i.log 2>&1 & done; wait" "$logs/prewarm-*.jsonl" "$logs/prewarm-0.log"

# Its limit ends with the cuda stage's; stopped there if still running, never beside bench.
in_background cuda-build 165 "FASTRNN_BUILD_CUDA=1 python setup.py build_ext --inplace"

stage smoke 50 "python tests/gpu_stages.py smoke --out $work/smoke.jsonl" "$work/smoke.jsonl"
stage headline 70 "python tests/gpu_stages.py headline --out $work/headline.jsonl" \
    "$work/headline.jsonl"

stage cuda 45 "while [ ! -e $work/cuda-build.rc ]; do sleep 1; done; \
grep -i 'fastrnn:\|error' $logs/cuda-build.log | tail -n 20; \
[ \"\$(cat $work/cuda-build.rc)\" = 0 ] || { echo \"build failed: rc \$(cat $work/cuda-build.rc)\"; exit 1; }; \
python -m pytest -q -x -p no:cacheprovider tests/test_cuda_backend.py \
tests/test_module_backends.py -k cuda && touch $work/cuda-ok" "$logs/cuda.log" "$logs/cuda-build.log"
if [ "$mode" = run ] && [ ! -e "$work/cuda-build.rc" ]; then
    kill -KILL -- "-$(cat "$work/cuda-build.pid")"
fi

# The cuda backend only where the extension was built and tested: fastrnn would otherwise
# compile it on first use (minutes).
cuda_ok="[ -e $work/cuda-ok ] && echo"
stage check 40 "python -m fastrnn.check --device cuda --json $work/check.json \
--backends reference,triton,native\$($cuda_ok ,cuda)" "$work/check.json" "$logs/check.log"

bench="python tests/gpu_stages.py bench"
options="--out-dir $work/bench --no-progress --warmup 1 --min-repeats 2 --repeats 20 --row-seconds 1"
fused="--impls fastrnn-triton,cudnn\$($cuda_ok ,fastrnn-cuda) $options"
stage bench-a 40 "$bench 0 $fused" --brief "$work/bench/*.json"
stage bench-b 45 "$bench 1 $fused" --brief "$work/bench/*.json"

stage barrier 20 "python -m bench.barrier --out-dir $work/barrier" "$logs/barrier.log"

loop="--impls torch-loop --cells ln_lstm,gru_reg $options"
stage loop-a 30 "$bench 0 $loop --modes train" --brief "$work/bench/*.json"
stage loop-b 45 "$bench 1 $loop" "$work/bench/*.json"

say "== limits: ${total} s in all; back in $out: $OUT_FILES"
if [ "$mode" = dry ]; then
    echo "-- dry run: the Python stages list their runs"
    python tests/gpu_stages.py smoke --out /dev/null --dry-run | tail -n 1
    python tests/gpu_stages.py headline --out /dev/null --dry-run | tail -n 1
    python tests/gpu_stages.py bench 0 --help > /dev/null && echo "bench: ready"
    python -m bench.barrier --help > /dev/null && echo "bench.barrier: ready"
    cp -f "$summary" "$out/summary.txt"   # the plan; a dry run leaves WORK's results alone
else
    collect
    echo "== gpu_check: every stage (the details above and in $out):"
    grep -E '^[a-z-]+: rc=' "$summary"
fi
exit 0
