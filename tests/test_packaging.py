"""The package as pip builds and installs it: the wheel's contents and metadata, an installed copy
finding its CUDA sources, the one line the build says about the CUDA extension (in the log, and
on the terminal where pip hides the log), and fastrnn without triton.

The wheel is built from a clean copy of the source tree (no stale build/ of the checkout) with
``pip wheel --no-build-isolation`` against this environment, so nothing is downloaded.  Setting
FASTRNN_WHEEL to a wheel checks that one instead (.ci/check_wheel.sh: the wheel of a plain
``pip install .``); the build-log tests then skip, that script checks its own log.
"""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch

from fastrnn.backends import cuda_build

ROOT = Path(__file__).resolve().parents[1]
# The sources an installed copy needs to build fastrnn._C, as the issue lists them; spelt out
# here rather than read from cuda_build, which is under test.
CUDA_SOURCE_SUFFIXES = {".cu", ".cuh", ".h", ".cpp"}
GIVEN_WHEEL = os.environ.get("FASTRNN_WHEEL")
# A CUDA torch with nvcc would compile the extension into the wheel (minutes): skip it there.
BUILD_ENV_CUDA = {"FASTRNN_BUILD_CUDA": "0"} if torch.version.cuda is not None else {}
# The wheels built here check packaging, not compilation (tests/test_cpu_backend.py runs the
# CPU extension): without FASTRNN_BUILD_CPU=0 each would spend a minute compiling fastrnn._cpu.
BUILD_ENV_CPU = {"FASTRNN_BUILD_CPU": "0"}
EXPECTED_DECISION = ("fastrnn: CUDA extension not built (FASTRNN_BUILD_CUDA=0)" if BUILD_ENV_CUDA else
                     f"fastrnn: CUDA extension not built: torch {torch.__version__} has no CUDA;")
BUILD_TIMEOUT_S = 300


def pip_env(**extra) -> dict:
    """No pip configuration files (this machine's index settings add their own warnings) and no
    index: everything the offline build needs is installed."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PIP_") and key != "PYTHONDONTWRITEBYTECODE"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(BUILD_ENV_CUDA, **BUILD_ENV_CPU, **extra)
    return env


def wheel_command(source: Path, out: Path, *pip_options: str) -> list:
    return [sys.executable, "-m", "pip", "wheel", *pip_options, "--no-deps", "--no-build-isolation",
            "-w", str(out), str(source)]


def clean_source_copy(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "cache", "results", "*.so")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def only_wheel(directory: Path) -> Path:
    wheels = list(directory.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    return clean_source_copy(tmp_path_factory.mktemp("source") / "fastrnn")


@pytest.fixture(scope="module")
def built(source_copy, tmp_path_factory):
    """(wheel, verbose build log) of the source copy.  No controlling terminal (a new session),
    so the log is all the build says."""
    if GIVEN_WHEEL:
        return Path(GIVEN_WHEEL), None
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(wheel_command(source_copy, out, "-v"), env=pip_env(), cwd=source_copy,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-4000:]
    return only_wheel(out), result.stdout


@pytest.fixture(scope="module")
def wheel(built) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def builds_here():
    if GIVEN_WHEEL:
        pytest.skip("FASTRNN_WHEEL given: its build is checked where it was built")


@pytest.fixture(scope="module")
def build_log(built, builds_here) -> str:
    return built[1]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a target directory (with the dependencies of this environment)."""
    target = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], env=pip_env(), check=True, timeout=BUILD_TIMEOUT_S)
    return target


def run_python(code: str, cwd: Path, **env) -> dict:
    """Runs ``code`` in a fresh interpreter; it prints one JSON object, returned."""
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def repo_files(directory: str, suffixes) -> set:
    return {p.name for p in (ROOT / directory).iterdir() if p.suffix in suffixes}


def repo_tree(directory: str, suffixes) -> set:
    """Paths relative to ``directory`` of its files (subfolders included) with these suffixes."""
    return {p.relative_to(ROOT / directory).as_posix() for p in (ROOT / directory).rglob("*")
            if p.is_file() and p.suffix in suffixes}


# ---------------------------------------------------------------------------- source checkout

def test_source_checkout_builds_from_its_csrc():
    assert cuda_build.source_dir() == ROOT / "csrc"
    assert {Path(p).name for p in cuda_build.sources()} == repo_files("csrc", {".cu", ".cpp"})


