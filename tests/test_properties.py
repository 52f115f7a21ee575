"""Property-based checks of whole modules over random configurations (hypothesis).

1. The Triton backend equals the reference backend: cell, layer norm and its groups, every
   regularizer in train and eval mode, lengths (tensor or list), packed sequences, unbatched
   input, bidirectional, layers, batch_first, residual, learned initial states, hx, odd sizes;
   float32, the same torch.manual_seed before each run (so the masks agree), outputs and every
   gradient within TOLERANCE[float32] (where the module's own math amplifies float32 rounding
   past that, every op call of the Triton run must agree with the float64 reference within
   ``fastrnn.check.compare``'s bound, which scales with the float32 reference's own error:
   ``compare``).  Kernel outputs are allocated NaN-filled, padded input steps hold
   NaN, and the input must come back unmodified.
   On a CPU machine the kernels run under TRITON_INTERPRET=1 (skipped without triton or the
   interpreter).
2. The reference backend equals torch.nn where the math is the same (every fastrnn-only option
   off), float64, weights from ``from_torch``, within TOLERANCE[float64].

CI budget: the examples are derandomized (the same ones every run) and no database is kept;
nothing is shrunk (a failure prints its configuration: shrinking would re-run slow examples
for minutes).  FASTRNN_PROPERTY_EXAMPLES=<n> runs n examples of each test instead, locally.
"""
from __future__ import annotations

import os
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import ops
from fastrnn.backends.fused import poisoned_outputs
from fastrnn.cells import CELLS
from support import DEVICE, assert_close, check_call_against_reference, compiled_backends

# The exhaustive tier (scripts/test.sh --slow): random module configurations, minutes.
pytestmark = pytest.mark.slow


def ci_settings(examples: int):
    return settings(max_examples=int(os.environ.get("FASTRNN_PROPERTY_EXAMPLES", examples)),
                    derandomize=True, database=None, deadline=None, print_blob=False,
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.too_slow])


MODULES = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}
TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}
PROBABILITIES = st.sampled_from([0.0, 0.0, 0.1, 0.35, 0.6])
LAYOUTS = ("padded", "lengths_tensor", "lengths_list", "packed", "packed_sorted", "unbatched")


@st.composite
def configurations(draw, fastrnn_options: bool = True):
    """Module arguments, input sizes and layout of one run."""
    cell = draw(st.sampled_from(sorted(MODULES)))
    gates = CELLS[cell].num_gates
    # A layer norm over one or two values is 0 or ±1 whatever they are: it depends on them only
    # through eps, so its gradient is float32 rounding amplified ~var/eps times, in the op of
    # either backend, nothing to compare.  With layer norm H is 3 or more (a per-gate group and
    # the cell norm hold H values).
    layer_norm = fastrnn_options and draw(st.booleans())
    layers = draw(st.integers(1, 2))
    kwargs = dict(input_size=draw(st.integers(1, 5)),
                  hidden_size=draw(st.integers(3 if layer_norm else 1, 9)),
                  num_layers=layers, bias=draw(st.booleans()),
                  batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()))
    training = draw(st.booleans())
    if fastrnn_options:
        kwargs.update(layer_norm=layer_norm,
                      ln_groups=draw(st.sampled_from([1, gates])) if layer_norm else 1,
                      recurrent_dropout=draw(PROBABILITIES),
                      candidate_dropout=draw(PROBABILITIES), dropconnect=draw(PROBABILITIES),
                      residual=draw(st.booleans()), learn_initial_state=draw(st.booleans()),
                      dropout=draw(PROBABILITIES) if layers > 1 else 0.0)
        zoneout = st.one_of(PROBABILITIES, st.just(1.0))
        if cell == "lstm":
            kwargs.update(zoneout_cell=draw(zoneout), zoneout_hidden=draw(zoneout),
                          forget_bias=draw(st.sampled_from([1.0, 0.0, -0.5])))
        else:
            kwargs.update(zoneout=draw(zoneout))
    layout = draw(st.sampled_from(LAYOUTS))
    steps = draw(st.integers(1, 5))
    batch = 1 if layout == "unbatched" else draw(st.integers(1, 4))
    lengths = None
    if layout != "padded" and layout != "unbatched":
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
        if layout == "packed_sorted":
            lengths = sorted(lengths, reverse=True)
    return dict(cell=cell, kwargs=kwargs, training=training, layout=layout, steps=steps,
                batch=batch, lengths=lengths, with_hx=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def make_input(config, dtype):
    """(time-major input [T, B, I] of ``dtype``, NaN on padded steps; the generator, which
    draws hx next)."""
    g = torch.Generator().manual_seed(config["seed"])
    kwargs, steps, batch = config["kwargs"], config["steps"], config["batch"]
    x = torch.randn(steps, batch, kwargs["input_size"], generator=g, dtype=torch.float64)
    for b, length in enumerate(config["lengths"] or ()):
        x[length:, b] = float("nan")  # padding must never leak
    return x.to(dtype), g


def module_argument(config, x_leaf):
    layout, lengths = config["layout"], config["lengths"]
    if layout == "unbatched":
        return x_leaf[:, 0], {}
    if layout.startswith("packed"):
        return pack_padded_sequence(x_leaf, lengths, batch_first=False,
                                    enforce_sorted=layout == "packed_sorted"), {}
    x = x_leaf.transpose(0, 1) if config["kwargs"]["batch_first"] else x_leaf
    if layout == "lengths_tensor":
        return x, {"lengths": torch.tensor(lengths)}
    if layout == "lengths_list":
        return x, {"lengths": list(lengths)}
    return x, {}


def random_hx(config, dtype, g) -> Optional[tuple]:
    """One random initial state per carried state (h, or h and c), or None."""
    if not config["with_hx"]:
        return None
    kwargs = config["kwargs"]
    count = kwargs["num_layers"] * (2 if kwargs["bidirectional"] else 1)
    batch = () if config["layout"] == "unbatched" else (config["batch"],)
    return tuple(torch.randn(count, *batch, kwargs["hidden_size"], generator=g,
                             dtype=torch.float64).to(dtype)
                 for _ in CELLS[config["cell"]].states)


def flat_outputs(result):
    out, state = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out] + list(state if isinstance(state, tuple) else (state,))


