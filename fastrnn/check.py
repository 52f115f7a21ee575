"""Checking an installation: every backend on this machine against the float64 reference, then
how fast fastrnn's default backend runs beside torch.nn and a torch loop.

    python -m fastrnn.check [--device DEVICE] [--dtype DTYPE] [--backends NAMES]
                            [--json FILE] [--no-speed]

prints one report to paste into an issue (the environment, one line per backend, cell, option
set and shape, then the speed table) and exits with 0 when every check passed, 1 when one
failed, 2 for bad arguments.  The functions below are the same steps for scripts.

How a result is judged (``compare``).  A backend computes in its dtype what the float64
reference computes exactly, and how far it may be from it depends on how well each quantity is
conditioned on the inputs at hand (a layer norm over a narrow group, a parameter gradient that
is a long sum with cancellation), which no fixed tolerance knows.  The reference backend run in
the backend's own dtype on the same rounded inputs knows it: it keeps the same values in the
same precision as the fused kernels (fastrnn/reference.py: statistics, gate math and the cell
state in float32, the recurrent product and h in the input dtype), so its distance from float64
is the rounding those inputs amplify.  A correct kernel rounds where it rounds and differs only
in the order and kind of its float32 arithmetic (FMA contraction, reduction order, the GPU's
exp), so it lands within a few times that distance; a wrong kernel (a wrong gate, a mask
dropped) lands orders of magnitude beyond it::

    error = max |actual - reference64| / max |reference64|
    own   = max |reference32 - reference64| / max |reference64|
    bound = FACTOR[dtype] * own + FLOOR_ULPS * (u(dtype) + u(accumulator) * sqrt(reduction))

u is the unit roundoff (2^-24 for float32, 2^-8 for bfloat16, 2^-11 for float16), the
accumulator float32 (float64 for float64).  FACTOR is larger in float32 because there the
reference's own error is a few float32 roundings, and a kernel that does that float32 arithmetic
in another order or with another exp lands on another of the same few, a ratio that varies
widely; in bfloat16 and float16 both errors are dominated by the same roundings to the dtype
(h and the products stored in it), and the ratio stays near one.  The floor covers a quantity
the reference happens to round almost exactly (own near zero): a correct kernel still rounds
the result to its dtype, and accumulates the ``reduction`` terms behind it (T·B for a parameter
gradient, a sum over time and batch) in float32, whose independent rounding errors grow like
the square root of their number.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from . import backends as B
from .cells import CELLS, accumulate_dtype
from .loop import LOOPS, PARAMETER_NAMES
from .modules import GRU, LSTM

# The bound's constants (module docstring).  Measured on the CPU test suite under
# TRITON_INTERPRET=1 (tests/test_triton.py's 108 cases: every option set and tiling variant in
# float32, the half-precision set in bfloat16 and float16; 1100 quantities): a correct kernel's
# error was at most 15 times the reference's own in float32 (9 where own is above a few
# roundings) and 4 times in bfloat16 / float16; with these constants the tightest quantity stays
# 2.5 times below its bound in float32 and 3.4 times in half precision, room for the GPU's
# other exp and reduction orders.  A kernel that computes a wrong function (a wrong gate, a
# dropped mask, one gate off by 1e-3) misses by far more (tests/test_check.py; the mutation
# runs in the change that introduced this bound).
FACTOR: Dict[torch.dtype, float] = {torch.float64: 32.0, torch.float32: 32.0,
                                    torch.bfloat16: 4.0, torch.float16: 4.0}
FLOOR_ULPS = 4.0

class Comparison(NamedTuple):
    """One quantity (an output or a gradient) of a backend against the float64 reference."""
    name: str
    error: float    # max |actual - reference64| / max |reference64| (relative to its max)
    bound: float
    passed: bool    # finite and error <= bound (and shapes equal)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next ``dtype`` number: 2^-24 for float32."""
    return torch.finfo(dtype).eps / 2


def _relative_error(value: Tensor, reference64: Tensor, scale: float) -> float:
    if not value.numel():
        return 0.0
    return ((value.double() - reference64).abs().max() / scale).item()


