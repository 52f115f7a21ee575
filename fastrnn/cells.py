"""The cells fastrnn runs, in one table: what each cell is, takes, carries and saves.

Everything that differs between the LSTM and the GRU is stated here once and read from here by
the modules, the functional layer, the op registration, the backends, the tests and the
benchmark: the gates, the carried states, the fields of one recurrence call (the op's
arguments), what the forward keeps for the backward, the layer-norm parameters and statistics,
and which per-step masks the recurrence draws.  docs/math.md states the equations;
docs/adding-a-cell.md lists what a new cell needs.

A *recurrence call* is one layer and one direction over all T steps.  Its tensors and options
travel as one ``LSTMCall`` / ``GRUCall`` from ``fastrnn.functional`` through the op registration
(``fastrnn.ops``, whose schemas are generated from these classes) to each backend.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import masks as M

# Layer norm: N(v) = (v - mean) / sqrt(biased var + LAYER_NORM_EPS), statistics in float32 or wider.
LAYER_NORM_EPS = 1e-5

# Long names of the states, as the modules name their learned initial states.
STATE_NAMES = {"h": "hidden", "c": "cell"}


class LSTMCall(NamedTuple):
    """One LSTM layer and direction (gates i, f, g, o).  Shapes: T steps, B rows, H units."""
    gx: Tensor                        # [T, B, 4H] input projection of every step (incl. b_ih)
    w_hh: Tensor                      # [4H, H] recurrent weight, dropconnect applied
    b_hh: Optional[Tensor]            # [4H], added after the recurrent layer norm
    ln_hh_weight: Optional[Tensor]    # [4H] γ_hh; None: no layer norm
    ln_cell_weight: Optional[Tensor]  # [H] γ_c of the cell norm (given exactly with γ_hh)
    ln_cell_bias: Optional[Tensor]    # [H] β_c
    h0: Tensor                        # [B, H]
    c0: Tensor                        # [B, H]
    lengths: Optional[Tensor]         # [B] int64 on the device, 1 <= L_b <= T; None: all T
    recurrent_mask: Optional[Tensor]  # [B, H] inverted-dropout scale on h_{t-1}
    seed: Tensor                      # [] int64 on the device: key of the per-step masks
    ln_groups: int                    # 1 (statistics over 4H) or 4 (per gate)
    zoneout_cell: float
    zoneout_hidden: float
    candidate_dropout: float
    training: bool
    reverse: bool


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


class LSTMSaved(NamedTuple):
    """What the LSTM forward keeps for its backward."""
    out: Tensor     # [T, B, H] h_t (the caller keeps it anyway)
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

    @property
    def differentiable(self) -> Tuple[str, ...]:
        """Call fields with a gradient, in the order the backward op returns them."""
        return (("gx", "w_hh", "b_hh") + self.norm_parameters
                + tuple(f"{s}0" for s in self.states))

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
        """No fastrnn-only option: the math of torch.nn's cell (torch's own kernels can run it)."""
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
                "candidate_dropout": M.CANDIDATE_DROPOUT})

GRU = Cell(
    name="gru", gates=("r", "z", "n"), states=("h",), call=GRUCall, saved=GRUSaved,
    norm_parameters=("ln_hh_weight",), cell_norm=False,
    zoneout={"zoneout": "zoneout_hidden"},
    step_masks={"zoneout_hidden": M.ZONEOUT_HIDDEN, "candidate_dropout": M.CANDIDATE_DROPOUT})

CELLS: Dict[str, Cell] = {cell.name: cell for cell in (LSTM, GRU)}


def cell_of(call) -> Cell:
    """The cell whose call type ``call`` is."""
    for cell in CELLS.values():
        if isinstance(call, cell.call):
            return cell
    raise TypeError(f"not a recurrence call: {type(call).__name__}")

