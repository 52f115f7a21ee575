"""Host side of the Triton recurrences: the argument groups, how a call is cut into programs
(``Tiling``), the constexpr configuration, the workspaces, and the launches.

The caller (fastrnn's Triton backend) allocates every input and output and passes them as a
``ForwardIO`` / ``BackwardIO``; absent optional tensors are None (the kernels test that as a
constexpr).  Mask thresholds and probabilities come as ``Rates``, the mask kinds and the
layer-norm epsilon as ``Options``: this package knows nothing of fastrnn itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import warnings
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import common, gru, lstm, recurrence


# --------------------------------------------------------------------------- argument groups

class ForwardIO(NamedTuple):
    """Tensors of one forward recurrence: [T, B, ·] per step, [B, H] states."""
    gx: torch.Tensor                    # [T, B, G·H]
    w_hh: torch.Tensor                  # [G·H, H]
    b_hh: Optional[torch.Tensor]        # [G·H]
    ln_hh: Optional[torch.Tensor]       # [G·H] γ_hh (layer norm on)
    ln_cell_w: Optional[torch.Tensor]   # [H] γ_c (LSTM cell norm)
    ln_cell_b: Optional[torch.Tensor]   # [H] β_c
    h0: torch.Tensor
    x0: torch.Tensor                    # d ⊙ h0: the recurrent input of a row's first step
    c0: Optional[torch.Tensor]          # LSTM
    lengths: torch.Tensor               # [B] int64 (T for every row when the call has none)
    rmask: Optional[torch.Tensor]       # [B, H] recurrent-dropout scale d
    seed: torch.Tensor                  # [] int64
    out: torch.Tensor                   # results from here on
    h_n: torch.Tensor
    c_n: Optional[torch.Tensor]
    # What the backward reads: all three None when no backward will follow (inference), and
    # then the kernels write none of it.
    preact: Optional[torch.Tensor]      # [T, B, G·H]
    middle: Optional[torch.Tensor]      # [T, B, H]: the LSTM's cell (float32), the GRU's q_n
    stats: Optional[torch.Tensor]       # [T, B, S] float32 (layer norm on)
    # Episode starts (``Options.resets``): step t of row b reads these states instead of those
    # its previous step left (None without resets).
    resets: Optional[torch.Tensor] = None   # [T, B] uint8: the flags
    h_reset: Optional[torch.Tensor] = None  # [B, H]
    x_reset: Optional[torch.Tensor] = None  # d ⊙ h_reset: the recurrent input at a start
    c_reset: Optional[torch.Tensor] = None  # [B, H] (LSTM)


class BackwardIO(NamedTuple):
    grad_out: torch.Tensor
    grad_h_n: torch.Tensor
    grad_c_n: Optional[torch.Tensor]
    out: torch.Tensor
    hh: Optional[torch.Tensor]          # [T, B, G·H] W_hh (d ⊙ h_{t-1}) of every step (layer norm on)
    preact: torch.Tensor
    middle: torch.Tensor
    stats: Optional[torch.Tensor]
    w_hh: torch.Tensor
    b_hh: Optional[torch.Tensor]        # present: its gradient partials are accumulated
    ln_hh: Optional[torch.Tensor]
    ln_cell_w: Optional[torch.Tensor]
    ln_cell_b: Optional[torch.Tensor]
    h0: torch.Tensor
    c0: Optional[torch.Tensor]
    lengths: torch.Tensor
    rmask: Optional[torch.Tensor]
    seed: torch.Tensor
    d_gx: torch.Tensor                  # results from here on
    d_hh: torch.Tensor                  # [T, B, G·H] d(W_hh x), for the d W_hh product
    d_h0: torch.Tensor
    d_c0: Optional[torch.Tensor]
    # [batch tiles, 2·G·H (+ 2·H)] float32 partial rows of the parameter gradients: a
    # workspace ``backward`` allocates (callers leave it None).
    param_grads: Optional[torch.Tensor] = None
    # Episode starts (``Options.resets``; None without): the flags and reset states as in
    # ``ForwardIO``, and the results d_h_reset, d_c_reset [B, H] (``backward`` accumulates them
    # in float32 workspaces and copies them there).
    resets: Optional[torch.Tensor] = None
    h_reset: Optional[torch.Tensor] = None
    c_reset: Optional[torch.Tensor] = None
    d_h_reset: Optional[torch.Tensor] = None
    d_c_reset: Optional[torch.Tensor] = None


class Rates(NamedTuple):
    """(integer threshold on 24 mask bits, probability) of each per-step mask."""
    zoneout_cell: Tuple[int, float]
    zoneout_hidden: Tuple[int, float]
    candidate_dropout: Tuple[int, float]


class Options(NamedTuple):
    cell: str                  # "lstm" or "gru": which cell kernels (``CELLS``) run
    gates: int
    cell_norm: bool            # the LSTM's layer norm of its cell candidate (with layer_norm)
    ln_groups: int
    layer_norm: bool
    training: bool
    reverse: bool
    eps: float                 # layer-norm epsilon
    kind_zoneout_cell: int     # mask kinds of the per-step masks
    kind_zoneout_hidden: int
    kind_candidate: int
    resets: bool = False       # episode starts (the IO's resets, h_reset, ... are given)


class Dims(NamedTuple):
    T: int
    B: int
    H: int


class _Work(NamedTuple):
    """Workspaces of a launch (None where the configuration needs none).  B' is B padded to
    whole batch tiles, SPLITS' the splits padded to a power of two (``common`` exchanges)."""
    sync: torch.Tensor                       # int32 [1 + batch tiles]: abort flag, counters
    moments: Optional[torch.Tensor] = None   # forward layer norm: [B', MOMENT_SLOTS, SPLITS']
    exchange: Optional[torch.Tensor] = None  # LSTM cell norm: [2, 3, B, H] by parity: c~, σ(o), zoneout bit
    cell_moments: Optional[torch.Tensor] = None  # LSTM cell norm: [2, B', 3, SPLITS'] by parity
    inputs: Optional[torch.Tensor] = None    # recurrent dropout, no cell norm: [2, B, H] d ⊙ h by parity
    cells: Optional[torch.Tensor] = None     # per-step LSTM forward saving no cell: [2, B, H] c by parity
    sums: Optional[torch.Tensor] = None      # backward layer norm: [B', SUM_SLOTS, SPLITS']
    shares: Optional[torch.Tensor] = None    # backward: [2, SPLITS, SPLITS, B, BLOCK_U]
    carries: Optional[torch.Tensor] = None   # per-step backward: [2, 2, B, H] dh, dc by parity


