"""fastrnn.check: the bound a backend is judged by (``compare``) and ``python -m fastrnn.check``.

On the reference and on torch's kernel ("native"), which run anywhere: the Triton rows need
TRITON_INTERPRET=1 and are slow under it, tests/test_triton.py covers those kernels.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import fastrnn
from fastrnn import check, ops
from fastrnn.cells import CELLS
from support import case, make_call, make_inputs, run_call

TINY = check.Shape(3, 2, 3, 4)
FAST = ["--device", "cpu", "--backends", "reference,native", "--no-speed"]


@pytest.fixture
def tiny_shapes(monkeypatch):
    """The command's checks on one tiny shape (the default two take seconds each on CI)."""
    monkeypatch.setattr(check, "SHAPES", (TINY,))


@pytest.fixture(scope="module")
def references():
    """out and dw_hh of a layer-norm LSTM call with every regularizer, from the reference in
    float32 and in float64 on the same (float32) inputs."""
    call = make_call(case("lstm", "everything_per_gate_reverse"),
                     make_inputs(case("lstm", "everything_per_gate_reverse")))
    rounded = call._replace(**{name: value.float().double() for name, value in
                               call._asdict().items()
                               if isinstance(value, torch.Tensor) and value.is_floating_point()})
    own_out, own_grad = run_call(rounded, "reference", torch.float32)
    exact_out, exact_grad = run_call(rounded, "reference", torch.float64)
    return {"out": (own_out["out"], exact_out["out"], 1),
            "dw_hh": (own_grad["w_hh"], exact_grad["w_hh"], 15)}


@pytest.mark.parametrize("name", ["out", "dw_hh"])
def test_the_float32_references_own_result_passes(references, name):
    own, exact, sums = references[name]
    result = check.compare(name, own, own, exact, reduction=sums)
    assert result.passed and result.error <= result.bound, result
    assert result.error > 0  # float32 did round: the bound is not met trivially


@pytest.mark.parametrize("relative", [1e-3, 1e-4])
@pytest.mark.parametrize("name", ["out", "dw_hh"])
def test_a_small_perturbation_fails(references, name, relative):
    """One element off by ``relative`` of the largest: far above float32 rounding."""
    own, exact, sums = references[name]
    wrong = own.clone()
    wrong.view(-1)[3] += relative * own.abs().max()
    result = check.compare(name, wrong, own, exact, reduction=sums)
    assert not result.passed and result.error > result.bound, result


def test_non_finite_and_misshapen_results_fail(references):
    own, exact, _ = references["out"]
    poisoned = own.clone()
    poisoned.view(-1)[0] = math.nan
    for wrong in (poisoned, own[:-1]):
        result = check.compare("out", wrong, own, exact)
        assert not result.passed and result.error == math.inf, result


def test_the_bound_scales_with_the_dtype_and_the_sum_length():
    exact = torch.linspace(-1, 1, 9, dtype=torch.float64)
    tight = check.compare("x", exact.float(), exact.float(), exact)
    assert check.compare("x", exact.bfloat16(), exact.float(), exact).bound > 1000 * tight.bound
    assert check.compare("x", exact.float(), exact.float(), exact, reduction=100).bound > \
        5 * tight.bound


def test_every_cell_has_option_sets_and_a_module():
    assert set(check.OPTION_SETS) == set(CELLS) == set(check.MODULES) == set(check.SPEED_OPTIONS)


def test_a_row_per_backend_cell_option_set_and_shape():
    rows = check.correctness("cpu", backends=["reference", "native"], shapes=[TINY])
    found = {(r["backend"], r["cell"], r["options"]): r for r in rows}
    assert set(found) == {(b, c, o) for b in ("reference", "native") for c in CELLS
                          for o in ("plain", "regularized")}
    for (backend, _, options), row in found.items():
        if backend == "native" and options == "regularized":
            assert row["status"] == "skipped" and "torch.nn's cells only" in row["message"]
        else:
            assert row["status"] == "pass", row
            names = {c["name"] for c in row["comparisons"]}
            assert {"out", "h_n", "d input", "d weight_hh_l0"} <= names
            assert all(c["error"] <= c["bound"] for c in row["comparisons"])