def compare(name: str, actual: Tensor, reference32: Tensor, reference64: Tensor, *,
            dtype: Optional[torch.dtype] = None, reduction: int = 1) -> Comparison:
    r"""Judges one quantity a backend computed against the float64 reference.

    The bound scales with what the reference itself gets wrong in the backend's precision on
    the same inputs (module docstring): ``FACTOR[dtype] * own + FLOOR_ULPS * (u(dtype) +
    u(float32) * sqrt(reduction))``, own being ``reference32``'s error.

    Args:
        name: what the quantity is, for messages (``"d weight_hh_l0"``).
        actual: the backend's result, in its dtype, on any device.
        reference32: the reference backend's result on the same inputs (already rounded to the
            backend's dtype) computed in the backend's working precision: in the backend's
            dtype (the reference keeps float32 statistics and cell state for bfloat16 and
            float16 as the kernels do).  A float32 result is also fine for a half-precision
            backend: then the floor, in units of the backend's dtype, carries the bound.
        reference64: the reference's result in float64 on the same rounded inputs.
        dtype: the dtype the backend ran in.  Default: ``actual.dtype``.
        reduction: the number of terms summed into each element, T·B for the gradient of a
            parameter (a sum over time steps and batch rows); 1 for outputs and per-row
            gradients.  It raises the floor only: where the reference's own error already
            shows the sum's cancellation, the factor covers it.

    Returns:
        ``Comparison(name, error, bound, passed)``; ``error`` is inf for a non-finite result or
        a shape that differs from the reference's.

    Example::

        >>> x64 = torch.randn(5, 3, dtype=torch.float64)
        >>> x32 = x64.float().exp()
        >>> fastrnn.check.compare("exp", x32, x32, x64.exp()).passed
        True
        >>> fastrnn.check.compare("exp", x32 * 1.001, x32, x64.exp()).passed
        False
    """
    dtype = actual.dtype if dtype is None else dtype
    reference64 = reference64.detach().double().cpu()
    actual, reference32 = actual.detach().cpu(), reference32.detach().cpu()
    magnitude = reference64.abs().max().item() if reference64.numel() else 0.0
    # An all-zero reference: the error is then absolute.
    scale = magnitude if magnitude > 0 else 1.0
    own = (_relative_error(reference32, reference64, scale)
           if reference32.shape == reference64.shape else math.inf)
    bound = (FACTOR.get(dtype, FACTOR[torch.float32]) * own
             + FLOOR_ULPS * (unit_roundoff(dtype)
                             + unit_roundoff(accumulate_dtype(dtype)) * math.sqrt(reduction)))
    if actual.shape != reference64.shape or not bool(torch.isfinite(actual).all()):
        return Comparison(name, math.inf, bound, False)
    error = _relative_error(actual, reference64, scale)
    return Comparison(name, error, bound, error <= bound)


# ------------------------------------------------------------------------------ correctness

MODULES = {module.cell.name: module for module in (LSTM, GRU)}
CHECKED = B.NAMES + (B.NATIVE,)

# The option sets each cell of fastrnn.cells.CELLS is checked with: torch.nn's cell (which
# "native" runs too), then layer norm with every regularizer, in training mode (masks drawn).
OPTION_SETS: Dict[str, Dict[str, dict]] = {
    "lstm": {"plain": {},
             "regularized": dict(layer_norm=True, zoneout_cell=0.2, zoneout_hidden=0.1,
                                 recurrent_dropout=0.25, candidate_dropout=0.1,
                                 dropconnect=0.2)},
    "gru": {"plain": {},
            "regularized": dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.25,
                                candidate_dropout=0.1, dropconnect=0.2)},
}


class Shape(NamedTuple):
    """The sizes of one correctness check; sequences of several lengths, the first full."""
    steps: int
    batch: int
    input_size: int
    hidden: int
    num_layers: int = 1
    bidirectional: bool = False
    per_gate: bool = False          # ln_groups = the cell's gate count where layer norm is on

    def label(self, layer_norm: bool = False) -> str:
        extras = ([f"{self.num_layers} layers"] if self.num_layers > 1 else []) + (
            ["bidirectional"] if self.bidirectional else []) + (
            ["ln per gate"] if self.per_gate and layer_norm else [])
        return " ".join([f"T={self.steps} B={self.batch} I={self.input_size} H={self.hidden}"]
                        + extras)

    def lengths(self) -> List[int]:
        return [self.steps - (2 * b) % self.steps for b in range(self.batch)]


