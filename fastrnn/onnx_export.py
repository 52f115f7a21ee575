"""ONNX translations of the fastrnn ops, for ``torch.onnx.export(model, args, dynamo=True)``.

Importing fastrnn registers them (when onnxscript is installed) in onnxscript's torchlib
registry, which torch's exporter reads on every export, so no ``custom_translation_table`` is
needed.  They translate eval-mode calls (no mask drawn; zoneout as its expectation):

* ``fastrnn::lstm_native`` / ``gru_native`` (torch.nn's cells, what "auto" runs them on) become
  ONNX's ``LSTM`` / ``GRU`` operators (GRU with ``linear_before_reset=1``, torch's convention),
  with ``sequence_lens`` for ``lengths`` and ``direction="reverse"``; an LSTM with a projection,
  which ONNX's operator lacks, becomes the Scan below;
* ``fastrnn::lstm_forward`` / ``gru_forward`` (layer norm, zoneout, projection) become one ONNX
  ``Scan`` over time whose body is the reference step (``fastrnn.reference``) written in ONNX
  ops; it also emits the op's saved tensors, so the graph computes everything the op returns;
  ``lstm_inference`` / ``gru_inference`` (what a model exported without gradients calls) become
  the same Scan with out and the final states only.

T and B stay symbolic in both.  A call with a training-mode regularizer (a mask would be drawn)
is refused: export the model after ``model.eval()``.
"""
from __future__ import annotations

import itertools
import linecache
from typing import Dict, List, Optional, Sequence

# onnx, onnx_ir and onnxscript are optional: fastrnn/__init__.py imports this module only when
# onnxscript (which brings the other two) is installed.
import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op

from .cells import CELLS, LAYER_NORM_EPS, LSTM, Cell
from .functional import onnx_training_error

_OPSET = 18
_ATTRIBUTE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}  # -> a default


# ----------------------------------------------------------------------------- the Scan body

class _Body:
    """Builds the graph of one time step (a Scan body) from ONNX ops on onnx_ir values:
    ``body.Add(a, b)``, ``body.split(v, 4)``, ``body.constant(0.5)``."""

    def __init__(self, dtype: ir.DataType):
        self.tape = ir.tape.Tape()
        self.dtype = dtype

    # Every value gets a name of its own here: the exporter names the values of the graph
    # around the Scan, not those inside its body, and a model's names must all differ.

    def __getattr__(self, op_type: str):
        def node(*inputs, **attributes):
            value = self.tape.op(op_type, list(inputs), attributes or None)
            value.name = _unique(op_type)
            return value
        return node

    def split(self, v: ir.Value, parts: int) -> Sequence[ir.Value]:
        """``parts`` equal slices of the last axis (the gates)."""
        values = self.tape.op_multi_out("Split", [v], {"axis": -1, "num_outputs": parts},
                                        num_outputs=parts)
        for value in values:
            value.name = _unique("Split")
        return values

    def constant(self, value, dtype: Optional[ir.DataType] = None) -> ir.Value:
        return self.Constant(value=ir.tensor(value, dtype=dtype or self.dtype))

    def input(self, name: str, dtype: Optional[ir.DataType] = None) -> ir.Value:
        return ir.Value(name=_unique(name), type=ir.TensorType(dtype or self.dtype))

    def graph(self, inputs, outputs, name: str) -> ir.Graph:
        return ir.Graph(inputs, outputs, nodes=self.tape.nodes, name=name,
                        opset_imports={"": _OPSET})

    # the reference's pieces -------------------------------------------------------------

    def normalize(self, v: ir.Value, groups: int):
        """N(v) over ``groups`` equal slices of the last axis: (normalized, mean, rstd)."""
        grouped = self.Reshape(v, self.constant([0, groups, -1], ir.DataType.INT64))
        last = self.constant([-1], ir.DataType.INT64)
        mean = self.ReduceMean(grouped, last, keepdims=1)
        centered = self.Sub(grouped, mean)
        variance = self.ReduceMean(self.Mul(centered, centered), last, keepdims=1)
        rstd = self.Reciprocal(self.Sqrt(self.Add(variance, self.constant(LAYER_NORM_EPS))))
        normalized = self.Reshape(self.Mul(centered, rstd),
                                  self.constant([0, -1], ir.DataType.INT64))
        return normalized, self.Squeeze(mean, last), self.Squeeze(rstd, last)

    def recurrent_product(self, h: ir.Value, w_hh_t: ir.Value, ln_hh_weight, groups: int):
        """W_hh h, layer-normalized when γ_hh is given; and its (mean, rstd) statistics."""
        hh = self.MatMul(h, w_hh_t)
        if ln_hh_weight is None:
            return hh, []
        normalized, mean, rstd = self.normalize(hh, groups)
        return self.Mul(ln_hh_weight, normalized), [mean, rstd]

    def zoneout(self, previous: ir.Value, candidate: ir.Value, p: float) -> ir.Value:
        """The eval-mode expectation p s_{t-1} + (1 - p) s~_t."""
        if p == 0.0:
            return candidate
        return self.Add(self.Mul(self.constant(p), previous),
                        self.Mul(self.constant(1.0 - p), candidate))

    def keep_if(self, active, new: ir.Value, old: ir.Value) -> ir.Value:
        return new if active is None else self.Where(active, new, old)

    def zero_if_not(self, active, value: ir.Value) -> ir.Value:
        return value if active is None else self.Where(active, value, self.constant(0.0))

    def episode_starts(self, a: Dict[str, object], active):
        """(the Scan body's input of the step's resets [B] or None, [B, 1] bool: the rows that
        read the reset state at this step, or None), for the op's ``resets``."""
        if a.get("resets") is None:
            return None, None
        flags = self.input("resets_t", ir.DataType.BOOL)
        starts = self.Unsqueeze(flags, self.constant([-1], ir.DataType.INT64))
        return flags, starts if active is None else self.And(starts, active)