class CellKernels(NamedTuple):
    """The jit functions a cell gives the drivers (kernels/recurrence.py)."""
    initial_states: Callable
    previous_states: Callable
    forward_constants: Callable
    forward_cell: Callable
    merged_product: Any
    own_outputs: Any
    backward_constants: Callable
    final_cell_grad: Callable
    backward_local: Callable
    backward_finish: Callable


CELLS = {
    "lstm": CellKernels(lstm.initial_states, lstm.previous_states, lstm.forward_constants,
                   lstm.forward_cell, lstm.merged_product, lstm.own_outputs,
                   lstm.backward_constants, lstm.final_cell_grad, lstm.backward_local,
                   lstm.backward_finish),
    "gru": CellKernels(gru.initial_states, gru.previous_states, gru.forward_constants,
                   gru.forward_cell, None, None, gru.backward_constants, gru.final_cell_grad,
                   gru.backward_local, gru.backward_finish),
}


class Config(NamedTuple):
    """Everything the kernels specialize on (one constexpr argument)."""
    BLOCK_B: int
    BLOCK_U: int
    BLOCK_K: int
    NUM_K: int
    EVEN_K: bool               # BLOCK_K divides H: no reduction masks
    EVEN_B: bool               # BLOCK_B divides B: no row masks on the chunk loads
    SPLITS: int
    SPLITS_P2: int
    GATES: int
    GROUPS: int
    LAYER_NORM: bool
    CELL_NORM: bool            # the LSTM's layer norm of c~ (with LAYER_NORM)
    MERGED: bool               # h_{t-1} from the cell exchange (``lstm.merged_product``)
    PUBLISH_ZONEOUT: bool
    HOIST: bool
    ZONE_C: bool
    ZONE_H: bool
    CANDIDATE: bool
    TRAINING: bool
    REVERSE: bool
    RESETS: bool               # episode starts (kernels/recurrence.py); off: none of it compiled
    DOT_DTYPE: Any
    PRECISION: str
    EPS: float
    KIND_ZONEOUT_CELL: int
    KIND_ZONEOUT_HIDDEN: int
    KIND_CANDIDATE: int
    STATS: int
    MOMENT_SLOTS: int
    SUM_SLOTS: int
    SPIN_LIMIT: int            # a tile barrier's bound: polls under the interpreter,
    WAIT_NS: int               # nanoseconds on a GPU (``common.tile_barrier``)
    PERSISTENT: bool
    PHASE: int
    FIRST_PHASE: int