# Small and odd: a short last tile, a second layer reading the first, both directions.
SHAPES = (Shape(5, 3, 4, 8), Shape(6, 5, 6, 24, num_layers=2, bidirectional=True, per_gate=True))


def _device(device) -> torch.device:
    """``device`` (None: cuda if available, else cpu) as a torch.device this check can use."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}: {error}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device, got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available: torch "
                         f"{torch.__version__} sees no CUDA device")
    return device


def _dtypes(device: torch.device, dtype) -> List[torch.dtype]:
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        return [dtype]
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


def _backend_names(names) -> List[str]:
    if names is None:
        return list(CHECKED)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in CHECKED]
    if unknown or not names:
        raise ValueError(f"backends must name some of {CHECKED}, got {unknown or names!r}")
    return names


def _refusal(name: str, device: torch.device, dtype: torch.dtype, cell: str,
             options: dict, shape: Shape) -> Optional[str]:
    request = B.Request(cell=cell, hidden=shape.hidden, plain=not options)
    refused = B.refusal(name, device, dtype, request)
    return None if refused is None else refused[1]


@contextlib.contextmanager
def _checking():
    """TF32 off: the check asks for float32 arithmetic (TF32 would be a 2^-11 roundoff).  One
    CPU thread: the checks' tensors are tiny, and on a busy machine OpenMP's waits between
    threads dominated (2 cores under load: 16 s with two threads, 2 s with one)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_num_threads())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])


def _module(cell: str, options: dict, shape: Shape, backend: str, device) -> nn.Module:
    torch.manual_seed(0)
    if options.get("layer_norm") and shape.per_gate:
        options = dict(options, ln_groups=CELLS[cell].num_gates)
    return MODULES[cell](shape.input_size, shape.hidden, num_layers=shape.num_layers,
                         bidirectional=shape.bidirectional, backend=backend, device=device,
                         **options)


def train_step(module: nn.Module, x: Tensor, lengths, seed: int, weights=None):
    """({name: tensor}, weights): the outputs, the input's gradient (``"d input"``) and every
    parameter's (``"d <name>"``) of a training step of ``module`` on ``x`` [T, B, I] with
    ``lengths``, masks drawn from ``seed``, for the loss sum(w ⊙ output) with fixed float64
    weights (drawn at the first call: pass them back to the module's twins)."""
    torch.manual_seed(seed)  # the masks' seed
    x = x.detach().clone().requires_grad_(True)
    out, state = module(x, lengths=lengths)
    results = [out] + list(state if isinstance(state, tuple) else (state,))
    if weights is None:
        generator = torch.Generator().manual_seed(seed)
        weights = [torch.randn(r.shape, generator=generator, dtype=torch.float64).to(x.device)
                   for r in results]
    loss = sum((r.double() * w).sum() for r, w in zip(results, weights))
    parameters = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [x, *parameters.values()])
    spec = module.cell
    named = dict(zip(spec.forward_outputs[:1 + len(spec.states)], (r.detach() for r in results)))
    named.update({"d input": grads[0]})
    named.update({f"d {name}": g for name, g in zip(parameters, grads[1:])})
    return named, weights


def _check_one(name: str, cell: str, options: dict, shape: Shape, device: torch.device,
               dtype: torch.dtype) -> List[Comparison]:
    module = _module(cell, options, shape, name, device).to(dtype).train()
    state = module.state_dict()
    reference = _module(cell, options, shape, "reference", device).to(dtype).train()
    reference.load_state_dict(state)
    exact = _module(cell, options, shape, "reference", device).double().train()
    exact.load_state_dict({key: value.double() for key, value in state.items()})
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=generator)
    x = x.to(device=device, dtype=dtype)
    lengths = shape.lengths()
    expected, weights = train_step(exact, x.double(), lengths, 2)
    own, _ = train_step(reference, x, lengths, 2, weights)
    got, _ = train_step(module, x, lengths, 2, weights)
    return compare_step(got, own, expected, dtype, shape.steps * shape.batch)


