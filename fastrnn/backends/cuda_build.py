"""Building the CUDA extension ``fastrnn._C`` from csrc/: the nvcc flags (shared with setup.py),
the sources, and a JIT build on first use when the package was installed without the extension.

The JIT build runs only on a machine with a CUDA torch and a visible GPU (never on CPU-only
machines) and is cached by ``torch.utils.cpp_extension`` under ``$TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``), so it costs minutes once and a load afterwards.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import List, Optional

CSRC = Path(__file__).resolve().parents[2] / "csrc"
JIT_NAME = "fastrnn_C"


def nvcc_flags() -> List[str]:
    """sm_80 machine code, sm_90a for Hopper (where thread-block clusters are used), and
    compute_90 PTX so that newer GPUs can JIT-compile the kernels."""
    return [
        "-O3",
        "-std=c++17",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90,code=compute_90",
    ]


def sources(root: Path = CSRC) -> List[str]:
    """The .cu kernels and the .cpp pybind11 binding that make up fastrnn._C."""
    return [str(p) for p in sorted(root.glob("*.cu")) + sorted(root.glob("*.cpp"))]


def installed_extension_present() -> bool:
    """Whether ``fastrnn._C`` was built by setup.py (found without importing it)."""
    return importlib.util.find_spec("fastrnn._C") is not None


def jit_unavailable() -> Optional[str]:
    """Why a JIT build cannot be attempted here, or None.  Cheap: compiles nothing."""
    from torch.utils import cpp_extension

    if not sources():
        return f"the CUDA sources are not installed ({CSRC} is missing); reinstall fastrnn from a source checkout"
    if cpp_extension.CUDA_HOME is None:
        return ("fastrnn._C was not built and nvcc was not found to build it; install the CUDA toolkit "
                "(set CUDA_HOME) or reinstall fastrnn with FASTRNN_BUILD_CUDA=1")
    return None


def load_extension():
    """The extension module: the installed ``fastrnn._C``, or else a JIT build of csrc/."""
    if installed_extension_present():
        return importlib.import_module("fastrnn._C")
    from torch.utils import cpp_extension

    print(f"fastrnn: building the CUDA extension from {CSRC} (first use; cached by torch in "
          f"{os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')})")
    return cpp_extension.load(name=JIT_NAME, sources=sources(), extra_include_paths=[str(CSRC)],
                              extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=nvcc_flags(),
                              verbose=False)
