"""What one benchmark run compares: each implementation says whether it runs here, which cells
it implements, and prepares itself for a workload (bench/README.md, "Implementations").

Names: "fastrnn-triton", "fastrnn-cuda" (the fused backends), "reference-eager" (the fastrnn
module with backend="reference", a Python loop over time), "reference-compiled"
(bench/compiled.py), "cudnn" (torch.nn.LSTM / GRU on CUDA; on CPU the same modules run ATen's
CPU kernels and the row is called "torch-nn"), "torch-loop" (bench/loop.py: the loop a user
writes today for a layer-norm or regularized cell), and the peers of bench/peers.py.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

import fastrnn
from fastrnn import backends

from .data import episode_starts
from .grid import ALL_CELLS, Workload
from .measure import Prepared, Result, Settings, peak_memory_bytes, seeded_result, time_ms


@dataclasses.dataclass
class Measurement:
    times_ms: List[float]
    peak_mem_bytes: Optional[int]
    result: Optional[Result]          # the seeded step compared with the float64 reference
    compile_s: Optional[float] = None
    note: Optional[str] = None


def module_prepared(module: nn.Module, resets: Optional[torch.Tensor] = None) -> Prepared:
    """Any module with torch.nn.LSTM's call convention: out, (h_n, c_n) or out, h_n; with
    ``resets`` (episode starts) passed as fastrnn's modules take them."""
    def forward(x):
        out, state = module(x) if resets is None else module(x, resets=resets)
        return (out,) + (tuple(state) if isinstance(state, tuple) else (state,))
    return Prepared(forward, dict(module.named_parameters()))


def fastrnn_module(workload: Workload, params: Dict[str, torch.Tensor], device: torch.device,
                   backend: str, dtype: torch.dtype) -> nn.Module:
    spec = workload.spec
    cls = fastrnn.LSTM if spec.family == "lstm" else fastrnn.GRU
    # Built in float32, then cast: its initializer's QR (orthogonal W_hh) has no bfloat16 /
    # float16 kernel, and the weights are replaced by ``params`` anyway.
    module = cls(workload.input_size, workload.H, backend=backend, device=device,
                 **spec.options)
    module.load_state_dict(params)
    return module.to(dtype).train(spec.training)


def float64_reference(workload: Workload, params, x: torch.Tensor, device: torch.device,
                      seed: int) -> Result:
    """The step every compared row is measured against: the reference module in float64 on the
    workload's float32 weights and input (exact in float64) under the same masks (the same
    seed; fastrnn's masks depend on the seed only).  A bf16 / fp16 row's rounding of weights and
    input is thus part of its error, as it is part of running in that dtype."""
    module = fastrnn_module(workload, params, device, "reference", torch.float64)
    return seeded_result(module_prepared(module, episode_starts(workload, device)), x.double(),
                         workload.mode, seed)


def measure_prepared(prepared: Prepared, mode: str, inputs: Sequence[torch.Tensor],
                     settings: Settings, device: torch.device, checked: bool) -> Measurement:
    """Times, peak memory and (if ``checked``) the seeded step of one prepared implementation."""
    times = time_ms(prepared, inputs, mode, settings, device)
    peak = peak_memory_bytes(prepared, inputs[0], mode, device)
    result = seeded_result(prepared, inputs[0], mode, settings.seed) if checked else None
    return Measurement(times, peak, result)


class Implementation:
    """Base: an implementation measured in this process."""
    name: str
    cells: Sequence[str] = ALL_CELLS

    def missing(self, device: torch.device) -> Optional[str]:
        """None if it can run on this machine, else why not and what to install."""
        return None

    def unsupported(self, workload: Workload, device: torch.device) -> Optional[str]:
        return None

    def not_compared(self, workload: Workload) -> Optional[str]:
        """None when the row computes fastrnn's math on the same weights and masks, so that its
        error against the float64 reference means something; else why not (the row's note)."""
        return None

    def prepare(self, workload: Workload, params, device: torch.device) -> Prepared:
        raise NotImplementedError

    def measure(self, workload: Workload, params, inputs: Sequence[torch.Tensor],
                settings: Settings, device: torch.device) -> Measurement:
        return measure_prepared(self.prepare(workload, params, device), workload.mode, inputs,
                                settings, device, self.not_compared(workload) is None)