def _scan_inputs(gx: ir.Value, a: Dict[str, object]) -> List[ir.Value]:
    """The Scan's per-step inputs: gx, then the step index (``lengths``) and ``resets``."""
    inputs = [gx]
    if a["lengths"] is not None:
        inputs.append(_steps(gx))
    if a.get("resets") is not None:
        inputs.append(a["resets"])
    return inputs


def _scan(inputs: Sequence[ir.Value], num_scan_inputs: int, num_outputs: int, body: ir.Graph,
          reverse: bool) -> List[ir.Value]:
    """An ONNX Scan with a fixed number of outputs: onnxscript's own ``op.Scan`` is variadic,
    and torch's exporter gives a variadic output list length 1."""
    parameter, attribute = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    types = onnx.defs.get_schema("Scan", _OPSET).type_constraints[0].allowed_type_strs
    kinds = onnx.defs.OpSchema.AttrType
    schema = onnx.defs.OpSchema(
        "Scan", "", _OPSET,
        inputs=[parameter(f"input_{i}", f"I{i}") for i in range(len(inputs))],
        outputs=[parameter(f"output_{i}", f"O{i}") for i in range(num_outputs)],
        type_constraints=([(f"I{i}", types, "") for i in range(len(inputs))]
                          + [(f"O{i}", types, "") for i in range(num_outputs)]),
        attributes=[attribute("body", kinds.GRAPH, ""),
                    attribute("num_scan_inputs", kinds.INT, ""),
                    attribute("scan_input_directions", kinds.INTS, ""),
                    attribute("scan_output_directions", kinds.INTS, "")])
    direction = 1 if reverse else 0
    num_states = len(inputs) - num_scan_inputs
    outputs = onnxscript.values.Op(op, "Scan", schema)(
        *inputs, body=body, num_scan_inputs=num_scan_inputs,
        scan_input_directions=[direction] * num_scan_inputs,
        scan_output_directions=[direction] * (num_outputs - num_states))
    return list(outputs) if num_outputs > 1 else [outputs]


def _steps(gx: ir.Value) -> ir.Value:
    """int64 [T]: 0 .. T-1, the step index each Scan iteration reads (for ``lengths``)."""
    steps = op.Squeeze(op.Shape(gx, start=0, end=1), op.Constant(value_ints=[0]))
    return op.Range(op.Constant(value_int=0), steps, op.Constant(value_int=1))