# ------------------------------------------------------------------------------------ tiling

@dataclasses.dataclass(frozen=True)
class Tiling:
    """How one recurrence is cut into programs: program (pb, pc) owns ``block_b`` rows and
    ``block_u`` hidden units (every gate of them); the reduction runs in ``block_k`` chunks.

    ``hoist``: the program's rows of W_hh stay in shared memory for the whole launch (read from
    memory once), else each step streams them.  ``persistent``: one launch with the time loop
    inside, column splits meeting at tile barriers (every program resident: a GPU, a grid
    within the SM count, launched cooperatively; or a single split); otherwise one launch per
    phase per step.
    """
    block_b: int
    block_u: int
    block_k: int
    hoist: bool
    persistent: bool
    num_warps: int

    def batch_tiles(self, batch: int) -> int:
        return triton.cdiv(batch, self.block_b)

    def splits(self, hidden: int) -> int:
        return triton.cdiv(hidden, self.block_u)

    def programs(self, batch: int, hidden: int) -> int:
        return self.batch_tiles(batch) * self.splits(hidden)


MIN_DOT_BLOCK = 16           # tl.dot needs every block dimension >= 16
HOISTED_WEIGHT_BYTES = 160 * 1024  # of the 227 KiB a CTA may have on sm_90, beside operand tiles
GATE_SLOTS = 4
# The passes whose kernels take their own shapes: "forward", "exchange forward" (the cell-norm
# LSTM's forward, whose step also computes h of every unit of its rows from the cell exchange,
# ``lstm.merged_product``) and "backward".
PASSES = ("forward", "exchange forward", "backward")
# (reduction chunk, warps) by (pass, operands of 32 bits), sized for a GPU (the interpreter's
# tilings take them too, the chunk capped at H).  Forward: small input chunks keep the
# registers low, one warpgroup issues the product (M = 4·16 = 64 rows of W_slice).  Exchange
# forward: its per-step elementwise work (h of all H units × rows, then the product chunk by
# chunk) over two warpgroups, which halves each thread's share of it and its registers (with
# four warps triton 3.6 spills at 24 chunks); the product's N (rows) is then split between the
# warpgroups, each reading the whole W_slice chunk.  Backward: the transposed product's M is the
# chunk, so 128 rows, two warpgroups.  float32 products without TF32 (``dot_settings``) run on
# FMA units, whose operands sit in registers (wgmma reads them from shared memory): twice the
# forward threads and quarter-size backward chunks keep them from spilling.
PASS_SHAPES = {("forward", False): (32, 4), ("exchange forward", False): (32, 8),
               ("backward", False): (128, 8),
               ("forward", True): (32, 8), ("exchange forward", True): (32, 8),
               ("backward", True): (32, 8)}
# Rows per tile of the per-step driver, which runs when even 64-row tiles give more programs
# than SMs.
PER_STEP_BLOCK_B = 32


def _weight_bytes(block_u: int, hidden: int, block_k: int, elem_bytes: int) -> int:
    return GATE_SLOTS * block_u * triton.cdiv(hidden, block_k) * block_k * elem_bytes


