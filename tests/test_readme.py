"""README.md's ```python snippets run as a reader pastes them: each on its own, in a fresh
namespace (so each brings its imports), in a temporary working directory (for the files they
write)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# A snippet that uses one of these modules is skipped where it is not installed (the `test`
# extra installs them all).
OPTIONAL = ("onnxscript", "onnxruntime")


def _snippets():
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in BLOCK.finditer(text)]


SNIPPETS = _snippets()


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("line, code", SNIPPETS, ids=[f"line{line}" for line, _ in SNIPPETS])
def test_readme_snippet_runs_on_its_own(line, code, tmp_path, monkeypatch):
    needs = [name for name in OPTIONAL
             if ("torch.onnx" in code or name in code) and importlib.util.find_spec(name) is None]
    if needs:
        pytest.skip(f"the snippet at README.md:{line} needs {', '.join(needs)}")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
