"""Drop-in replacements for torch.nn.LSTM / torch.nn.GRU with layer norm and regularizers.

Same constructor head, parameter names, init-compatible state_dict, forward signature and
output shapes as torch (docs/api.md); every option beyond torch's is keyword-only and off by
default, in which case the outputs equal torch's.  Each layer and direction is one call of
``fastrnn.functional.lstm_layer`` / ``gru_layer``; this file only arranges layouts, states,
stacking and the inter-layer dropout around them.

With ``learn_initial_state=True`` the default initial states are parameters of shape (H,) per
layer and direction (P for the LSTM's projected h), broadcast over the batch:
``initial_hidden_l{k}{s}`` (and, for the LSTM, ``initial_cell_l{k}{s}``), zero at init.  An
``hx`` passed to forward replaces them.

TorchScript is not supported (``torch.jit.script`` and ``torch.jit.trace`` raise): the modules
compile with ``torch.compile`` and deploy through ``torch.export`` or ONNX
(``torch.onnx.export(model, args, dynamo=True)``, eval mode).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _docs
from . import backends
from . import cells
from . import functional as FR
from . import validation as V

Lengths = Union[Tensor, List[int], Tuple[int, ...], None]


class _Layout:
    """How the caller's input maps to time-major (T, B, I), and back for the outputs."""

    def __init__(self, input, batch_first: bool):
        self.packed = input if isinstance(input, PackedSequence) else None
        self.batch_first = batch_first
        self.unbatched = self.packed is None and input.dim() == 2
        self.packed_lengths: Optional[Tensor] = None
        if self.packed is not None:
            padded, self.packed_lengths = pad_packed_sequence(input)  # original batch order
            self.time_major = padded
        elif self.unbatched:
            self.time_major = input.unsqueeze(1)
        else:
            self.time_major = input.transpose(0, 1) if batch_first else input

    def output(self, out: Tensor):
        if self.packed is not None:
            order = self.packed.sorted_indices
            sorted_out = out if order is None else out.index_select(1, order)
            sorted_lengths = (self.packed_lengths if order is None
                              else self.packed_lengths[order.cpu()])
            data = pack_padded_sequence(sorted_out, sorted_lengths).data
            return PackedSequence(data, self.packed.batch_sizes, self.packed.sorted_indices,
                                  self.packed.unsorted_indices)
        if self.unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def state(self, h: Tensor) -> Tensor:
        return h.squeeze(1) if self.unbatched else h

    def leading_shape(self, x: Tensor) -> Tuple[int, ...]:
        """The caller's leading dimensions of the input (what ``resets`` has), from x [T, B, I]."""
        steps, batch = x.shape[0], x.shape[1]
        if self.unbatched:
            return (steps,)
        return (batch, steps) if self.batch_first else (steps, batch)

    def leading_names(self) -> str:
        return "(T,)" if self.unbatched else "(B, T)" if self.batch_first else "(T, B)"

    def time_major_resets(self, resets: Tensor) -> Tensor:
        """resets in the caller's layout -> [T, B]."""
        if self.unbatched:
            return resets.unsqueeze(1)
        return resets.t() if self.batch_first else resets


_NOT_SCRIPTABLE = (
    "fastrnn modules do not support TorchScript ({what}): their layers are torch.library custom "
    "ops with Python implementations.  To compile, use torch.compile(model); to deploy, use "
    "torch.export.export(model, args) or ONNX with torch.onnx.export(model, args, dynamo=True) "
    "on the model in eval mode.")


# What from_torch reads off the torch module: its weights' shapes, its layout and where they live
# are fixed by it, so none of these can also be a fastrnn option of the conversion.
_FROM_TORCH_MODULE = ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                      "dropout", "bidirectional", "proj_size", "device", "dtype")