@functools.lru_cache(maxsize=256)
def choose_tiling(batch: int, hidden: int, elem_bytes: int, sm_count: Optional[int],
                  kernel_pass: str = "forward") -> Tiling:
    """Default tiling per shape and pass.  ``sm_count`` None means the interpreter: programs run
    one after another, so a single column split (the persistent kernel then needs no barrier).

    On a GPU: 16 units per program (the product's M is 4·16 = 64, one wgmma row block) and the
    fewest rows per tile (16, 32, 64) for which the grid has at most one program per SM — every
    program resident, as many SMs busy as the grid allows — with W_hh kept on chip when the
    program's slice fits HOISTED_WEIGHT_BYTES (else streamed every step).  Tiles of more than 64
    rows leave too few registers per thread; when even 64-row tiles give more programs than SMs,
    the per-step driver runs (PER_STEP_BLOCK_B rows, W_hh streamed)."""
    hidden_p2 = max(triton.next_power_of_2(hidden), MIN_DOT_BLOCK)
    chunk, warps = PASS_SHAPES[kernel_pass, elem_bytes >= 4]
    block_k = min(hidden_p2, chunk)
    if sm_count is None:
        block_b = min(max(triton.next_power_of_2(batch), MIN_DOT_BLOCK), 64)
        return Tiling(block_b, hidden_p2, block_k, hoist=True, persistent=True, num_warps=warps)
    block_u = 16
    hoist = _weight_bytes(block_u, hidden, block_k, elem_bytes) <= HOISTED_WEIGHT_BYTES
    for block_b in (16, 32, 64):
        tiling = Tiling(block_b, block_u, block_k, hoist=hoist, persistent=True, num_warps=warps)
        if tiling.programs(batch, hidden) <= sm_count:
            return tiling
    return Tiling(PER_STEP_BLOCK_B, block_u, block_k, hoist=False, persistent=False,
                  num_warps=warps)


_tiling_override: dict = {}
# How long a tile barrier waits before it gives up (its programs are then not all resident):
# on a GPU by the clock, under the interpreter (no clock) in polls.  Either is far beyond any
# real wait, which lasts a step's work (microseconds).
WAIT_NS = 2_000_000_000
SPIN_LIMIT = 1 << 22
_spin_limit = [SPIN_LIMIT, WAIT_NS]


@contextlib.contextmanager
def forced_tiling(**fields):
    """Within the block every recurrence uses these Tiling fields (tests use it to run each
    split / batch-tile / persistent variant on small shapes)."""
    _tiling_override.update(fields)
    try:
        yield
    finally:
        _tiling_override.clear()


@contextlib.contextmanager
def barrier_spin_limit(polls: int):
    """Tests: tile barriers give up after ``polls`` polls (interpreter) or ``polls`` µs (GPU)."""
    _spin_limit[:] = [polls, polls * 1000]
    try:
        yield
    finally:
        _spin_limit[:] = [SPIN_LIMIT, WAIT_NS]


_interleaved: List[bool] = []


@contextlib.contextmanager
def interleaved_programs():
    """Tests: the interpreter runs a grid's programs interleaved (tests/interleave.py), so a
    persistent kernel with several column splits may run there: its tile barriers can open."""
    _interleaved.append(True)
    try:
        yield
    finally:
        _interleaved.pop()


_sm_count_override: List[Optional[int]] = []


@contextlib.contextmanager
def target_sm_count(count: int):
    """Choose tilings as for a GPU with ``count`` SMs (static compilation on a CPU machine)."""
    _sm_count_override.append(count)
    try:
        yield
    finally:
        _sm_count_override.pop()


