"""Episode starts (``resets``): the meaning, stated as equalities, then every backend against it.

The meaning (docs/sequences.md "Episode starts"): the output equals running every segment
between a row's resets as its own sequence through every layer, the forward direction's first
segment from hx and every other from the fresh initial state (learned or zeros), the reverse
direction's last segment from hx and every other fresh; h_n (c_n) as without resets; no gradient
crosses a reset; all-False resets are bitwise resets=None; resets at padded steps are ignored.
The reference states it step by step; each fused backend is held to the reference at the op
level (outputs, saved tensors and the gradient of every input, the reset states included).
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import backends, ops
from fastrnn.backends.fused import poisoned_outputs
from fastrnn.cells import cell_of
from support import (INTERPRET, RESETS, assert_close, case, check_call_against_reference,
                     make_call, make_inputs, run_call)

MODULES = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def _model(cell, layer_norm, learn, backend="reference", **options):
    if cell == "gru" and "zoneout_hidden" in options:
        options["zoneout"] = options.pop("zoneout_hidden")
    torch.manual_seed(3)
    model = MODULES[cell](3, 5, num_layers=2, bidirectional=True, layer_norm=layer_norm,
                          learn_initial_state=learn, backend=backend, **options).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("initial_"):
                parameter.normal_()   # the fresh state is then not zero
    return model


def _stacked(hx):
    return hx if isinstance(hx, tuple) else (hx,)


def _segments(model, x, resets, hx, lengths):
    """(out, finals) of running each segment of each row as its own sequence (no resets)."""
    steps, batch = x.shape[:2]
    directions = 2 if model.bidirectional else 1
    out = x.new_zeros(steps, batch, directions * model.hidden_size)
    count = len(model.cell.states)
    finals = [x.new_zeros(model.num_layers * directions, batch, model.hidden_size)
              for _ in range(count)]
    for b in range(batch):
        length = steps if lengths is None else int(lengths[b])
        starts = [0] + [t for t in range(1, length) if resets[t, b]]
        ends = starts[1:] + [length]
        for k, (start, end) in enumerate(zip(starts, ends)):
            first = k == 0 and not bool(resets[0, b])
            last = k == len(starts) - 1
            states = None
            if hx is not None or model.learn_initial_state:
                # Fresh states, then hx where this segment continues from it.
                fresh = [s.detach().clone() for s in model._initial_states(
                    None, type("Layout", (), {"unbatched": False})(), 1, x)]
                for index in range(model.num_layers * directions):
                    takes_hx = first if index % directions == 0 else last
                    for state, given in zip(fresh, _stacked(hx) if hx is not None else ()):
                        if takes_hx:
                            state[index, 0] = given[index, b]
                states = tuple(fresh) if count > 1 else fresh[0]
            seg_out, seg_finals = model(x[start:end, b:b + 1], states)
            out[start:end, b] = seg_out[:, 0]
            for index in range(model.num_layers * directions):
                # forward direction: its last segment's end; reverse: its first segment's start.
                if (index % directions == 0 and last) or (index % directions == 1 and k == 0):
                    for final, value in zip(finals, _stacked(seg_finals)):
                        final[index, b] = value[index, 0]
    return out, tuple(finals)


def _cast(inputs, dtype):
    x, resets, hx = inputs
    return x.to(dtype), resets, tuple(h.to(dtype) for h in hx) if isinstance(hx, tuple) \
        else hx.to(dtype)


def _inputs(cell, generator_seed=5, steps=9, batch=4):
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(steps, batch, 3, generator=g, dtype=torch.float64)
    resets = torch.rand(steps, batch, generator=g) < 0.25
    resets[0, 1] = True   # an episode start at the first step: hx is not read for that row
    resets[:, 2] = False  # a row without resets
    hx = tuple(torch.randn(4, batch, 5, generator=g, dtype=torch.float64)
               for _ in MODULES[cell].cell.states)
    return x, resets, (hx if len(hx) > 1 else hx[0])


@pytest.mark.parametrize("lengths", [None, [9, 7, 5, 9]], ids=["full", "lengths"])
@pytest.mark.parametrize("given", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("learn", [False, True], ids=["zeros", "learned"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_output_equals_the_segments_run_alone(cell, layer_norm, learn, given, lengths):
    """Two bidirectional layers on the reference: out, h_n (c_n) equal the segment runs."""
    model = _model(cell, layer_norm, learn)
    x, resets, hx = _inputs(cell)
    lengths = None if lengths is None else torch.tensor(lengths)
    hx = hx if given else None
    out, finals = model(x, hx, lengths=lengths, resets=resets)
    expected_out, expected_finals = _segments(model, x, resets, hx, lengths)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    for got, expected in zip(_stacked(finals), expected_finals):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _dtype(backend):
    """The module tests run float64, Triton (which has no float64 kernels) float32."""
    return torch.float32 if backend == "triton" else torch.float64


def _module_backends():
    names = ["reference", "cpu"] + (["triton"] if INTERPRET else [])
    return [pytest.param(name, marks=pytest.mark.skipif(
        backends.refusal(name, torch.device("cpu"), _dtype(name),
                         backends.Request(features=frozenset({"resets"}))) is not None,
        reason=f"{name} cannot run resets here")) for name in names]


@pytest.mark.parametrize("backend", _module_backends())
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_gradient_crosses_a_reset(cell, backend):
    """d out[t] / d x[s] is zero for s before the row's last reset at or before t, on every
    layer and direction; the learned initial state gets the gradient of every fresh start."""
    model = _model(cell, True, True, backend=backend).to(_dtype(backend))
    x, resets, _ = _inputs(cell)
    resets[:] = False
    resets[4, 0] = True
    x = x.to(_dtype(backend)).requires_grad_(True)
    out, _ = model(x, resets=resets)
    # Forward direction of row 0 after the reset: nothing from before it.
    grad, = torch.autograd.grad(out[6, 0, :5].sum(), x, retain_graph=True)
    assert grad[:4, 0].abs().max() == 0 and grad[4:7, 0].abs().max() > 0
    # Reverse direction of row 0 before the reset: nothing from after it.
    grad, = torch.autograd.grad(out[1, 0, 5:].sum(), x, retain_graph=True)
    assert grad[4:, 0].abs().max() == 0 and grad[1:4, 0].abs().max() > 0
    # The fresh state of the forward direction is read twice by row 0 (t = 0 and t = 4).
    initial = model.initial_hidden_l0
    grad, = torch.autograd.grad(out[4, 0, :5].sum(), initial)
    assert grad.abs().max() > 0


@pytest.mark.parametrize("backend", _module_backends())
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_all_false_resets_are_bitwise_no_resets(cell, backend):
    model = _model(cell, True, True, backend=backend, zoneout_hidden=0.2,
                   recurrent_dropout=0.2).to(_dtype(backend))
    model.train()
    x, _, hx = _cast(_inputs(cell), _dtype(backend))
    torch.manual_seed(9)
    expected = model(x, hx)
    torch.manual_seed(9)
    got = model(x, hx, resets=torch.zeros(x.shape[:2], dtype=torch.bool))
    assert torch.equal(got[0], expected[0])
    for a, b in zip(_stacked(got[1]), _stacked(expected[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", _module_backends())
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resets_at_padded_steps_are_ignored(cell, backend):
    model = _model(cell, False, False, backend=backend).to(_dtype(backend))
    x, resets, hx = _cast(_inputs(cell), _dtype(backend))
    lengths = torch.tensor([9, 6, 4, 9])
    padded = torch.arange(9)[:, None] >= lengths[None, :]
    cleared = resets & ~padded
    expected = model(x, hx, lengths=lengths, resets=cleared)
    got = model(x, hx, lengths=lengths, resets=cleared | padded)
    assert torch.equal(got[0], expected[0])
    for a, b in zip(_stacked(got[1]), _stacked(expected[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [b for b in _module_backends() if b.values[0] != "reference"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_module_equals_reference_in_training(cell, backend):
    """Two bidirectional layers with every regularizer, lengths and learned initial states:
    the backend's outputs and every parameter's gradient equal the reference's (float64)."""
    results = {}
    lengths = torch.tensor([9, 7, 5, 9])
    for name, dtype in (("reference", torch.float64), (backend, _dtype(backend))):
        x, resets, hx = _cast(_inputs(cell), dtype)
        model = _model(cell, True, True, backend=name, zoneout_hidden=0.2, recurrent_dropout=0.2,
                       candidate_dropout=0.1).to(dtype).train()
        torch.manual_seed(4)
        out, finals = model(x, hx, lengths=lengths, resets=resets)
        loss = out.square().sum() + sum(f.sum() for f in _stacked(finals))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results[name] = (out.double(), [g.double() for g in grads])
    (out, grads), (ref_out, ref_grads) = results[backend], results["reference"]
    # float64: the same arithmetic to rounding; float32 (Triton): its own rounding, far below
    # what a wrong gate or a state read across a start would change.
    tolerance = (dict(rtol=1e-9, atol=1e-10) if _dtype(backend) == torch.float64
                 else dict(rtol=1e-4, atol=2e-5))
    torch.testing.assert_close(out, ref_out, **tolerance)
    for (name, _), got, expected in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(got, expected, **tolerance, msg=name)


