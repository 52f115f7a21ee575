"""Backend registry: which implementation runs a recurrence call.

Two kinds of backend:

* the fastrnn-op backends (``NAMES``: "reference", "cpu", "triton", "cuda") implement the ops
  ``fastrnn::<cell>_forward`` / ``_inference`` / ``_backward``.  Each is a module with
  ``forward(call, save=True)`` (a ``fastrnn.cells`` call object -> the forward op's results; with
  ``save=False`` only out and the final states, keeping nothing for a backward: memory beyond them
  O(B·H)), ``backward(call, saved, grads)`` (-> the gradients of the cell's differentiable
  fields, by field name or in their order; ``backward`` below places them), ``unavailable()``
  (None, or the reason it cannot run here and what to install) and ``unsupported(device,
  dtype)`` (None, or why it cannot run that device/dtype);
* ``NATIVE`` ("native") is torch's own LSTM / GRU kernel (cuDNN on CUDA, oneDNN or ATen's cells
  on CPU) behind the ops ``fastrnn::<cell>_native``.  It runs calls with torch.nn's math only
  (``fastrnn.cells.Cell.is_plain``) and needs no backward of ours: autograd is torch's.

A backend whose kernels exist for some cells only lists their names in ``CELL_NAMES`` (absent:
every cell of ``fastrnn.cells.CELLS``).

One exception type for a refusal: whatever the reason a backend cannot run a call here (not
installed, no device of its kind visible, the tensors' device or dtype, the cell, a feature,
native's rules) it is a ValueError whose message names the backend and the reason
(``refusal``, ``check``).  TypeError is left to the argument checks (fastrnn/validation.py): an
argument of the wrong kind, whatever the backend.

Optional features of a call (``fastrnn.cells.Cell.features``, e.g. "proj_size") run only on a
backend that lists them in its module attribute ``FEATURES`` (a set of feature names; absent
means none).  Any other backend refuses such a call with an error naming the feature, "auto"
skips it; in the calls it is handed the feature's fields are None, and it returns the gradients of
the fields it reads (those of the other fields are filled in as empty tensors), so a backend
written before a feature existed keeps working unchanged.
"""
from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import FrozenSet, NamedTuple, Optional, Tuple

import torch

from ..cells import CELLS, cell_of

NAMES = ("reference", "cpu", "triton", "cuda")
# How a refusal names a feature the caller turned on.
FEATURE_WORDS = {"proj_size": "proj_size > 0", "resets": "resets (episode starts)"}
NATIVE = "native"
CHOICES = ("auto",) + NAMES + (NATIVE,)


class Request(NamedTuple):
    """What one layer asks of the backend that runs it (known before any tensor is computed)."""
    cell: str = "lstm"                 # the cell's name ("lstm", "gru")
    hidden: int = 0                    # H, the cell's width
    plain: bool = False                # torch.nn's math (Cell.is_plain): NATIVE can run it
    features: FrozenSet[str] = frozenset()  # optional features the call uses (Cell.features_of)
    # Under torch.compile with autograd on, torch's kernel would be traced into graph nodes per
    # time step (its ATen decomposition; with torch 2.13 on CPU in float32 that trace failed to
    # compile); the fastrnn ops stay one opaque node per layer there, so NATIVE is not used.
    compiling_for_grad: bool = False


NATIVE_NOT_COMPILED_FOR_GRAD = (
    f"backend={NATIVE!r} is not traced by torch.compile for training (torch's LSTM / GRU kernel "
    "would unroll into one graph node per time step); use backend='auto', which compiles the "
    "fastrnn op instead")


@dataclasses.dataclass(frozen=True)
class AutoRule:
    """One row of what "auto" tries on CUDA: the first rule that matches a request gives the
    order; the first backend in it that can run the call wins."""
    order: Tuple[str, ...]
    cells: Tuple[str, ...] = tuple(CELLS)
    plain: Optional[bool] = None                      # None: plain and fastrnn cells alike
    dtypes: Optional[Tuple[torch.dtype, ...]] = None  # None: every dtype
    max_hidden: Optional[int] = None                  # None: every H
    source: str = ""                                  # the benchmark run this row comes from

    def matches(self, request: Request, dtype: torch.dtype) -> bool:
        return (request.cell in self.cells
                and (self.plain is None or self.plain == request.plain)
                and (self.dtypes is None or dtype in self.dtypes)
                and (self.max_hidden is None or request.hidden <= self.max_hidden))