def _from_torch_fixes(cls_name: str, module: nn.RNNBase, name: str, given) -> str:
    """The error for an option ``name`` that ``from_torch`` takes from ``module`` instead."""
    weight = module.weight_ih_l0
    has = {"device": weight.device, "dtype": weight.dtype}.get(name, getattr(module, name, None))
    if given == has:
        remedy = "leave it out, the converted module has it already"
    elif name == "proj_size":
        # A projection changes the shapes of weight_hh (and adds weight_hr): torch's weights of
        # another proj_size cannot be loaded, so the fix is on the torch side or without it.
        remedy = (f"build the torch module with it (torch.nn.LSTM(..., proj_size={given!r}))"
                  f" and convert that, or build fastrnn.{cls_name}(..., proj_size={given!r})"
                  " directly (fastrnn's init)")
    elif name in ("device", "dtype"):
        remedy = f"convert, then move the result with .to({name}=...)"
    else:
        remedy = f"build the torch module with {name}={given!r} and convert that"
    return (f"{cls_name}.from_torch takes {name} from the torch module ({name}={has!r}), so it "
            f"is not an option of the conversion (got {name}={given!r}): {remedy}")


def _init_per_gate(weight: Tensor, gates: int, init: Callable[[Tensor], Tensor]) -> None:
    """``init`` on each gate block.  Half-precision weights are drawn in float32 and rounded:
    the orthogonal init's QR has no half-precision kernel, and the same draws as a float32
    module keep a bfloat16 module its float32 twin rounded.  float32 / float64 draw in place."""
    work = (weight if weight.dtype in (torch.float32, torch.float64)
            else torch.empty(weight.shape, dtype=torch.float32, device=weight.device))
    for block in work.chunk(gates, dim=0):
        init(block)
    if work is not weight:
        weight.copy_(work)


