"""ONNX export of every module in eval mode, written as users write it:
``torch.onnx.export(model, args, dynamo=True, dynamic_shapes=...)`` with no fastrnn-specific
argument (fastrnn/onnx_export.py registers the translations), then onnxruntime on CPU against
eager float32 at other batch sizes and sequence lengths than the exported ones."""
from __future__ import annotations

import re

import pytest
import torch
from torch.export import Dim

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import fastrnn  # noqa: E402
from support import error_messages  # noqa: E402

TOLERANCE = 1e-5
REGULARIZED = dict(zoneout_cell=0.2, zoneout_hidden=0.1, recurrent_dropout=0.3,
                   candidate_dropout=0.2, dropconnect=0.2)

MODELS = {
    "lstm": lambda: fastrnn.LSTM(4, 16),
    "gru": lambda: fastrnn.GRU(4, 16),
    "lstm_bidirectional_2_layers": lambda: fastrnn.LSTM(4, 16, num_layers=2, bidirectional=True,
                                                        dropout=0.3),
    "gru_batch_first_no_bias": lambda: fastrnn.GRU(4, 16, batch_first=True, bias=False),
    "lstm_proj_size": lambda: fastrnn.LSTM(4, 16, num_layers=2, bidirectional=True, proj_size=5),
    "layer_norm_lstm": lambda: fastrnn.LayerNormLSTM(4, 16, num_layers=2, bidirectional=True),
    "layer_norm_gru_per_gate": lambda: fastrnn.LayerNormGRU(4, 16, ln_groups=3, num_layers=2),
    "lstm_zoneout_regularized": lambda: fastrnn.LSTM(4, 16, num_layers=2, **REGULARIZED),
    "gru_zoneout_regularized": lambda: fastrnn.GRU(
        4, 16, bidirectional=True, zoneout=0.3, recurrent_dropout=0.2, candidate_dropout=0.2),
    "layer_norm_lstm_proj_zoneout": lambda: fastrnn.LayerNormLSTM(
        4, 16, proj_size=5, bidirectional=True, ln_groups=4, **REGULARIZED),
    "lstm_residual_learned_state": lambda: fastrnn.LSTM(4, 16, num_layers=3, residual=True,
                                                        learn_initial_state=True),
}
WITH_LENGTHS = ["lstm", "gru", "lstm_bidirectional_2_layers", "lstm_proj_size",
                "layer_norm_lstm", "layer_norm_gru_per_gate", "layer_norm_lstm_proj_zoneout",
                "gru_zoneout_regularized"]
SIZES = [(7, 3), (11, 2), (2, 5)]   # (T, B): exported at the first, run at all


def _inputs(model, steps, batch, generator):
    shape = (batch, steps, 4) if model.batch_first else (steps, batch, 4)
    return 0.5 * torch.randn(*shape, generator=generator)


def _export_and_compare(model, with_lengths: bool):
    model.eval()
    g = torch.Generator().manual_seed(0)
    time, batch = Dim("T"), Dim("B")
    axes = {0: batch, 1: time} if model.batch_first else {0: time, 1: batch}
    x = _inputs(model, *SIZES[0], g)
    if with_lengths:
        lengths = torch.tensor([SIZES[0][0], 2, 5][:SIZES[0][1]])
        program = torch.onnx.export(model, (x, None, lengths), dynamo=True,
                                    dynamic_shapes=(axes, None, {0: batch}))
    else:
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=(axes,))
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for steps, rows in SIZES:
        x = _inputs(model, steps, rows, g)
        feeds = {names[0]: x.numpy()}
        kwargs = {}
        if with_lengths:
            lengths = torch.randint(1, steps + 1, (rows,), generator=g)
            lengths[0] = steps
            feeds[names[1]] = lengths.numpy()
            kwargs["lengths"] = lengths
        with torch.no_grad():
            out, state = model(x, **kwargs)
        expected = [out, *(state if isinstance(state, tuple) else (state,))]
        got = session.run(None, feeds)
        assert len(got) == len(expected)
        for index, (a, b) in enumerate(zip(got, expected)):
            a = torch.from_numpy(a)
            assert a.shape == b.shape, (index, a.shape, b.shape)
            torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=TOLERANCE,
                                       msg=f"output {index} at (T, B) = {(steps, rows)}")
    return program


@pytest.mark.parametrize("name", list(MODELS))
def test_export_runs_in_onnxruntime(name):
    torch.manual_seed(0)
    program = _export_and_compare(MODELS[name](), with_lengths=False)
    op_types = {node.op_type for node in program.model.graph}
    module = MODELS[name]()
    plain = not (module.layer_norm or getattr(module, "zoneout_cell", 0)
                 or getattr(module, "zoneout_hidden", getattr(module, "zoneout", 0)))
    if plain and not module.proj_size:
        # torch.nn's cells map to ONNX's own recurrent operators
        assert op_types & {"LSTM", "GRU"} and "Scan" not in op_types
    else:
        assert "Scan" in op_types


@pytest.mark.parametrize("name", WITH_LENGTHS)
def test_export_with_lengths_runs_in_onnxruntime(name):
    torch.manual_seed(1)
    _export_and_compare(MODELS[name](), with_lengths=True)


def test_export_with_hx_as_an_input():
    model = fastrnn.LayerNormGRU(4, 16, num_layers=2).eval()
    x, h0 = torch.randn(5, 3, 4), torch.randn(2, 3, 16)
    batch = Dim("B")
    program = torch.onnx.export(model, (x, h0), dynamo=True,
                                dynamic_shapes=({0: Dim("T"), 1: batch}, {1: batch}))
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x, h0 = torch.randn(8, 2, 4), torch.randn(2, 2, 16)
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()],
                                     (x.numpy(), h0.numpy()))))
    with torch.no_grad():
        expected = model(x, h0)
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("make", [lambda: fastrnn.GRU(4, 16, zoneout=0.3),
                                  lambda: fastrnn.LSTM(4, 16, dropconnect=0.2)],
                         ids=["gru_zoneout", "lstm_dropconnect"])
def test_training_mode_regularizers_are_refused_before_translation(make):
    """The forward refuses (torch.export, step 1 of the exporter, raises the ValueError itself)
    instead of the translation failing inside a ConversionError; the message says why and
    what to do."""
    model = make().train()
    with pytest.raises(Exception) as error:
        torch.onnx.export(model, (torch.randn(5, 2, 4),), dynamo=True)
    cause = error.value.__cause__
    assert isinstance(cause, ValueError), error_messages(error.value)
    cell = "lstm" if isinstance(model, fastrnn.LSTM) else "gru"
    assert re.match(rf"fastrnn: ONNX export of {cell} in training mode .*random masks on every "
                    r"call.*eval-mode expectation.*Call model\.eval\(\)", str(cause))
    assert str(cause) in str(error.value)
