"""The Triton backend: fused recurrences from fastrnn.kernels.

Runs CUDA tensors on a GPU, and CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks the
kernels' math).  float32, bfloat16 and float16.
"""
from __future__ import annotations

import importlib.util
import os

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unavailable():
    if importlib.util.find_spec("triton") is None:
        return ("triton is not installed: CUDA builds of torch on Linux bring it; on a CPU-only "
                "machine `pip install triton` (or fastrnn's `test` extra) adds it for TRITON_INTERPRET=1")
    return None


def unsupported(device, dtype):
    if dtype not in DTYPES:
        return "Triton kernels take float32, bfloat16 and float16 (float64 runs on backend='reference')"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set it before importing fastrnn)"
    if device.type not in ("cpu", "cuda"):
        return "Triton kernels run on CUDA devices"
    return None


def lstm_forward(*args):
    from ..kernels import lstm
    return lstm.lstm_forward(*args)


def lstm_backward(*args):
    from ..kernels import lstm
    return lstm.lstm_backward(*args)


def gru_forward(*args):
    from ..kernels import gru
    return gru.gru_forward(*args)


def gru_backward(*args):
    from ..kernels import gru
    return gru.gru_backward(*args)