def _refuse_training(cell: Cell, arguments: Dict[str, object]) -> None:
    draws = (arguments["recurrent_mask"] is not None
             or any(arguments[field] > 0 for field in cell.step_masks))
    if arguments["training"] and draws:
        # Reached only where fastrnn.functional's check did not run: an ExportedProgram that
        # torch.export.export traced from a training-mode model, then given to the exporter.
        raise onnx_training_error(cell.name)


def _stats_or_empty(body_outputs, gx: ir.Value, width: int):
    """The op's stats output, float32: the Scan's, or [T, B, 0] without layer norm."""
    if width:
        return op.Cast(body_outputs.pop(), to=ir.DataType.FLOAT)
    shape = op.Concat(op.Shape(gx, start=0, end=2), op.Constant(value_ints=[0]), axis=0)
    return op.ConstantOfShape(shape)


def _wide(value: ir.Value, dtype: ir.DataType) -> ir.Value:
    """The LSTM's saved cell state: float64 for float64 inputs, else float32 (docs/ops.md)."""
    return op.Cast(value, to=ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE
                   else ir.DataType.FLOAT)


_names = itertools.count()


def _unique(name: str) -> str:
    """A Scan body's value name, distinct from every name of the model around it."""
    return f"fastrnn_{name}_{next(_names)}"


def _lstm_scan(a: Dict[str, object]):
    """(out, h_n, c_n, preact, cell, stats) of ``fastrnn::lstm_forward`` in eval mode."""
    gx, lengths = a["gx"], a["lengths"]
    layer_norm = a["ln_hh_weight"] is not None
    width = LSTM.stats_width(layer_norm, a["ln_groups"])
    w_hh_t = op.Transpose(a["w_hh"], perm=[1, 0])
    w_hr_t = None if a["w_hr"] is None else op.Transpose(a["w_hr"], perm=[1, 0])
    body = _Body(a["h0"].dtype)  # gx may be computed here, with its type not yet inferred
    h, c, gx_t = body.input("h"), body.input("c"), body.input("gx_t")
    t = body.input("t", ir.DataType.INT64) if lengths is not None else None
    active = None if t is None else body.Unsqueeze(body.Less(t, lengths),
                                                   body.constant([-1], ir.DataType.INT64))
    flags, starts = body.episode_starts(a, active)
    carried_h, carried_c = h, c
    if starts is not None:   # an episode start reads the reset state
        h, c = body.Where(starts, a["h_reset"], h), body.Where(starts, a["c_reset"], c)
    hh, stats = body.recurrent_product(h, w_hh_t, a["ln_hh_weight"], a["ln_groups"])
    preact = body.Add(gx_t, hh)
    if a["b_hh"] is not None:
        preact = body.Add(preact, a["b_hh"])
    i, f, g, o = body.split(preact, 4)
    c_new = body.Add(body.Mul(body.Sigmoid(f), c), body.Mul(body.Sigmoid(i), body.Tanh(g)))
    y = c_new
    if layer_norm:
        normalized, mean_c, rstd_c = body.normalize(c_new, 1)
        y = body.Add(body.Mul(a["ln_cell_weight"], normalized), a["ln_cell_bias"])
        stats += [mean_c, rstd_c]
    h_new = body.Mul(body.Sigmoid(o), body.Tanh(y))
    if w_hr_t is not None:
        h_new = body.MatMul(h_new, w_hr_t)
    c_t = body.zoneout(c, c_new, a["zoneout_cell"])
    h_t = body.zoneout(h, h_new, a["zoneout_hidden"])
    outputs = [body.keep_if(active, h_t, h), body.keep_if(active, c_t, c),
               body.zero_if_not(active, h_t), body.zero_if_not(active, preact),
               body.zero_if_not(active, c_t)]
    if width:
        outputs.append(body.zero_if_not(active, body.Concat(*stats, axis=-1)))
    graph = body.graph([carried_h, carried_c, gx_t] + [v for v in (t, flags) if v is not None],
                       [body.Identity(v) for v in outputs], name="fastrnn_lstm_step")
    scan_inputs = _scan_inputs(gx, a)
    results = _scan([a["h0"], a["c0"], *scan_inputs], len(scan_inputs), len(outputs), graph,
                    a["reverse"])
    stats_out = _stats_or_empty(results, gx, width)
    h_n, c_n, out, preact, cell = results  # a Scan returns its final states first
    return out, h_n, c_n, preact, _wide(cell, a["h0"].dtype), stats_out