def tiling_for(batch: int, hidden: int, dtype: torch.dtype, device: torch.device,
               kernel_pass: str = "forward") -> Tiling:
    """The tiling of a pass: ``choose_tiling``, then any ``forced_tiling`` fields."""
    if _sm_count_override:
        sm_count = _sm_count_override[-1]
    elif device.type == "cuda":
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sm_count = None
    tiling = choose_tiling(batch, hidden, torch.finfo(dtype).bits // 8, sm_count, kernel_pass)
    if _tiling_override:
        tiling = dataclasses.replace(tiling, **_tiling_override)
    if sm_count is None and tiling.splits(hidden) > 1 and tiling.persistent \
            and _spin_limit[0] == SPIN_LIMIT and not _interleaved:
        raise ValueError("a persistent kernel with several column splits deadlocks under "
                         "TRITON_INTERPRET (programs run one after another)")
    return tiling


def dot_settings(dtype: torch.dtype, device: torch.device):
    """(operand dtype, input_precision) of the recurrent tl.dot products.

    float32 uses TF32 iff torch.backends.cuda.matmul.allow_tf32, like torch's own matmuls.
    The interpreter's tl.dot mis-multiplies bfloat16 (numpy has no bfloat16), so there the
    bfloat16 operands are widened to float32: the same products, accumulated in float32."""
    operand = {torch.float32: tl.float32, torch.float16: tl.float16,
               torch.bfloat16: tl.bfloat16}[dtype]
    if device.type != "cuda" and not _sm_count_override and dtype == torch.bfloat16:
        operand = tl.float32
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return operand, "tf32" if tf32 else "ieee"


def _cell_norm(options: Options) -> bool:
    """The LSTM's cell norm runs (and with it the cell exchange, ``Config.MERGED``)."""
    return options.layer_norm and options.cell_norm


def _config(tiling: Tiling, dims: Dims, options: Options, rates: Rates, dtype, device,
            phase: int = 0) -> Config:
    splits = tiling.splits(dims.H)
    cell_norm = _cell_norm(options)
    zone_h = rates.zoneout_hidden[1] > 0
    operand, precision = dot_settings(dtype, device)
    groups = options.ln_groups
    return Config(
        BLOCK_B=tiling.block_b, BLOCK_U=tiling.block_u, BLOCK_K=tiling.block_k,
        NUM_K=triton.cdiv(dims.H, tiling.block_k), EVEN_K=dims.H % tiling.block_k == 0,
        EVEN_B=dims.B % tiling.block_b == 0,
        SPLITS=splits,
        SPLITS_P2=triton.next_power_of_2(splits), GATES=options.gates, GROUPS=groups,
        LAYER_NORM=options.layer_norm, CELL_NORM=cell_norm, MERGED=cell_norm,
        PUBLISH_ZONEOUT=cell_norm and zone_h and options.training, HOIST=tiling.hoist,
        ZONE_C=rates.zoneout_cell[1] > 0, ZONE_H=zone_h,
        CANDIDATE=options.training and rates.candidate_dropout[1] > 0,
        TRAINING=options.training, REVERSE=options.reverse, RESETS=options.resets,
        DOT_DTYPE=operand,
        PRECISION=precision, EPS=options.eps, KIND_ZONEOUT_CELL=options.kind_zoneout_cell,
        KIND_ZONEOUT_HIDDEN=options.kind_zoneout_hidden, KIND_CANDIDATE=options.kind_candidate,
        STATS=(2 * groups + 2 * cell_norm) if options.layer_norm else 0,
        MOMENT_SLOTS=3 * groups, SUM_SLOTS=2 * cell_norm + groups * (2 + 4 * cell_norm),
        SPIN_LIMIT=_spin_limit[0], WAIT_NS=_spin_limit[1], PERSISTENT=tiling.persistent,
        PHASE=phase,
        FIRST_PHASE=(recurrence.PHASE_NORM.value if options.layer_norm
                     else recurrence.PHASE_CELL.value))


# ---------------------------------------------------------------------------------- launches

_recordings: List[list] = []


@contextlib.contextmanager
def recording():
    """Within the block launches are recorded, not run: (kernel, grid, args, kwargs) each."""
    launches: list = []
    _recordings.append(launches)
    try:
        yield launches
    finally:
        _recordings.pop()


def constexpr_options(kwargs: dict) -> dict:
    """Launch keyword arguments as the kernels take them: the Config with every field a
    tl.constexpr (triton 3.6 hands a constexpr NamedTuple's fields to jit code as plain Python
    values, which tl.zeros shapes and tl.static_range bounds refuse).  Not under the
    interpreter, where a constexpr plus a tensor would stay a constexpr."""
    cfg = kwargs.get("cfg")
    if cfg is None or common.INTERPRETING:
        return kwargs
    return dict(kwargs, cfg=type(cfg)(*(tl.constexpr(value) for value in cfg)))


def _launch(kernel, grid, args, **kwargs) -> None:
    if _recordings:
        _recordings[-1].append((kernel, grid, args, kwargs))
        return
    kernel[grid](*args, **constexpr_options(kwargs))


# ------------------------------------------------------------------- barrier aborts, fallback
#
# A persistent launch with several column splits ends early, its results incomplete, when a
# tile barrier gives up (its programs were not all resident: another kernel holding SMs, MPS
# limits, a debugger).  The host learns of it without waiting for the launch: the abort flag is
# copied to pinned host memory behind the kernel, and the copy's event is queried (never waited
# on) when the launch returns and again before every later launch.  An abort found then
#   * reruns the call on the per-step driver (no barriers), in stream order into the same
#     outputs: every reader queued after that point gets the right values;
#   * warns once per configuration, naming the shape (and, when the flag was read after the
#     launch returned, that work queued in between read the incomplete results);
#   * makes every later call of that configuration take the per-step driver.
# ``check_barriers(wait=True)`` waits for every pending flag; FASTRNN_TRITON_BARRIER_CHECK=sync
# does that after each persistent launch (a host synchronization per launch, for certainty).
# Under CUDA graph capture nothing is copied (no host allocation or event goes into a graph):
# the flag stays in the graph's workspace, read by ``check_barriers(wait=True)`` after replays;
# a replay that aborted cannot be rerun, so it is reported and its configuration goes per-step.

@dataclasses.dataclass(eq=False)   # found in the lists by identity (its fields hold tensors)
class _Watch:
    key: tuple                  # the configuration: (device, pass, B, H, dtype)
    shape: str                  # what the warning names
    flag: torch.Tensor          # the abort flag: a host copy (CUDA) or the workspace (CPU)
    event: Any                  # recorded behind the copy (None: nothing to wait for)
    rerun: Optional[Callable[[], None]]   # None: a captured graph's launch
    stream: Any

    def ready(self) -> bool:
        return self.event is None or self.event.query()


_watch_lock = threading.Lock()
_pending: List[_Watch] = []
_captured: List[_Watch] = []
_per_step: set = set()          # configurations whose persistent launch aborted
_warned: set = set()


def _report(watch: _Watch, late: bool) -> None:
    with _watch_lock:
        first = watch.key not in _warned
        _warned.add(watch.key)
        _per_step.add(watch.key)
    if watch.rerun is not None:
        if watch.stream is not None:
            with torch.cuda.stream(watch.stream):
                watch.rerun()
        else:
            watch.rerun()
    if first:
        if watch.rerun is None:
            what = ("in a CUDA graph replay, whose results are incomplete: capture the graph "
                    "again, ")
        elif late:
            what = ("and was rerun on the per-step driver; work queued between that call and "
                    "this check read its incomplete results, ")
        else:
            what = "and was rerun on the per-step driver; "
        warnings.warn(
            f"fastrnn: the persistent Triton {watch.shape} stopped at a grid barrier (its "
            f"programs were not all resident on the GPU at once: another kernel holding SMs, "
            f"MPS limits, a debugger) {what}this configuration runs the per-step driver from "
            "now on in this process (FASTRNN_TRITON_PERSISTENT=0 makes every call do so).",
            RuntimeWarning, stacklevel=4)


def check_barriers(wait: bool = False) -> None:
    """Resolves the abort flags of earlier persistent launches: those whose copy has arrived,
    or with ``wait`` all of them and those of captured CUDA graphs (a host synchronization).
    An abort reruns its call on the per-step driver and warns; see the comment above.

    Example::

        >>> out, (h, c) = model(x)          # layers on the Triton backend
        >>> fastrnn.kernels.launch.check_barriers(wait=True)   # e.g. once per epoch
    """
    with _watch_lock:
        captured = list(_captured) if wait else []
        pending = list(_pending)
    for watch in captured:   # reading a device flag synchronizes: only when asked to wait
        if int(watch.flag[0]):
            with _watch_lock:
                if watch in _captured:
                    _captured.remove(watch)
            _report(watch, late=True)
    for watch in pending:
        if not (wait or watch.ready()):
            continue
        with _watch_lock:
            if watch not in _pending:
                continue
            _pending.remove(watch)
        if not watch.ready():
            watch.event.synchronize()
        if int(watch.flag[0]):
            _report(watch, late=True)


def _watch(sync: torch.Tensor, key: tuple, shape: str, rerun: Callable[[], None]) -> None:
    """Follows a persistent launch's abort flag (no host synchronization on CUDA)."""
    if not sync.is_cuda:   # the interpreter: the launch has run
        if int(sync[0]):
            _report(_Watch(key, shape, sync, None, rerun, None), late=False)
        return
    if torch.cuda.is_current_stream_capturing():
        # Nothing that allocates host memory or records events is queued into a graph: the
        # workspace itself is kept (the graph's pool keeps it alive) and read on request.
        with _watch_lock:
            _captured.append(_Watch(key, shape, sync, None, None, None))
        return
    flag = torch.empty(1, dtype=sync.dtype, pin_memory=True)
    flag.copy_(sync[:1], non_blocking=True)
    stream = torch.cuda.current_stream(sync.device)
    event = torch.cuda.Event()
    event.record(stream)
    watch = _Watch(key, shape, flag, event, rerun, stream)
    if os.environ.get("FASTRNN_TRITON_BARRIER_CHECK") == "sync":
        event.synchronize()
    if watch.ready():      # done before the call returns: nothing has read its results yet
        if int(flag[0]):
            _report(watch, late=False)
        return
    with _watch_lock:
        _pending.append(watch)


def _watched(plan, dims: Dims, options: Options, sync: torch.Tensor,
             rerun: Callable[[], None]) -> None:
    """Follows the abort flag of a launch whose programs meet at tile barriers."""
    if _recordings or not (plan.tiling.persistent and plan.cfg.SPLITS > 1):
        return
    _, kernel_pass, _, _, dtype = plan.configuration
    shape = (f"{options.cell} {kernel_pass} kernel at B={dims.B} H={dims.H} T={dims.T} "
             f"{str(dtype).replace('torch.', '')}")
    _watch(sync, plan.configuration, shape, rerun)


def _float_workspace(*shape, device) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32, device=device)


