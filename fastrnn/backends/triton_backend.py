"""The Triton backend: fused recurrences from fastrnn.kernels.

Runs CUDA tensors on a GPU, and CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks the
kernels' math).  float32, bfloat16 and float16.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from ..cells import LSTMCall

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unavailable():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux only)"
    return None


def unsupported(device, dtype):
    if dtype not in DTYPES:
        return "Triton kernels take float32, bfloat16 and float16 (float64 runs on backend='reference')"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set it before importing fastrnn)"
    if device.type not in ("cpu", "cuda"):
        return "Triton kernels run on CUDA devices"
    return None


def forward(call):
    from ..kernels import gru, lstm  # triton is optional: imported when a call runs
    if isinstance(call, LSTMCall):
        return lstm.lstm_forward(*call)
    return gru.gru_forward(*call)


def backward(call, saved, grads):
    from ..kernels import gru, lstm
    if isinstance(call, LSTMCall):
        return lstm.lstm_backward(*grads, *saved, *call[1:])
    return gru.gru_backward(*grads, *saved, *call[1:])