def _gru_scan(a: Dict[str, object]):
    """(out, h_n, preact, hidden_n, stats) of ``fastrnn::gru_forward`` in eval mode."""
    gx, lengths = a["gx"], a["lengths"]
    width = CELLS["gru"].stats_width(a["ln_hh_weight"] is not None, a["ln_groups"])
    w_hh_t = op.Transpose(a["w_hh"], perm=[1, 0])
    body = _Body(a["h0"].dtype)  # gx may be computed here, with its type not yet inferred
    h, gx_t = body.input("h"), body.input("gx_t")
    t = body.input("t", ir.DataType.INT64) if lengths is not None else None
    active = None if t is None else body.Unsqueeze(body.Less(t, lengths),
                                                   body.constant([-1], ir.DataType.INT64))
    flags, starts = body.episode_starts(a, active)
    carried_h = h
    if starts is not None:   # an episode start reads the reset state
        h = body.Where(starts, a["h_reset"], h)
    hh, stats = body.recurrent_product(h, w_hh_t, a["ln_hh_weight"], a["ln_groups"])
    if a["b_hh"] is not None:
        hh = body.Add(hh, a["b_hh"])
    gx_r, gx_z, gx_n = body.split(gx_t, 3)
    hh_r, hh_z, hh_n = body.split(hh, 3)
    a_r, a_z = body.Add(gx_r, hh_r), body.Add(gx_z, hh_z)
    r, z = body.Sigmoid(a_r), body.Sigmoid(a_z)
    a_n = body.Add(gx_n, body.Mul(r, hh_n))
    h_new = body.Add(body.Mul(body.Sub(body.constant(1.0), z), body.Tanh(a_n)), body.Mul(z, h))
    h_t = body.zoneout(h, h_new, a["zoneout_hidden"])
    outputs = [body.keep_if(active, h_t, h), body.zero_if_not(active, h_t),
               body.zero_if_not(active, body.Concat(a_r, a_z, a_n, axis=-1)),
               body.zero_if_not(active, hh_n)]
    if width:
        outputs.append(body.zero_if_not(active, body.Concat(*stats, axis=-1)))
    graph = body.graph([carried_h, gx_t] + [v for v in (t, flags) if v is not None],
                       [body.Identity(v) for v in outputs], name="fastrnn_gru_step")
    scan_inputs = _scan_inputs(gx, a)
    results = _scan([a["h0"], *scan_inputs], len(scan_inputs), len(outputs), graph, a["reverse"])
    stats_out = _stats_or_empty(results, gx, width)
    h_n, out, preact, hidden_n = results  # a Scan returns its final state first
    return out, h_n, preact, hidden_n, stats_out


# ------------------------------------------------------------------ torch's own LSTM / GRU

def _gate_blocks(value, order: Sequence[int], gates: int):
    """``value``'s gate blocks (along axis 0) in ONNX's order, given as torch's indices."""
    blocks = op.Split(value, axis=0, num_outputs=gates)
    return op.Concat(*(blocks[i] for i in order), axis=0)


# ONNX's gate orders: LSTM i, o, f, c; GRU z, r, h (torch: i, f, g, o and r, z, n).
_ONNX_GATES = {"lstm": ("i", "o", "f", "g"), "gru": ("z", "r", "n")}