def test_layouts_batch_first_and_unbatched():
    model = _model("gru", True, False)
    x, resets, _ = _inputs("gru")
    out, _ = model(x, resets=resets)
    model.batch_first = True
    out_bf, _ = model(x.transpose(0, 1), resets=resets.t())
    assert torch.equal(out_bf.transpose(0, 1), out)
    model.batch_first = False
    single, _ = model(x[:, 3], resets=resets[:, 3])
    torch.testing.assert_close(single, out[:, 3], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- bad input

def test_bad_resets_are_named_errors_and_inputs_are_not_modified():
    model = _model("lstm", True, True)
    x, resets, hx = _inputs("lstm")
    before = resets.clone(), x.clone()
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        model(x, resets=resets.float())
    with pytest.raises(ValueError, match=r"resets must have the input's leading shape \(T, B\)"):
        model(x, resets=resets[:-1])
    with pytest.raises(TypeError, match="resets must be a bool Tensor"):
        model(x, resets=resets.tolist())
    with pytest.raises(ValueError, match="resets must be on the input's device"):
        model(x, resets=resets.to("meta"))
    packed = pack_padded_sequence(x, [9, 7, 5, 9], enforce_sorted=False)
    with pytest.raises(ValueError, match="resets cannot be given with a PackedSequence"):
        model(packed, resets=resets)
    model(x, hx, resets=resets)
    assert torch.equal(resets, before[0]) and torch.equal(x, before[1])


def test_native_refuses_resets_and_auto_runs_them():
    model = fastrnn.LSTM(3, 5, backend="native")
    x = torch.randn(6, 2, 3)
    resets = torch.zeros(6, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"backend='native' cannot run resets"):
        model(x, resets=resets)
    model.backend = "auto"
    assert backends.resolve("auto", x.device, x.dtype, backends.Request(
        plain=True, features=frozenset({"resets"}))) != backends.NATIVE
    out, _ = model(x, resets=resets)
    assert out.shape == (6, 2, 5)


# ------------------------------------------------------------------- the op, every backend

RESET_CASES = {f"{cell}-{name}": case(cell, name) for cell in ("lstm", "gru") for name in RESETS}


@pytest.mark.parametrize("name", list(RESET_CASES))
def test_reference_gradcheck(name):
    """The reference backward (the chain rule the kernels follow) against finite differences
    of the reference forward, the reset states included."""
    test_case = case(*name.split("-", 1), steps=4, hidden=3)
    if test_case.lengths is not None:
        test_case.lengths = [min(4, v) for v in test_case.lengths]
    call = make_call(test_case, make_inputs(test_case, generator_seed=21))
    _gradcheck(call, "reference")


def _gradcheck(call, backend):
    spec = cell_of(call)
    names = [n for n in spec.differentiable if getattr(call, n, None) is not None]

    def run(*leaves):
        return ops.forward(call._replace(**dict(zip(names, leaves))), backend)[:1 + len(spec.states)]

    leaves = tuple(getattr(call, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def _fused_backends():
    params = []
    for name in ("cpu", "triton", "cuda"):
        device = "cuda" if name == "cuda" or (name == "triton" and not INTERPRET) else "cpu"
        refused = backends.refusal(name, torch.device(device), torch.float32,
                                   backends.Request(features=frozenset({"resets"})))
        if device == "cuda" and not torch.cuda.is_available():
            refused = (None, "no CUDA device")
        params.append(pytest.param(name, device, marks=pytest.mark.skipif(
            refused is not None, reason=f"{name}: {refused and refused[1]}")))
    return params


@pytest.mark.parametrize("backend, device", _fused_backends())
@pytest.mark.parametrize("name", list(RESET_CASES))
def test_fused_backend_within_tolerance(name, backend, device):
    """float32 outputs, saved tensors and gradients against the float64 reference."""
    call = make_call(RESET_CASES[name], make_inputs(RESET_CASES[name], generator_seed=22))
    with poisoned_outputs():
        check_call_against_reference(call, backend, torch.float32, device)


@pytest.mark.parametrize("name", list(RESET_CASES))
def test_cpu_float64_equals_reference(name):
    if backends.refusal("cpu", torch.device("cpu"), torch.float64,
                        backends.Request(features=frozenset({"resets"}))) is not None:
        pytest.skip("cpu backend unavailable")
    call = make_call(RESET_CASES[name], make_inputs(RESET_CASES[name], generator_seed=23))
    with poisoned_outputs():
        got_out, got_grad = run_call(call, "cpu", torch.float64)
    ref_out, ref_grad = run_call(call, "reference", torch.float64)
    rows = (None if call.lengths is None
            else torch.arange(call.gx.shape[0])[:, None] < call.lengths[None, :])
    for key, expected in ref_out.items():
        got = got_out[key]
        if rows is not None and got.dim() == 3:
            got, expected = got[rows], expected[rows]
        assert_close(got, expected, torch.float64, key)
    for key, expected in ref_grad.items():
        assert_close(got_grad[key], expected, torch.float64, f"d{key}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_gradcheck(cell):
    if backends.refusal("cpu", torch.device("cpu"), torch.float64,
                        backends.Request(features=frozenset({"resets"}))) is not None:
        pytest.skip("cpu backend unavailable")
    test_case = case(cell, "resets_everything_reverse", steps=4, hidden=3,
                     lengths=[4, 2, 3, 1])
    _gradcheck(make_call(test_case, make_inputs(test_case, generator_seed=24)), "cpu")


# ---------------------------------------------------------------- compile, export, ONNX

class _Policy(torch.nn.Module):
    """A layer-norm LSTM with zoneout, then a GRU with a learned initial state, both reset."""

    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LayerNormLSTM(3, 6, zoneout_cell=0.1, zoneout_hidden=0.2,
                                          recurrent_dropout=0.2, bidirectional=True)
        self.gru = fastrnn.GRU(12, 5, learn_initial_state=True, layer_norm=True)

    def forward(self, x, resets):
        y, _ = self.lstm(x, resets=resets)
        z, h_n = self.gru(y, resets=resets)
        return z, h_n


def _rollout(steps, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    resets = torch.rand(steps, batch, generator=g) < 0.2
    return torch.randn(steps, batch, 3, generator=g), resets


def test_compiled_training_step_equals_eager():
    import torch._inductor.config as inductor_config
    torch._dynamo.reset()
    model = _Policy().double()
    x, resets = _rollout(7, 3)
    x = x.double()
    compiled = torch.compile(model, fullgraph=True)

    def step(run):
        model.zero_grad()
        torch.manual_seed(5)
        z, h_n = run(x, resets)
        (z.square().sum() + h_n.sum()).backward()
        return z.detach(), [p.grad.clone() for p in model.parameters()]

    with inductor_config.patch(fallback_random=True):
        got, got_grads = step(compiled)
    expected, expected_grads = step(model)
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_export_with_dynamic_steps_and_rows():
    from torch.export import Dim
    model = _Policy().eval()
    x, resets = _rollout(6, 3)
    steps, batch = Dim("T", min=2), Dim("B", min=2)
    exported = torch.export.export(model, (x, resets),
                                   dynamic_shapes=({0: steps, 1: batch}, {0: steps, 1: batch}))
    for size in ((9, 2), (4, 5)):
        x, resets = _rollout(*size, seed=1)
        got, expected = exported.module()(x, resets), model(x, resets)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)


def test_onnx_export_with_resets_as_a_graph_input():
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim
    model = _Policy().eval()
    x, resets = _rollout(6, 3)
    steps, batch = Dim("T"), Dim("B")
    program = torch.onnx.export(model, (x, resets), dynamo=True,
                                dynamic_shapes=({0: steps, 1: batch}, {0: steps, 1: batch}))
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 2
    for size in ((9, 2), (4, 5)):
        x, resets = _rollout(*size, seed=2)
        got = session.run(None, {names[0]: x.numpy(), names[1]: resets.numpy()})
        with torch.no_grad():
            expected = model(x, resets)
        for a, b in zip(got, expected):
            torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-5, atol=1e-5)