def _kernel_options(tiling: Tiling, splits: int) -> dict:
    """num_stages=1: the dot operands are staged in shared memory, and software pipelining would
    keep copies of each beside the hoisted weight.  FMA contraction is asked for by name: the
    default comes from the environment and is to change in Triton 3.10, and the kernels' numerics
    should not."""
    options = dict(num_warps=tiling.num_warps, num_stages=1, enable_fp_fusion=True)
    if tiling.persistent and splits > 1:
        # Its programs spin at tile barriers: a cooperative launch makes CUDA guarantee that
        # they are all resident, or refuse the launch (too large a grid) instead of hanging.
        options["launch_cooperative_grid"] = True
    return options


class _Plan(NamedTuple):
    """What both passes derive the same way from a call's shape: tiling, Config, grid."""
    tiling: Tiling
    cfg: Any
    tiles: int
    padded: int            # B padded to whole batch tiles
    grid: Tuple[int, int]
    cell: CellKernels
    # (device, pass, B, H, dtype): what a barrier abort is remembered by (``_per_step``)
    configuration: tuple

    def launch(self, kernel, args, **cfg_fields) -> None:
        cfg = self.cfg._replace(**cfg_fields) if cfg_fields else self.cfg
        _launch(kernel, self.grid, args, cfg=cfg, CELL=self.cell,
                **_kernel_options(self.tiling, self.cfg.SPLITS))

    def sync(self, device) -> torch.Tensor:
        return torch.zeros(1 + self.tiles, dtype=torch.int32, device=device)


