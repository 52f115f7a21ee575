"""Helpers shared by every Triton kernel of fastrnn: activations, the mask stream, barriers.

The mask bits are those of ``fastrnn.masks`` (Philox4x32-10, key = seed, counter = (index,
kind)), computed here in uint32 arithmetic so that kernels regenerate masks instead of storing
them.
"""
import contextlib
import dataclasses
import functools
from typing import Optional

import torch
import triton
import triton.language as tl


# Globals that jit functions read must be tl.constexpr instances: the compiler rejects any
# other global (a `NAME: tl.constexpr = v` annotation is not enough; only the interpreter
# accepts it).
PHILOX_ROUNDS = tl.constexpr(10)
THRESHOLD_SHIFT = tl.constexpr(8)  # 32 random bits -> the 24 that fastrnn.masks.threshold uses
EPS = tl.constexpr(1e-5)           # layer-norm epsilon, as fastrnn.reference.EPS


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Written through exp (tl has no tanh on every version); saturates cleanly for |x| large.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def philox_bits(seed, kind, index):
    """First word of Philox4x32-10 for counter (index, kind), key seed (int64 scalar)."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    index = index.to(tl.int64)
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = (index * 0 + kind).to(tl.uint32)
    c3 = (index * 0).to(tl.uint32)
    for _ in tl.static_range(PHILOX_ROUNDS):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p1 = c2.to(tl.uint64) * 0xCD9E8D57
        hi0 = (p0 >> 32).to(tl.uint32)
        lo0 = (p0 & 0xFFFFFFFF).to(tl.uint32)
        hi1 = (p1 >> 32).to(tl.uint32)
        lo1 = (p1 & 0xFFFFFFFF).to(tl.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0


@triton.jit
def mask_hit(seed, kind, index, threshold):
    """True where the element is hit (zoned out / dropped): P = threshold / 2**24."""
    return (philox_bits(seed, kind, index) >> THRESHOLD_SHIFT).to(tl.int32) < threshold


@triton.jit
def grid_barrier(counter_ptr, expected):
    """Waits until ``expected`` arrivals have been counted at ``counter_ptr``.

    Each program of the group adds one and spins; the caller passes a monotonically growing
    ``expected`` (arrivals so far, e.g. (barrier number + 1) * programs in the group) so that
    the counter never needs resetting within a launch.  Only for co-resident programs on a GPU:
    under TRITON_INTERPRET programs run one after another, so use it with one program per group
    there (or the launch-per-step drivers).
    """
    tl.atomic_add(counter_ptr, 1, sem="release")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")
    while arrived < expected:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")


# ---------------------------------------------------------------------------------------------
# Sequence geometry shared by the recurrences.  A row b is active at step t iff t < L_b; its
# first step is t = 0 (forward) or L_b - 1 (reverse), its last t = L_b - 1 or 0.  Its state
# before step t is the output of the previous active step of that row, or h0 on the first.

@triton.jit
def step_geometry(t, lengths, REVERSE: tl.constexpr):
    """(active, first, last, previous_t) of each row at step t, for row lengths ``lengths``."""
    # Compare row-shaped values only: the interpreter turns (scalar == 0) & row_mask into an
    # integer array, which tl.load then rejects as a mask.
    t_rows = lengths * 0 + t
    active = t_rows < lengths
    if REVERSE:
        first = t_rows == lengths - 1
        last = t_rows == 0
        previous_t = t + 1
    else:
        first = t_rows == 0
        last = t_rows == lengths - 1
        previous_t = t - 1
    return active, first & active, last & active, previous_t


@triton.jit
def row_geometry(lengths_ptr, t, rows, row_ok, REVERSE: tl.constexpr):
    """``step_geometry`` of the program's rows, their lengths read from ``lengths_ptr``."""
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    return step_geometry(t, lengths, REVERSE)


@triton.jit
def time_of_step(s, tile_steps, REVERSE: tl.constexpr):
    """Step t handled at loop position s of a batch tile whose longest sequence is tile_steps."""
    if REVERSE:
        return tile_steps - 1 - s
    return s


