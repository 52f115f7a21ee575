#!/usr/bin/env bash
# The wheel that a plain `pip install .` builds: with build isolation (setuptools and the other
# build requirements fetched from the package index, no torch at build time).  Checks that its
# build log says the CUDA decision exactly once, with the isolation reason, and holds no warning,
# then runs tests/test_packaging.py on that wheel (contents, metadata, an installed copy).
# Needs .venv (scripts/setup.sh) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A clean copy of the tree: setuptools would ship whatever a stale build/ of the checkout holds.
mkdir "$work/source"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/source"
# Without PYTHONDONTWRITEBYTECODE, which makes setuptools warn that it skips byte-compiling.
env -u PYTHONDONTWRITEBYTECODE pip wheel -v --no-deps -w "$work/wheel" "$work/source" \
    > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; echo "check_wheel: build failed" >&2; exit 1; }

fail() { echo "check_wheel: $*" >&2; exit 1; }
decisions="$(grep -c "fastrnn: CUDA extension" "$work/build.log" || true)"
[ "$decisions" = 1 ] || fail "the build log says the CUDA decision $decisions times, not once"
grep -q "fastrnn: CUDA extension not built: torch is not importable at build time" "$work/build.log" \
    || fail "the CUDA decision does not give the isolation reason: $(grep "fastrnn: CUDA" "$work/build.log")"
# pip's own notice about find-links folders of this machine's pip configuration is no build warning.
warnings="$(grep -i "warn" "$work/build.log" | grep -v "WARNING: Location '.*' is ignored: it is neither a file nor a directory" || true)"
[ -z "$warnings" ] || fail "the build warns:
$warnings"

wheel="$(ls "$work"/wheel/*.whl)"
echo "check_wheel: built $(basename "$wheel") with build isolation: $(python -c 'import sys, zipfile; print(len(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel") files"
FASTRNN_WHEEL="$wheel" python -m pytest -q -p no:cacheprovider tests/test_packaging.py