class _RecurrentBase(nn.Module):
    """Parameters, checks and the layer/direction loop shared by LSTM and GRU."""

    cell: cells.Cell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 batch_first: bool, dropout: float, bidirectional: bool, *, layer_norm: bool,
                 ln_groups: int, zoneout: dict, recurrent_dropout: float,
                 candidate_dropout: float, dropconnect: float, learn_initial_state: bool,
                 residual: bool, backend: str, device, dtype, proj_size: int = 0):
        super().__init__()
        # Sizes and dropout are checked as torch.nn checks them: input_size and hidden_size must
        # be Python ints, num_layers and proj_size any integer (numpy's too), dropout any real
        # number in [0, 1].
        V.positive_int("input_size", input_size)
        V.positive_int("hidden_size", hidden_size)
        num_layers = V.positive_integer("num_layers", num_layers)
        proj_size = V.projection_size(proj_size, hidden_size)
        V.probability("dropout", dropout, allow_one=True)
        if dropout > 0 and num_layers == 1:
            # torch.nn's warning, word for word.
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        V.probability("recurrent_dropout", recurrent_dropout)
        V.probability("candidate_dropout", candidate_dropout)
        V.probability("dropconnect", dropconnect)
        for name, p in zoneout.items():
            V.probability(name, p, allow_one=True)
        V.positive_int("ln_groups", ln_groups)  # 4.0 == 4 would pass the choice below
        V.choice("ln_groups", ln_groups, self.cell.ln_groups)
        V.choice("backend", backend, backends.CHOICES)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.proj_size = proj_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.layer_norm = layer_norm
        self.ln_groups = ln_groups
        for name, p in zoneout.items():
            setattr(self, name, float(p))
        self.recurrent_dropout = float(recurrent_dropout)
        self.candidate_dropout = float(candidate_dropout)
        self.dropconnect = float(dropconnect)
        self.learn_initial_state = learn_initial_state
        self.residual = residual
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        gate_width = self.cell.num_gates * hidden_size
        output = self._state_sizes["h"]  # P with a projection, else H
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else output * self.num_directions
            for suffix in self._suffixes():
                # torch.nn's parameters first, in its order, so that an optimizer's state (kept
                # by parameter index) carries over; then fastrnn's.
                self._register(f"weight_ih_l{layer}{suffix}", (gate_width, layer_input), True,
                               factory)
                self._register(f"weight_hh_l{layer}{suffix}", (gate_width, output), True,
                               factory)
                self._register(f"bias_ih_l{layer}{suffix}", (gate_width,), bias, factory)
                self._register(f"bias_hh_l{layer}{suffix}", (gate_width,), bias, factory)
                if proj_size:
                    self._register(f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size),
                                   True, factory)
                for name, size in self.cell.layer_norm_shapes.items():
                    shape = (gate_width if size == "gates" else hidden_size,)
                    self._register(f"{name}_l{layer}{suffix}", shape, layer_norm, factory)
                for state, long_name in zip(self.cell.states, self.state_names):
                    self._register(f"initial_{long_name}_l{layer}{suffix}",
                                   (self._state_sizes[state],), learn_initial_state, factory)
        self.reset_parameters()

    # ------------------------------------------------------------------------ parameters

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> Tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    @property
    def _state_sizes(self):
        """{state: width}: H, and P for the LSTM's h under a projection."""
        return self.cell.state_sizes(self.hidden_size, self.proj_size)

    @property
    def state_names(self) -> Tuple[str, ...]:
        """("hidden", "cell") or ("hidden",): the learned initial states' names."""
        return tuple(cells.STATE_NAMES[state] for state in self.cell.states)

    def _register(self, name: str, shape, present: bool, factory: dict) -> None:
        self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory))
                                if present else None)

    def reset_parameters(self) -> None:
        """weight_ih Xavier-uniform and weight_hh orthogonal per gate block, weight_hr (the
        LSTM's projection) orthogonal; biases, learned states and β zero; γ one (docs/api.md).
        This is not torch.nn's init (uniform ±1/√H everywhere): ``from_torch`` of a freshly
        built torch module gives that one."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.startswith("weight_ih"):
                    _init_per_gate(parameter, self.cell.num_gates, nn.init.xavier_uniform_)
                elif name.startswith("weight_hh"):
                    _init_per_gate(parameter, self.cell.num_gates, nn.init.orthogonal_)
                elif name.startswith("weight_hr"):
                    nn.init.orthogonal_(parameter)
                elif name.startswith("ln_") and "weight" in name:
                    nn.init.ones_(parameter)
                else:
                    nn.init.zeros_(parameter)

    def _parameter(self, name: str, layer: int, direction: int) -> Optional[Tensor]:
        return getattr(self, f"{name}_l{layer}{'_reverse' if direction else ''}")

    @classmethod
    def from_torch(cls, module: nn.RNNBase, **options):
        """A fastrnn module with ``module``'s sizes (proj_size included), layout, weights,
        device, dtype and training mode, plus the fastrnn ``options`` (layer_norm, zoneout, ...).

        ``cls.from_torch(torch.nn.LSTM(...))`` is also how to get torch.nn's initialization.
        What comes from ``module`` (proj_size, sizes, layout, device, dtype) is not an option:
        passing it raises TypeError."""
        expected = nn.LSTM if cls.cell is cells.LSTM else nn.GRU
        if not isinstance(module, expected):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{expected.__name__}, "
                            f"got {type(module).__name__}")
        weight = module.weight_ih_l0
        for name in _FROM_TORCH_MODULE:
            if name in options and (name != "proj_size" or cls.cell is cells.LSTM):
                raise TypeError(_from_torch_fixes(cls.__name__, module, name, options[name]))
        sizes = {"proj_size": module.proj_size} if module.proj_size else {}
        converted = cls(module.input_size, module.hidden_size, module.num_layers,
                        bias=module.bias, batch_first=module.batch_first,
                        dropout=module.dropout, bidirectional=module.bidirectional,
                        device=weight.device, dtype=weight.dtype, **sizes, **options)
        converted.load_state_dict(module.state_dict(), strict=False)
        return converted.train(module.training)

    def flatten_parameters(self) -> None:
        """Does nothing, and is there so that code written for torch.nn runs unchanged:
        torch.nn compacts its weights into one buffer for cuDNN, while fastrnn passes each
        layer's parameters to its kernels as they are."""

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module of a model before compiling it.
        raise NotImplementedError(_NOT_SCRIPTABLE.format(what="torch.jit.script"))

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "layer_norm": False, "ln_groups": 1,
                    **{name: 0.0 for name in self.cell.zoneout}, "recurrent_dropout": 0.0,
                    "candidate_dropout": 0.0, "dropconnect": 0.0, **self._extra_defaults(),
                    "learn_initial_state": False, "residual": False, "backend": "auto"}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value!r}"
        return text

    # --------------------------------------------------------------------------- forward

    def forward(self, input, hx=None, lengths: Lengths = None, resets: Optional[Tensor] = None):
        """The subclasses' forward: ``help(fastrnn.LSTM.forward)``, ``help(fastrnn.GRU.forward)``."""
        if torch.jit.is_tracing():  # also how the classic ONNX exporter (dynamo=False) runs it
            raise NotImplementedError(
                _NOT_SCRIPTABLE.format(what="torch.jit.trace, torch.onnx.export(dynamo=False)"))
        if not isinstance(input, PackedSequence):
            V.input_tensor(input, self.input_size)
        else:
            V.input_tensor(input.data, self.input_size)
            if lengths is not None:
                raise ValueError("lengths must be None for a PackedSequence input "
                                 "(it carries its own lengths)")
            if resets is not None:
                raise ValueError("resets cannot be given with a PackedSequence input (its steps "
                                 "are not laid out per (t, b)): pass the padded input with "
                                 "lengths= instead, e.g. pad_packed_sequence(packed), and "
                                 "resets of its padded shape")
        layout = _Layout(input, self.batch_first)
        x = layout.time_major
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError(f"input must have at least one time step, got (T, B, I) = "
                             f"{tuple(x.shape)}")
        reference = self.weight_ih_l0
        device_type = x.device.type
        # Like torch's autocast, float64 inputs are left alone.
        autocasting = (device_type in ("cpu", "cuda") and x.dtype != torch.float64
                       and torch.is_autocast_enabled(device_type))
        V.same_device_and_dtype("input", x, reference.device,
                                None if autocasting else reference.dtype)
        dtype = torch.get_autocast_dtype(device_type) if autocasting else x.dtype
        if layout.packed is not None:
            lengths = layout.packed_lengths.to(x.device)
        elif lengths is not None:
            if layout.unbatched:
                raise ValueError("lengths must be None for unbatched (T, input_size) input")
            lengths = V.lengths(lengths, batch, steps, x.device)
        if resets is not None:
            resets = layout.time_major_resets(V.resets(resets, layout.leading_shape(x),
                                                       layout.leading_names(), x.device))
        states = self._initial_states(hx, layout, batch, x, autocasting)
        if batch == 0:
            return self._empty_result(layout, x, states, dtype)
        # Everything is cast to the autocast dtype here; autocast inside would re-cast the
        # GEMMs but not the op's other inputs, and the op needs one dtype.
        cast_once = (torch.autocast(device_type, enabled=False) if autocasting
                     else contextlib.nullcontext())
        with cast_once:
            fresh = None if resets is None else tuple(
                s.to(dtype) for s in self._initial_states(None, layout, batch, x))
            out, finals = self._layers(x.to(dtype).contiguous(),
                                       tuple(s.to(dtype) for s in states), lengths,
                                       self.backend, dtype, resets, fresh)
        return layout.output(out), self._pack_states(tuple(layout.state(f) for f in finals))

    def _initial_states(self, hx, layout: _Layout, batch: int, x: Tensor,
                        autocasting: bool = False) -> Tuple[Tensor, ...]:
        """The (L·D, B, width) initial states: checked ``hx``, learned ones, or zeros.  Under
        autocast ``hx`` may have any dtype autocast casts (the caller casts the states)."""
        count = self.num_layers * self.num_directions
        widths = [self._state_sizes[state] for state in self.cell.states]
        if hx is not None:
            given = self._unpack_states(hx)
            for name, value, width in zip(self._state_arg_names(), given, widths):
                shape = (count, width) if layout.unbatched else (count, batch, width)
                V.state(name, value, shape, x.device, x.dtype, autocasting)
            if layout.unbatched:
                return tuple(s.unsqueeze(1) for s in given)
            return given
        if self.learn_initial_state:
            return tuple(torch.stack([self._parameter(f"initial_{state}", layer, direction)
                                      for layer in range(self.num_layers)
                                      for direction in range(self.num_directions)])
                         .unsqueeze(1).expand(count, batch, width)
                         for state, width in zip(self.state_names, widths))
        return tuple(x.new_zeros(count, batch, width) for width in widths)

    def _layers(self, x: Tensor, states: Tuple[Tensor, ...], lengths: Optional[Tensor],
                backend: str, dtype: torch.dtype, resets: Optional[Tensor] = None,
                fresh: Optional[Tuple[Tensor, ...]] = None):
        """Runs every layer and direction; returns the last layer's output and the final
        states stacked as (L·D, B, H).  ``resets`` [T, B]: episode starts, where each layer and
        direction restarts from ``fresh`` (the states without hx: learned or zeros)."""
        finals: List[List[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                weights = {name: self._cast(self._parameter(name, layer, direction), dtype)
                           for name in self._weight_names()}
                out, *final = self._recur(
                    layer_input, [s[index] for s in states], lengths, weights, backend, layer,
                    direction, resets, None if fresh is None else [s[index] for s in fresh])
                outs.append(out)
                for collected, value in zip(finals, final):
                    collected.append(value)
            output = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
            if self.residual and layer > 0:
                output = output + layer_input
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                output = F.dropout(output, self.dropout, training=True)
            layer_input = output
        return layer_input, tuple(torch.stack(collected) for collected in finals)

    @staticmethod
    def _cast(parameter: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        return None if parameter is None else parameter.to(dtype)

    def _weight_names(self) -> List[str]:
        return (["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                + (["weight_hr"] if self.proj_size else []) + list(self.cell.layer_norm_shapes))

    def _recur(self, x, states, lengths, weights, backend, layer, direction, resets=None,
               fresh=None):
        """One layer and direction: (out, *final states)."""
        return FR.recurrence(
            self.cell, x, weights,
            {f"{state}0": value.contiguous() for state, value in zip(self.cell.states, states)},
            lengths, ln_groups=self.ln_groups,
            step_probabilities={**{self.cell.zoneout[name]: getattr(self, name)
                                   for name in self.cell.zoneout},
                                "candidate_dropout": self.candidate_dropout},
            recurrent_dropout=self.recurrent_dropout, dropconnect=self.dropconnect,
            training=self.training, reverse=direction == 1, backend=backend, layer=layer,
            direction=direction, resets=resets,
            reset_states=None if fresh is None else dict(zip(self.cell.reset_states, fresh)))

    def _state_arg_names(self) -> Tuple[str, ...]:
        if len(self.cell.states) == 1:
            return ("hx",)
        return tuple(f"hx[{i}] ({state}_0)" for i, state in enumerate(self.cell.states))

    def _unpack_states(self, hx) -> Tuple[Tensor, ...]:
        if len(self.cell.states) == 1:
            return (hx,)
        if not isinstance(hx, (tuple, list)) or len(hx) != len(self.cell.states):
            names = ", ".join(f"{state}_0" for state in self.cell.states)
            raise TypeError(f"hx must be a tuple ({names}) for {type(self).__name__}, "
                            f"got {type(hx).__name__}")
        return tuple(hx)

    def _pack_states(self, states: Tuple[Tensor, ...]):
        return states[0] if len(self.cell.states) == 1 else tuple(states)

    def _extra_defaults(self) -> dict:
        return {}

    def _empty_result(self, layout: _Layout, x: Tensor, states, dtype):
        """B = 0: empty outputs of the right shapes, without calling any kernel.

        They hang on autograd through ``anchor``, the (zero) sum of an empty slice of the input,
        the states and every parameter: a backward gives each of them a zero gradient, as
        torch.nn's does, and the final states are new tensors, never the caller's hx."""
        anchor = torch.cat([t.reshape(-1)[:0].to(dtype)
                            for t in (x, *states, *self.parameters())]).sum()
        out = x.new_zeros(x.shape[0], 0, self.num_directions * self._state_sizes["h"],
                          dtype=dtype) + anchor
        return layout.output(out), self._pack_states(tuple(layout.state(s.to(dtype) + anchor)
                                                           for s in states))


_LSTM_DOC = _docs.CellFacts(
    name="LSTM", gates="i, f, g, o", num_gates=4, candidate="tanh(g)",
    title="A multi-layer long short-term memory (LSTM) network with optional layer norm and "
          "regularizers.",
    cell_norm=", and over the new cell state before its tanh, with a learned bias "
              "(the carried cell stays raw)",
    torch_only_args=_docs.PROJ_SIZE_ARG,
    zoneout_args=_docs.zoneout_args(("zoneout_cell", "the cell state c"),
                                    ("zoneout_hidden", "the hidden state h")),
    extra_args=_docs.FORGET_BIAS_ARG, width="P", states=("h", "c"),
    example_options="layer_norm=True, zoneout_cell=0.1, zoneout_hidden=0.1")


class LSTM(_RecurrentBase):
    # torch.nn.LSTM with optional layer norm, zoneout of c and h, recurrent / candidate dropout,
    # dropconnect, a forget-gate bias init, learned initial states and residual connections;
    # proj_size as torch.nn's: h, h_n and out have P units, c stays H-sized, and layer norm and
    # the regularizers act on the H-sized cell, zoneout of h and recurrent dropout on the
    # projected h.  The docstring is composed in fastrnn/_docs.py.
    __doc__ = _docs.class_doc(_LSTM_DOC)

    cell = cells.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, layer_norm: bool = False, ln_groups: int = 1,
                 zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0,
                 recurrent_dropout: float = 0.0, candidate_dropout: float = 0.0,
                 dropconnect: float = 0.0, forget_bias: float = 1.0,
                 learn_initial_state: bool = False, residual: bool = False, backend: str = "auto",
                 device=None, dtype=None):
        """Builds the layers; the arguments are in the class docstring (``help(fastrnn.LSTM)``)."""
        self.forget_bias = V.finite_real("forget_bias", forget_bias)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, ln_groups=ln_groups,
                         zoneout={"zoneout_cell": zoneout_cell, "zoneout_hidden": zoneout_hidden},
                         recurrent_dropout=recurrent_dropout, candidate_dropout=candidate_dropout,
                         dropconnect=dropconnect, learn_initial_state=learn_initial_state,
                         residual=residual, backend=backend, device=device, dtype=dtype,
                         proj_size=proj_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        hidden = self.hidden_size
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.startswith("bias_ih"):
                    forget = self.cell.gates.index("f")
                    parameter[forget * hidden:(forget + 1) * hidden].fill_(self.forget_bias)

    def _extra_defaults(self):
        return {"forget_bias": 1.0}

    def forward(self, input, hx=None, lengths: Lengths = None, resets: Optional[Tensor] = None):
        return super().forward(input, hx, lengths, resets)

    forward.__doc__ = _docs.forward_doc(_LSTM_DOC)


_GRU_DOC = _docs.CellFacts(
    name="GRU", gates="r, z, n", num_gates=3, candidate="n",
    title="A multi-layer gated recurrent unit (GRU) network with optional layer norm and "
          "regularizers.",
    cell_norm="", torch_only_args="",
    zoneout_args=_docs.zoneout_args(("zoneout", "the hidden state h")),
    extra_args="", width="H", states=("h",),
    example_options="layer_norm=True, zoneout=0.1, recurrent_dropout=0.25")


class GRU(_RecurrentBase):
    __doc__ = _docs.class_doc(_GRU_DOC)  # composed in fastrnn/_docs.py

    cell = cells.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, layer_norm: bool = False, ln_groups: int = 1, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, candidate_dropout: float = 0.0,
                 dropconnect: float = 0.0, learn_initial_state: bool = False,
                 residual: bool = False, backend: str = "auto", device=None, dtype=None):
        """Builds the layers; the arguments are in the class docstring (``help(fastrnn.GRU)``)."""
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, layer_norm=layer_norm, ln_groups=ln_groups,
                         zoneout={"zoneout": zoneout}, recurrent_dropout=recurrent_dropout,
                         candidate_dropout=candidate_dropout, dropconnect=dropconnect,
                         learn_initial_state=learn_initial_state, residual=residual,
                         backend=backend, device=device, dtype=dtype)

    def forward(self, input, hx=None, lengths: Lengths = None, resets: Optional[Tensor] = None):
        return super().forward(input, hx, lengths, resets)

    forward.__doc__ = _docs.forward_doc(_GRU_DOC)


class LayerNormLSTM(LSTM):
    # The docstring and help()'s signature: _docs.layer_norm_variant below.
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("layer_norm", True)
        super().__init__(*args, **kwargs)


class LayerNormGRU(GRU):
    # The docstring and help()'s signature: _docs.layer_norm_variant below.
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("layer_norm", True)
        super().__init__(*args, **kwargs)


_docs.layer_norm_variant(LayerNormLSTM, LSTM)
_docs.layer_norm_variant(LayerNormGRU, GRU)
