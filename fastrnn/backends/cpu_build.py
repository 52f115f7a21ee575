"""Building the CPU extension ``fastrnn._cpu`` from csrc/cpu/ (and the host-device headers of
csrc/ it shares with the CUDA kernels): the compiler flags (shared with setup.py), where the
sources are, and a JIT build on first use when the package was installed without the extension.

setup.py builds it with the rest of the package whenever torch is importable at build time (the
``scripts/setup.sh`` path); no GPU or nvcc is needed, only a C++ compiler.  Otherwise the first
call that runs on ``backend="cpu"`` builds it with ninja through ``torch.utils.cpp_extension``
(cached under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), saying so in one
line; later processes load the cached build.

This module imports nothing but the standard library at load time: setup.py loads it by path,
without torch or the fastrnn package.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import List, Optional

JIT_NAME = "fastrnn_cpu"
MODULE = "fastrnn._cpu"
SUBDIR = "cpu"                   # csrc/cpu/: the CPU kernels; csrc/*.cuh: the shared math
COMPILED_PATTERNS = ("*.cpp",)
HEADER_PATTERNS = ("*.h",)

_PACKAGE = Path(__file__).resolve().parents[1]  # the fastrnn package directory


def cxx_flags() -> List[str]:
    """-O3 for the auto-vectorized row passes (the C++ standard is torch's).  -fno-trapping-math
    and -fno-math-errno let the compiler turn the branches of the per-element math into selects
    and sqrt into an instruction; neither changes a result.  No -ffast-math: the kernels keep
    NaN and infinity semantics and round as written (host_math.cuh's reductions rely on it)."""
    return ["-O3", "-fno-trapping-math", "-fno-math-errno"]


def _cuda_build():
    """The CUDA build helper beside this file, loaded by path (it too imports only the standard
    library): the two extensions' sources live in the same places."""
    spec = importlib.util.spec_from_file_location("fastrnn_cuda_build_for_cpu",
                                                  Path(__file__).with_name("cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiled_sources(root: Path) -> List[str]:
    return [str(p) for pattern in COMPILED_PATTERNS for p in sorted((root / SUBDIR).glob(pattern))]


def source_dir(package: Path = _PACKAGE) -> Optional[Path]:
    """The csrc/ directory holding csrc/cpu/ (the installed package's, else the checkout's), or
    None when no candidate has the CPU sources."""
    for candidate in _cuda_build().source_dir_candidates(package):
        if _compiled_sources(candidate):
            return candidate
    return None


def sources(root: Optional[Path] = None) -> List[str]:
    """The .cpp files of fastrnn._cpu (of ``root``, by default :func:`source_dir`)."""
    root = source_dir() if root is None else root
    return [] if root is None else _compiled_sources(root)


def installed_extension_present() -> bool:
    """Whether ``fastrnn._cpu`` was built by setup.py (found without importing it)."""
    return importlib.util.find_spec(MODULE) is not None


def compiler() -> Optional[str]:
    """The C++ compiler torch's extension builder would run ($CXX, else c++), or None."""
    return shutil.which(os.environ.get("CXX", "c++"))


def jit_unavailable() -> Optional[str]:
    """Why a JIT build cannot be attempted here, or None.  Cheap: compiles nothing."""
    if source_dir() is None:
        looked = ", ".join(str(p / SUBDIR) for p in _cuda_build().source_dir_candidates())
        return (f"fastrnn._cpu was not built and its sources are missing (looked in {looked}); "
                "reinstall fastrnn from a wheel or source tree of this version")
    if compiler() is None:
        return (f"fastrnn._cpu was not built and no C++ compiler was found to build it "
                f"({os.environ.get('CXX', 'c++')} is not on PATH); install one (g++ or clang++) "
                "or set CXX")
    if shutil.which("ninja") is None:
        return "fastrnn._cpu was not built and building it needs ninja (pip install ninja)"
    return None


def load_extension():
    """The extension module: the installed ``fastrnn._cpu``, or else a JIT build of the sources."""
    if installed_extension_present():
        return importlib.import_module(MODULE)
    reason = jit_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    from torch.utils import cpp_extension

    root = source_dir()
    if not _built_before(cpp_extension):
        print(f"fastrnn: building the CPU extension from {root / SUBDIR} with ninja (first use, "
              "about a minute; cached by torch in "
              f"{os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')})", flush=True)
    return cpp_extension.load(name=JIT_NAME, sources=sources(root), extra_include_paths=[str(root)],
                              extra_cflags=cxx_flags(), verbose=False)


def _built_before(cpp_extension) -> bool:
    """Whether torch's cache already holds a build (loading it takes a second, not a minute; a
    build of older sources is rebuilt by torch without a word, as ninja sees what changed)."""
    try:
        directory = cpp_extension._get_build_directory(JIT_NAME, verbose=False)
    except Exception:  # a private helper of torch: if it moves, say "building" to be safe
        return False
    return any(Path(directory).glob(f"{JIT_NAME}*.so"))
