#!/usr/bin/env bash
# Compile-checks csrc/ on machines without a GPU: every .cu with nvcc and the project's flags
# (sm_80 and sm_90a, fastrnn/backends/cuda_build.py), the pybind11 binding with g++, then links them
# into a shared library.  Needs `python` (with pybind11) on PATH; fails loudly on any error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
[ -x "$nvcc" ] || { echo "compile_csrc: nvcc not found (set NVCC)" >&2; exit 1; }
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT

# The flags setup.py uses, read without importing fastrnn (and so torch).
read -r -a flags < <(python - "$root" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("cuda_build", f"{sys.argv[1]}/fastrnn/backends/cuda_build.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(" ".join(module.nvcc_flags()))
PY
)
# torch's extension build defines these; compile under the same restrictions.
torch_defines=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
               -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

objects=()
for source in "$root"/csrc/*.cu; do
  object="$build/$(basename "$source" .cu).o"
  echo "nvcc $(basename "$source")"
  "$nvcc" "${flags[@]}" "${torch_defines[@]}" -Werror all-warnings -Xcompiler -fPIC,-Wall,-Wno-unknown-pragmas \
    -I "$root/csrc" -c "$source" -o "$object"
  objects+=("$object")
done
for source in "$root"/csrc/*.cpp; do
  object="$build/$(basename "$source" .cpp).o"
  echo "g++ $(basename "$source")"
  # shellcheck disable=SC2046
  g++ -std=c++17 -O2 -fPIC -Wall -Wextra -Werror $(python -m pybind11 --includes) -I "$root/csrc" \
    -c "$source" -o "$object"
  objects+=("$object")
done
echo "link"
"$nvcc" -shared "${objects[@]}" -o "$build/_C.so" -lcudart
echo "compile_csrc: OK (${#objects[@]} objects)"
