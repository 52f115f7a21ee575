"""Timing, peak memory and accuracy of one implementation on one workload.

An implementation hands the harness a ``Prepared``: a forward function on an input [T, B, I]
and the parameters a training step differentiates.  The harness owns everything else, so every
implementation is timed, measured and checked the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

# Kineto (the profiler behind the CPU peak memory) prints two log lines on stderr each time a
# profiler starts and stops; 6 is above its highest level (5), so it prints nothing.  Read once,
# when the profiler first starts; a value the user set is kept.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

# A row whose median timed call is more than this many times its fastest is flagged as too
# unsteady to trust: half of its calls or more ran that much slower than the machine can run
# them (another process on the cores, a throttled clock), so the median it reports is
# inflated.  One slow call alone (a GC pause) leaves the median, and the row, alone.
UNSTEADY_MEDIAN_OVER_MIN = 1.25


@dataclasses.dataclass
class Settings:
    warmup: int = 3             # untimed calls first (autotuning, allocator, lazy builds)
    min_repeats: int = 5
    max_repeats: int = 50
    row_seconds: float = 2.0    # stop repeating after this long once min_repeats are done
    input_sets: int = 4         # inputs cycled while timing, so no call reads warm caches
    seed: int = 0
    # A row whose calibration before or after it ran more than load_factor times slower than
    # the run's quietest is measured again, up to load_retries more times, then flagged.
    load_factor: float = 1.3
    load_retries: int = 2


# ------------------------------------------------------------------------------------ load
#
# A row slowed alike from its first call to its last looks steady (median close to the
# fastest call: once 1.82 s against 7.24 ms on a quiet machine), so ``unsteady`` cannot see
# it.  A fixed workload timed between rows can: the run's quietest calibration is what this
# machine does at this thread count, and a row whose calibration before or after it ran much
# slower than that shared the cores with something else.

CALIBRATION_SIZE = 256
CALIBRATION_STEPS = 8
CALIBRATION_REPEATS = 3
CALIBRATION_WHAT = (
    f"best of {CALIBRATION_REPEATS} runs of {CALIBRATION_STEPS} steps of y = tanh(y @ A), A a "
    f"fixed {CALIBRATION_SIZE}x{CALIBRATION_SIZE} float32 matrix, on CPU at torch's thread "
    f"count")
CALIBRATION_WHEN = ("before the first row, and before (a retry only) and after each try of a "
                    "row; not run on CUDA, whose rows are timed on the device")


@functools.lru_cache(maxsize=1)
def _calibration_matrix() -> Tensor:
    n = CALIBRATION_SIZE
    # Its own generator: the global one seeds the benchmark's masks.  Scaled by 1/sqrt(n), y
    # keeps its size from step to step (neither vanishing towards denormals nor saturating).
    return torch.randn(n, n, generator=torch.Generator().manual_seed(0)) / math.sqrt(n)


def calibration_workload() -> Tensor:
    """The fixed, deterministic calibration computation: matmuls and an elementwise op, what
    the CPU rows spend their time on."""
    a = y = _calibration_matrix()
    for _ in range(CALIBRATION_STEPS):
        y = torch.tanh(y @ a)
    return y


def calibration_ms() -> float:
    """Milliseconds of the calibration workload on CPU, the best of a few runs: a pause in one
    run is not load, a machine slow in all of them is."""
    best = math.inf
    _calibration_matrix()   # drawn once, untimed
    with torch.inference_mode():
        for _ in range(CALIBRATION_REPEATS):
            began = time.perf_counter()
            calibration_workload()
            best = min(best, (time.perf_counter() - began) * 1e3)
    return best


def load_ratio(calibrations_ms: Sequence[Optional[float]],
               quietest_ms: Optional[float]) -> Optional[float]:
    """The slowest of a row's calibrations (before and after it) over the run's quietest;
    None when there is nothing to compare (no calibration on this device)."""
    known = [c for c in calibrations_ms if c is not None]
    if not known or not quietest_ms:
        return None
    return max(known) / quietest_ms


def loaded(calibrations_ms: Sequence[Optional[float]], quietest_ms: Optional[float],
           factor: float) -> bool:
    """The machine was loaded around a row: a calibration beside it ran more than ``factor``
    times slower than the quietest."""
    ratio = load_ratio(calibrations_ms, quietest_ms)
    return ratio is not None and ratio > factor


class LoadMonitor:
    """The calibrations of one run.  ``check`` times the workload (on CPU; nothing elsewhere)
    and keeps the quietest so far, the run's own reference for this machine and thread count:
    no figure from another machine or day is assumed."""

    def __init__(self, device: torch.device, factor: float):
        self.active = device.type == "cpu"
        self.factor = factor
        self.threads = torch.get_num_threads()
        self.quietest_ms: Optional[float] = None
        self.latest_ms: Optional[float] = None
        self.count = 0

    def check(self) -> Optional[float]:
        if not self.active:
            return None
        ms = calibration_ms()
        self.count += 1
        self.latest_ms = ms
        self.quietest_ms = ms if self.quietest_ms is None else min(self.quietest_ms, ms)
        return ms

    def ratio(self, calibrations_ms: Sequence[Optional[float]]) -> Optional[float]:
        return load_ratio(calibrations_ms, self.quietest_ms)

    def loaded(self, calibrations_ms: Sequence[Optional[float]]) -> bool:
        return loaded(calibrations_ms, self.quietest_ms, self.factor)

    def describe(self) -> dict:
        """For the run's entry in the result file."""
        return {"what": CALIBRATION_WHAT, "when": CALIBRATION_WHEN, "active": self.active,
                "threads": self.threads, "quietest_ms": self.quietest_ms,
                "calibrations": self.count, "load_factor": self.factor}