def _kernel_pass(options: Options, backward: bool) -> str:
    if backward:
        return "backward"
    return "exchange forward" if _cell_norm(options) else "forward"


def _plan(dims: Dims, options: Options, rates: Rates, dtype, device, persistent: bool,
          backward: bool) -> _Plan:
    kernel_pass = _kernel_pass(options, backward)
    configuration = (str(device), kernel_pass, dims.B, dims.H, dtype)
    tiling = tiling_for(dims.B, dims.H, dtype, device, kernel_pass)
    if not persistent or configuration in _per_step:
        tiling = dataclasses.replace(tiling, persistent=False)
    cfg = _config(tiling, dims, options, rates, dtype, device)
    tiles = tiling.batch_tiles(dims.B)
    return _Plan(tiling, cfg, tiles, tiles * tiling.block_b, (tiles, cfg.SPLITS),
                 CELLS[options.cell], configuration)


def forward(io: ForwardIO, rates: Rates, options: Options, persistent: bool = True) -> None:
    """Runs one forward recurrence, writing io.out, h_n, (c_n) and, when given, preact, middle,
    (stats)."""
    steps, batch = io.gx.shape[0], io.gx.shape[1]
    hidden = io.w_hh.shape[1]
    dims = Dims(steps, batch, hidden)
    device, dtype = io.gx.device, io.gx.dtype
    check_barriers()
    plan = _plan(dims, options, rates, dtype, device, persistent, backward=False)
    cfg = plan.cfg
    work = _Work(
        sync=plan.sync(device),
        moments=(_float_workspace(plan.padded, cfg.MOMENT_SLOTS, cfg.SPLITS_P2, device=device)
                 if cfg.LAYER_NORM else None),
        exchange=_float_workspace(2, 3, batch, hidden, device=device) if cfg.MERGED else None,
        cell_moments=(_float_workspace(2, plan.padded, 3, cfg.SPLITS_P2, device=device)
                      if cfg.MERGED else None),
        inputs=(torch.zeros(2, batch, hidden, dtype=dtype, device=device)
                if io.rmask is not None and not cfg.MERGED else None),
        cells=(_float_workspace(2, batch, hidden, device=device)
               if io.c0 is not None and io.middle is None and not plan.tiling.persistent
               else None))
    if plan.tiling.persistent:
        plan.launch(recurrence.forward_persistent, (io, work, dims, rates))
        _watched(plan, dims, options, work.sync,
                 lambda: forward(io, rates, options, persistent=False))
        return
    phases = ((recurrence.PHASE_NORM, recurrence.PHASE_CELL) if cfg.LAYER_NORM
              else (recurrence.PHASE_CELL,))
    order = range(steps - 1, -1, -1) if options.reverse else range(steps)
    for t in order:
        for phase in phases:
            plan.launch(recurrence.forward_phase, (io, work, dims, rates, t), PHASE=phase.value)
    if cfg.MERGED:
        plan.launch(recurrence.forward_phase, (io, work, dims, rates, 0),
                    PHASE=recurrence.PHASE_FINISH.value)