def step(model, config, dtype, device, run_seed=1):
    """One forward and backward: (outputs, {name: gradient}) of input, hx and parameters."""
    x_master, g = make_input(config, dtype)
    hx_master = random_hx(config, dtype, g)
    x_leaf = x_master.to(device).requires_grad_()
    hx = None if hx_master is None else tuple(h.to(device).requires_grad_() for h in hx_master)
    argument, lengths = module_argument(config, x_leaf)
    state_arg = None if hx is None else (hx if len(hx) == 2 else hx[0])
    torch.manual_seed(run_seed)
    outputs = flat_outputs(model(argument, state_arg, **lengths))
    weights = torch.Generator().manual_seed(config["seed"] + 1)
    loss = sum((o.double() * torch.randn(o.shape, generator=weights, dtype=torch.float64)
                .to(device)).sum() for o in outputs)
    leaves = {"input": x_leaf, **{f"hx{i}": h for i, h in enumerate(hx or ())},
              **dict(model.named_parameters())}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    assert torch.equal(x_leaf.detach().cpu().nan_to_num(), x_master.nan_to_num()), \
        "the input was modified"
    return [o.detach().cpu() for o in outputs], {
        name: None if grad is None else grad.cpu() for name, grad in zip(leaves, grads)}


def compare(got, expected, dtype, label, explain=None):
    """Every output and gradient of ``got`` within TOLERANCE[dtype] of ``expected``.

    The module code around the recurrence op is the same for both backends, so they differ
    only by what their ops return, amplified by that shared math.  It can amplify float32
    rounding far past the tolerance (a layer norm's backward over a narrow input cancels all
    but its eps-sized radial part), for any two float32 implementations.  Where a module-level
    quantity misses, ``explain()`` must show that every op call agrees with the float64
    reference within ``fastrnn.check.compare``'s bound (which grows with the float32
    reference's own error where the op's math is as ill-conditioned); else the mismatch
    stands."""
    (got_outputs, got_grads), (outputs, grads) = got, expected
    assert len(got_outputs) == len(outputs)
    assert got_grads.keys() == grads.keys()
    pairs = {f"output {i}": (a, b) for i, (a, b) in enumerate(zip(got_outputs, outputs))}
    for name, b in grads.items():
        a = got_grads[name]
        assert (a is None) == (b is None), f"{label} d{name}: present in one run only"
        if b is not None:
            pairs[f"d{name}"] = (a, b)
    missed = []
    for name, (a, b) in pairs.items():
        if name == "dinput":  # padded steps: zero in both (NaN would fail assert_close)
            a, b = a.nan_to_num(), b.nan_to_num()
        try:
            assert_close(a, b, dtype, f"{label} {name}")
        except AssertionError as error:
            if explain is None or not torch.isfinite(a).all():
                raise
            missed.append(str(error))
    if missed:
        note(f"module-level misses, checked at the op level: {missed}")
        explain()


class RecordedCalls:
    """Records the recurrence calls a module makes (``fastrnn.ops.forward``) in the block."""

    def __enter__(self):
        self.calls, self._forward = [], ops.forward

        def recording(call, backend, save=True):
            self.calls.append(call)
            return self._forward(call, backend, save=save)

        ops.forward = recording
        return self.calls

    def __exit__(self, *exc):
        ops.forward = self._forward


TRITON_ON = "triton" in compiled_backends(DEVICE)


@pytest.mark.skipif(not TRITON_ON, reason="needs triton (and TRITON_INTERPRET=1 on a CPU machine)")
@ci_settings(examples=120)
@given(config=configurations())
def test_triton_module_equals_reference(config):
    note(f"configuration: {config}")
    cls = MODULES[config["cell"]]
    torch.manual_seed(config["seed"])
    reference = cls(**config["kwargs"], backend="reference").to(DEVICE)
    fused = cls(**config["kwargs"], backend="triton").to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    reference.train(config["training"]), fused.train(config["training"])
    with poisoned_outputs(), RecordedCalls() as calls:
        got = step(fused, config, torch.float32, DEVICE)
    expected = step(reference, config, torch.float32, DEVICE)

    def explain():
        with poisoned_outputs():
            for call in calls:
                check_call_against_reference(call, "triton", torch.float32, DEVICE)

    compare(got, expected, torch.float32, "triton", explain)


@ci_settings(examples=300)
@given(config=configurations(fastrnn_options=False))
def test_reference_module_equals_torch_nn(config):
    note(f"configuration: {config}")
    if config["layout"] in ("lengths_tensor", "lengths_list"):
        config = dict(config, layout="packed")  # torch.nn takes lengths only packed
    torch.manual_seed(config["seed"])
    theirs = TORCH_MODULES[config["cell"]](**config["kwargs"], dtype=torch.float64)
    ours = MODULES[config["cell"]].from_torch(theirs, backend="reference")
    theirs.train(config["training"]), ours.train(config["training"])
    compare(step(ours, config, torch.float64, "cpu"), step(theirs, config, torch.float64, "cpu"),
            torch.float64, "reference vs torch.nn")