def _perturbed_native(monkeypatch, relative=1e-3):
    """torch's kernel with its output off by ``relative``: a backend that is slightly wrong."""
    original = ops.native

    def wrong(call):
        out, *states = original(call)
        return (out * (1 + relative), *states)

    monkeypatch.setattr(ops, "native", wrong)


def test_a_slightly_wrong_backend_fails_the_check(monkeypatch, capsys, tiny_shapes):
    _perturbed_native(monkeypatch)
    rows = check.correctness("cpu", backends=["native"], shapes=[TINY])
    ran = [r for r in rows if r["status"] != "skipped"]
    assert ran and all(r["status"] == "fail" for r in ran)
    assert all(r["worst"] in ("out", "d input", "d weight_ih_l0", "d weight_hh_l0",
                              "d bias_ih_l0", "d bias_hh_l0") for r in ran), ran
    assert check.main(FAST) == 1
    report = capsys.readouterr().out
    assert "FAIL    native" in report and "FAILED" in report


def test_the_command_prints_the_environment_and_writes_json(tmp_path, capsys, tiny_shapes):
    path = tmp_path / "check.json"
    assert check.main(FAST + ["--json", str(path)]) == 0
    report = capsys.readouterr().out
    for fact in (torch.__version__, sys.version.split()[0], "fastrnn   0.1.0", "device    cpu",
                 "torch threads", "os  ", "date  "):
        assert fact in report, fact
    assert "Speed" not in report
    written = json.loads(path.read_text())
    assert written["environment"]["torch"] == torch.__version__
    assert written["speed"] == []
    rows = written["correctness"]
    assert {r["status"] for r in rows} == {"pass", "skipped"}
    assert len(rows) == 2 * len(CELLS) * 2 * len(check.SHAPES)
    for row in rows:
        if row["status"] == "pass":
            assert f"PASS    {row['backend']:9s}  {row['cell']}" in report


def test_speed_rows_and_table(capsys):
    rows = check.speed("cpu", shape=TINY, repeats=1)
    assert {(r["cell"], r["implementation"]) for r in rows} == {
        (c, i) for c in CELLS for i in ("fastrnn", "torch loop", "torch.nn")}
    assert all(r["forward_ms"] > 0 and r["train_ms"] > 0 for r in rows)
    fused = "cpu" if fastrnn.backends.available()["cpu"] is None else "reference"
    assert {r["backend"] for r in rows if r["implementation"] == "fastrnn"} == {fused}
    text = check.report(check.environment("cpu"), [], rows)
    assert f"fastrnn (auto: {fused})" in text and "torch loop" in text


@pytest.mark.parametrize("argv, argument", [
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "meta"],
     "--device"),
    (["--backends", "cudnn"], "--backends"),
    (["--dtype", "int8"], "--dtype"),
])
def test_a_bad_argument_is_named(argv, argument, capsys):
    with pytest.raises(SystemExit) as exit:
        check.main(argv + ["--no-speed"])
    assert exit.value.code == 2
    assert f"argument {argument}" in capsys.readouterr().err


def test_functions_name_their_bad_arguments():
    with pytest.raises(ValueError, match="backends must name"):
        check.correctness("cpu", backends=["cudnn"])
    with pytest.raises(ValueError, match="device must be"):
        check.correctness("tpu")
    if not check.B.refusal("cuda", torch.device("cpu"), torch.float32):
        pytest.skip("the CUDA backend runs here")
    with pytest.raises(ValueError, match="backends: backend='cuda'"):
        check.correctness("cpu", backends=["cuda"])


def test_python_dash_m_runs_main():
    done = subprocess.run([sys.executable, "-m", "fastrnn.check", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--no-speed" in done.stdout and "--json" in done.stdout
