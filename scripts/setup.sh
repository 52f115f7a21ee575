#!/usr/bin/env bash
# Creates .venv (once) with torch, triton and fastrnn installed editable, plus the extras named
# in $FASTRNN_EXTRAS (default "test,bench"). A torch already installed system-wide (a CUDA build
# on a GPU machine) is reused; otherwise the CPU wheel torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv --system-site-packages .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    pip install -q "torch==2.13.0"
fi
python -c "import setuptools, wheel" 2>/dev/null || pip install -q setuptools wheel
# --no-build-isolation: build against the torch above instead of downloading another one.
pip install -q --no-build-isolation -e ".[${FASTRNN_EXTRAS:-test,bench}]"
