#!/usr/bin/env bash
# On a GPU machine: install fastrnn against the machine's torch, run the GPU tests (kernels on
# the device, no interpreter), then the headline benchmark rows. Logs and result files go to
# $1 (default ./gpu-check). Each stage is bounded so the whole fits a 10-minute slot.
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${1:-gpu-check}"
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
python -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" \
    | tee "$logs/versions.txt"
pip install -q --no-build-isolation --no-deps -e . > "$logs/install.log" 2>&1 \
    || { echo "install failed"; tail -20 "$logs/install.log"; exit 1; }
# Interpreter-only tests skip themselves with TRITON_INTERPRET=0; the rest run on the device.
timeout 300 python -m pytest -q tests/test_triton_lstm.py tests/test_triton_gru.py \
    tests/test_module_backends.py tests/test_cuda_backend.py \
    2>&1 | tee "$logs/gpu-tests.log" | tail -15
timeout 240 python -m bench.run --headline --impls fastrnn-triton,fastrnn-cuda,cudnn \
    --out-dir "$logs" --no-progress 2>&1 | tee "$logs/bench.log" | tail -30
