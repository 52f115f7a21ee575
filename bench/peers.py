"""Peers measured when importable: FlashRNN (plain LSTM / GRU) and Haste (layer-norm LSTM, GRU
with zoneout).  Neither shares fastrnn's parameter layout or exact cell, so their rows carry no
error against the reference (``not_compared``); their weights are random at the same scale.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from fastrnn.cells import CELLS

from .implementations import Implementation, module_prepared
from .measure import Prepared


class _Peer(Implementation):
    """A third-party CUDA library: missing when not importable or without a GPU."""
    module: str
    install_hint: str

    def not_compared(self, workload) -> Optional[str]:
        return ("no error: another parameter layout and cell than fastrnn's, with its own "
                "random weights")

    def missing(self, device) -> Optional[str]:
        if importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not importable ({self.install_hint})"
        if device.type != "cuda":
            return f"{self.module} runs on CUDA GPUs only"
        return None


class FlashRNN(_Peer):
    """``flashrnn.flashrnn`` (Pöppel et al. 2024) on the input projection of a linear layer, as
    torch.nn.LSTM computes it.  Its GRU has no fused kernel: flashrnn itself falls back to its
    alternating "cuda" backend."""
    name = "flashrnn"
    module = "flashrnn"
    install_hint = "pip install flashrnn einops; it compiles its CUDA kernels at first use"
    cells = ("lstm", "gru")

    def prepare(self, workload, params, device):
        from flashrnn import flashrnn

        family = workload.spec.family
        gates, hidden, dtype = CELLS[family].num_gates, workload.H, workload.torch_dtype
        bias_gates = 4 if family == "gru" else gates  # flashrnn's GRU keeps a separate b_hn

        def leaf(*shape, scale):
            return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype) \
                .requires_grad_(True)

        weights = {"weight_ih": leaf(gates * hidden, workload.input_size, scale=hidden ** -0.5),
                   "R": leaf(gates, 1, hidden, hidden, scale=hidden ** -0.5),
                   "b": leaf(bias_gates, 1, hidden, scale=0.1)}

        def forward(x):
            batch_major = x.transpose(0, 1)
            wx = (batch_major @ weights["weight_ih"].t()).unflatten(-1, (gates, 1, hidden))
            states, last = flashrnn(Wx=wx, R=weights["R"], b=weights["b"], function=family,
                                    backend="cuda_fused", dtype=workload.dtype)
            return (states[0],)

        return Prepared(forward, weights)


class Haste(_Peer):
    """``haste_pytorch`` (LMNT, 2020): LayerNormLSTM, LSTM and GRU with zoneout.  Haste has no
    recurrent (Gal) dropout; the gru_reg row uses its ``dropout``, which is DropConnect on the
    recurrent weights, as the nearest regularizer of the same cost class."""
    name = "haste"
    module = "haste_pytorch"
    cells = ("ln_lstm", "lstm", "gru", "gru_reg")   # no episode starts, no layer-norm GRU
    install_hint = "pip install haste_pytorch; its build asks nvcc for compute_37, which CUDA 13 rejects"

    def unsupported(self, workload, device):
        if workload.cell == "ln_lstm" and workload.dtype != "float32":
            return "haste's LayerNormLSTM runs float32 and float64 only"
        return None

    def prepare(self, workload, params, device):
        import haste_pytorch as haste

        options = {"ln_lstm": (haste.LayerNormLSTM, {}), "lstm": (haste.LSTM, {}),
                   "gru": (haste.GRU, {}),
                   "gru_reg": (haste.GRU, {"zoneout": 0.1, "dropout": 0.25})}
        cls, kwargs = options[workload.cell]
        module = cls(workload.input_size, workload.H, **kwargs).to(device=device,
                                                                  dtype=workload.torch_dtype)
        return module_prepared(module.train(workload.spec.training))