class FastrnnBackend(Implementation):
    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"fastrnn-{backend}"

    def missing(self, device):
        reason = backends.available()[self.backend]
        if reason is not None:
            return reason
        if device.type not in backends.devices()[self.backend]:
            return f"runs no {device.type} tensors here"
        if self.backend == "triton" and device.type != "cuda":
            return ("needs a CUDA GPU: the Triton interpreter checks the kernels' math on CPU "
                    "and is never timed")
        return None

    def unsupported(self, workload, device):
        return backends.get(self.backend).unsupported(device, workload.torch_dtype)

    def prepare(self, workload, params, device):
        return module_prepared(fastrnn_module(workload, params, device, self.backend,
                                              workload.torch_dtype),
                               episode_starts(workload, device))


class ReferenceEager(Implementation):
    name = "reference-eager"

    def prepare(self, workload, params, device):
        return module_prepared(fastrnn_module(workload, params, device, "reference",
                                              workload.torch_dtype),
                               episode_starts(workload, device))


class TorchNN(Implementation):
    """torch.nn.LSTM / GRU: cuDNN on CUDA, the floor every ``ratio_vs_cudnn`` is taken against
    (ATen's CPU kernels on CPU).  It runs the plain cell of each workload's family
    (bench.suite.plan)."""

    def __init__(self, device: torch.device):
        self.name = baseline_name(device)

    def not_compared(self, workload):
        if workload.spec.resets:
            return "the plain cell on the split segments: other math than the layer-norm rows"
        return None

    def prepare(self, workload, params, device):
        cls = nn.LSTM if workload.spec.family == "lstm" else nn.GRU
        module = cls(workload.input_size, workload.H, device=device, dtype=workload.torch_dtype)
        module.load_state_dict(params)
        resets = episode_starts(workload, device)
        if resets is not None:
            return segments_prepared(module, resets)
        return module_prepared(module)


def segments_prepared(module: nn.Module, resets: torch.Tensor) -> Prepared:
    """torch.nn's module with episode starts, as a user without resets in the kernel runs it:
    every row split at its starts, the segments packed into one PackedSequence (one cuDNN call
    on CUDA), the outputs scattered back to [T, B, H]."""
    steps, batch = resets.shape
    starts = resets.clone()
    starts[0] = True
    segment = torch.cumsum(starts.t().reshape(-1).long(), 0) - 1   # row-major (b, t) order
    count = int(segment[-1]) + 1
    flat = torch.arange(steps * batch, device=resets.device)
    rows, times = flat // steps, flat % steps
    first = torch.full((count,), steps * batch, device=resets.device, dtype=torch.long)
    first = first.scatter_reduce(0, segment, flat, reduce="amin")
    position = flat - first[segment]                                 # step within the segment
    lengths = torch.bincount(segment, minlength=count).cpu()
    longest = int(lengths.max())

    def forward(x):
        padded = x.new_zeros(longest, count, x.shape[-1])
        padded[position, segment] = x[times, rows]
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths, enforce_sorted=False)
        out, state = module(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out)
        scattered = out[position, segment].reshape(batch, steps, -1).transpose(0, 1)
        return (scattered,) + (tuple(state) if isinstance(state, tuple) else (state,))

    return Prepared(forward, dict(module.named_parameters()))


# The torch.nn rows by their implementation name: what tables and plots call them, and what
# they run.  A result document names its own in its "baseline" field.
BASELINES = {
    "cudnn": {"impl": "cudnn", "name": "cuDNN",
              "what": "torch.nn.LSTM / torch.nn.GRU on CUDA, which run cuDNN"},
    "torch-nn": {"impl": "torch-nn", "name": "torch.nn",
                 "what": "torch.nn.LSTM / torch.nn.GRU on CPU, which run ATen's CPU kernels "
                         "(there is no cuDNN on CPU)"},
}


def baseline_name(device: torch.device) -> str:
    """The implementation name of the torch.nn rows on ``device``."""
    return "cudnn" if device.type == "cuda" else "torch-nn"