@dataclasses.dataclass
class Prepared:
    forward: Callable[[Tensor], Sequence[Tensor]]   # x -> (out, h_n[, c_n])
    params: Dict[str, Tensor]                       # leaves differentiated by a training step


@dataclasses.dataclass
class Result:
    """What a step produced: the outputs and, for a training step, gradients by name."""
    outputs: List[Tensor]
    grads: Dict[str, Tensor]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(prepared: Prepared, x: Tensor, mode: str) -> Result:
    """Inference forward without autograd, or forward + backward of the sum of the outputs."""
    if mode == "forward":
        with torch.no_grad():
            return Result(list(prepared.forward(x)), {})
    x = x.detach().requires_grad_(True)
    outputs = list(prepared.forward(x))
    names = ["input"] + list(prepared.params)
    leaves = [x] + list(prepared.params.values())
    grads = torch.autograd.grad(outputs[0].sum(), leaves, allow_unused=True)
    return Result([o.detach() for o in outputs],
                  {n: g for n, g in zip(names, grads) if g is not None})


def _elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - begin) * 1e3


def time_ms(prepared: Prepared, inputs: Sequence[Tensor], mode: str, settings: Settings,
            device: torch.device) -> List[float]:
    """Milliseconds of each timed call (warm-up excluded), inputs cycled call by call."""
    for i in range(settings.warmup):
        step(prepared, inputs[i % len(inputs)], mode)
    synchronize(device)
    times: List[float] = []
    began = time.perf_counter()
    while len(times) < settings.max_repeats and (
            len(times) < settings.min_repeats or time.perf_counter() - began < settings.row_seconds):
        x = inputs[len(times) % len(inputs)]
        times.append(_elapsed_ms(lambda: step(prepared, x, mode), device))
    return times


def unsteady(times_ms: Sequence[float]) -> bool:
    """The calls of a row disagree too much for its median to be trusted."""
    return bool(times_ms) and min(times_ms) > 0 and (
        statistics.median(times_ms) / min(times_ms) > UNSTEADY_MEDIAN_OVER_MIN)


def peak_memory_bytes(prepared: Prepared, x: Tensor, mode: str,
                      device: torch.device) -> Optional[int]:
    """Peak bytes allocated during one call above what was allocated before it (weights and
    input sets excluded), as ``peak_memory_method`` says; None on other devices or when the
    CPU profiler recorded nothing."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(prepared, x, mode)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        return cpu_peak_bytes(lambda: step(prepared, x, mode))
    return None


def peak_memory_method(device: torch.device) -> Optional[str]:
    """How ``peak_memory_bytes`` measures on ``device``, in a few words for the result files."""
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated during one call minus what was allocated "
                "before it")
    if device.type == "cpu":
        # torch keeps no allocator statistics on CPU: see cpu_peak_bytes.
        return ("the largest running sum of torch's CPU allocator's allocations and frees during "
                "one call (torch.profiler, profile_memory=True); memory BLAS / oneDNN allocate "
                "for themselves is not seen")
    return None


def cpu_peak_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Peak of the bytes that ``fn`` holds allocated from torch's CPU allocator (the storage of
    every CPU tensor) at any moment, counted from zero at its start.

    ``fn`` runs once under torch.profiler with profile_memory=True, which records each
    allocation and free; the peak is the largest running sum of those events in time order.
    Frees of tensors allocated before ``fn`` are not seen, so they never lower the count (the
    profiler does not know their size).  None if no allocation was recorded: every benchmark
    step allocates its outputs, so the profiler did not work.
    """
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import MEMORY_EVENT_NAME
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The memory events one by one (the FunctionEvents sum them per operator, losing their
    # order); the device types are those torch's own profiler counts as CPU memory.
    cpu_types = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == MEMORY_EVENT_NAME and e.device_type() in cpu_types),
                    key=lambda e: e.start_ns())
    if not events:
        return None
    held = peak = 0
    for event in events:
        held += event.nbytes()   # negative for a free
        peak = max(peak, held)
    return peak


def seeded_result(prepared: Prepared, x: Tensor, mode: str, seed: int) -> Result:
    """One step after ``torch.manual_seed(seed)``: every fastrnn implementation, and the
    float64 reference, then draws the same mask seed, so regularized cells are compared under
    identical masks."""
    torch.manual_seed(seed)
    return step(prepared, x, mode)


def max_rel_err(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual - expected).abs().max() / scale).item()


def errors(result: Result, reference: Result) -> Dict[str, Optional[float]]:
    """Worst relative error over the outputs and over the gradients; None if not finite (a
    non-finite value must not read as a number in a table)."""
    def worst(pairs):
        values = [max_rel_err(a, e) for a, e in pairs]
        if not values:
            return None
        top = max(values)
        return top if math.isfinite(top) else None

    out = worst(zip(result.outputs, reference.outputs))
    grad = worst((result.grads[name], reference.grads[name])
                 for name in reference.grads if name in result.grads)
    finite = [e for e in (out, grad) if e is not None]
    broken = out is None or (reference.grads and grad is None)
    return {"max_rel_err": None if broken else max(finite), "max_rel_err_out": out,
            "max_rel_err_grad": grad}
