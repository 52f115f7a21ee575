"""Backend registry: which implementation of the fastrnn ops runs a call.

A backend is a module with ``forward(call)`` (a ``fastrnn.cells`` call object -> the forward
op's results) and ``backward(call, saved, grads)`` (-> the gradients of the cell's
differentiable fields), plus ``unavailable()`` (None, or the reason it cannot run here and what
to install) and ``unsupported(device, dtype)`` (None, or why it cannot run that device/dtype).
"""
from __future__ import annotations

import importlib
import torch

NAMES = ("reference", "triton", "cuda")
CHOICES = ("auto",) + NAMES
# What "auto" tries for CUDA tensors, in order.  Triton first: it runs every shape and its
# recurrent products use tensor cores, while the CUDA kernels refuse W_hh slices that do not fit
# on chip and multiply on CUDA cores; no GPU benchmark has ranked them yet (bench/).
_AUTO_ORDER_CUDA = ("triton", "cuda", "reference")


def get(name: str):
    if name not in NAMES:
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}_backend")


def check(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raises ValueError/TypeError naming why ``name`` cannot run on device/dtype."""
    backend = get(name)
    reason = backend.unavailable()
    if reason is not None:
        raise ValueError(f"backend={name!r} is not available: {reason}")
    reason = backend.unsupported(device, dtype)
    if reason is not None:
        raise TypeError(f"backend={name!r} cannot run {dtype} tensors on {device.type}: {reason}")


def resolve(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend for a call: "auto" picks the fastest that runs here."""
    if name != "auto":
        check(name, device, dtype)
        return name
    if device.type != "cuda":
        return "reference"
    for candidate in _AUTO_ORDER_CUDA:
        backend = get(candidate)
        if backend.unavailable() is None and backend.unsupported(device, dtype) is None:
            return candidate
    return "reference"


def available() -> dict:
    """{name: None if usable here, else the reason} for every backend."""
    return {name: get(name).unavailable() for name in NAMES}