# The CUDA table.  A GPU benchmark (bench/) is to fill it with measured rows, per cell, dtype and
# H range, each naming its source.  Until then: plain cells run torch's own kernel, i.e. cuDNN,
# which is measured fast for them; the fastrnn cells run Triton first (every shape; tensor-core
# recurrent products in half precision and TF32), then the CUDA kernels (which refuse W_hh
# slices that do not fit on chip), neither of which has run on a GPU yet; the reference is the
# fallback of both.
AUTO_CUDA: Tuple[AutoRule, ...] = (
    AutoRule(order=(NATIVE, "triton", "cuda", "reference"), plain=True,
             source="default: cuDNN for torch.nn's cells (unmeasured here)"),
    AutoRule(order=("triton", "cuda", "reference"),
             source="default: no GPU benchmark has ranked the fused backends yet"),
)


def get(name: str):
    if name not in NAMES + (NATIVE,):
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}_backend")


def backend_features(name: str) -> FrozenSet[str]:
    """The optional call features backend ``name`` runs (its ``FEATURES``; none if absent)."""
    return frozenset(getattr(get(name), "FEATURES", ()))


def _features_refused(name: str, used: FrozenSet[str]) -> Optional[str]:
    missing = sorted(used - backend_features(name))
    if not missing:
        return None
    runners = [other for other in NAMES + (NATIVE,) if set(missing) <= backend_features(other)]
    return (f"backend={name!r} cannot run {', '.join(FEATURE_WORDS.get(m, m) for m in missing)}: "
            f"its kernels do not implement it; use backend='auto' or "
            f"{' or '.join(repr(other) for other in runners)}")


def refusal(name: str, device: torch.device, dtype: torch.dtype,
            request: Request = Request()) -> Optional[Tuple[type, str]]:
    """None if backend ``name`` can run ``request`` here, else (exception type, message); the
    type is always ValueError (module docstring)."""
    backend = get(name)
    reason = backend.unavailable()
    if reason is not None:
        return ValueError, f"backend={name!r} is not available: {reason}"
    reason = backend.unsupported(device, dtype)
    if reason is not None:
        return ValueError, f"backend={name!r} cannot run {dtype} tensors on {device.type}: {reason}"
    cells = getattr(backend, "CELL_NAMES", None)
    if cells is not None and request.cell not in cells:
        return ValueError, (f"backend={name!r} has no kernels for the {request.cell} cell "
                            f"(it runs {', '.join(cells)}); use backend='auto' or 'reference'")
    reason = _features_refused(name, request.features)
    if reason is not None:
        return ValueError, reason
    if name == NATIVE and not request.plain:
        return ValueError, (f"backend={NATIVE!r} runs torch.nn's cells only; layer_norm, zoneout, "
                            "recurrent_dropout, candidate_dropout and dropconnect need "
                            "backend='auto', 'reference', 'triton' or 'cuda'")
    if name == NATIVE and request.compiling_for_grad:
        return ValueError, NATIVE_NOT_COMPILED_FOR_GRAD
    return None


def check(name: str, device: torch.device, dtype: torch.dtype,
          request: Request = Request()) -> None:
    """Raises ValueError naming why ``name`` cannot run ``request`` on device/dtype."""
    refused = refusal(name, device, dtype, request)
    if refused is not None:
        error, message = refused
        raise error(message)


def _auto_order(device: torch.device, dtype: torch.dtype, request: Request) -> Tuple[str, ...]:
    if device.type == "cuda":
        for rule in AUTO_CUDA:
            if rule.matches(request, dtype):
                return rule.order
        return ("reference",)
    # CPU: torch's own kernel (oneDNN for float32 LSTMs) for the plain cells it runs, then the
    # fused C++ kernels of "cpu" (bench/results: several times the reference's loop over time
    # steps), then the reference (float16, or no compiler to build "cpu"). Triton runs CPU tensors
    # only under its interpreter (tests), never by "auto".
    return (NATIVE, "cpu", "reference")


def resolve(name: str, device: torch.device, dtype: torch.dtype,
            request: Request = Request()) -> str:
    """The concrete backend for a call: "auto" picks the first of its order that can run it."""
    if name != "auto":
        check(name, device, dtype, request)
        return name
    passed_over = []
    for candidate in _auto_order(device, dtype, request):
        if refusal(candidate, device, dtype, request) is None:
            if candidate == "reference":
                _warn_reference_fallback(passed_over)
            return candidate
        passed_over.append(candidate)
    check("reference", device, dtype, request)
    _warn_reference_fallback(passed_over)
    return "reference"


