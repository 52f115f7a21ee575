"""fastrnn.LSTM / GRU as drop-in modules: torch.nn equality for every layout with the options
off (float64) on the reference and on torch's own kernel (backend="native", what "auto" picks
for such a module on CPU), lengths, residual, learned initial states, parameters, init, repr,
swapping."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from support import TOLERANCE, max_rel_err

TORCH_OF = {fastrnn.LSTM: nn.LSTM, fastrnn.GRU: nn.GRU}
CELLS = [fastrnn.LSTM, fastrnn.GRU]
# The reference states the math; "native" must match torch.nn because it is torch's kernel
# behind the fastrnn op (lengths and reverse rewritten, see fastrnn/backends/native_backend.py).
BACKENDS = ["reference", "native"]
REL = 1e-12


def tensors_of(value):
    """Every tensor in a nested module output (PackedSequence -> its data)."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_of(item)]
    return [value]


def weighted_sum(outputs, seed=7):
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
               for t in tensors_of(outputs))


def assert_rel_close(actual, expected, name, rel=REL):
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    err = max_rel_err(actual, expected)
    assert err <= rel, f"{name}: relative error {err:.2e}"


def torch_twin(cls, backend="reference", **kwargs):
    """(torch module, fastrnn module with the same weights), float64."""
    reference = TORCH_OF[cls](dtype=torch.float64, **kwargs)
    return reference, cls.from_torch(reference, backend=backend)


def run_both(reference, module, x_master, make_input=lambda x: x, hx=None):
    """Forward + backward of the same weighted sum of the outputs of ``make_input(x)``;
    returns the outputs and gradients (parameters, input, hx) of both."""
    results = []
    for model in (reference, module):
        x_leaf = x_master.clone().requires_grad_()
        x = make_input(x_leaf)
        state = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
        out = model(x, None if state is None else (state if len(state) == 2 else state[0]))
        weighted_sum(out).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        grads["input"] = x_leaf.grad
        for i, h in enumerate(state or ()):
            grads[f"hx{i}"] = h.grad
        results.append((out, grads))
    return results


def assert_same_results(out, grads, ref_out, ref_grads):
    for i, (a, b) in enumerate(zip(tensors_of(out), tensors_of(ref_out))):
        assert_rel_close(a, b, f"output {i}")
    for name, expected in ref_grads.items():
        assert_rel_close(grads[name], expected, f"d{name}")


def random_hx(module, batch):
    """One random (L·D, B, width) initial state per state of the module (h, or h and c; h is
    proj_size wide under a projection); (L·D, width) for unbatched input (batch None)."""
    widths = {"hidden": module.proj_size or module.hidden_size, "cell": module.hidden_size}
    return [torch.randn(module.num_layers * module.num_directions,
                        *([] if batch is None else [batch]), widths[name], dtype=torch.float64)
            for name in module.state_names]