@triton.jit
def load_rows(ptr, rows, row_ok, cols, col_ok, row_stride, other, EXCHANGED: tl.constexpr):
    """[rows, cols] tile of a row-major matrix, as float32.  EXCHANGED marks memory written by
    other programs of the same launch: it is read from L2 (.cg) so that no stale L1 line is seen."""
    offsets = rows[:, None].to(tl.int64) * row_stride + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if EXCHANGED:
        return tl.load(ptr + offsets, mask=mask, other=other, cache_modifier=".cg").to(tl.float32)
    return tl.load(ptr + offsets, mask=mask, other=other).to(tl.float32)


@triton.jit
def store_rows(ptr, rows, row_ok, cols, col_ok, row_stride, value):
    offsets = rows[:, None].to(tl.int64) * row_stride + cols[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Exchange between the column splits of a batch tile: per-row partial results go to a float32
# buffer [B, SPLITS, SLOTS]; after ``sync_tile`` every split reads all of them.

@triton.jit
def sync_tile(counter_ptr, expected, SPLITS: tl.constexpr):
    """Makes this program's global writes visible to the programs of its batch tile, then waits
    for theirs.  The CTA barriers order every thread's writes around the one atomic that
    ``grid_barrier`` issues; with one split only the CTA barrier is needed."""
    tl.debug_barrier()
    if SPLITS > 1:
        grid_barrier(counter_ptr, expected)
        tl.debug_barrier()


@triton.jit
def store_partial(ptr, rows, row_ok, split, slot, value, SPLITS: tl.constexpr, SLOTS: tl.constexpr):
    """Writes the per-row ``value`` [rows] of this split into ``slot``."""
    tl.store(ptr + (rows.to(tl.int64) * SPLITS + split) * SLOTS + slot, value, mask=row_ok)


@triton.jit
def load_partials(ptr, rows, row_ok, slot, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                  SLOTS: tl.constexpr):
    """[rows, SPLITS_P2] float32: ``slot`` of every split (0 past the last split)."""
    splits = tl.arange(0, SPLITS_P2)
    offsets = (rows[:, None].to(tl.int64) * SPLITS + splits[None, :]) * SLOTS + slot
    mask = row_ok[:, None] & (splits[None, :] < SPLITS)
    return tl.load(ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def split_widths(hidden, BLOCK_H: tl.constexpr, SPLITS_P2: tl.constexpr):
    """[SPLITS_P2] float32: how many of the hidden units each column split owns."""
    starts = tl.arange(0, SPLITS_P2) * BLOCK_H
    return tl.minimum(tl.maximum(hidden - starts, 0), BLOCK_H).to(tl.float32)


@triton.jit
def tile_moments(x, valid):
    """Per-row (sum, centred sum of squares) of the valid entries of a float32 tile.

    Centring on the tile's own mean before squaring keeps the variance exact when the mean is
    large; ``merge_moments`` combines tiles without losing that (Chan et al., 1979)."""
    count = tl.maximum(tl.sum(valid.to(tl.float32), axis=1), 1.0)
    total = tl.sum(tl.where(valid, x, 0.0), axis=1)
    centred = tl.where(valid, x - (total / count)[:, None], 0.0)
    return total, tl.sum(centred * centred, axis=1)


@triton.jit
def merge_moments(sums, m2s, counts, total_count):
    """Row mean and biased variance from per-chunk sums / centred squares [rows, chunks] of
    chunks holding ``counts`` [chunks] elements (empty chunks contribute nothing)."""
    mean = tl.sum(sums, axis=1) / total_count
    chunk_mean = sums / tl.maximum(counts, 1.0)[None, :]
    spread = counts[None, :] * (chunk_mean - mean[:, None]) * (chunk_mean - mean[:, None])
    return mean, tl.sum(m2s + spread, axis=1) / total_count


@triton.jit
def accumulate_columns(row_ptr, cols, col_ok, value, row_ok):
    """row_ptr[cols] += the sum over valid rows of ``value`` [rows, cols].  The float32 row
    belongs to one program (its batch tile), so parameter-gradient partials need no atomics and
    are summed on the host in a fixed order: deterministic."""
    contribution = tl.sum(tl.where(row_ok[:, None], value, 0.0), axis=0)
    current = tl.load(row_ptr + cols, mask=col_ok, other=0.0)
    tl.store(row_ptr + cols, current + contribution, mask=col_ok)


# ---------------------------------------------------------------------------------------------
# Regularizers regenerated from the mask stream (kinds and indices of fastrnn.masks).

@triton.jit
def zoneout_weight(seed, kind, index, threshold, p, ENABLED: tl.constexpr, TRAINING: tl.constexpr):
    """Weight w of the previous state in s_t = w s_{t-1} + (1 - w) s~_t: the mask bit in
    training, the expectation p in eval, 0 when the option is off."""
    if not ENABLED:
        return tl.zeros(index.shape, tl.float32)
    if TRAINING:
        return mask_hit(seed, kind, index, threshold).to(tl.float32)
    return tl.zeros(index.shape, tl.float32) + p


@triton.jit
def dropout_scale(seed, kind, index, threshold, p, ENABLED: tl.constexpr):
    """Inverted-dropout factor: 0 where dropped, 1 / (1 - p) elsewhere (1 when off)."""
    if not ENABLED:
        return tl.full(index.shape, 1.0, tl.float32)
    return tl.where(mask_hit(seed, kind, index, threshold), 0.0, 1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------------------
# Host side: how a recurrence is cut into programs, and launch settings shared by the families.

@dataclasses.dataclass(frozen=True)
class Tiling:
    """How one recurrence is cut into programs: program (pb, pc) owns ``block_b`` rows of the
    batch and ``block_h`` hidden units (every gate of them).

    ``persistent``: one launch with the time loop inside, column splits meeting at grid
    barriers (needs every program resident, i.e. a GPU and a grid no larger than the SM count,
    launched cooperatively (``cooperative_launch``), or a single split); otherwise one launch
    per phase per step.  ``hoist_weights`` keeps the program's W_hh slice in registers across
    steps (the whole reduction in one block) instead of re-reading it in ``block_k`` chunks
    every step.
    """
    block_b: int
    block_h: int
    block_k: int
    hoist_weights: bool
    persistent: bool
    num_warps: int = 4

    def batch_tiles(self, batch: int) -> int:
        return triton.cdiv(batch, self.block_b)

    def splits(self, hidden: int) -> int:
        return triton.cdiv(hidden, self.block_h)


MIN_DOT_BLOCK = 16             # tl.dot needs every block dimension >= 16
MAX_BLOCK_B = 64
HOISTED_WEIGHT_BYTES = 64 * 1024   # W_hh slice kept in registers up to this size
STREAMED_BLOCK_K = 64

_tiling_override: dict = {}


@contextlib.contextmanager
def forced_tiling(**fields):
    """Within the block every recurrence uses these Tiling fields (tests use it to run each
    split / batch-tile / persistent variant on small shapes); derived fields follow."""
    _tiling_override.update(fields)
    try:
        yield
    finally:
        _tiling_override.clear()


@functools.lru_cache(maxsize=256)
def choose_tiling(batch: int, hidden: int, gates: int, elem_bytes: int,
                  sm_count: Optional[int]) -> Tiling:
    """Default tiling per shape.  ``sm_count`` None means the interpreter: programs run one
    after another, so a single column split (the persistent kernel needs no barrier then).

    On a GPU the grid (batch tiles x column splits) is kept within the SM count so that every
    program of a batch tile is resident at the barriers; wider splits give each program less of
    W_hh to stream per step.  Not tuned on hardware yet."""
    hidden_p2 = triton.next_power_of_2(hidden)
    block_b = min(max(triton.next_power_of_2(batch), MIN_DOT_BLOCK), MAX_BLOCK_B)
    if sm_count is None:
        return Tiling(block_b, max(hidden_p2, MIN_DOT_BLOCK), max(hidden_p2, MIN_DOT_BLOCK),
                      hoist_weights=True, persistent=True)
    batch_tiles = triton.cdiv(batch, block_b)
    most_splits = max(1, sm_count // batch_tiles)
    block_h = max(triton.next_power_of_2(triton.cdiv(hidden, most_splits)), MIN_DOT_BLOCK)
    splits = triton.cdiv(hidden, block_h)
    hoist = gates * block_h * max(hidden_p2, MIN_DOT_BLOCK) * elem_bytes <= HOISTED_WEIGHT_BYTES
    whole = max(hidden_p2, MIN_DOT_BLOCK)
    block_k = whole if hoist else min(whole, STREAMED_BLOCK_K)
    return Tiling(block_b, block_h, block_k, hoist_weights=hoist,
                  persistent=batch_tiles * splits <= sm_count, num_warps=8 if hoist else 4)


def tiling_for(batch: int, hidden: int, gates: int, dtype: torch.dtype,
               device: torch.device) -> Tiling:
    """The tiling of a call: ``choose_tiling``, then any ``forced_tiling`` fields.  A forced
    hoist or block_h resizes block_k to match; a persistent kernel with several splits is only
    allowed where the programs run concurrently (not under the interpreter)."""
    sm_count = (torch.cuda.get_device_properties(device).multi_processor_count
                if device.type == "cuda" else None)
    tiling = choose_tiling(batch, hidden, gates, torch.finfo(dtype).bits // 8, sm_count)
    if not _tiling_override:
        return tiling
    tiling = dataclasses.replace(tiling, **_tiling_override)
    if tiling.hoist_weights:
        tiling = dataclasses.replace(
            tiling, block_k=max(triton.next_power_of_2(hidden), MIN_DOT_BLOCK))
    if sm_count is None and tiling.splits(hidden) > 1 and tiling.persistent:
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
    if device.type != "cuda" and dtype == torch.bfloat16:
        operand = tl.float32
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    precision = "tf32" if tf32 else "ieee"
    return operand, precision


_poison = False


@contextlib.contextmanager
def poisoned_outputs():
    """Tests: outputs are allocated NaN-filled instead of uninitialised, so that a position a
    kernel forgets to write shows up."""
    global _poison
    _poison = True
    try:
        yield
    finally:
        _poison = False


def new_output(*shape, dtype, device) -> torch.Tensor:
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def present_or(tensor: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """The pointer argument of an optional tensor: the tensor, or ``placeholder`` where it is
    absent (a constexpr tells the kernel not to read it)."""
    return placeholder if tensor is None else tensor.contiguous()


def lengths_or_full(lengths: Optional[torch.Tensor], steps: int, batch: int,
                    device: torch.device) -> torch.Tensor:
    """Row lengths for the kernels, which always read them: all ``steps`` when None."""
    if lengths is None:
        return torch.full((batch,), steps, dtype=torch.int64, device=device)
    return lengths.contiguous()


def step_order(steps: int, descending: bool) -> range:
    """The steps t in the order the per-step drivers launch them."""
    return range(steps - 1, -1, -1) if descending else range(steps)


def exchange_buffer(batch: int, splits: int, slots: int, device: torch.device) -> torch.Tensor:
    """[B, splits, slots] float32 per-row partials exchanged between the column splits."""
    return torch.zeros(batch, splits, slots, dtype=torch.float32, device=device)


def barrier_counters(tiling: Tiling, batch: int, device: torch.device) -> torch.Tensor:
    """One ``grid_barrier`` counter per batch tile."""
    return torch.zeros(tiling.batch_tiles(batch), dtype=torch.int32, device=device)


def launch_options(tiling: Tiling, hidden: int, dtype: torch.dtype, device: torch.device,
                   ln_groups: int, layer_norm: bool, recurrent_mask: Optional[torch.Tensor],
                   candidate_dropout: float, training: bool, reverse: bool) -> dict:
    """Constexpr options (and num_warps, num_stages) that every LSTM and GRU kernel of a call
    takes.  num_stages=1: on sm_90 the dot operands (the hoisted W_hh tiles, the [rows, H]
    recurrent input) are staged in shared memory, and the default software pipelining keeps
    2-3 copies of each: at B=64, H=256 bf16 the backward asked for 548 KiB (2 stages: 292 KiB)
    of the 227 KiB an SM has, so the launch fails; unpipelined it needs 96 KiB."""
    splits = tiling.splits(hidden)
    dot_dtype, precision = dot_settings(dtype, device)
    return dict(
        GROUPS=ln_groups, HAS_RMASK=recurrent_mask is not None, LAYER_NORM=layer_norm,
        CANDIDATE=bool(training) and candidate_dropout > 0, TRAINING=bool(training),
        REVERSE=bool(reverse), HOIST=tiling.hoist_weights, SPLITS=splits,
        SPLITS_P2=triton.next_power_of_2(splits), BLOCK_B=tiling.block_b,
        BLOCK_H=tiling.block_h, BLOCK_K=tiling.block_k, DOT_DTYPE=dot_dtype,
        PRECISION=precision, num_warps=tiling.num_warps, num_stages=1)


def cooperative_launch(splits: int) -> dict:
    """Launch option of a persistent kernel.  With several column splits its programs spin at
    grid barriers, so all of them must be resident at once.  A grid within the SM count does
    not guarantee that: SMs may be held by kernels of other streams (NCCL, the other direction's
    persistent kernel), and two barrier kernels sharing the GPU can each wait for programs the
    other keeps from being scheduled.  A cooperative launch makes CUDA guarantee co-residency,
    or fail the launch (too large a grid for the kernel's registers / shared memory) instead of
    hanging.  The interpreter ignores the option."""
    return dict(launch_cooperative_grid=splits > 1)


# ---------------------------------------------------------------------------------------------
# A program's place in the (batch tiles, column splits) grid, and what a step reads there.

@triton.jit
def program_tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(pb, pc, rows, row_ok, units, unit_ok): the batch rows and hidden units this program owns."""
    pb = tl.program_id(0)
    pc = tl.program_id(1)
    rows = pb * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pc * BLOCK_H + tl.arange(0, BLOCK_H)
    return pb, pc, rows, rows < B, units, units < H


@triton.jit
def tile_steps(lengths_ptr, rows, row_ok):
    """Steps a batch tile runs: its longest sequence (later steps of the tile are skipped)."""
    return tl.max(tl.load(lengths_ptr + rows, mask=row_ok, other=0).to(tl.int32))


@triton.jit
def step_mask_index(t, rows, units, B, H):
    """Element index (t·B + b)·H + j of the per-step masks (zoneout, candidate dropout)."""
    return (rows[:, None].to(tl.int64) + t * B) * H + units[None, :]


@triton.jit
def load_previous(out_ptr, init_ptr, previous_t, rows, row_ok, active, first, cols, col_ok, B, H,
                  EXCHANGED: tl.constexpr):
    """The state [rows, cols] a row read at step t, as float32: ``out`` [T, B, H] at its
    previous step, or ``init`` [B, H] on its first step (``first`` from step_geometry)."""
    carried = load_rows(out_ptr + (previous_t * B).to(tl.int64) * H, rows,
                        row_ok & active & (first == 0), cols, col_ok, H, 0.0, EXCHANGED)
    initial = load_rows(init_ptr, rows, row_ok & first, cols, col_ok, H, 0.0, False)
    return tl.where(first[:, None], initial, carried)


@triton.jit
def gate_tile(ptr, t, gate, rows, row_ok, units, unit_ok, B, H, GATES: tl.constexpr,
              EXCHANGED: tl.constexpr):
    """Gate ``gate`` of the program's units at step t of a [T, B, GATES·H] tensor, as float32."""
    return load_rows(ptr + (t * B).to(tl.int64) * GATES * H, rows, row_ok, gate * H + units,
                     unit_ok, GATES * H, 0.0, EXCHANGED)


@triton.jit
def store_gate_tile(ptr, t, gate, rows, row_ok, units, unit_ok, B, H, value, GATES: tl.constexpr):
    store_rows(ptr + (t * B).to(tl.int64) * GATES * H, rows, row_ok, gate * H + units, unit_ok,
               GATES * H, value)


@triton.jit
def weight_tile(w_ptr, gate, ks, k_ok, units, unit_ok, H, TRANSPOSED: tl.constexpr,
                DOT_DTYPE: tl.constexpr):
    """[k, unit] tile of gate ``gate``'s block of W_hh: W[gate·H + unit, k] (TRANSPOSED, the
    forward product) or W[gate·H + k, unit] (the backward product)."""
    base = w_ptr + gate * H * H
    if TRANSPOSED:
        offsets = units[None, :] * H + ks[:, None]
    else:
        offsets = ks[:, None] * H + units[None, :]
    return tl.load(base + offsets, mask=k_ok[:, None] & unit_ok[None, :], other=0.0).to(DOT_DTYPE)


@triton.jit
def add_gate_product(acc, a, hoisted, w_ptr, gate, ks, k_ok, units, unit_ok, H,
                     HOIST: tl.constexpr, TRANSPOSED: tl.constexpr, DOT_DTYPE: tl.constexpr,
                     PRECISION: tl.constexpr):
    """acc + a @ (gate ``gate``'s W_hh tile at chunk ks): the ``hoisted`` tile when HOIST (the
    whole reduction in one chunk), else the tile read now (see ``weight_tile``)."""
    if HOIST:
        tile = hoisted
    else:
        tile = weight_tile(w_ptr, gate, ks, k_ok, units, unit_ok, H, TRANSPOSED, DOT_DTYPE)
    return acc + tl.dot(a, tile, input_precision=PRECISION)


@triton.jit
def gate_moments(partials_ptr, rows, row_ok, gate, H, SPLITS: tl.constexpr,
                 SPLITS_P2: tl.constexpr, BLOCK_H: tl.constexpr, SLOTS: tl.constexpr):
    """Row mean and biased variance of gate ``gate``'s H units over all splits, from the
    (sum, centred squares) each split stored in slots 2·gate and 2·gate + 1."""
    sums = load_partials(partials_ptr, rows, row_ok, 2 * gate, SPLITS, SPLITS_P2, SLOTS)
    m2s = load_partials(partials_ptr, rows, row_ok, 2 * gate + 1, SPLITS, SPLITS_P2, SLOTS)
    return merge_moments(sums, m2s, split_widths(H, BLOCK_H, SPLITS_P2), H * 1.0)


@triton.jit
def store_gate_moments(x, valid, partials_ptr, rows, row_ok, split, gate, SPLITS: tl.constexpr,
                       SLOTS: tl.constexpr):
    """Stores this split's (sum, centred squares) of a gate tile in slots 2·gate, 2·gate + 1,
    the layout ``gate_moments`` reads back."""
    total, m2 = tile_moments(x, valid)
    store_partial(partials_ptr, rows, row_ok, split, 2 * gate, total, SPLITS, SLOTS)
    store_partial(partials_ptr, rows, row_ok, split, 2 * gate + 1, m2, SPLITS, SLOTS)


@triton.jit
def recurrent_input(out_ptr, h0_ptr, rmask_ptr, previous_t, rows, row_ok, active, first, ks, k_ok,
                    B, H, HAS_RMASK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Chunk ks of d ⊙ h_{t-1} as the recurrent product's operand: rounded to the input dtype
    first, as the reference does (h_{t-1} comes from the other splits through ``out``)."""
    h = load_previous(out_ptr, h0_ptr, previous_t, rows, row_ok, active, first, ks, k_ok, B, H,
                      True)
    if HAS_RMASK:
        h = h * load_rows(rmask_ptr, rows, row_ok, ks, k_ok, H, 0.0, False)
    return h.to(out_ptr.dtype.element_ty).to(DOT_DTYPE)


@triton.jit
def hoisted_weight_tile(w_ptr, gate, units, unit_ok, H, HOIST: tl.constexpr,
                        TRANSPOSED: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_DTYPE: tl.constexpr):
    """Gate ``gate``'s W_hh tile over the whole reduction, kept across steps (HOIST), else a
    placeholder that ``add_gate_product`` ignores.  if/else, not an early return: the compiler
    visits the statements after a constexpr branch's return too and rejects the two types."""
    if HOIST:
        ks = tl.arange(0, BLOCK_K)
        tile = weight_tile(w_ptr, gate, ks, ks < H, units, unit_ok, H, TRANSPOSED, DOT_DTYPE)
    else:
        tile = 0
    return tile


@triton.jit
def add_backward_gate_product(acc, d_hh_ptr, hoisted, w_ptr, gate, t, rows, row_ok, ks, k_ok,
                              units, unit_ok, B, H, GATES: tl.constexpr, HOIST: tl.constexpr,
                              DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + chunk ks of gate ``gate``'s d_hh [T, B, GATES·H] at step t (written by the other
    splits) @ the gate's W_hh block: its share of W_hhᵀ d_hh."""
    d_hh = gate_tile(d_hh_ptr, t, gate, rows, row_ok, ks, k_ok, B, H, GATES, True)
    return add_gate_product(acc, d_hh.to(DOT_DTYPE), hoisted, w_ptr, gate, ks, k_ok, units,
                            unit_ok, H, HOIST, False, DOT_DTYPE, PRECISION)


# ---------------------------------------------------------------------------------------------
# Layer norm of W_hh h over groups of gates: per gate (GROUPS = GATES) or over all GATES·H units
# (GROUPS = 1).  Each split exchanges two per-row values per gate, in slots 2·gate, 2·gate + 1.

@triton.jit
def group_statistics(partials_ptr, rows, row_ok, gate, H, GATES: tl.constexpr,
                     GROUPS: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                     BLOCK_H: tl.constexpr, SLOTS: tl.constexpr):
    """(mean, rstd) of gate ``gate``'s layer-norm group, from the moments ``store_gate_moments``
    exchanged.  With one group the gates' equal-size slices are merged like any other chunks:
    the variance is the mean of their variances plus the spread of their means."""
    if GROUPS == 1:
        mean = tl.zeros(rows.shape, tl.float32)
        for other in tl.static_range(GATES):
            gate_mean, _ = gate_moments(partials_ptr, rows, row_ok, other, H, SPLITS, SPLITS_P2,
                                        BLOCK_H, SLOTS)
            mean += gate_mean
        mean = mean / GATES
        var = tl.zeros(rows.shape, tl.float32)
        for other in tl.static_range(GATES):
            gate_mean, gate_var = gate_moments(partials_ptr, rows, row_ok, other, H, SPLITS,
                                               SPLITS_P2, BLOCK_H, SLOTS)
            var += gate_var + (gate_mean - mean) * (gate_mean - mean)
        return mean, 1.0 / tl.sqrt(var / GATES + EPS)
    mean, var = gate_moments(partials_ptr, rows, row_ok, gate, H, SPLITS, SPLITS_P2, BLOCK_H,
                             SLOTS)
    return mean, 1.0 / tl.sqrt(var + EPS)


@triton.jit
def summed_partial(partials_ptr, rows, row_ok, slot, SPLITS: tl.constexpr,
                   SPLITS_P2: tl.constexpr, SLOTS: tl.constexpr):
    """Per-row sum over the splits of ``slot``."""
    return tl.sum(load_partials(partials_ptr, rows, row_ok, slot, SPLITS, SPLITS_P2, SLOTS),
                  axis=1)


@triton.jit
def store_norm_sums(d_norm, norm, partials_ptr, rows, row_ok, units, unit_ok, split, slot,
                    SPLITS: tl.constexpr, SLOTS: tl.constexpr):
    """Per-row sums of dN and dN ⊙ N over this split's units, into slots (slot, slot + 1): what
    the backward of a layer norm needs from the other splits."""
    valid = row_ok[:, None] & unit_ok[None, :]
    store_partial(partials_ptr, rows, row_ok, split, slot,
                  tl.sum(tl.where(valid, d_norm, 0.0), axis=1), SPLITS, SLOTS)
    store_partial(partials_ptr, rows, row_ok, split, slot + 1,
                  tl.sum(tl.where(valid, d_norm * norm, 0.0), axis=1), SPLITS, SLOTS)


@triton.jit
def norm_input_grad(d_norm, norm, rstd, gate, partials_ptr, rows, row_ok, H, GATES: tl.constexpr,
                    GROUPS: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                    SLOTS: tl.constexpr):
    """Gradient w.r.t. gate ``gate``'s W_hh h through its layer norm, from dN = γ ⊙ dL/dy and
    N: rstd ⊙ (dN − mean dN − N ⊙ mean(dN ⊙ N)), the means over the group from the sums that
    ``store_norm_sums`` exchanged (gate g's in slots 2g, 2g + 1)."""
    if GROUPS == 1:
        sum_dn = summed_partial(partials_ptr, rows, row_ok, 0, SPLITS, SPLITS_P2, SLOTS)
        sum_dnn = summed_partial(partials_ptr, rows, row_ok, 1, SPLITS, SPLITS_P2, SLOTS)
        for other in tl.static_range(1, GATES):
            sum_dn += summed_partial(partials_ptr, rows, row_ok, 2 * other, SPLITS, SPLITS_P2,
                                     SLOTS)
            sum_dnn += summed_partial(partials_ptr, rows, row_ok, 2 * other + 1, SPLITS,
                                      SPLITS_P2, SLOTS)
    else:
        sum_dn = summed_partial(partials_ptr, rows, row_ok, 2 * gate, SPLITS, SPLITS_P2, SLOTS)
        sum_dnn = summed_partial(partials_ptr, rows, row_ok, 2 * gate + 1, SPLITS, SPLITS_P2,
                                 SLOTS)
    width = 1.0 * H * GATES / GROUPS  # units per group
    return rstd[:, None] * (d_norm - sum_dn[:, None] / width - norm * (sum_dnn[:, None] / width))