def _native(cell: Cell, a: Dict[str, object]):
    """(out, h_n[, c_n]) of ``fastrnn::<cell>_native`` through ONNX's LSTM / GRU operator."""
    order = [cell.gates.index(gate) for gate in _ONNX_GATES[cell.name]]
    x, hidden = a["x"], a["h0"].shape[-1]

    def weight(name):
        return op.Unsqueeze(_gate_blocks(a[name], order, cell.num_gates),
                            op.Constant(value_ints=[0]))

    inputs = [x, weight("w_ih"), weight("w_hh")]
    given = [a[name] for name in ("b_ih", "b_hh") if a[name] is not None]
    if given:  # ONNX's B is [W_b, R_b]; a missing one of the two is zeros
        zeros = op.Mul(given[0], op.Constant(value=ir.tensor(0.0, dtype=x.dtype)))
        biases = [zeros if a[name] is None else a[name] for name in ("b_ih", "b_hh")]
        inputs.append(op.Unsqueeze(op.Concat(*(_gate_blocks(b, order, cell.num_gates)
                                               for b in biases), axis=0),
                                   op.Constant(value_ints=[0])))
    else:
        inputs.append(None)
    inputs.append(None if a["lengths"] is None else op.Cast(a["lengths"], to=ir.DataType.INT32))
    initial = [op.Unsqueeze(a[f"{state}0"], op.Constant(value_ints=[0])) for state in cell.states]
    direction = "reverse" if a["reverse"] else "forward"
    if cell is LSTM:
        y, *finals = op.LSTM(*inputs, *initial, hidden_size=hidden, direction=direction)
    else:
        y, *finals = op.GRU(*inputs, *initial, hidden_size=hidden, direction=direction,
                            linear_before_reset=1)
    squeeze = op.Constant(value_ints=[0])
    return (op.Squeeze(y, op.Constant(value_ints=[1])),
            *(op.Squeeze(final, squeeze) for final in finals))


def _native_projected_lstm(a: Dict[str, object]):
    """torch.nn.LSTM with proj_size: the input projection, then the LSTM Scan."""
    gx = op.MatMul(a["x"], op.Transpose(a["w_ih"], perm=[1, 0]))
    if a["b_ih"] is not None:
        gx = op.Add(gx, a["b_ih"])
    call = dict(gx=gx, w_hh=a["w_hh"], b_hh=a["b_hh"], ln_hh_weight=None, ln_cell_weight=None,
                ln_cell_bias=None, h0=a["h0"], c0=a["c0"], lengths=a["lengths"],
                recurrent_mask=None, ln_groups=1, zoneout_cell=0.0, zoneout_hidden=0.0,
                candidate_dropout=0.0, training=False, reverse=a["reverse"], w_hr=a["w_hr"])
    return _lstm_scan(call)[:3]


# -------------------------------------------------------------------------- registration

def _translation(op_name: str, translate):
    """A traced onnxscript function with the op's own signature (tensor arguments are inputs,
    the others attributes), calling ``translate(arguments)``.

    onnxscript reads a function's signature from its source, so the function is written out
    from the op schema (generated from the call types) and its source kept in linecache."""
    schema = getattr(torch.ops.fastrnn, op_name).default._schema
    parameters = []
    for argument in schema.arguments:
        element = argument.type
        if isinstance(element, torch._C.OptionalType):
            element = element.getElementType()
        kind = str(element)  # Tensor, int, float, bool or str
        parameters.append(f"{argument.name}=None" if kind == "Tensor" else
                          f"{argument.name}: {kind} = {_ATTRIBUTE_TYPES[kind]()!r}")
    name = f"fastrnn_{op_name}"
    source = f"def {name}({', '.join(parameters)}):\n    return _translate(dict(locals()))\n"
    filename = f"<fastrnn.onnx_export: {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": __name__, "_translate": translate}
    exec(compile(source, filename, "exec"), namespace)
    return torch_op(f"fastrnn::{op_name}", trace_only=True)(namespace[name])


def _forward_translation(cell: Cell, scan, results: int = None):
    """The op's results from ``scan``: all of them, or the first ``results`` (the inference op:
    out and the final states)."""
    def translate(arguments):
        _refuse_training(cell, arguments)
        return scan(arguments)[:results]
    return translate


def _native_translation(cell: Cell):
    def translate(arguments):
        if any(arguments.get(field) is not None for field in cell.native_features):
            return _native_projected_lstm(arguments)
        return _native(cell, arguments)
    return translate


TRANSLATIONS = {
    "lstm_forward": _translation("lstm_forward", _forward_translation(LSTM, _lstm_scan)),
    "gru_forward": _translation("gru_forward", _forward_translation(CELLS["gru"], _gru_scan)),
    "lstm_inference": _translation("lstm_inference", _forward_translation(LSTM, _lstm_scan, 3)),
    "gru_inference": _translation("gru_inference",
                                  _forward_translation(CELLS["gru"], _gru_scan, 2)),
    "lstm_native": _translation("lstm_native", _native_translation(LSTM)),
    "gru_native": _translation("gru_native", _native_translation(CELLS["gru"])),
}
