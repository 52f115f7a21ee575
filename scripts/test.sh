#!/usr/bin/env bash
# The test suite, in two tiers (pytest marker `slow`):
#   bash scripts/test.sh            the quick tier: every code path at least once
#   bash scripts/test.sh --slow     the exhaustive tier: property-based runs, the full tiling-
#                                   variant sweep, the sm_90 static compile, broad schedule sweeps
#   bash scripts/test.sh --all      both (what CI runs, as two commands)
# Naming tests (a path under tests/ or a node id) runs them whatever their tier. Other arguments
# go to pytest. On a CPU-only machine the Triton kernels run under TRITON_INTERPRET=1 and the
# GPU-marked tests are skipped; on a GPU machine run it with TRITON_INTERPRET=0 to test the
# kernels on the device. Quiet unless the arguments set pytest's verbosity themselves. With
# pytest-xdist installed (the `test` extra) the tests run on FASTRNN_TEST_WORKERS processes
# (default: the number of cores, at most 4); FASTRNN_TEST_WORKERS=1 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
# A -q of ours beside the caller's would add up to -qq, which drops pytest's summary line.
verbosity=(-q)
tier=(-m "not slow")
cores=$(nproc)
# worksteal: a worker that runs out of tests takes some of another's, so that the tier does not
# end on one worker finishing a queue of slow tests while the others idle.
workers=(-n "${FASTRNN_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}" --dist worksteal)
arguments=()
for argument in "$@"; do
    case "$argument" in
        --slow) tier=(-m slow); continue ;;
        --all) tier=(); continue ;;
        -q* | -v* | --quiet | --verbose | --verbosity | --verbosity=*) verbosity=() ;;
        -m | -m*) tier=() ;;
        -n | -n* | --numprocesses | --numprocesses=*) workers=() ;;
        tests/* | *::*) tier=() ;;
    esac
    arguments+=("$argument")
done
if [ "${workers[1]:-0}" -le 1 ] || ! python -c "import xdist" > /dev/null 2>&1; then
    workers=()
fi
python -m pytest ${verbosity[@]+"${verbosity[@]}"} ${tier[@]+"${tier[@]}"} \
    ${workers[@]+"${workers[@]}"} ${arguments[@]+"${arguments[@]}"}
