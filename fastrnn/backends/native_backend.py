"""The native backend: torch's own LSTM / GRU kernels for calls with torch.nn's math.

``fastrnn::<cell>_native`` (``fastrnn.ops``) runs one layer and direction through ``torch._VF``'s
``lstm`` / ``gru``, the entry point of torch.nn.LSTM / GRU: cuDNN on CUDA, oneDNN for float32 LSTMs
on CPU, ATen's cells otherwise, with torch's own autograd.  What torch.nn expresses with a
PackedSequence or a second direction, a fastrnn call expresses with ``lengths`` and ``reverse``;
both are rewritten here into a plain forward run over a padded batch, with static shapes (no
host sync, so CUDA graphs can capture it):

* ``reverse``: each sequence is reversed within its own length, run forward, and reversed back;
* ``lengths``: steps t >= L_b run but are discarded: ``out`` is zeroed there and h_n is read at
  t = L_b - 1.  The LSTM's c_n is the kernel's final cell state, held fixed through the padding
  steps by one extra input column that is 1 there and 0 elsewhere, whose weights drive the input
  gate to 0 and the forget gate to 1 and leave g and o alone: ∓S with S half the dtype's largest
  value, so that σ(∓S + a) is 0 and 1 to the last bit (c_t = 1·c_{t-1} + 0·tanh(g) = c_{t-1})
  whatever the other terms a of the pre-activation, unless |a| itself reaches S; a sum that
  overflows is ±inf, which σ takes to 0 and 1 as well.  The gradients of those steps are zero
  for the same reason.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..cells import LSTM, cell_of

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
FEATURES = frozenset({"proj_size"})  # torch.nn.LSTM's projection
CELL_NAMES = ("lstm", "gru")          # the cells torch._VF has


def unavailable() -> Optional[str]:
    return None


def unsupported(device, dtype) -> Optional[str]:
    if device.type not in ("cpu", "cuda"):
        return "torch's LSTM / GRU kernels are used on CPU and CUDA devices"
    if dtype not in DTYPES:
        return "torch's LSTM / GRU kernels take float64, float32, bfloat16 and float16"
    return None


def run(call):
    """(out [T, B, P], h_n [B, P][, c_n [B, H]]) of a native call (``fastrnn.cells``)."""
    cell = cell_of(call)
    x, w_ih, lengths = call.x, call.w_ih, call.lengths
    if call.reverse:
        x = _reverse_sequences(x, lengths)
    if lengths is not None and cell is LSTM:
        x, w_ih = _hold_cell_after_the_end(x, w_ih, lengths)
    biases = [] if call.b_ih is None and call.b_hh is None else [
        torch.zeros_like(call.w_hh[:, 0]) if b is None else b for b in (call.b_ih, call.b_hh)]
    projection = [getattr(call, field) for field in cell.native_features
                  if getattr(call, field) is not None]  # w_hr, last as torch.nn orders it
    params = [w_ih, call.w_hh, *biases, *projection]
    # ``train`` only switches inter-layer dropout (none for one layer) and oneDNN's saving of its
    # workspace for backward, which is needed exactly when autograd records this call.
    train = torch.is_grad_enabled() and any(p.requires_grad for p in (x, *params, call.h0))
    if cell is LSTM:
        out, h_n, c_n = torch._VF.lstm(x, (call.h0[None], call.c0[None]), params, bool(biases), 1,
                                       0.0, train, False, False)
        finals = [h_n[0], c_n[0]]
    else:
        out, h_n = torch._VF.gru(x, call.h0[None], params, bool(biases), 1, 0.0, train, False,
                                 False)
        finals = [h_n[0]]
    if lengths is not None:
        last = (lengths - 1).view(1, -1, 1).expand(1, out.shape[1], out.shape[2])
        finals[0] = out.gather(0, last)[0]
        out = torch.where(_running(out.shape[0], lengths), out, torch.zeros_like(out))
    if call.reverse:
        out = _reverse_sequences(out, lengths)
    return (out, *finals)


def _running(steps: int, lengths: Tensor) -> Tensor:
    """[T, B, 1] bool: t < L_b."""
    return (torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :]).unsqueeze(-1)


def _reverse_sequences(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x[L_b - 1 - t, b] at t < L_b, x[t, b] after (its own inverse)."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device)[:, None]
    index = torch.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    return x.gather(0, index.unsqueeze(-1).expand(x.shape))


def saturating(dtype: torch.dtype) -> float:
    """S, the largest power of two of ``dtype`` (half its largest value).

    Any fixed S short of it (1e4 once) is outweighed by large enough weights, which then leak
    into the held c.  The largest value itself is not safe: TF32 (cuDNN's default for float32)
    rounds it up to inf, and 0·inf at the running steps is NaN; a power of two stays exact."""
    return 2.0 ** (math.frexp(torch.finfo(dtype).max)[1] - 1)


def _hold_cell_after_the_end(x: Tensor, w_ih: Tensor, lengths: Tensor):
    """x with a column that is 1 at t >= L_b, and W_ih with its weights: input gate to 0, forget
    gate to 1 (the module docstring)."""
    after_the_end = (~_running(x.shape[0], lengths)).to(x.dtype)
    hidden = w_ih.shape[0] // LSTM.num_gates
    column = w_ih.new_zeros(LSTM.num_gates, hidden)
    column[LSTM.gates.index("i")] = -saturating(w_ih.dtype)
    column[LSTM.gates.index("f")] = saturating(w_ih.dtype)
    return (torch.cat([x, after_the_end], dim=-1),
            torch.cat([w_ih, column.reshape(-1, 1)], dim=1))