LAYOUTS = {
    "seq_first": dict(kwargs={}, shape=(6, 3, 4)),
    "batch_first": dict(kwargs={"batch_first": True}, shape=(3, 6, 4)),
    "unbatched": dict(kwargs={}, shape=(6, 4)),
    "multi_layer": dict(kwargs={"num_layers": 3}, shape=(6, 3, 4)),
    "bidirectional": dict(kwargs={"bidirectional": True, "num_layers": 2}, shape=(6, 3, 4)),
    "no_bias": dict(kwargs={"bias": False, "batch_first": True}, shape=(3, 6, 4)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matches_torch_for_every_layout(cls, layout, backend):
    spec = LAYOUTS[layout]
    reference, module = torch_twin(cls, backend, input_size=4, hidden_size=5, **spec["kwargs"])
    x = torch.randn(*spec["shape"], dtype=torch.float64)
    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x)
    assert_same_results(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch", [5, None], ids=["batched", "unbatched"])
def test_matches_torch_with_hx(cls, bidirectional, batch, backend):
    reference, module = torch_twin(cls, backend, input_size=3, hidden_size=4, num_layers=2,
                                   bidirectional=bidirectional)
    hx = random_hx(module, batch)
    x = torch.randn(7, *([] if batch is None else [batch]), 3, dtype=torch.float64)
    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x, hx=hx)
    assert_same_results(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_for_packed_sequences(cls, enforce_sorted, bidirectional, backend):
    reference, module = torch_twin(cls, backend, input_size=3, hidden_size=4, num_layers=2,
                                   bidirectional=bidirectional)
    lengths = [6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4]
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    hx = random_hx(module, batch=4)

    def make_input(leaf):
        return pack_padded_sequence(leaf, lengths, enforce_sorted=enforce_sorted)

    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x, make_input, hx=hx)
    assert isinstance(out[0], PackedSequence)
    assert torch.equal(out[0].batch_sizes, ref_out[0].batch_sizes)
    for field in ("sorted_indices", "unsorted_indices"):
        got, expected = getattr(out[0], field), getattr(ref_out[0], field)
        assert (got is None and expected is None) or torch.equal(got, expected)
    assert_same_results(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_lengths_equal_per_sequence_runs(cls, bidirectional, as_tensor):
    module = cls(3, 4, num_layers=2, bidirectional=bidirectional, layer_norm=True,
                 dtype=torch.float64)
    steps, lengths = 6, [3, 6, 1, 5]
    x = torch.randn(steps, len(lengths), 3, dtype=torch.float64)
    out, state = module(x, lengths=torch.tensor(lengths) if as_tensor else lengths)
    finals = state if isinstance(state, tuple) else (state,)
    for b, length in enumerate(lengths):
        alone, alone_state = module(x[:length, b:b + 1])
        alone_finals = alone_state if isinstance(alone_state, tuple) else (alone_state,)
        assert_rel_close(out[:length, b], alone[:, 0], f"out of sequence {b}")
        assert torch.all(out[length:, b] == 0), "outputs past the end must be zero"
        for final, expected in zip(finals, alone_finals):
            assert_rel_close(final[:, b], expected[:, 0], f"final state of sequence {b}")


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_residual_adds_layer_input_from_layer_one(cls):
    module = cls(3, 4, num_layers=3, residual=True, dtype=torch.float64)
    single = [cls(3 if k == 0 else 4, 4, dtype=torch.float64) for k in range(3)]
    for k, layer in enumerate(single):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{name}_l0").data.copy_(getattr(module, f"{name}_l{k}"))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = single[0](x)[0]
    for layer in single[1:]:
        expected = layer(expected)[0] + expected
    assert_rel_close(module(x)[0], expected, "residual output")


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_learned_initial_state_is_used_and_gets_gradients(cls):
    module = cls(3, 4, num_layers=2, bidirectional=True, learn_initial_state=True,
                 dtype=torch.float64)
    names = [n for n, _ in module.named_parameters() if n.startswith("initial_")]
    expected_names = {f"initial_{s}_l{k}{d}" for s in module.state_names for k in (0, 1)
                      for d in ("", "_reverse")}
    assert set(names) == expected_names
    with torch.no_grad():
        for name in names:
            getattr(module, name).normal_()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    weighted_sum(module(x)).backward()
    learned = {n: module.get_parameter(n).grad.clone() for n in names}
    module.zero_grad()
    hx = [torch.stack([module.get_parameter(f"initial_{s}_l{k}{d}") for k in (0, 1)
                       for d in ("", "_reverse")]).detach().unsqueeze(1).expand(4, 3, 4)
          .clone().requires_grad_() for s in module.state_names]
    out = module(x, tuple(hx) if len(hx) == 2 else hx[0])
    weighted_sum(out).backward()
    for s, h in zip(module.state_names, hx):
        for index, (k, d) in enumerate([(k, d) for k in (0, 1) for d in ("", "_reverse")]):
            grad = learned[f"initial_{s}_l{k}{d}"]
            assert grad.abs().sum() > 0
            assert_rel_close(grad, h.grad[index].sum(0), f"d initial_{s}_l{k}{d}")


def test_parameter_names_and_shapes():
    lstm = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in lstm.named_parameters()}
    for s in ("", "_reverse"):
        assert shapes[f"weight_ih_l0{s}"] == (16, 3)
        assert shapes[f"weight_ih_l1{s}"] == (16, 8)
        assert shapes[f"weight_hh_l1{s}"] == (16, 4)
        assert shapes[f"bias_ih_l1{s}"] == shapes[f"bias_hh_l1{s}"] == (16,)
        assert shapes[f"ln_ih_weight_l1{s}"] == shapes[f"ln_hh_weight_l1{s}"] == (16,)
        assert shapes[f"ln_cell_weight_l1{s}"] == shapes[f"ln_cell_bias_l1{s}"] == (4,)
    assert len(shapes) == 2 * 2 * 8
    gru = fastrnn.LayerNormGRU(3, 4, bias=False)
    assert {n: tuple(p.shape) for n, p in gru.named_parameters()} == {
        "weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4), "ln_ih_weight_l0": (12,),
        "ln_hh_weight_l0": (12,)}


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_default_init(cls):
    hidden, inputs = 64, 48
    module = cls(inputs, hidden, num_layers=2, layer_norm=True)
    gates = module.cell.num_gates
    bound_ih = math.sqrt(6.0 / (inputs + hidden))
    for block in module.weight_ih_l0.detach().chunk(gates):
        assert block.abs().max() <= bound_ih
        # uniform on [-a, a] has std a / sqrt(3); 64*48 samples: a few % off at most
        assert abs(block.std().item() / (bound_ih / math.sqrt(3)) - 1) < 0.1
    for block in module.weight_hh_l1.detach().chunk(gates):
        assert torch.allclose(block @ block.t(), torch.eye(hidden), atol=1e-5)
    forget = slice(hidden, 2 * hidden)
    for name, p in module.named_parameters():
        if name.startswith("bias_ih") and cls is fastrnn.LSTM:
            assert torch.all(p[forget] == 1.0)
            assert torch.all(p[:hidden] == 0) and torch.all(p[2 * hidden:] == 0)
        elif name.startswith("bias") or name.startswith("ln_cell_bias"):
            assert torch.all(p == 0), name
        elif name.startswith("ln_"):
            assert torch.all(p == 1), name
    custom = fastrnn.LSTM(3, 5, forget_bias=2.5)
    assert torch.all(custom.bias_ih_l0[5:10] == 2.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.LayerNormLSTM,
                                 fastrnn.LayerNormGRU], ids=lambda c: c.__name__)
