#!/usr/bin/env bash
# The benchmark (the main job): every implementation side by side; arguments go to bench.run
# (--help lists them). Without a GPU it runs a small CPU grid of the references.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m bench.run "$@"