_fallbacks_warned: set = set()


def _warn_reference_fallback(passed_over) -> None:
    """Once per backend: "auto" sent a layer to the (much slower) reference because a fused
    backend it tried is not available here at all (not installed, no compiler to build it) —
    not for a dtype or feature it never runs, which docs/api.md states."""
    for name in passed_over:
        reason = None if name == NATIVE else get(name).unavailable()
        if reason is not None and name not in _fallbacks_warned:
            _fallbacks_warned.add(name)
            warnings.warn(f"fastrnn: backend={name!r} is not available here: {reason}. Layers "
                          f"it would run go to the (much slower) reference backend",
                          RuntimeWarning, stacklevel=4)


# What ``devices`` probes: a device kind counts when a backend runs one of these dtypes on it.
PROBED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _device_kinds() -> Tuple[str, ...]:
    """The device kinds this machine has: the CPU, and CUDA when a device is visible."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def _runs_on(backend, kind: str) -> bool:
    device = torch.device(kind)
    return any(backend.unsupported(device, dtype) is None for dtype in PROBED_DTYPES)


def devices() -> dict:
    """{name: the device kinds ("cpu", "cuda") it can run tensors of here} for every backend,
    "native" included; an empty tuple for one that cannot run anything here.

    Triton counts "cpu" only under ``TRITON_INTERPRET=1`` (set before importing fastrnn: the
    kernels are compiled for the interpreter when first imported) and "cuda" only with a visible
    GPU; the reference and "native" run the CPU and any visible GPU; "cuda" needs a GPU and the
    extension (``available``'s reason says what is missing)."""
    kinds = {}
    for name in NAMES + (NATIVE,):
        backend = get(name)
        kinds[name] = (() if backend.unavailable() is not None
                       else tuple(kind for kind in _device_kinds() if _runs_on(backend, kind)))
    return kinds


def available() -> dict:
    """{name: None, or why it cannot run anything here} for every fastrnn-op backend (``NAMES``).

    None means the backend runs tensors of at least one device kind here (``devices`` says which:
    a CUDA machine's Triton runs CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1);
    otherwise the reason says what is missing (triton or the extension not installed, no GPU
    visible, TRITON_INTERPRET not set) and what to install or set."""
    return {name: _unavailable_here(name) for name in NAMES}


def _unavailable_here(name: str) -> Optional[str]:
    backend = get(name)
    reason = backend.unavailable()
    if reason is not None:
        return reason
    refused = []
    for kind in _device_kinds():
        if _runs_on(backend, kind):
            return None
        refused.append(f"{kind.upper()} tensors: "
                       f"{backend.unsupported(torch.device(kind), torch.float32)}")
    if "cuda" not in _device_kinds():
        refused.append("CUDA tensors: no CUDA device is visible (torch.cuda.is_available() is "
                       "False)")
    return "installed, but it runs nothing here: " + "; ".join(refused)


# ------------------------------------------------------------------- running the fastrnn ops

def forward(name: str, call, save: bool = True):
    """The forward op's results of ``call`` on backend ``name`` (which must run its features):
    (out, *final states, *saved), or with ``save=False`` (no backward will follow) only
    (out, *final states), the backend keeping nothing for a backward."""
    backend = _checked(name, call)
    results = tuple(backend.forward(call, save=save))
    return results if save else results[:1 + len(cell_of(call).states)]


def backward(name: str, call, saved, grads):
    """The gradients of the cell's differentiable fields (``Cell.differentiable`` order).  A
    backend returns them by field name (a dict) or in that order (a tuple, which may stop before
    the trailing fields of features); a field it gives nothing for (a feature it does not run,
    such as the LSTM's w_hr between c0 and the reset states) gets an empty tensor."""
    backend = _checked(name, call)
    results = backend.backward(call, saved, grads)
    fields = cell_of(call).differentiable
    if not isinstance(results, dict):
        results = dict(zip(fields, results))
    return tuple(results[field] if field in results else call.w_hh.new_empty(0)
                 for field in fields)


def _checked(name: str, call):
    if name not in NAMES:
        raise ValueError(f"backend={name!r} does not implement fastrnn::{cell_of(call).name}_forward"
                         f" (backend={NATIVE!r} runs fastrnn::{cell_of(call).name}_native); "
                         f"give one of {NAMES}")
    reason = _features_refused(name, cell_of(call).features_of(call))
    if reason is not None:
        raise ValueError(reason)
    return get(name)

