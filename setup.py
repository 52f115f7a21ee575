"""Build: the Python package (kernels/ installs as fastrnn.kernels) and, where CUDA is present,
the CUDA extension fastrnn._C compiled from csrc/ with ninja.

The extension is skipped, with one line saying why, when torch has no CUDA or nvcc is missing;
FASTRNN_BUILD_CUDA=1 forces it (and fails loudly if it cannot be built), FASTRNN_BUILD_CUDA=0
skips it.  Without it, fastrnn builds csrc/ on first use on a CUDA machine (fastrnn.backends).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

PACKAGES = ["fastrnn", "fastrnn.backends", "fastrnn.kernels"]
PACKAGE_DIR = {"fastrnn": "fastrnn", "fastrnn.backends": "fastrnn/backends",
               "fastrnn.kernels": "kernels"}


def cuda_extension():
    """(ext_modules, cmdclass) for fastrnn._C, or empty ones with the reason printed."""
    forced = os.environ.get("FASTRNN_BUILD_CUDA")
    if forced == "0":
        print("fastrnn: skipping the CUDA extension (FASTRNN_BUILD_CUDA=0)")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    reason = None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        torch = None
        reason = "torch is not importable in the build environment (use --no-build-isolation)"
    if reason is None and not sources:
        reason = "csrc/ has no sources"
    if reason is None and torch.version.cuda is None and forced != "1":
        reason = f"torch {torch.__version__} has no CUDA"
    if reason is None and shutil.which("nvcc") is None and cpp_extension.CUDA_HOME is None:
        reason = "nvcc was not found (set CUDA_HOME)"
    if reason is not None:
        if forced == "1":
            sys.exit(f"fastrnn: FASTRNN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"fastrnn: skipping the CUDA extension: {reason}; the Triton and reference backends remain")
        return [], {}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fastrnn.backends import cuda_build
    extension = cpp_extension.CUDAExtension(
        "fastrnn._C", sources, include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": cuda_build.nvcc_flags()})
    return [extension], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
