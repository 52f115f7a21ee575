"""Building the CUDA extension ``fastrnn._C`` from csrc/: the nvcc flags (shared with setup.py),
where the sources are, and a JIT build on first use when the package was installed without the
extension.

The sources are in one of two places: ``fastrnn/csrc/`` in an installed copy (the wheel carries
them as package data, setup.py), or ``csrc/`` beside ``fastrnn/`` in a source checkout (an
editable install).  The JIT build runs only on a machine with a CUDA torch and a visible GPU
(never on CPU-only machines) and is cached by ``torch.utils.cpp_extension`` under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), so it costs minutes once and a
load afterwards.

This module imports nothing but the standard library at load time: setup.py and
.ci/compile_csrc.sh load it by path, without torch or the fastrnn package.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, List, Optional

JIT_NAME = "fastrnn_C"
# What the compiler is given (the .cu kernels and the .cpp pybind11 binding) and what they
# include; setup.py ships both kinds in the wheel.
COMPILED_PATTERNS = ("*.cu", "*.cpp")
HEADER_PATTERNS = ("*.cuh", "*.h")
SOURCE_PATTERNS = COMPILED_PATTERNS + HEADER_PATTERNS

_PACKAGE = Path(__file__).resolve().parents[1]  # the fastrnn package directory


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


def source_dir_candidates(package: Path = _PACKAGE) -> List[Path]:
    """Where the sources may be, in the order looked at: the installed package's ``csrc/``, then
    the checkout's ``csrc/`` when ``package`` sits in a source checkout (beside its setup.py; an
    installed copy's parent is site-packages, whose ``csrc/`` would be nobody's)."""
    candidates = [package / "csrc"]
    if (package.parent / "setup.py").is_file():
        candidates.append(package.parent / "csrc")
    return candidates


def _compiled_sources(root: Path) -> List[str]:
    return [str(p) for pattern in COMPILED_PATTERNS for p in sorted(root.glob(pattern))]


def source_dir(package: Path = _PACKAGE) -> Optional[Path]:
    """The directory holding the CUDA sources, or None when no candidate has any."""
    for candidate in source_dir_candidates(package):
        if _compiled_sources(candidate):
            return candidate
    return None


def sources(root: Optional[Path] = None) -> List[str]:
    """The .cu kernels and the .cpp pybind11 binding that make up fastrnn._C (of ``root``, by
    default :func:`source_dir`); empty when there are none."""
    root = source_dir() if root is None else root
    return [] if root is None else _compiled_sources(root)


# ------------------------------------------------------------------------------- CUDA_HOME

def _is_toolkit(root: Path) -> bool:
    """``root`` has nvcc and the runtime library the extension links (-lcudart)."""
    libraries = [root / "lib64" / "libcudart.so", root / "lib" / "libcudart.so"]
    libraries += [Path(p) for p in glob.glob(str(root / "targets" / "*" / "lib" / "libcudart.so"))]
    return (root / "bin" / "nvcc").is_file() and any(p.is_file() for p in libraries)


def _newest_first(pattern: str) -> List[Path]:
    """Directories matching ``pattern``, the highest version first (by number: cuda-12.10
    before cuda-12.8)."""
    def version(path: str):
        digits = "".join(c if c.isdigit() else " " for c in os.path.basename(path)).split()
        return [int(d) for d in digits]
    return [Path(p) for p in sorted(glob.glob(pattern), key=version, reverse=True)]


def cuda_home_candidates(nvcc: Optional[str] = None, roots: Iterable[str] = ("/usr/local", "/opt"),
                         site_dirs: Optional[Iterable[str]] = None) -> List[Path]:
    """Where a CUDA toolkit may be, in the order looked at: beside the ``nvcc`` on PATH (its path
    and, if that is a link, its real path), ``<root>/cuda`` and ``<root>/cuda-*`` (newest first),
    then the toolkit directories of NVIDIA's pip packages in ``site_dirs`` (default sys.path)."""
    candidates = []
    if nvcc:
        for path in (Path(nvcc), Path(os.path.realpath(nvcc))):
            candidates.append(path.parent.parent)
    for root in roots:
        candidates.append(Path(root) / "cuda")
        candidates += _newest_first(os.path.join(root, "cuda-*"))
    for site in sys.path if site_dirs is None else site_dirs:
        candidates += _newest_first(os.path.join(site, "nvidia", "cu*"))
    return list(dict.fromkeys(candidates))


def find_cuda_home(environ=os.environ, nvcc: Optional[str] = None, **where) -> Optional[str]:
    """The CUDA toolkit to build with: $CUDA_HOME (or $CUDA_PATH) when set, else the first of
    ``cuda_home_candidates`` that has both nvcc and libcudart.so, else None.

    torch's own guess takes the directory above the ``nvcc`` on PATH; where that nvcc is a
    wrapper script (/usr/local/bin/nvcc) the guess is /usr/local, which has no libcudart.so,
    and the extension's link fails with ``cannot find -lcudart``."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(name):
            return environ[name]
    nvcc = nvcc if nvcc is not None else shutil.which("nvcc", path=environ.get("PATH"))
    for candidate in cuda_home_candidates(nvcc, **where):
        if _is_toolkit(candidate):
            return str(candidate)
    return None


def use_cuda_home(**where) -> Optional[str]:
    """Points torch's extension builder at ``find_cuda_home(**where)`` when CUDA_HOME is not set
    (in the environment for torch imported later, and in torch.utils.cpp_extension if it
    already guessed).  Returns the toolkit used, or None."""
    home = find_cuda_home(**where)
    if home is not None and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        os.environ["CUDA_HOME"] = home
        cpp_extension = sys.modules.get("torch.utils.cpp_extension")
        if cpp_extension is not None:
            cpp_extension.CUDA_HOME = home
    return home


def installed_extension_present() -> bool:
    """Whether ``fastrnn._C`` was built by setup.py (found without importing it)."""
    return importlib.util.find_spec("fastrnn._C") is not None


def torch_without_cuda() -> Optional[str]:
    """Why this torch can neither run nor build fastrnn._C (a CPU-only build), or None."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is built without CUDA; install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/)")
    return None


def jit_unavailable() -> Optional[str]:
    """Why a JIT build cannot be attempted here, or None.  Cheap: compiles nothing."""
    use_cuda_home()
    from torch.utils import cpp_extension

    reason = torch_without_cuda()
    if reason is not None:
        return reason
    if source_dir() is None:
        looked = ", ".join(str(p) for p in source_dir_candidates())
        return (f"the CUDA sources are missing (looked in {looked}); this copy of fastrnn was "
                "installed without them: reinstall it from a wheel or source tree of this version")
    if cpp_extension.CUDA_HOME is None:
        return ("fastrnn._C was not built and nvcc was not found to build it; install the CUDA toolkit "
                "(set CUDA_HOME) or reinstall fastrnn with FASTRNN_BUILD_CUDA=1")
    if shutil.which("ninja") is None:
        return "fastrnn._C was not built and building it needs ninja (pip install ninja)"
    return None


def load_extension():
    """The extension module: the installed ``fastrnn._C``, or else a JIT build of the sources."""
    if installed_extension_present():
        return importlib.import_module("fastrnn._C")
    use_cuda_home()
    from torch.utils import cpp_extension

    root = source_dir()
    if root is None:
        raise RuntimeError(jit_unavailable())
    print(f"fastrnn: building the CUDA extension from {root} (first use; cached by torch in "
          f"{os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')})")
    return cpp_extension.load(name=JIT_NAME, sources=sources(root), extra_include_paths=[str(root)],
                              extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=nvcc_flags(),
                              verbose=False)