def compare_step(got: dict, own: dict, expected: dict, dtype: torch.dtype,
                 sums: int) -> List[Comparison]:
    """``compare`` of every quantity of ``train_step``: a module on a backend (``got``), its twin
    on the reference in ``dtype`` (``own``) and in float64 (``expected``); a parameter's gradient
    sums ``sums`` = T·B terms, the outputs and the input's gradient none."""
    return [compare(key, got[key], own[key], value, dtype=dtype,
                    reduction=sums if key.startswith("d ") and key != "d input" else 1)
            for key, value in expected.items()]


def correctness(device=None, dtype: Optional[torch.dtype] = None,
                backends: Optional[Sequence[str]] = None, *,
                shapes: Optional[Sequence[Shape]] = None,
                progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    r"""Runs every backend on every cell, option set and shape against the float64 reference.

    Each check builds a module (``fastrnn.LSTM`` / ``fastrnn.GRU``) on the backend, its twin on
    the reference backend in the same dtype and in float64 (the same weights and input, rounded
    to the dtype; the same masks), runs a training step of each (lengths, masks drawn), and
    judges the outputs, the final states, the input's gradient and every parameter's gradient
    with ``compare``.  Float32 runs with TF32 off, the CPU with one thread.

    Args:
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device).  Default:
            cuda if available, else cpu.
        dtype: the dtype to check.  Default: float32, and bfloat16 too on CUDA.
        backends: names among ``("reference", "triton", "cuda", "native")``.  Default: all of
            them; those that cannot run here are listed as skipped, with the reason.  A backend
            named here that cannot run here is a ValueError.
        shapes: the sizes to check (``Shape``).  Default: ``SHAPES``, two small ones.
        progress: called with a line before each check (e.g. ``print``).

    Returns:
        One dict per backend, cell, option set, shape and dtype: ``backend``, ``cell``,
        ``options`` ("plain" or "regularized"), ``shape``, ``dtype``, ``device``, ``status``
        ("pass", "fail" or "skipped"), ``worst`` (the quantity nearest its bound), ``error``,
        ``bound``, ``comparisons`` (every quantity: name, error, bound, passed) and ``message``
        (why it was skipped, or the error it raised).

    Example::

        >>> rows = fastrnn.check.correctness("cpu", backends=["reference", "native"])
        >>> all(row["status"] != "fail" for row in rows)
        True
    """
    device = _device(device)
    dtypes = _dtypes(device, dtype)
    names = _backend_names(backends)
    shapes = SHAPES if shapes is None else shapes
    if backends is not None:
        for name in names:
            # A plain layer: what a backend named here refuses is then this device or dtype.
            refused = B.refusal(name, device, dtypes[0], B.Request(plain=True))
            if refused is not None:
                raise ValueError(f"backends: {refused[1]}")
    option_sets = [(cell, label, options) for cell, sets in OPTION_SETS.items()
                   for label, options in sets.items()]
    rows = []
    with _checking():
        for dtype, name, (cell, label, options), shape in itertools.product(
                dtypes, names, option_sets, shapes):
            row = dict(backend=name, cell=cell, options=label,
                       shape=shape.label(options.get("layer_norm", False)),
                       dtype=str(dtype)[6:], device=str(device), status="skipped", worst=None,
                       error=None, bound=None, comparisons=[],
                       message=_refusal(name, device, dtype, cell, options, shape))
            rows.append(row)
            if row["message"] is None:
                if progress is not None:
                    progress(f"checking {name} {cell} {label} {row['shape']} {row['dtype']}")
                _judge(row, _check_one, name, cell, options, shape, device, dtype)
    return rows


def _judge(row: dict, run: Callable[..., List[Comparison]], *arguments) -> None:
    """Fills ``row`` with the verdict on the comparisons ``run(*arguments)`` returns."""
    try:
        comparisons = run(*arguments)
    except Exception as error:  # a backend that raises is a failed check, reported as such
        row.update(status="fail", message=f"{type(error).__name__}: {error}")
        return
    worst = max(comparisons, key=lambda c: c.error / c.bound if c.bound else math.inf)
    row.update(status="pass" if all(c.passed for c in comparisons) else "fail",
               worst=worst.name, error=worst.error, bound=worst.bound,
               comparisons=[c._asdict() for c in comparisons])


# ------------------------------------------------------------------------------------ speed

# The cells timed: layer norm and zoneout (what torch.nn lacks), in training mode.
SPEED_OPTIONS: Dict[str, dict] = {
    "lstm": dict(layer_norm=True, zoneout_cell=0.1, zoneout_hidden=0.1),
    "gru": dict(layer_norm=True, zoneout=0.1),
}
TORCH_NN = {"lstm": nn.LSTM, "gru": nn.GRU}


def _default_speed_shape(device: torch.device) -> Shape:
    return Shape(256, 64, 512, 512) if device.type == "cuda" else Shape(16, 8, 32, 32)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run: Callable[[], object], device: torch.device, repeats: int,
               warmup: int) -> float:
    for _ in range(warmup):  # compiles, autotunes, allocates
        run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _timed(module: nn.Module, x: Tensor, device: torch.device, repeats: int,
           warmup: int) -> Dict[str, float]:
    parameters = list(module.parameters())

    def forward():
        with torch.no_grad():
            module(x)

    def train():
        out, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        torch.autograd.grad(out.sum() + sum(s.sum() for s in states), parameters)

    return {"forward_ms": _median_ms(forward, device, repeats, warmup),
            "train_ms": _median_ms(train, device, repeats, warmup)}


