"""The cells fastrnn runs, in one table: what each cell is, takes, carries and saves.

Everything that differs between the LSTM and the GRU is stated here once and read from here by
the modules, the functional layer, the op registration, the backends, the tests and the
benchmark: the gates, the carried states, the fields of one recurrence call (the op's
arguments), what the forward keeps for the backward, the layer-norm parameters and statistics,
and which per-step masks the recurrence draws.  ``fastrnn.reference`` states the equations
(README.md "The math, briefly" in words); docs/ops.md is the op contract.

A *recurrence call* is one layer and one direction over all T steps.  Its tensors and options
travel as one ``LSTMCall`` / ``GRUCall`` from ``fastrnn.functional`` through the op registration
(``fastrnn.ops``, whose schemas are generated from these classes) to each backend.  A call with
no fastrnn-only option (``Cell.is_plain``) can instead run torch's own LSTM / GRU kernel as one
``LSTMNativeCall`` / ``GRUNativeCall``: the input and weights of the layer, which that kernel
projects itself, and the call fields torch.nn's cell has (``Cell.native_fields``).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import masks as M

# Layer norm: N(v) = (v - mean) / sqrt(biased var + LAYER_NORM_EPS), statistics in float32 or wider.
LAYER_NORM_EPS = 1e-5

# Long names of the states, as the modules name their learned initial states.
STATE_NAMES = {"h": "hidden", "c": "cell"}

# The module parameter (torch.nn's name, without the layer suffix) behind each call field of an
# optional feature (``Cell.features``).
FIELD_PARAMETERS = {"w_hr": "weight_hr"}


class LSTMCall(NamedTuple):
    """One LSTM layer and direction (gates i, f, g, o).  Shapes: T steps, B rows, H units of the
    cell; h has P = H units, or P < H with a projection (``w_hr``, torch.nn's ``proj_size``)."""
    gx: Tensor                        # [T, B, 4H] input projection of every step (incl. b_ih)
    w_hh: Tensor                      # [4H, P] recurrent weight, dropconnect applied
    b_hh: Optional[Tensor]            # [4H], added after the recurrent layer norm
    ln_hh_weight: Optional[Tensor]    # [4H] γ_hh; None: no layer norm
    ln_cell_weight: Optional[Tensor]  # [H] γ_c of the cell norm (given exactly with γ_hh)
    ln_cell_bias: Optional[Tensor]    # [H] β_c
    h0: Tensor                        # [B, P]
    c0: Tensor                        # [B, H]
    lengths: Optional[Tensor]         # [B] int64 on the device, 1 <= L_b <= T; None: all T
    recurrent_mask: Optional[Tensor]  # [B, P] inverted-dropout scale on h_{t-1}
    seed: Tensor                      # [] int64 on the device: key of the per-step masks
    ln_groups: int                    # 1 (statistics over 4H) or 4 (per gate)
    zoneout_cell: float
    zoneout_hidden: float
    candidate_dropout: float
    training: bool
    reverse: bool
    # Fields of optional features (``Cell.features``) come last and default to off, so that the
    # fields before them keep their positions for a backend that does not run the feature
    # (``fastrnn.backends`` hands such a backend the call without them).
    w_hr: Optional[Tensor] = None     # [P, H] h_t = W_hr (σ(o) ⊙ tanh(·)); None: no projection
    resets: Optional[Tensor] = None   # [T, B] bool: step t reads (h_reset, c_reset), not the
    #                                   state the row's previous step (in the call's order) left
    h_reset: Optional[Tensor] = None  # [B, P] the state an episode starts from (given with resets)
    c_reset: Optional[Tensor] = None  # [B, H]


class GRUCall(NamedTuple):
    """One GRU layer and direction (gates r, z, n; r multiplies W_hn h + b_hn)."""
    gx: Tensor                        # [T, B, 3H]
    w_hh: Tensor                      # [3H, H]
    b_hh: Optional[Tensor]            # [3H]
    ln_hh_weight: Optional[Tensor]    # [3H]
    h0: Tensor                        # [B, H]
    lengths: Optional[Tensor]
    recurrent_mask: Optional[Tensor]
    seed: Tensor
    ln_groups: int                    # 1 or 3
    zoneout_hidden: float             # the GRU module's `zoneout`
    candidate_dropout: float
    training: bool
    reverse: bool
    resets: Optional[Tensor] = None   # [T, B] bool (LSTMCall.resets)
    h_reset: Optional[Tensor] = None  # [B, H]


class InputProjection(NamedTuple):
    """What torch's own kernel takes instead of ``gx``: it computes W_ih x_t + b_ih itself."""
    x: Tensor                         # [T, B, I] the layer input
    w_ih: Tensor                      # [G·H, I]
    b_ih: Optional[Tensor]            # [G·H]


def _native_call(name: str, call: type, fields: Tuple[str, ...]) -> type:
    """The call of torch's own kernel: ``InputProjection``, then ``fields`` of ``call``."""
    hints = typing.get_type_hints(call)
    return NamedTuple(name, [*typing.get_type_hints(InputProjection).items(),
                             *((field, hints[field]) for field in fields)])


class LSTMSaved(NamedTuple):
    """What the LSTM forward keeps for its backward."""
    out: Tensor     # [T, B, P] h_t (the caller keeps it anyway)
    preact: Tensor  # [T, B, 4H] gate pre-activations a_t (after layer norm and biases)
    cell: Tensor    # [T, B, H] float32 (float64 for float64 input): the carried c_t
    stats: Tensor   # [T, B, 2·ln_groups + 2] float32: means, then rstds of W_hh h, then of c~_t


class GRUSaved(NamedTuple):
    """What the GRU forward keeps for its backward."""
    out: Tensor       # [T, B, H]
    preact: Tensor    # [T, B, 3H] a_r, a_z and a_n = gx_n + r ⊙ hidden_n
    hidden_n: Tensor  # [T, B, H] the n slice of γ_hh ⊙ N(W_hh h) + b_hh (what r multiplies)
    stats: Tensor     # [T, B, 2·ln_groups] float32


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str                          # "lstm" or "gru"; the ops are fastrnn::<name>_forward/_backward
    gates: Tuple[str, ...]             # in PyTorch's order, so weights load from torch.nn
    states: Tuple[str, ...]            # the carried states, "h" first ("h", "c")
    call: type                         # the NamedTuple of one recurrence call
    saved: type                        # what the forward saves (``out`` first)
    norm_parameters: Tuple[str, ...]   # the recurrence's layer-norm parameters (call fields)
    cell_norm: bool                    # normalizes the cell candidate c~ over H (LSTM)
    zoneout: Dict[str, str]            # module option -> call field
    step_masks: Dict[str, int]         # call field of a probability -> the per-step mask it draws
    step_mask_states: Dict[str, str]   # call field of a per-step mask -> the state whose width it has
    features: Dict[str, str]           # optional feature -> the call field that turns it on
    feature_gradients: Dict[str, Tuple[str, ...]]  # optional feature -> its differentiable fields
    projected_states: Tuple[str, ...]  # the states whose width is P under the projection
    native_fields: Tuple[str, ...]     # the call fields torch's own kernel takes (torch.nn's cell)

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def ln_groups(self) -> Tuple[int, ...]:
        """The allowed ``ln_groups``: statistics over all gates, or per gate."""
        return (1, self.num_gates)

    def stats_width(self, layer_norm: bool, ln_groups: int) -> int:
        """Columns of ``stats``: mean and rstd per group of W_hh h, then of c~ (cell norm)."""
        if not layer_norm:
            return 0
        return 2 * ln_groups + (2 if self.cell_norm else 0)

    @property
    def forward_outputs(self) -> Tuple[str, ...]:
        """The forward op's results: out, the final states, then the saved tensors."""
        return ("out",) + tuple(f"{s}_n" for s in self.states) + self.saved._fields[1:]

    @functools.cached_property
    def native_call(self) -> type:
        """The NamedTuple of one call of torch's own kernel: InputProjection + native_fields."""
        return _native_call(f"{self.name.upper()}NativeCall", self.call, self.native_fields)

    @property
    def native_outputs(self) -> Tuple[str, ...]:
        """What torch's own kernel returns: out and the final states (it saves nothing of ours)."""
        return self.forward_outputs[:1 + len(self.states)]

    @property
    def differentiable(self) -> Tuple[str, ...]:
        """Call fields with a gradient, in the order the backward op returns them."""
        return (("gx", "w_hh", "b_hh") + self.norm_parameters
                + tuple(f"{s}0" for s in self.states)
                + tuple(field for feature in self.features
                        for field in self.feature_gradients[feature]))

    @property
    def reset_states(self) -> Tuple[str, ...]:
        """The call fields of the states a reset starts from: h_reset (and c_reset)."""
        return tuple(f"{s}_reset" for s in self.states)

    @property
    def native_features(self) -> Tuple[str, ...]:
        """The feature fields torch's own kernel takes too (the LSTM's w_hr)."""
        return tuple(field for field in self.features.values() if field in self.native_fields)

    def features_of(self, call) -> FrozenSet[str]:
        """The optional features (``features``) that ``call`` uses."""
        return frozenset(name for name, field in self.features.items()
                         if getattr(call, field) is not None)

    def state_sizes(self, hidden: int, proj_size: int = 0) -> Dict[str, int]:
        """Width of each carried state: H, or P for the projected ones when proj_size = P > 0."""
        return {state: proj_size if proj_size and state in self.projected_states else hidden
                for state in self.states}

    def mask_width(self, field: str, call) -> int:
        """Width of the per-step mask drawn for the probability ``field`` of ``call``."""
        return getattr(call, f"{self.step_mask_states[field]}0").shape[-1]

    @property
    def layer_norm_shapes(self) -> Dict[str, str]:
        """Module parameters of the layer norm and their size: "gates" (G·H) or "hidden" (H)."""
        shapes = {"ln_ih_weight": "gates", "ln_hh_weight": "gates"}
        if self.cell_norm:
            shapes.update(ln_cell_weight="hidden", ln_cell_bias="hidden")
        return shapes

    def saved_dtype(self, field: str, dtype: torch.dtype) -> torch.dtype:
        """dtype of a saved tensor for an input of ``dtype``."""
        if field == "stats":
            return torch.float32
        if field == "cell":  # the LSTM's cell state is carried at full precision
            return accumulate_dtype(dtype)
        return dtype

    def is_plain(self, call) -> bool:
        """No fastrnn-only option: the math of torch.nn's cell, its projection included (torch's
        own kernels can run it)."""
        return (call.ln_hh_weight is None and call.recurrent_mask is None
                and not any(getattr(call, field) > 0 for field in self.step_masks))


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics, gate math and the cell state: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


LSTM = Cell(
    name="lstm", gates=("i", "f", "g", "o"), states=("h", "c"), call=LSTMCall, saved=LSTMSaved,
    norm_parameters=("ln_hh_weight", "ln_cell_weight", "ln_cell_bias"), cell_norm=True,
    zoneout={"zoneout_cell": "zoneout_cell", "zoneout_hidden": "zoneout_hidden"},
    step_masks={"zoneout_cell": M.ZONEOUT_CELL, "zoneout_hidden": M.ZONEOUT_HIDDEN,
                "candidate_dropout": M.CANDIDATE_DROPOUT},
    # zoneout of h acts on the (projected) h; the candidate tanh(g) has the cell's width.
    step_mask_states={"zoneout_cell": "c", "zoneout_hidden": "h", "candidate_dropout": "c"},
    features={"proj_size": "w_hr", "resets": "resets"},
    feature_gradients={"proj_size": ("w_hr",), "resets": ("h_reset", "c_reset")},
    projected_states=("h",),
    native_fields=("w_hh", "b_hh", "h0", "c0", "lengths", "reverse", "w_hr"))

GRU = Cell(
    name="gru", gates=("r", "z", "n"), states=("h",), call=GRUCall, saved=GRUSaved,
    norm_parameters=("ln_hh_weight",), cell_norm=False,
    zoneout={"zoneout": "zoneout_hidden"},
    step_masks={"zoneout_hidden": M.ZONEOUT_HIDDEN, "candidate_dropout": M.CANDIDATE_DROPOUT},
    step_mask_states={"zoneout_hidden": "h", "candidate_dropout": "h"},
    features={"resets": "resets"}, feature_gradients={"resets": ("h_reset",)},
    projected_states=(),
    native_fields=("w_hh", "b_hh", "h0", "lengths", "reverse"))

CELLS: Dict[str, Cell] = {cell.name: cell for cell in (LSTM, GRU)}


LSTMNativeCall, GRUNativeCall = LSTM.native_call, GRU.native_call


def cell_of(call) -> Cell:
    """The cell whose call type (or native call type) ``call`` is."""
    for cell in CELLS.values():
        if isinstance(call, (cell.call, cell.native_call)):
            return cell
    raise TypeError(f"not a recurrence call: {type(call).__name__}")