def backward(io: BackwardIO, rates: Rates, options: Options,
             persistent: bool = True) -> torch.Tensor:
    """Runs one backward recurrence, writing io.d_gx, d_hh, d_h0, (d_c0).  Returns the float32
    gradients of (b_hh [G·H], γ_hh [G·H], then with the cell norm γ_c [H], β_c [H]): every batch
    tile's partial row, summed here in a fixed order (deterministic)."""
    steps, batch, hidden = io.out.shape
    dims = Dims(steps, batch, hidden)
    device, dtype = io.out.device, io.out.dtype
    check_barriers()
    plan = _plan(dims, options, rates, dtype, device, persistent, backward=True)
    cfg, tiling = plan.cfg, plan.tiling
    work = _Work(
        sync=plan.sync(device),
        sums=(_float_workspace(plan.padded, cfg.SUM_SLOTS, cfg.SPLITS_P2, device=device)
              if cfg.LAYER_NORM else None),
        shares=_float_workspace(2, cfg.SPLITS, cfg.SPLITS, batch, tiling.block_u, device=device),
        carries=None if tiling.persistent else _float_workspace(2, 2, batch, hidden, device=device))
    param_grads = _float_workspace(plan.tiles,
                                   2 * options.gates * hidden + 2 * hidden * cfg.CELL_NORM,
                                   device=device)
    given = io
    io = io._replace(param_grads=param_grads)
    if cfg.RESETS:
        # Every program adds to its own rows and units at each episode start: float32
        # accumulators, fresh for each run (an aborted launch's rerun starts from zero).
        io = io._replace(
            d_h_reset=_float_workspace(batch, hidden, device=device),
            d_c_reset=(_float_workspace(batch, hidden, device=device)
                       if given.d_c_reset is not None else None))
    if tiling.persistent:
        plan.launch(recurrence.backward_persistent, (io, work, dims, rates))
        _reset_results(given, io)
        summed = param_grads.sum(0)
        _watched(plan, dims, options, work.sync,
                 lambda: summed.copy_(backward(given, rates, options, persistent=False)))
        return summed
    order = list(range(steps)) if options.reverse else list(range(steps - 1, -1, -1))
    first = (order[0] + 1) % 2
    work.carries[0, first].copy_(io.grad_h_n)
    if io.grad_c_n is not None:
        work.carries[1, first].copy_(io.grad_c_n)
    phases = ((recurrence.PHASE_SUMS, recurrence.PHASE_GRADS, recurrence.PHASE_CARRY)
              if cfg.LAYER_NORM else (recurrence.PHASE_GRADS, recurrence.PHASE_CARRY))
    for t in order:
        for phase in phases:
            plan.launch(recurrence.backward_phase, (io, work, dims, rates, t), PHASE=phase.value)
    _reset_results(given, io)
    return param_grads.sum(0)


def _reset_results(given: BackwardIO, io: BackwardIO) -> None:
    """The reset states' gradients, from the launch's float32 accumulators into the results."""
    if given.d_h_reset is not None and io.d_h_reset is not None:
        given.d_h_reset.copy_(io.d_h_reset)
    if given.d_c_reset is not None and io.d_c_reset is not None:
        given.d_c_reset.copy_(io.d_c_reset)