def speed(device=None, dtype: Optional[torch.dtype] = None, *, shape: Optional[Shape] = None,
          repeats: int = 5, progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    r"""Times fastrnn's default backend ("auto") against torch.nn and a torch loop.

    For each cell, with layer norm and zoneout in training mode (``SPEED_OPTIONS``): the
    fastrnn module with ``backend="auto"``; the torch loop a user writes for the same cell
    (``fastrnn.loop``: nn.Linear-style products, nn.LayerNorm, torch.where zoneout per step);
    and ``torch.nn.LSTM`` / ``GRU`` without the options (cuDNN on a GPU: the speed of the plain
    cell, which lacks them).  Forward-only (under ``torch.no_grad``) and a training step
    (forward and backward), the median of ``repeats`` calls after a warm-up, in milliseconds.

    Args:
        device: as for ``correctness``.
        dtype: default float32 on CPU, bfloat16 on CUDA.
        shape: the sizes (``Shape``; its layer, direction and per-gate fields are ignored).
            Default: T=16 B=8 I=H=32 on CPU, T=256 B=64 I=H=512 on CUDA.
        repeats: timed calls per number.
        progress: called with a line before each implementation.

    Returns:
        One dict per cell and implementation: ``cell``, ``implementation`` ("fastrnn",
        "torch loop", "torch.nn"), ``backend`` (what "auto" chose, for fastrnn), ``options``,
        ``shape``, ``dtype``, ``device``, ``forward_ms``, ``train_ms``, ``repeats``.

    Example::

        >>> rows = fastrnn.check.speed("cpu", repeats=3)
        >>> sorted({row["implementation"] for row in rows})
        ['fastrnn', 'torch loop', 'torch.nn']
    """
    device = _device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    _dtypes(device, dtype)
    shape = shape or _default_speed_shape(device)
    warmup = 2 if device.type == "cuda" else 1
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=generator)
    x = x.to(device=device, dtype=dtype)
    rows = []
    for cell, options in SPEED_OPTIONS.items():
        torch.manual_seed(0)
        fused = MODULES[cell](shape.input_size, shape.hidden, backend="auto", device=device,
                              **options).to(dtype).train()
        loop = LOOPS[cell](shape.input_size, shape.hidden, device=device, **options)
        loop.load_state_dict({PARAMETER_NAMES[name]: value
                              for name, value in fused.state_dict().items()})
        plain = TORCH_NN[cell](shape.input_size, shape.hidden, device=device)
        chosen = B.resolve("auto", device, dtype, B.Request(cell=cell, hidden=shape.hidden))
        for label, module, backend in (("fastrnn", fused, chosen),
                                       ("torch loop", loop.to(dtype).train(), None),
                                       ("torch.nn", plain.to(dtype).train(), None)):
            if progress is not None:
                progress(f"timing {label} {cell}")
            rows.append(dict(cell=cell, implementation=label, backend=backend,
                             options="none" if label == "torch.nn" else _options_label(options),
                             shape=shape.label(), dtype=str(dtype)[6:], device=str(device),
                             repeats=repeats, **_timed(module, x, device, repeats, warmup)))
    return rows


