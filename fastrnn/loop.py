"""The alternative a user has today for a layer-norm or regularized cell: a torch loop.

torch.nn.LSTM / GRU (cuDNN on CUDA) have neither layer norm nor zoneout nor recurrent dropout,
so a user who wants them writes torch.nn.LSTMCell / GRUCell's math in a Python loop over time
steps, with torch.nn.LayerNorm for the norms and masks drawn with torch.bernoulli.  This module
is that loop, written plainly as such a user would: the input product inside the step as in
LSTMCell, no fusion, no custom autograd.  It is the baseline ``python -m fastrnn.check`` and the
benchmark (bench/loop.py) time fastrnn against, not a fastrnn feature.

The math is fastrnn's (fastrnn/reference.py, docs/ops.md), so that where no mask is drawn the
outputs and gradients can be compared with the float64 reference: with layer norm each product
is normalized over its whole gate vector with a gain and no bias, and the biases are added
after; the LSTM's output reads a normalized copy of the cell (gain and bias) while the carried
cell stays raw.  Zoneout keeps each unit's previous state with probability p per step (in eval
the expectation); recurrent dropout multiplies h_{t-1} where the recurrent product reads it,
with one mask per sequence.  The masks come from torch's generator, not fastrnn's Philox
stream, so a run that draws masks differs from the reference by design.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import CELLS


def _zoneout(previous: Tensor, new: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0:
        return new
    if training:
        keep_previous = torch.bernoulli(torch.full_like(new, p)).bool()
        return torch.where(keep_previous, previous, new)
    return p * previous + (1.0 - p) * new


def _recurrent_dropout_mask(h: Tensor, p: float, training: bool) -> Optional[Tensor]:
    """One inverted-dropout mask per sequence and unit, fixed over the time steps."""
    if p == 0.0 or not training:
        return None
    return torch.bernoulli(torch.full_like(h, 1.0 - p)) / (1.0 - p)


class _LoopLayer(nn.Module):
    """Parameters and the time loop; the subclass writes one step."""
    family: str

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool,
                 recurrent_dropout: float, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        rows = CELLS[self.family].num_gates * hidden_size
        self.hidden_size = hidden_size
        self.recurrent_dropout = recurrent_dropout
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
        self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        self.ln_ih = nn.LayerNorm(rows, bias=False, **factory) if layer_norm else None
        self.ln_hh = nn.LayerNorm(rows, bias=False, **factory) if layer_norm else None

    def products(self, x_t: Tensor, h: Tensor, mask: Optional[Tensor]):
        """(W_ih x_t + b_ih, W_hh (d ⊙ h) + b_hh), each product layer-normalized before its
        bias."""
        gx = F.linear(x_t, self.weight_ih)
        gh = F.linear(h if mask is None else h * mask, self.weight_hh)
        if self.ln_ih is not None:
            gx, gh = self.ln_ih(gx), self.ln_hh(gh)
        return gx + self.bias_ih, gh + self.bias_hh

    def forward(self, x: Tensor, resets: Optional[Tensor] = None):
        """x [T, B, I]; ``resets`` [T, B] bool: episode starts, where the state restarts from
        zeros (a ``torch.where`` per step, as an RL user's loop does)."""
        zeros = x.new_zeros(x.shape[1], self.hidden_size)
        state = self.initial_state(zeros)
        mask = _recurrent_dropout_mask(zeros, self.recurrent_dropout, self.training)
        outs = []
        for t, x_t in enumerate(x.unbind(0)):
            if resets is not None:
                starts = resets[t].unsqueeze(-1)
                state = tuple(torch.where(starts, zeros, s) for s in state)
            state = self.step(x_t, state, mask)
            outs.append(state[0])
        return torch.stack(outs), tuple(s.unsqueeze(0) for s in state)


class LoopLSTM(_LoopLayer):
    """One LSTM layer as a torch loop: ``LoopLSTM(input_size, hidden_size, *, layer_norm=False,
    zoneout_cell=0.0, zoneout_hidden=0.0, recurrent_dropout=0.0)``; x [T, B, I] ->
    (out [T, B, H], (h_n, c_n) [1, B, H]).  Its parameters are uninitialized (load them)."""
    family = "lstm"

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool = False,
                 zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0,
                 recurrent_dropout: float = 0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, device=device, dtype=dtype)
        self.zoneout_cell, self.zoneout_hidden = zoneout_cell, zoneout_hidden
        self.ln_cell = (nn.LayerNorm(hidden_size, device=device, dtype=dtype) if layer_norm
                        else None)

    def initial_state(self, zeros: Tensor):
        return zeros, zeros

    def step(self, x_t, state, mask):
        h, c = state
        gx, gh = self.products(x_t, h, mask)
        i, f, g, o = (gx + gh).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        y = c_new if self.ln_cell is None else self.ln_cell(c_new)
        h_new = torch.sigmoid(o) * torch.tanh(y)
        return (_zoneout(h, h_new, self.zoneout_hidden, self.training),
                _zoneout(c, c_new, self.zoneout_cell, self.training))


class LoopGRU(_LoopLayer):
    """One GRU layer as a torch loop: ``LoopGRU(input_size, hidden_size, *, layer_norm=False,
    zoneout=0.0, recurrent_dropout=0.0)``; x [T, B, I] -> (out [T, B, H], (h_n,) [1, B, H])."""
    family = "gru"

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool = False,
                 zoneout: float = 0.0, recurrent_dropout: float = 0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, device=device, dtype=dtype)
        self.zoneout = zoneout

    def initial_state(self, zeros: Tensor):
        return (zeros,)

    def step(self, x_t, state, mask):
        (h,) = state
        gx, gh = self.products(x_t, h, mask)
        gx_r, gx_z, gx_n = gx.chunk(3, dim=1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
        h_new = (1.0 - z) * n + z * h
        return (_zoneout(h, h_new, self.zoneout, self.training),)


# The loop layer of each cell of fastrnn.cells.CELLS; its options are the fastrnn module's.
LOOPS = {"lstm": LoopLSTM, "gru": LoopGRU}
# fastrnn's parameter name (layer 0, one direction) -> the loop's parameter name.
PARAMETER_NAMES = {"weight_ih_l0": "weight_ih", "weight_hh_l0": "weight_hh",
                   "bias_ih_l0": "bias_ih", "bias_hh_l0": "bias_hh",
                   "ln_ih_weight_l0": "ln_ih.weight", "ln_hh_weight_l0": "ln_hh.weight",
                   "ln_cell_weight_l0": "ln_cell.weight", "ln_cell_bias_l0": "ln_cell.bias"}
