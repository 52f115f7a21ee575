#!/usr/bin/env bash
# The test suite. On a CPU-only machine the Triton kernels run under TRITON_INTERPRET=1 and the
# GPU-marked tests are skipped; on a GPU machine run it with TRITON_INTERPRET=0 to test the
# kernels on the device. Quiet unless the arguments set pytest's verbosity themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
# A -q of ours beside the caller's would add up to -qq, which drops pytest's summary line.
verbosity=(-q)
for argument in "$@"; do
    case "$argument" in
        -q* | -v* | --quiet | --verbose | --verbosity | --verbosity=*) verbosity=() ;;
    esac
done
python -m pytest ${verbosity[@]+"${verbosity[@]}"} "$@"
