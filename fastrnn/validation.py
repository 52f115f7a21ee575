"""Argument checks (docs/api.md, "Errors"): each raises ValueError or TypeError naming the
argument and what was expected, before any kernel runs.

Wrong *kinds* of values (a float where an int belongs, a float tensor of lengths, a dtype that
differs from the parameters') raise TypeError; wrong *values* (sizes, ranges, shapes, devices)
raise ValueError.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def positive_int(name: str, value) -> None:
    """A Python int > 0 (torch.nn's rule for input_size and hidden_size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def positive_integer(name: str, value) -> int:
    """An integer > 0 of any integer type, numpy's included (torch.nn's rule for num_layers);
    returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def projection_size(value, hidden_size: int) -> int:
    """proj_size: 0 (no projection) or an integer in [1, hidden_size), as torch.nn.LSTM checks."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"proj_size must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"proj_size must be 0 (no projection) or positive, got {value}")
    if value >= hidden_size:
        raise ValueError(f"proj_size must be smaller than hidden_size={hidden_size}, got {value}")
    return int(value)


def probability(name: str, value, allow_one: bool = False) -> None:
    """p in [0, 1), or [0, 1] with ``allow_one`` (zoneout 1.0 freezes the state), of any real
    type, numpy's included (torch.nn accepts any ``numbers.Number`` for its dropout)."""
    interval = "[0, 1]" if allow_one else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in {interval}, got {value!r}")
    if not (0.0 <= value < 1.0 or (allow_one and value == 1.0)):
        raise ValueError(f"{name} must be in {interval}, got {value}")


def finite_real(name: str, value) -> float:
    """A finite real number of any real type, returned as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite float, got {value!r}")
    if not math.isfinite(value):  # the right type, a wrong value
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return float(value)


def choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def dense(name: str, value: Tensor) -> None:
    """A strided tensor: sparse and mkldnn layouts have no strides, which every layer reads,
    and would fail deep inside it with an error that names no argument."""
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; "
                        f"convert it with .to_dense()")


def input_tensor(input: Tensor, input_size: int) -> None:
    """Dense, rank 2 (unbatched) or 3, floating point, last dimension input_size."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
    dense("input", input)
    if input.dim() not in (2, 3):
        raise ValueError(f"input must have 3 dimensions (or 2 unbatched), got shape "
                         f"{tuple(input.shape)} with {input.dim()}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got dtype {input.dtype}")
    if input.shape[-1] != input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size={input_size}, "
                         f"got {input.shape[-1]}")


def same_device_and_dtype(name: str, tensor: Tensor, device: torch.device,
                          dtype: Optional[torch.dtype]) -> None:
    """``tensor`` lives where the parameters live and, unless ``dtype`` is None, has their dtype."""
    if tensor.device != device:
        raise ValueError(f"{name} must be on the parameters' device {device}, got {tensor.device}")
    if dtype is not None and tensor.dtype != dtype:
        raise TypeError(f"{name} must have the parameters' dtype {dtype}, got {tensor.dtype}")


# The dtypes torch.autocast casts to its lower precision (float64 it leaves alone).
AUTOCAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def state(name: str, value, shape: Tuple[int, ...], device: torch.device,
          dtype: torch.dtype, autocasting: bool = False) -> None:
    """An initial state: a dense tensor of ``shape`` with the input's device and dtype; under
    autocast any dtype autocast casts (the call casts input and states to the autocast dtype),
    as torch.nn accepts the bfloat16 states of a previous autocast call beside a float32 input."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {shape}, got {type(value).__name__}")
    dense(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on the input's device {device}, got {value.device}")
    if autocasting:
        if value.dtype not in AUTOCAST_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16 under autocast "
                            f"(it is cast to the autocast dtype), got {value.dtype}")
    elif value.dtype != dtype:
        raise TypeError(f"{name} must have the input's dtype {dtype}, got {value.dtype}")


def lengths(value, batch: int, steps: int, device: torch.device) -> Tensor:
    """B integers in [1, T] (a sequence or a dense integer tensor on any device with values; on
    meta only beside a meta input) -> int64 on ``device``."""
    if isinstance(value, Tensor):
        dense("lengths", value)
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got dtype {value.dtype}")
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"lengths must have shape ({batch},) (one per sequence), "
                             f"got {tuple(value.shape)}")
        # A meta tensor has no values: fine beside a meta input (shapes only), not beside data.
        if value.device.type == "meta" and device.type != "meta":
            raise ValueError(f"lengths must hold values (the input is on {device}), "
                             f"got a tensor on meta")
        # Reading device values waits for the stream, which a CUDA graph capture forbids, and
        # under torch.compile it would break the graph: there the check is left out (the op's
        # contract still requires 1 <= L_b <= T).  Elsewhere it is one aminmax and one read.
        capturing = value.is_cuda and torch.cuda.is_current_stream_capturing()
        readable = value.device.type != "meta"
        if batch and readable and not capturing and not torch.compiler.is_compiling():
            low, high = torch.aminmax(value)
            _lengths_in_range(int(low), int(high), steps)
        return value.to(device=device, dtype=torch.int64)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"lengths must be a 1-D integer tensor or a list of ints, "
                        f"got {type(value).__name__}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise TypeError(f"lengths must hold ints, got {list(value)!r}")
    if len(value) != batch:
        raise ValueError(f"lengths must have {batch} entries (one per sequence), got {len(value)}")
    if batch:
        _lengths_in_range(min(value), max(value), steps)
    return torch.tensor(list(value), dtype=torch.int64, device=device)


def _lengths_in_range(low: int, high: int, steps: int) -> None:
    if low < 1 or high > steps:
        raise ValueError(f"lengths must lie in [1, {steps}] (the sequence length T), "
                         f"got values from {low} to {high}")


def resets(value, shape: Tuple[int, ...], layout: str, device: torch.device) -> Tensor:
    """Episode starts: a dense bool tensor of ``shape`` (the input's leading dimensions, named
    by ``layout``, e.g. "(T, B)") on the input's device; returned as is (never modified)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"resets must be a bool Tensor of shape {layout} = {tuple(shape)}, "
                        f"got {type(value).__name__}")
    dense("resets", value)
    if value.dtype != torch.bool:
        raise TypeError(f"resets must be a bool tensor (True where an episode starts), got "
                        f"dtype {value.dtype}; pass e.g. is_init.bool() or dones.bool()")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"resets must have the input's leading shape {layout} = "
                         f"{tuple(shape)}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"resets must be on the input's device {device}, got {value.device}")
    return value
