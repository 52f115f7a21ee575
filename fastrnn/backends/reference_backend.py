"""The reference backend: the per-step reference cells, on any device, in every float dtype.

Its backward is the per-step chain rule of ``fastrnn.reference`` from the saved tensors, with
masks regenerated from the seed — what the fused backward kernels compute, written plainly.
"""
from __future__ import annotations

import torch

from .. import reference as R
from ..cells import cell_of

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
FEATURES = frozenset({"proj_size", "resets"})  # fastrnn.backends: the optional call features it runs


def unavailable():
    return None


def unsupported(device, dtype):
    if dtype not in DTYPES:
        return "the reference runs float64, float32, bfloat16 and float16"
    return None


def forward(call, save=True):
    sequence, _ = R.SEQUENCES[cell_of(call).name]
    return sequence(call, R.MaskSource(call.seed), save=save)


def backward(call, saved, grads):
    _, sequence_backward = R.SEQUENCES[cell_of(call).name]
    return sequence_backward(call, saved, grads, R.MaskSource(call.seed))