def test_no_sources_is_reported_not_guessed(tmp_path):
    package = tmp_path / "site-packages" / "fastrnn"
    package.mkdir(parents=True)
    (tmp_path / "site-packages" / "csrc").mkdir()  # somebody else's, beside a non-checkout
    (tmp_path / "site-packages" / "csrc" / "other.cu").write_text("")
    assert cuda_build.source_dir(package) is None
    assert cuda_build.source_dir_candidates(package) == [package / "csrc"]


# ---------------------------------------------------------------------------------- the wheel

def test_wheel_carries_the_cuda_sources_and_kernels_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"fastrnn", "fastrnn-0.1.0.dist-info"}, top_level  # no tests/, bench/, csrc/
    shipped = lambda folder: {n[len(f"fastrnn/{folder}/"):] for n in names
                              if n.startswith(f"fastrnn/{folder}/")}
    # csrc/cpu/ included: an installed copy JIT-builds fastrnn._cpu from them.
    assert shipped("csrc") == repo_tree("csrc", CUDA_SOURCE_SUFFIXES)
    assert any(name.startswith("cpu/") for name in shipped("csrc"))
    assert shipped("kernels") == repo_tree("kernels", {".py"})
    assert not [n for n in names if "/tests/" in n or "/bench/" in n or n.endswith((".so", ".pyc"))]