def test_half_precision_modules_are_the_float32_init_rounded(cls, dtype):
    """QR has no half-precision kernel: the init runs in float32, so a half-precision module
    holds the float32 module's parameters (same seed) rounded, and runs."""
    torch.manual_seed(0)
    low = cls(3, 5, num_layers=2, bidirectional=True, dtype=dtype)
    torch.manual_seed(0)
    full = cls(3, 5, num_layers=2, bidirectional=True)
    for (name, a), (_, b) in zip(low.named_parameters(), full.named_parameters()):
        assert a.dtype == dtype and torch.equal(a, b.to(dtype)), name
    out, _ = low(torch.randn(4, 2, 3, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_from_torch_of_a_bfloat16_module(cls):
    reference = TORCH_OF[cls](3, 4, num_layers=2, dtype=torch.bfloat16)
    converted = cls.from_torch(reference, layer_norm=True)
    assert converted.weight_hh_l1.dtype == torch.bfloat16
    for name, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name


def test_layer_norm_classes_equal_layer_norm_option():
    torch.manual_seed(0)
    a = fastrnn.LayerNormLSTM(3, 4, zoneout_cell=0.1)
    torch.manual_seed(0)
    b = fastrnn.LSTM(3, 4, layer_norm=True, zoneout_cell=0.1)
    assert a.layer_norm and isinstance(a, fastrnn.LSTM)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(1)
    out_a = a(x)[0]
    torch.manual_seed(1)
    assert torch.equal(out_a, b(x)[0])
    assert isinstance(fastrnn.LayerNormGRU(3, 4), fastrnn.GRU)
    assert fastrnn.LayerNormGRU(3, 4).layer_norm


def test_repr_shows_the_options_that_are_set():
    assert repr(fastrnn.LSTM(3, 4)) == "LSTM(3, 4)"
    text = repr(fastrnn.LSTM(3, 4, 2, batch_first=True, zoneout_cell=0.1, forget_bias=0.0,
                             backend="reference"))
    assert text == ("LSTM(3, 4, num_layers=2, batch_first=True, zoneout_cell=0.1, "
                    "forget_bias=0.0, backend='reference')")
    assert repr(fastrnn.LayerNormGRU(3, 4, zoneout=0.2, ln_groups=3)) == (
        "LayerNormGRU(3, 4, layer_norm=True, ln_groups=3, zoneout=0.2)")


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_from_torch_and_load_state_dict(cls):
    reference = TORCH_OF[cls](3, 4, num_layers=2, batch_first=True, bidirectional=True,
                              dropout=0.25, dtype=torch.float64)
    converted = cls.from_torch(reference, layer_norm=True, recurrent_dropout=0.1)
    assert converted.batch_first and converted.bidirectional and converted.num_layers == 2
    assert converted.dropout == 0.25 and converted.layer_norm
    assert converted.recurrent_dropout == 0.1
    assert converted.weight_ih_l0.dtype == torch.float64
    for name, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value)
    loaded = cls(3, 4, num_layers=2, batch_first=True, bidirectional=True, dtype=torch.float64)
    result = loaded.load_state_dict(reference.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    reference.eval(), loaded.eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    for a, b in zip(tensors_of(loaded(x)), tensors_of(reference(x))):
        assert_rel_close(a, b, "output after load_state_dict")
    with pytest.raises(TypeError, match=r"needs a torch.nn.(LSTM|GRU), got"):
        cls.from_torch(nn.RNN(3, 4))


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_empty_batch_returns_empty_outputs(cls):
    module = cls(3, 4, num_layers=2, bidirectional=True)
    out, state = module(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 8)
    for final in (state if isinstance(state, tuple) else (state,)):
        assert final.shape == (4, 0, 4)
    out, _ = cls(3, 4, batch_first=True)(torch.randn(0, 5, 3))
    assert out.shape == (0, 5, 4)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("with_hx", [False, True], ids=["zeros", "hx"])
def test_empty_batch_gives_zero_gradients_like_torch(cls, with_hx):
    """B = 0: the outputs are connected to autograd (every parameter gets a zero gradient, as
    torch.nn's do) and the final states are new tensors, never the caller's hx."""
    reference, module = torch_twin(cls, input_size=3, hidden_size=4, num_layers=2,
                                   bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    hx = random_hx(module, 0) if with_hx else None
    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x, hx=hx)
    assert_same_results(out, grads, ref_out, ref_grads)
    assert all(grads[name] is not None for name in ref_grads)
    given = tuple(hx or ())
    for final in tensors_of(module(x, None if hx is None else
                                   (tuple(given) if cls is fastrnn.LSTM else given[0]))[1]):
        assert all(final is not h for h in given)
    layer_norm = cls(3, 4, layer_norm=True, learn_initial_state=True)
    weighted_sum(layer_norm(torch.randn(5, 0, 3))).backward()
    for name, parameter in layer_norm.named_parameters():
        assert parameter.grad is not None and torch.all(parameter.grad == 0), name


# Layouts whose ``out`` is the recurrence op's own result (or a view of it): the op saves it for
# backward, as torch.nn's cuDNN kernel saves its output, so a backward after editing it in
# place is refused by autograd's version check.  Elsewhere ``out`` is a new tensor (a cat of
# the directions, a packed copy).
SAVED_OUT_LAYOUTS = {"seq_first", "batch_first", "unbatched", "multi_layer", "no_bias"}


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("layout", sorted(LAYOUTS) + ["packed"])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_in_place_edits_of_outputs_behave_like_torch(cls, layout, grad_mode):
    """Every output (out, h_n, c_n) may be edited in place, as torch.nn's may, under grad mode
    and after no_grad; the gradients then follow the edit, or, where ``out`` is what the op
    saved, autograd refuses the backward (never a silently wrong gradient)."""
    spec = LAYOUTS.get(layout, dict(kwargs={}, shape=(6, 3, 4)))
    reference, module = torch_twin(cls, input_size=4, hidden_size=5, **spec["kwargs"])
    x = torch.randn(*spec["shape"], dtype=torch.float64)
    for edit_out in (False, True):
        results = []
        for model in (reference, module):
            model.zero_grad()
            x_leaf = x.clone().requires_grad_()
            inputs = (pack_padded_sequence(x_leaf, [6, 4, 2]) if layout == "packed" else x_leaf)
            with torch.set_grad_enabled(grad_mode):
                outputs = model(inputs)
            edited = tensors_of(outputs)[0 if edit_out else 1:]
            for scale, tensor in enumerate(edited, start=2):
                tensor.mul_(scale)
            grads = []
            if grad_mode:
                if model is module and edit_out and layout in SAVED_OUT_LAYOUTS:
                    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                        weighted_sum(outputs).backward()
                    continue
                weighted_sum(outputs).backward()
                grads = [p.grad for p in model.parameters()] + [x_leaf.grad]
            results.append((tensors_of(outputs), grads))
        if len(results) == 2:
            (ref_outputs, ref_grads), (outputs, grads) = results
            for index, (a, b) in enumerate(zip(outputs + grads, ref_outputs + ref_grads)):
                assert_rel_close(a, b, f"result {index}")


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_meta_module_runs_shapes_with_meta_lengths(cls):
    module = cls(3, 4, bidirectional=True, layer_norm=True, device="meta")
    out, state = module(torch.empty(5, 2, 3, device="meta"),
                        lengths=torch.empty(2, dtype=torch.int64, device="meta"))
    assert out.shape == (5, 2, 8) and out.is_meta
    assert all(s.shape == (2, 2, 4) for s in tensors_of(state))


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_non_contiguous_input_is_not_modified(cls):
    module = cls(3, 4, batch_first=True, layer_norm=True, zoneout=0.2) if cls is fastrnn.GRU \
        else cls(3, 4, batch_first=True, layer_norm=True, zoneout_hidden=0.2)
    storage = torch.randn(5, 2, 3)
    strided = storage.transpose(0, 1)          # (B=2, T=5, I=3), not contiguous
    assert not strided.is_contiguous()
    before = storage.clone()
    torch.manual_seed(3)
    expected = module(strided.contiguous())[0]
    torch.manual_seed(3)
    out = module(strided)[0]
    assert torch.equal(storage, before)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("ln_groups", [1, "per_gate"])
@pytest.mark.parametrize("cls", [fastrnn.LayerNormLSTM, fastrnn.LayerNormGRU],
                         ids=lambda c: c.__name__)
def test_layer_norm_of_huge_finite_inputs(cls, ln_groups):
    """An all-1e30 input: the input norm's statistics must not overflow where the math does
    not; outputs and gradients are finite and those of the float64 module."""
    torch.manual_seed(0)
    groups = cls.cell.num_gates if ln_groups == "per_gate" else 1
    module = cls(3, 4, num_layers=2, ln_groups=groups)
    twin = copy.deepcopy(module).double()
    results = []
    for model, dtype in ((module, torch.float32), (twin, torch.float64)):
        x = torch.full((5, 2, 3), 1e30, dtype=dtype, requires_grad=True)
        outputs = tensors_of(model(x))
        g = torch.Generator().manual_seed(7)  # the same loss weights for both dtypes
        sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum()
            for t in outputs).backward()
        results.append(outputs + [p.grad for p in model.parameters()])
    for index, (got, expected) in enumerate(zip(*results)):
        assert torch.isfinite(got).all(), f"result {index}"
        assert_rel_close(got, expected, f"result {index}", rel=TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_nan_propagates_like_torch(cls, backend):
    reference, module = torch_twin(cls, backend, input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x[2, 0, 1] = float("nan")
    for a, b in zip(tensors_of(module(x)), tensors_of(reference(x))):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.isnan(a).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_swap_into_a_model_written_for_torch_lstm(backend):
    """A model written against torch.nn.LSTM trains unchanged with fastrnn.LSTM, and the step
    equals torch's when the weights are equal."""

    class Tagger(nn.Module):
        def __init__(self, lstm_class, **options):
            super().__init__()
            self.embed = nn.Embedding(11, 6)
            self.lstm = lstm_class(6, 8, num_layers=2, batch_first=True, bidirectional=True,
                                   **options)
            self.head = nn.Linear(16, 11)

        def forward(self, tokens):
            out, (h_n, c_n) = self.lstm(self.embed(tokens))
            return self.head(out)

    torch.manual_seed(0)
    theirs = Tagger(nn.LSTM).double()
    ours = Tagger(fastrnn.LSTM, backend=backend).double()
    ours.load_state_dict(theirs.state_dict())
    tokens = torch.randint(0, 11, (3, 7))
    targets = torch.randint(0, 11, (3, 7))
    losses = []
    for model in (theirs, ours):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        assert after < loss
        losses.append((loss.item(), after.item()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_rel_close(a.detach(), b.detach(), name, rel=1e-10)
