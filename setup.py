"""Build: the Python package (kernels/ installs as fastrnn.kernels, and the C++/CUDA sources of
csrc/ as package data in fastrnn/csrc/, so that an installed copy can build the extensions on
first use); where torch is importable at build time, the CPU extension fastrnn._cpu compiled from
csrc/cpu/ (a C++ compiler is all it needs); and, where CUDA is present, the CUDA extension
fastrnn._C compiled from csrc/ with ninja.

The CPU extension is skipped when torch is not importable at build time or FASTRNN_BUILD_CPU=0;
fastrnn then builds it with ninja on the first call that runs backend "cpu"
(fastrnn/backends/cpu_build.py).

The extension is skipped when torch is not importable at build time (pip's default build
isolation), has no CUDA, or nvcc is missing; FASTRNN_BUILD_CUDA=1 forces it (and fails loudly if
it cannot be built), FASTRNN_BUILD_CUDA=0 skips it.  Without it, fastrnn builds the extension on
first use on a CUDA machine (fastrnn/backends/cuda_build.py).  The build says which in one line
(announce, from build_py).
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command import build_py as setuptools_build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["fastrnn", "fastrnn.backends", "fastrnn.kernels", "fastrnn.csrc", "fastrnn.csrc.cpu"]
PACKAGE_DIR = {"fastrnn": "fastrnn", "fastrnn.backends": "fastrnn/backends",
               "fastrnn.kernels": "kernels", "fastrnn.csrc": "csrc", "fastrnn.csrc.cpu": "csrc/cpu"}


def load_build(name):
    """fastrnn/backends/<name>.py (cuda_build, cpu_build) loaded by path: importing the fastrnn
    package would need torch, which pip's isolated build environment does not have."""
    spec = importlib.util.spec_from_file_location(
        f"fastrnn_{name}", os.path.join(ROOT, "fastrnn", "backends", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_build = load_build("cuda_build")
cpu_build = load_build("cpu_build")


def cpu_extension():
    """(ext_modules, decision): the extension for fastrnn._cpu, or none, and the line that says
    which (and why not)."""
    if os.environ.get("FASTRNN_BUILD_CPU") == "0":
        return [], "fastrnn: CPU extension not built (FASTRNN_BUILD_CPU=0)"
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return [], ("fastrnn: CPU extension not built: torch is not importable at build time; "
                    "fastrnn compiles it on first use of backend='cpu'")
    sources = [os.path.relpath(path, ROOT) for path in cpu_build.sources(Path(ROOT, "csrc"))]
    extension = cpp_extension.CppExtension(
        cpu_build.MODULE, sources, include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=cpu_build.cxx_flags())
    return [extension], "fastrnn: building the CPU extension fastrnn._cpu (about a minute)"


def cuda_extension():
    """(ext_modules, cmdclass, decision): the extension for fastrnn._C, or none, and the line that
    says which (and why not)."""
    forced = os.environ.get("FASTRNN_BUILD_CUDA")
    if forced == "0":
        return [], {}, "fastrnn: CUDA extension not built (FASTRNN_BUILD_CUDA=0)"
    # Relative to the distribution root, as setuptools expects the paths of a setup script.
    sources = [os.path.relpath(path, ROOT) for path in cuda_build.sources(Path(ROOT, "csrc"))]
    reason = None
    cuda_build.use_cuda_home()   # before torch guesses it from nvcc's directory
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        torch = None
        reason = ("torch is not importable at build time (pip's default isolated build has "
                  "none; --no-build-isolation builds against the installed one)")
    if reason is None and not sources:
        reason = "csrc/ has no sources"
    if reason is None and torch.version.cuda is None and forced != "1":
        reason = f"torch {torch.__version__} has no CUDA"
    if reason is None and shutil.which("nvcc") is None and cpp_extension.CUDA_HOME is None:
        reason = "nvcc was not found (set CUDA_HOME)"
    if reason is not None:
        if forced == "1":
            sys.exit(f"fastrnn: FASTRNN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        return [], {}, (f"fastrnn: CUDA extension not built: {reason}; fastrnn compiles it on "
                        "first use where torch has CUDA and nvcc is found")
    extension = cpp_extension.CUDAExtension(
        "fastrnn._C", sources, include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": cuda_build.nvcc_flags()})
    decision = (f"fastrnn: building the CUDA extension fastrnn._C (torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, toolkit {cpp_extension.CUDA_HOME}); "
                "this takes minutes")
    return [extension], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}, decision


def announce(line):
    """Print ``line`` where the person running pip sees it.  pip captures a build backend's output
    and shows it only with -v or when the build fails, so the line also goes to the controlling
    terminal when there is one; without one (CI, cron, ssh without a tty) it is only in the build
    log, which `pip install -v` shows."""
    print(line, file=sys.stderr, flush=True)
    if sys.stderr.isatty():  # run directly in a terminal: already seen
        return
    try:
        with open("/dev/tty", "w") as terminal:
            terminal.write(f"\n{line}\n")
    except OSError:  # no controlling terminal
        pass


ext_modules, cmdclass, decision = cuda_extension()
cpu_modules, cpu_decision = cpu_extension()
if cpu_modules and not cmdclass:
    from torch.utils import cpp_extension
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
ext_modules = ext_modules + cpu_modules


# Named as the command it replaces: distutils looks commands' options up by class name.
class build_py(setuptools_build_py.build_py):
    """build_py that also announces the CUDA and CPU decisions: pip runs setup.py several times per
    install (build requirements, metadata, the build), and build_py runs once, in the build, for
    wheels and editable installs alike."""

    def run(self):
        announce(decision)
        announce(cpu_decision)
        super().run()


setup(packages=PACKAGES, package_dir=PACKAGE_DIR,
      package_data={"fastrnn.csrc": list(cuda_build.SOURCE_PATTERNS),
                    "fastrnn.csrc.cpu": list(cpu_build.COMPILED_PATTERNS
                                            + cpu_build.HEADER_PATTERNS)},
      ext_modules=ext_modules, cmdclass={**cmdclass, "build_py": build_py})
