"""The backend registry (fastrnn/backends/__init__.py): what "auto" picks, how a backend refuses a
feature it does not run, and how it is handed calls without that feature's fields."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from fastrnn import backends, ops
from fastrnn.backends import NATIVE, Request
from fastrnn.cells import LSTM
from support import case, make_call, make_inputs

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def every_backend_runs_here(monkeypatch):
    """Pretend the fused backends are installed and run CUDA float32 (CI has no GPU)."""
    for name in ("triton", "cuda"):
        module = backends.get(name)
        monkeypatch.setattr(module, "unavailable", lambda: None)
        monkeypatch.setattr(module, "unsupported", lambda device, dtype: None)


@pytest.mark.parametrize("request_, expected", [
    (Request(cell="lstm", hidden=256, plain=True), NATIVE),
    (Request(cell="gru", hidden=256, plain=True, features=frozenset({"proj_size"})), NATIVE),
    (Request(cell="lstm", hidden=256, plain=False), "triton"),
    (Request(cell="lstm", hidden=256, plain=False, features=frozenset({"proj_size"})),
     "reference"),
    (Request(cell="gru", hidden=256, plain=True, compiling_for_grad=True), "triton"),
], ids=["plain", "plain-projection", "fastrnn-options", "fastrnn-options-projection",
        "plain-compiled-for-training"])
def test_auto_on_cuda(every_backend_runs_here, request_, expected):
    assert backends.resolve("auto", CUDA, torch.float32, request_) == expected


@pytest.mark.parametrize("plain, expected", [(True, NATIVE), (False, "cpu")])
def test_auto_on_cpu(plain, expected):
    if backends.get("cpu").unavailable() is not None:
        expected = "reference" if expected == "cpu" else expected
    assert backends.resolve("auto", CPU, torch.float64, Request(plain=plain)) == expected


def test_auto_on_cpu_falls_back_to_the_reference(monkeypatch):
    """float16, or no compiler to build "cpu": the reference runs it.  Only the second warns
    (once, naming the backend and why): float16 is a dtype "cpu" never runs (docs/api.md)."""
    import warnings
    monkeypatch.setattr(backends, "_fallbacks_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", CPU, torch.float16, Request(plain=False)) == "reference"
    monkeypatch.setattr(backends.get("cpu"), "unavailable", lambda: "no C++ compiler")
    with pytest.warns(RuntimeWarning, match="backend='cpu' is not available here: no C"):
        assert backends.resolve("auto", CPU, torch.float32, Request(plain=False)) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", CPU, torch.float32, Request(plain=False)) == "reference"
        assert backends.resolve("auto", CPU, torch.float32, Request(plain=True)) == NATIVE


def test_the_cuda_table_is_read_first_rule_first(every_backend_runs_here, monkeypatch):
    """A measured row for one configuration overrides the defaults below it."""
    measured = backends.AutoRule(order=("cuda", "triton"), cells=("gru",), plain=False,
                                 dtypes=(torch.bfloat16,), max_hidden=512, source="a test")
    monkeypatch.setattr(backends, "AUTO_CUDA", (measured,) + backends.AUTO_CUDA)
    gru = Request(cell="gru", hidden=512)
    assert backends.resolve("auto", CUDA, torch.bfloat16, gru) == "cuda"
    assert backends.resolve("auto", CUDA, torch.float32, gru) == "triton"
    assert backends.resolve("auto", CUDA, torch.bfloat16, gru._replace(hidden=1024)) == "triton"


def test_a_backend_without_a_feature_refuses_it_by_name(every_backend_runs_here):
    projected = Request(features=frozenset({"proj_size"}))
    for name in ("triton", "cuda"):
        error, message = backends.refusal(name, CUDA, torch.float32, projected)
        assert error is ValueError and "proj_size" in message and repr(name) in message
        assert backends.refusal(name, CUDA, torch.float32, Request()) is None
    with pytest.raises(ValueError, match=r"backend='triton' cannot run proj_size > 0"):
        backends.resolve("triton", CUDA, torch.float32, projected)


def _lstm_call(proj_size):
    c = case("lstm", "plain", proj_size=proj_size)
    return make_call(c, make_inputs(c, torch.float64))


def test_the_op_refuses_a_projection_on_a_backend_without_it():
    with pytest.raises(ValueError, match=r"backend='triton' cannot run proj_size > 0"):
        ops.forward(_lstm_call(proj_size=3), "triton")


def test_the_fastrnn_op_is_not_run_by_the_native_backend():
    with pytest.raises(ValueError, match=r"backend='native' does not implement "
                                         r"fastrnn::lstm_forward"):
        ops.forward(_lstm_call(proj_size=0), NATIVE)


def test_a_backend_without_a_feature_gets_its_fields_as_none(monkeypatch):
    """What triton_backend and cuda_backend (which do not run proj_size) see: the call with
    w_hr None; the gradients they return lack d w_hr, which comes back empty."""
    seen = {}

    def forward(call, save=True):
        seen["forward"] = call
        return ("forward results",)

    def backward(call, saved, grads):
        seen["backward"] = call
        return tuple(torch.zeros(1) for _ in LSTM.differentiable[:-1])  # all but d w_hr

    triton = backends.get("triton")
    monkeypatch.setattr(triton, "forward", forward)
    monkeypatch.setattr(triton, "backward", backward)
    call = _lstm_call(proj_size=0)
    assert backends.forward("triton", call) == ("forward results",)
    grads = backends.backward("triton", call, saved=None, grads=None)
    for seen_call in (seen["forward"], seen["backward"]):
        assert seen_call is call and seen_call.w_hr is None
    assert len(grads) == len(LSTM.differentiable) and grads[-1].numel() == 0


def test_a_backend_without_kernels_for_a_cell_refuses_it(monkeypatch):
    monkeypatch.setattr(backends.get("reference"), "CELL_NAMES", ("lstm",), raising=False)
    refused = backends.refusal("reference", torch.device("cpu"), torch.float32,
                               Request(cell="gru", hidden=4))
    assert refused is not None and refused[0] is ValueError
    assert "no kernels for the gru cell" in refused[1]
    assert backends.refusal("reference", torch.device("cpu"), torch.float32,
                            Request(cell="lstm", hidden=4)) is None


# ------------------------------------------------------------------ available() and devices()

@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as a CPU-only one, whatever it is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_available_and_devices_agree(cpu_only):
    """None in available() means "runs tensors of some device kind here" (devices())."""
    kinds = backends.devices()
    assert set(kinds) == set(backends.NAMES) | {NATIVE}
    for name, reason in backends.available().items():
        assert (reason is None) == bool(kinds[name]), (name, reason, kinds[name])
    assert kinds["reference"] == ("cpu",) and kinds[NATIVE] == ("cpu",)
    assert kinds["cuda"] == ()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_on_a_cpu_only_machine_runs_only_under_the_interpreter(cpu_only, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = backends.available()["triton"]
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    assert "no CUDA device is visible" in reason
    assert backends.devices()["triton"] == ()
    for dtype in (torch.float32, torch.float64):
        error, message = backends.refusal("triton", CPU, dtype)
        assert error is ValueError and message.startswith("backend='triton' cannot run")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        backends.check("triton", CPU, torch.float32)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.available()["triton"] is None
    assert backends.devices()["triton"] == ("cpu",)
    assert backends.refusal("triton", CPU, torch.float32) is None


def test_every_refusal_is_a_value_error(every_backend_runs_here, monkeypatch):
    """Not installed, device, dtype, cell, feature, native's rules: one exception type."""
    refusals = [
        backends.refusal("reference", CPU, torch.int32),
        backends.refusal(NATIVE, CPU, torch.float32, Request(plain=False)),
        backends.refusal(NATIVE, CPU, torch.float32, Request(plain=True, compiling_for_grad=True)),
        backends.refusal("triton", CUDA, torch.float32, Request(features=frozenset({"proj_size"}))),
    ]
    monkeypatch.setattr(backends.get("cuda"), "unavailable", lambda: "not installed")
    monkeypatch.setattr(backends.get("triton"), "unsupported", lambda device, dtype: "no")
    refusals += [backends.refusal("cuda", CUDA, torch.float32),
                 backends.refusal("triton", CUDA, torch.float64)]
    assert [error for error, _ in refusals] == [ValueError] * len(refusals)