def _options_label(options: dict) -> str:
    return ", ".join(name if value is True else f"{name}={value}"
                     for name, value in options.items())


# ------------------------------------------------------------------------------ environment

def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> Optional[str]:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = answer.stdout.strip().splitlines() if answer.returncode == 0 else []
    return lines[0] if lines else None


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device=None) -> dict:
    r"""What a bug report needs to know about this machine and installation.

    Args:
        device: the device checked (as for ``correctness``).

    Returns:
        A dict: ``date`` (UTC), ``fastrnn`` (version and path), ``python``, ``torch``,
        ``cuda`` (torch's CUDA runtime), ``cudnn``, ``driver`` (the NVIDIA driver, from
        nvidia-smi), ``triton``, ``triton_interpret``, ``os``, ``cpu``, ``cpu_count``,
        ``threads`` (torch's intra-op threads), ``device`` and ``device_name`` (with compute
        capability, SM count and memory on CUDA), and ``backends`` (for each backend None or
        why it cannot run here, as ``fastrnn.backends.available()``).

    Example::

        >>> env = fastrnn.check.environment("cpu")
        >>> env["torch"] == torch.__version__
        True
    """
    device = _device(device)
    from . import __file__ as package_file
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "fastrnn": _version("fastrnn") or "unknown",
        "fastrnn_path": os.path.dirname(os.path.abspath(package_file)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": _nvidia_driver() if device.type == "cuda" else None,
        "triton": _version("triton"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": _cpu_name(),
        "backends": {**B.available(), B.NATIVE: None},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = (f"{props.name} (sm_{props.major}{props.minor}, "
                              f"{props.multi_processor_count} SMs, "
                              f"{props.total_memory / 2 ** 30:.0f} GiB)")
    return env


# ----------------------------------------------------------------------------------- report

def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> List[str]:
    lines = [list(header)] + [list(line) for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in lines]


def report(environment: dict, correctness_rows: Sequence[dict],
           speed_rows: Optional[Sequence[dict]] = None) -> str:
    r"""The text ``python -m fastrnn.check`` prints: environment, checks, speed table.

    Args:
        environment: ``environment()``'s dict.
        correctness_rows: ``correctness()``'s rows.
        speed_rows: ``speed()``'s rows, or None (no speed section).

    Returns:
        The report, lines joined with newlines, no trailing newline.

    Example::

        >>> text = fastrnn.check.report(fastrnn.check.environment("cpu"),
        ...                             fastrnn.check.correctness("cpu", backends=["native"]))
        >>> "native" in text
        True
    """
    env = environment
    triton = env["triton"] or "not installed"
    if env["triton"] and env["triton_interpret"]:
        triton += " (TRITON_INTERPRET=1)"
    lines = [
        "fastrnn check (python -m fastrnn.check): paste all of it into an issue",
        f"date      {env['date']}",
        f"fastrnn   {env['fastrnn']} at {env['fastrnn_path']}",
        f"python    {env['python']}",
        f"torch     {env['torch']}, CUDA {env['cuda'] or 'none'}, cuDNN {env['cudnn'] or 'none'}",
        f"triton    {triton}",
        f"os        {env['os']}",
        f"cpu       {env['cpu']}, {env['cpu_count']} cores, torch threads {env['threads']}",
        f"device    {env['device']}: {env['device_name']}"
        + (f", NVIDIA driver {env['driver']}" if env.get("driver") else ""),
        "backends  " + "; ".join(f"{name}: {'yes' if reason is None else 'no'}"
                                 for name, reason in env["backends"].items()),
        "",
        "Correctness: a training step of each module (lengths, masks drawn) against the float64",
        "reference; every output and gradient within its bound, error = max|x - x64| / max|x64|,",
        "bound = FACTOR x the reference's own error in the same dtype (FACTOR "
        + ", ".join(f"{str(t)[6:]} {f:g}" for t, f in FACTOR.items() if t != torch.float64)
        + f") + {FLOOR_ULPS:g} (u + u32 sqrt(terms summed))",
    ]
    ran = [row for row in correctness_rows if row["status"] != "skipped"]
    lines += _table(("result", "backend", "cell", "options", "dtype", "shape", "worst", "error",
                     "bound"),
                    ((row["status"].upper(), row["backend"], row["cell"], row["options"],
                      row["dtype"], row["shape"], row["worst"] or "-", _number(row["error"]),
                      _number(row["bound"])) for row in ran))
    for row in ran:
        if row["status"] == "fail":
            missed = [f"{c['name']} {c['error']:.1e} > {c['bound']:.1e}"
                      for c in row["comparisons"] if not c["passed"]]
            lines.append(f"  FAIL {row['backend']} {row['cell']} {row['options']} "
                         f"{row['shape']} {row['dtype']}: "
                         + (row["message"] or "; ".join(missed)))
    skipped: Dict[str, str] = {}
    for row in correctness_rows:
        if row["status"] == "skipped":
            skipped.setdefault(f"{row['backend']} {row['options']}", row["message"])
    for what, reason in skipped.items():
        lines.append(f"  skipped {what}: {reason}")
    failed = sum(row["status"] == "fail" for row in ran)
    lines.append(f"{len(ran) - failed} of {len(ran)} checks passed"
                 + (f", {failed} FAILED" if failed else ""))
    if speed_rows:
        first = speed_rows[0]
        lines += ["", f"Speed: ms, median of {first['repeats']} calls after a warm-up; "
                      f"{first['shape']} {first['dtype']} on {first['device']}, train mode; "
                      "train = forward + backward"]
        loop_ms = {row["cell"]: row for row in speed_rows if row["implementation"] == "torch loop"}
        lines += _table(
            ("cell", "implementation", "options", "forward", "train", "train / loop"),
            ((row["cell"], row["implementation"]
              + (f" (auto: {row['backend']})" if row["backend"] else ""), row["options"],
              f"{row['forward_ms']:.2f}", f"{row['train_ms']:.2f}",
              f"{row['train_ms'] / loop_ms[row['cell']]['train_ms']:.2f}"
              if row["cell"] in loop_ms else "-") for row in speed_rows))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``python -m fastrnn.check``: prints the report; 0 if every check passed, else 1.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``): ``--device``,
            ``--dtype``, ``--backends`` (comma-separated), ``--json FILE`` (also write the
            environment and every row there), ``--no-speed`` (skip the speed table),
            ``--repeats N``.  A bad argument exits with status 2 and a message naming it.

    Example::

        >>> fastrnn.check.main(["--device", "cpu", "--no-speed", "--json", "check.json"])
        0
    """
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn.check",
        description="Check this fastrnn installation: every backend against the float64 "
                    "reference, then a speed table. Prints one report to paste into an issue.")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default=None,
                        help="default: float32 (and bfloat16 on CUDA); speed: bfloat16 on CUDA")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated, among {','.join(CHECKED)} (default: all that "
                             "run here)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the environment and every row as JSON")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed table")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per number")
    args = parser.parse_args(argv)
    try:
        device = _device(args.device)
    except ValueError as error:
        parser.error(f"argument --device: {error}")
    dtype = DTYPE_NAMES[args.dtype] if args.dtype else None
    names = None if args.backends is None else [n.strip() for n in args.backends.split(",")]
    if args.repeats < 1:
        parser.error(f"argument --repeats: must be at least 1, got {args.repeats}")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        rows = correctness(device, dtype, names, progress=progress)
    except ValueError as error:
        parser.error(f"argument --backends: {error}")
    timings = None if args.no_speed else speed(device, dtype, repeats=args.repeats,
                                               progress=progress)
    env = environment(device)
    print(report(env, rows, timings), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"environment": env, "correctness": rows, "speed": timings or []}, out,
                      indent=1)
    return 1 if any(row["status"] == "fail" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