def test_wheel_metadata_license_and_dependencies(wheel):
    archive = zipfile.ZipFile(wheel)
    metadata = Parser().parsestr(archive.read("fastrnn-0.1.0.dist-info/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert archive.read("fastrnn-0.1.0.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if r.startswith("torch")] == ["torch>=2.6"]
    triton = [r for r in requires if r.startswith("triton")]
    # Only the test extra: a CPU-only install must not download triton.
    assert len(triton) == 1 and 'extra == "test"' in triton[0], triton


def test_installed_copy_finds_its_own_sources(installed, tmp_path):
    facts = run_python(
        "import json, fastrnn\n"
        "from fastrnn.backends import cpu_build, cuda_build, cuda_backend\n"
        "print(json.dumps({'package': fastrnn.__file__, 'dir': str(cuda_build.source_dir()),\n"
        "                  'cpu_dir': str(cpu_build.source_dir()),\n"
        "                  'sources': cuda_build.sources(), 'jit': cuda_build.jit_unavailable(),\n"
        "                  'backend': cuda_backend.unavailable()}))",
        cwd=tmp_path, PYTHONPATH=str(installed))
    package = installed / "fastrnn"
    assert Path(facts["package"]).parent == package
    assert Path(facts["dir"]) == package / "csrc"
    assert {Path(p).name for p in facts["sources"]} == repo_files("csrc", {".cu", ".cpp"})
    assert all(Path(p).parent == package / "csrc" for p in facts["sources"])
    assert Path(facts["cpu_dir"]) == package / "csrc"  # the C++ kernels, for a JIT build
    if torch.version.cuda is None:
        assert facts["jit"] == facts["backend"] == cuda_build.torch_without_cuda()
        assert "built without CUDA" in facts["jit"]
    else:
        assert "sources are missing" not in (facts["jit"] or "")


# ------------------------------------------------------------------- what the build says

def decision_lines(text: str) -> list:
    return [line.strip() for line in text.splitlines() if "fastrnn: " in line and "CUDA extension" in line]


def test_build_log_says_the_cuda_decision_once(build_log):
    lines = decision_lines(build_log)
    assert len(lines) == 1 and lines[0].startswith(EXPECTED_DECISION), lines


def test_build_has_no_warnings(build_log):
    warnings = [line for line in build_log.splitlines() if "warn" in line.lower()]
    assert not warnings, warnings


def test_build_says_the_cuda_decision_on_the_terminal_despite_pip_quiet(builds_here, source_copy, tmp_path):
    """pip -q hides the build log; the decision still reaches the terminal, once."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child, with the pseudo-terminal as its controlling terminal
        try:
            os.chdir(source_copy)
            command = wheel_command(source_copy, tmp_path, "-q")
            os.execve(command[0], command, pip_env())
        finally:
            os._exit(127)
    output, deadline = b"", time.monotonic() + BUILD_TIMEOUT_S
    while time.monotonic() < deadline:
        if select.select([terminal], [], [], 1.0)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    else:
        os.kill(pid, 9)
    status = os.waitpid(pid, 0)[1]
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-4000:]
    lines = decision_lines(text)
    assert len(lines) == 1 and lines[0].startswith(EXPECTED_DECISION), text[-4000:]
    assert "running build_py" not in text  # pip did hide the rest of the log
    only_wheel(tmp_path)


# ------------------------------------------------------------------------- without triton

def test_import_and_reference_without_triton(tmp_path):
    """On a CPU-only machine without triton: import works, the reference runs, and the Triton
    backend says why it is unavailable."""
    facts = run_python(
        "import sys\n"
        "sys.modules['triton'] = None  # import triton now fails, as if it were not installed\n"
        "import json, torch, fastrnn\n"
        "out, _ = fastrnn.LayerNormLSTM(3, 4)(torch.randn(2, 1, 3))\n"
        "try:\n"
        "    fastrnn.backends.check('triton', torch.device('cpu'), torch.float32)\n"
        "    error = None\n"
        "except ValueError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'shape': list(out.shape), 'reason': fastrnn.backends.available()['triton'],\n"
        "                  'error': error}))",
        cwd=tmp_path, TRITON_INTERPRET="1")
    assert facts["shape"] == [2, 1, 4]
    assert facts["reason"].startswith("triton is not installed")
    assert facts["error"] == f"backend='triton' is not available: {facts['reason']}"


# ---------------------------------------------------------------------------- scripts/setup.sh

def test_setup_stamp_reads_the_installed_distribution(tmp_path):
    """setup.sh's stamp (its ``installation_state``, run as the script defines it, in a copy of
    the files it hashes) must not change when ``pip wheel .`` leaves a fastrnn.egg-info in the
    checkout: the working directory is on ``python -``'s sys.path, and metadata read there
    would make every later run reinstall."""
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    script = (ROOT / "scripts" / "setup.sh").read_text()
    function = script[script.index("installation_state() {"):]
    function = function[:function.index("\n}\n") + 3]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def stamp() -> str:
        result = subprocess.run(["bash", "-c", f"{function}\nextras=test,bench\ninstallation_state"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stdout.strip()

    before = stamp()
    egg_info = tmp_path / "fastrnn.egg-info"
    egg_info.mkdir()
    (egg_info / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: fastrnn\nVersion: 9.9.9\n")
    assert stamp() == before


# ----------------------------------------------------------------------------- scripts/test.sh

QUICK, SLOW = ["-m", "not slow"], ["-m", "slow"]


@pytest.mark.parametrize("given,expected", [
    ([], ["-q", *QUICK, "WORKERS"]),
    (["-q", "-x"], [*QUICK, "WORKERS", "-q", "-x"]),
    (["-v", "-k", "lstm"], [*QUICK, "WORKERS", "-v", "-k", "lstm"]),
    (["--verbosity=2"], [*QUICK, "WORKERS", "--verbosity=2"]),
    (["--slow"], ["-q", *SLOW, "WORKERS"]),
    (["--all", "-x"], ["-q", "WORKERS", "-x"]),
    (["-m", "gpu"], ["-q", "WORKERS", "-m", "gpu"]),
    (["tests/test_x.py"], ["-q", "WORKERS", "tests/test_x.py"]),
    (["-n", "0", "-x"], ["-q", *QUICK, "-n", "0", "-x"]),
], ids=["nothing", "quiet", "verbose", "verbosity", "slow", "all", "marker", "named", "workers"])
def test_test_script_arguments(tmp_path, given, expected):
    """scripts/test.sh: the quick tier unless --slow, --all, a marker expression or named tests
    say otherwise; -q only when the caller sets no verbosity (its -q beside a caller's -q is
    pytest's -qq, which hides the summary line); xdist workers unless the caller sets them.  Run
    in a copy whose setup.sh does nothing and whose .venv's python prints the arguments it gets
    (and so also "imports" xdist)."""
    cores = min(4, len(os.sched_getaffinity(0)))
    workers = ["-n", str(cores), "--dist", "worksteal"] if cores > 1 else []
    expected = [part for item in expected
                for part in (workers if item == "WORKERS" else [item])]
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    (tmp_path / "scripts" / "setup.sh").write_text("exit 0\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    python = bin_dir / "python"
    python.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\"\n")
    python.chmod(0o755)
    environment = {key: value for key, value in os.environ.items()
                   if key != "FASTRNN_TEST_WORKERS"}
    result = subprocess.run(["bash", str(tmp_path / "scripts" / "test.sh"), *given],
                            capture_output=True, text=True, timeout=60, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-m", "pytest", *expected]
