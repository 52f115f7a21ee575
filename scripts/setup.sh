#!/usr/bin/env bash
# Creates .venv with torch and fastrnn installed editable, plus the extras named in
# $FASTRNN_EXTRAS (default "test,bench"; `test` brings triton for the interpreter tests). A torch
# already installed system-wide (a CUDA build on a GPU machine) is reused; otherwise the CPU wheel
# torch==2.13.0 is installed. Each step is said on stderr as it starts.
#
# The installation is redone only when something it depends on changed: .venv/.fastrnn-setup
# holds a hash of pyproject.toml, setup.py, csrc/ (compiled at install into fastrnn._cpu, and on a
# CUDA machine into fastrnn._C), the extras, the Python, the torch, and the fastrnn installation itself (so an
# uninstalled or moved one is redone). Python edits need no reinstall: the install is editable.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.fastrnn-setup
extras="${FASTRNN_EXTRAS:-test,bench}"

step() { echo "setup: $*" >&2; }

# Reads package metadata only (importing torch would cost seconds on every call).
installation_state() {
    python - "$extras" <<'PY'
import hashlib, importlib.metadata as metadata, os, pathlib, sys

# `python -` puts the working directory, the checkout, first on sys.path, where a
# fastrnn.egg-info left by `pip wheel .` would stand in for the installed distribution.
sys.path = [entry for entry in sys.path if entry not in ("", os.getcwd())]
digest = hashlib.sha256()
csrc = sorted(p for p in pathlib.Path("csrc").rglob("*") if p.is_file())
for path in [pathlib.Path("pyproject.toml"), pathlib.Path("setup.py"), *csrc]:
    digest.update(str(path).encode() + b"\0" + path.read_bytes())
try:
    installed = metadata.distribution("fastrnn")
    fastrnn = f"{installed.version} {installed.read_text('direct_url.json')}"
except metadata.PackageNotFoundError:
    fastrnn = "absent"
try:
    torch = metadata.version("torch")
except metadata.PackageNotFoundError:
    torch = "absent"
for part in (sys.argv[1], sys.version, sys.prefix, os.getcwd(), torch, fastrnn):
    digest.update(b"\0" + part.encode())
print(digest.hexdigest())
PY
}

# --no-build-isolation builds with this environment's packages, so it needs the build
# requirements that pyproject.toml names.
build_requirements() {
    python - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as file:
    print("\n".join(tomllib.load(file)["build-system"]["requires"]))
PY
}

if [ ! -x .venv/bin/python ]; then
    step "creating .venv (with the system's packages visible, so that an installed torch is reused)"
    python3 -m venv --system-site-packages .venv
fi
. .venv/bin/activate
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(installation_state)" ]; then
    exit 0
fi
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    step "installing torch==2.13.0 (no torch found; the CPU wheel)"
    pip install -q "torch==2.13.0"
fi
requirements_text="$(build_requirements)"
mapfile -t requirements <<< "$requirements_text"
step "installing the build requirements: ${requirements[*]}"
pip install -q "${requirements[@]}"
step "installing fastrnn (editable) with the extras [$extras]"
# --no-build-isolation: build against the torch above instead of downloading another one.
pip install -q --no-build-isolation -e ".[$extras]"
installation_state > "$stamp"
step "done: .venv is ready"
