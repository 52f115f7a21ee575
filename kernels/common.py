"""Machinery every Triton recurrence of fastrnn shares: activations, the mask stream, a program's
place in the grid, the bounded tile barrier, the on-chip recurrent weight and its two products,
layer-norm moments, and the exchanges between the column splits of a batch tile.

Orientation.  A program owns ``BLOCK_B`` batch rows and ``BLOCK_U`` hidden units with every gate
of them.  Its recurrent product is computed transposed, ``W_slice (d ⊙ h_{t-1})ᵀ``: the M
dimension is the program's ``4·BLOCK_U`` weight rows (gate slot g, unit u; the GRU's fourth slot
is empty), so the tensor-core instruction (wgmma, M = 64 per warpgroup) reads both operands from
shared memory and nothing of the size of h sits in registers.  Tiles are therefore [units, rows]:
``[4·BLOCK_U, BLOCK_B]`` stacked over gate slots, or ``[BLOCK_U, BLOCK_B]`` per gate.

With ``HOIST`` the weight slice is loaded once per launch in ``BLOCK_K`` chunks (a tuple, so that
each chunk's load goes to shared memory before the next is read) and stays there for every step;
without it each product reads its chunks from memory (``weight_chunk_of``).

Mask bits are those of ``fastrnn.masks`` (Philox4x32-10, key = seed, counter = (index, kind)),
computed here on uint32 words (the multiplications widened to 64 bits for their high halves);
the caller passes the mask kinds.
"""
import os

import triton
import triton.language as tl

# Globals that jit functions read must be tl.constexpr instances: the compiler rejects any
# other global (a `NAME: tl.constexpr = v` annotation is not enough; only the interpreter
# accepts it).
PHILOX_ROUNDS = tl.constexpr(10)
THRESHOLD_SHIFT = tl.constexpr(8)  # 32 random bits -> the 24 that mask thresholds compare
GATE_SLOTS = tl.constexpr(4)       # rows of the product per unit: 4 gates (the GRU leaves one empty)
# The interpreter converts float32 to bfloat16 by truncation (the GPU rounds to nearest even):
# there ``round_to`` rounds first, so that CPU runs see the GPU's numerics.
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


# ------------------------------------------------------------------------------- activations

@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Written through exp (tl has no tanh on every version); saturates cleanly for |x| large.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


# ------------------------------------------------------------------------------- mask stream

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
def step_mask_index(t, rows, units, B, H):
    """[units, rows] element index (t·B + b)·H + j of the per-step masks (64-bit: T·B·H may
    pass 2**31; the per-step part is 32-bit)."""
    return (t * B).to(tl.int64) * H + (rows[None, :] * H + units[:, None])


@triton.jit
def zoneout_weight(seed, kind, index, rate, ENABLED: tl.constexpr, TRAINING: tl.constexpr):
    """Weight w of the previous state in s_t = w s_{t-1} + (1 - w) s~_t: the mask bit in
    training, the expectation p in eval, 0 when the option is off.  ``rate`` = (threshold, p)."""
    if not ENABLED:
        return tl.zeros(index.shape, tl.float32)
    if TRAINING:
        return mask_hit(seed, kind, index, rate[0]).to(tl.float32)
    return tl.zeros(index.shape, tl.float32) + rate[1]


@triton.jit
def dropout_scale(seed, kind, index, rate, ENABLED: tl.constexpr):
    """Inverted-dropout factor: 0 where dropped, 1 / (1 - p) elsewhere (1 when off)."""
    if not ENABLED:
        return tl.full(index.shape, 1.0, tl.float32)
    return tl.where(mask_hit(seed, kind, index, rate[0]), 0.0, 1.0 / (1.0 - rate[1]))


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """x in ``dtype``, rounded to nearest even (as every GPU conversion does)."""
    if INTERPRETING and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


# ------------------------------------------------------------------------- gate-slot tiles

@triton.jit
def unstack4(x):
    """[4·U, N] (rows g·U + u) -> the four [U, N] tiles of slots g = 0..3."""
    U: tl.constexpr = x.shape[0] // 4
    N: tl.constexpr = x.shape[1]
    y = tl.permute(tl.reshape(x, [2, 2, U, N]), (2, 3, 1, 0))  # [U, N, g % 2, g // 2]
    low, high = tl.split(y)
    s0, s1 = tl.split(low)
    s2, s3 = tl.split(high)
    return s0, s1, s2, s3


@triton.jit
def stack4(s0, s1, s2, s3):
    """The inverse of ``unstack4``."""
    U: tl.constexpr = s0.shape[0]
    N: tl.constexpr = s0.shape[1]
    y = tl.join(tl.join(s0, s1), tl.join(s2, s3))  # [U, N, g % 2, g // 2]
    return tl.reshape(tl.permute(y, (3, 2, 0, 1)), [4 * U, N])


# ------------------------------------------------------------------- a program's place

@triton.jit
def program_rows(B, cfg: tl.constexpr):
    """(batch tile, its rows, rows < B)."""
    pb = tl.program_id(0)
    rows = pb * cfg.BLOCK_B + tl.arange(0, cfg.BLOCK_B)
    return pb, rows, rows < B


@triton.jit
def program_units(H, cfg: tl.constexpr):
    """(column split, its hidden units, units < H)."""
    pc = tl.program_id(1)
    units = pc * cfg.BLOCK_U + tl.arange(0, cfg.BLOCK_U)
    return pc, units, units < H


@triton.jit
def slot_columns(H, cfg: tl.constexpr):
    """Columns (in the G·H gate axis) of the program's stacked rows g·BLOCK_U + u, and which of
    them exist (the GRU has no fourth gate; the last split may be short)."""
    slots = tl.arange(0, GATE_SLOTS * cfg.BLOCK_U)
    gate = slots // cfg.BLOCK_U
    unit = tl.program_id(1) * cfg.BLOCK_U + slots % cfg.BLOCK_U
    return gate * H + unit, (gate < cfg.GATES) & (unit < H)


@triton.jit
def program_tile(B, H, cfg: tl.constexpr):
    """Everything a program's position gives: its batch tile (pb, rows, row_ok), its column
    split (pc, units, unit_ok) and its stacked gate rows (cols, col_ok)."""
    pb, rows, row_ok = program_rows(B, cfg)
    pc, units, unit_ok = program_units(H, cfg)
    cols, col_ok = slot_columns(H, cfg)
    return pb, rows, row_ok, pc, units, unit_ok, cols, col_ok


@triton.jit
def parameter_row(io, pb, H, cfg: tl.constexpr):
    """Batch tile pb's partial row of parameter gradients: d b_hh [G·H], d γ_hh [G·H], then the
    cell's own (the LSTM's d γ_c, d β_c [H] each)."""
    width = 2 * cfg.GATES * H + 2 * H * cfg.CELL_NORM
    return io.param_grads + pb.to(tl.int64) * width


@triton.jit
def rows_where(rows, flag):
    """A scalar condition as a row mask.  (The interpreter turns scalar_bool & row_mask into an
    integer array, which tl.load rejects as a mask: combine row-shaped values only.)"""
    return (rows * 0 + flag.to(tl.int32)) != 0


@triton.jit
def tile_steps(lengths_ptr, rows, row_ok):
    """Steps a batch tile runs: its longest sequence (later steps of the tile are skipped)."""
    return tl.max(tl.load(lengths_ptr + rows, mask=row_ok, other=0).to(tl.int32))


@triton.jit
def time_of_step(s, steps, REVERSE: tl.constexpr):
    """Step t handled at loop position s of a batch tile whose longest sequence is ``steps``."""
    if REVERSE:
        return steps - 1 - s
    return s


@triton.jit
def step_geometry(t, lengths, REVERSE: tl.constexpr):
    """(active, first, last, previous_t) of each row at step t, for row lengths ``lengths``.

    A row runs at t iff t < L_b; its first step is t = 0 (forward) or L_b - 1 (reverse); its
    state before step t is that after ``previous_t`` (or the initial state on its first step)."""
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
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    return step_geometry(t, lengths, REVERSE)


# --------------------------------------------------------------------- loads and stores
# Per-unit tiles [units, rows] of a [.., B, H] slab; stacked tiles [4·U, rows] of a
# [.., B, G·H] slab (``slot_columns``); chunks [BLOCK_K, rows] of a [.., B, H] slab.  Offsets
# inside one step's slab are 32-bit (only a step's start, ``step_slab``, is 64-bit): a slab
# [B, G·H] must stay under 2**31 elements, which the host does not check.

@triton.jit
def step_slab(ptr, t, B, width):
    """Pointer to step t of a [T, B, width] tensor (offsets within a step are 32-bit: the
    tensors of offsets are what a time loop keeps in registers)."""
    return ptr + (t * B).to(tl.int64) * width


@triton.jit
def chunk_ok(ks, H, cfg: tl.constexpr):
    """Which reduction indices of a chunk exist (all of them when BLOCK_K divides H)."""
    if cfg.EVEN_K:
        ok = ks >= 0
    else:
        ok = ks < H
    return ok


@triton.jit
def load_units(ptr, rows, row_ok, units, unit_ok, H, EXCHANGED: tl.constexpr):
    """[units, rows] as float32.  EXCHANGED marks memory other programs of the launch write: it
    is read from L2 (.cg), past any stale L1 line."""
    offsets = rows[None, :] * H + units[:, None]
    mask = row_ok[None, :] & unit_ok[:, None]
    if EXCHANGED:
        return tl.load(ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_units(ptr, rows, row_ok, units, unit_ok, H, value):
    offsets = rows[None, :] * H + units[:, None]
    tl.store(ptr + offsets, round_to(value, ptr.dtype.element_ty),
             mask=row_ok[None, :] & unit_ok[:, None])


@triton.jit
def load_slots(ptr, rows, row_ok, cols, col_ok, width):
    offsets = rows[None, :] * width + cols[:, None]
    return tl.load(ptr + offsets, mask=row_ok[None, :] & col_ok[:, None], other=0.0).to(tl.float32)


@triton.jit
def store_slots(ptr, rows, row_ok, cols, col_ok, width, value):
    offsets = rows[None, :] * width + cols[:, None]
    tl.store(ptr + offsets, round_to(value, ptr.dtype.element_ty),
             mask=row_ok[None, :] & col_ok[:, None])


@triton.jit
def store_gates(ptr, rows, row_ok, units, unit_ok, H, live, gates, cfg: tl.constexpr):
    """A step's gates (a tuple of GATES [units, rows] tiles) into its [B, GATES·H] slab, zero
    where ``live`` is not, one store per gate.  Stacked first (``stack4``), they made the
    compiler keep the step's gate math in a second register layout as well (triton 3.6 spilled
    it in the time loop; 3.9 needed about 70 more registers)."""
    for gate in tl.static_range(cfg.GATES):
        store_units(ptr + gate * H, rows, row_ok, units, unit_ok, cfg.GATES * H,
                    tl.where(live, gates[gate], 0.0))


@triton.jit
def in_range(row_ok, cfg: tl.constexpr):
    """The row mask a load needs: None when the batch tiles cover B exactly (EVEN_B)."""
    if cfg.EVEN_B:
        mask = None
    else:
        mask = row_ok
    return mask


@triton.jit
def load_chunk(ptr, rows, row_mask, k: tl.constexpr, H, cfg: tl.constexpr,
               EXCHANGED: tl.constexpr):
    """Chunk k [BLOCK_K, rows] (units × rows, like every tile here) of a [B, H] slab as float32,
    only the rows of ``row_mask`` (None: every row; see ``in_range``).  The chunk's start is
    added to the scalar pointer, so every chunk of every [B, H] slab shares one tensor of
    offsets, and full chunks of full tiles need no mask at all: a time loop keeps such tensors
    in registers.  (Units × rows also keeps a per-unit vector — γ_c of a chunk — and a per-row
    one — its statistics — at one element per thread.)"""
    within = tl.arange(0, cfg.BLOCK_K)
    offsets = rows[None, :] * H + within[:, None]
    if cfg.EVEN_K:
        if row_mask is None:
            mask = None
        else:
            mask = row_mask[None, :] & (within[:, None] >= 0)
    else:
        k_ok = (k * cfg.BLOCK_K + within < H)[:, None]
        if row_mask is None:
            mask = (rows[None, :] >= 0) & k_ok
        else:
            mask = row_mask[None, :] & k_ok
    other = None if mask is None else 0.0
    if EXCHANGED:
        chunk = tl.load(ptr + k * cfg.BLOCK_K + offsets, mask=mask, other=other,
                        cache_modifier=".cg")
    else:
        chunk = tl.load(ptr + k * cfg.BLOCK_K + offsets, mask=mask, other=other)
    return chunk.to(tl.float32)


@triton.jit
def with_first_rows(x, initial_ptr, rows, row_ok, first, k: tl.constexpr, H, cfg: tl.constexpr):
    """Chunk x with the rows on their first step replaced by chunk k of ``initial_ptr``.  Most
    steps have no such row: then nothing is loaded."""
    if tl.max(first.to(tl.int32), axis=0) > 0:
        x = select_first(first, load_chunk(initial_ptr, rows, row_ok & first, k, H, cfg, False), x)
    return x


@triton.jit
def step_starts(resets_ptr, t, rows, row_ok, active, T, B):
    """Which rows start an episode at step t (``resets`` [T, B] uint8): they read the reset
    state instead of the one their previous step left.  Flags where the row does not run at t,
    and any t outside [0, T), are ignored."""
    ok = row_ok & active & rows_where(rows, (t >= 0) & (t < T))
    flags = tl.load(resets_ptr + t * B + rows, mask=ok, other=0)
    return ok & (flags != 0)


@triton.jit
def with_rows_of(x, ptr, rows, row_ok, which, units, unit_ok, H):
    """Tile x [units, rows] with the rows of ``which`` replaced by those of ``ptr`` [B, H]
    (a reset state).  Most steps have no such row: then nothing is loaded."""
    if tl.max(which.to(tl.int32), axis=0) > 0:
        x = select_first(which, load_units(ptr, rows, row_ok & which, units, unit_ok, H, False),
                         x)
    return x


@triton.jit
def clamped_step(t, T):
    """A step index that exists (for loads whose rows are replaced where it does not)."""
    return tl.minimum(tl.maximum(t, 0), T - 1)


@triton.jit
def load_vector_chunk(ptr, k: tl.constexpr, H, cfg: tl.constexpr):
    """Chunk k [BLOCK_K] of a [H] parameter vector.  As in ``load_chunk``, the chunk's start
    goes into the scalar pointer and whole chunks take no mask: per-chunk tensors of indices
    and masks would stay in registers through a time loop, a set for each chunk."""
    within = tl.arange(0, cfg.BLOCK_K)
    if cfg.EVEN_K:
        vector = tl.load(ptr + k * cfg.BLOCK_K + within)
    else:
        vector = tl.load(ptr + k * cfg.BLOCK_K + within, mask=k * cfg.BLOCK_K + within < H,
                         other=0.0)
    return vector.to(tl.float32)


@triton.jit
def select_first(first, initial, carried):
    """Per row: the initial state on its first step, else the carried one ([units, rows])."""
    return tl.where(first[None, :], initial, carried)


# ------------------------------------------------------------------------- tile barrier

@triton.jit
def _now_ns():
    """The GPU's global timer (ns)."""
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                     is_pure=False, pack=1)


@triton.jit
def _waited_too_long(spins, start, cfg: tl.constexpr):
    """The bound of a barrier wait: ``cfg.SPIN_LIMIT`` polls under the interpreter (no clock
    there), ``cfg.WAIT_NS`` of the global timer on a GPU, where a poll's cost (two dependent L2
    round trips and a CTA barrier, under whatever else the GPU runs) is not known well enough to
    turn a time into a count."""
    if INTERPRETING:
        return spins >= cfg.SPIN_LIMIT
    else:
        return _now_ns() - start >= cfg.WAIT_NS


@triton.jit
def tile_barrier(sync_ptr, pb, expected, cfg: tl.constexpr):
    """The column splits of batch tile ``pb`` meet here; returns False when the wait was
    abandoned.

    ``sync_ptr`` -> int32 [the launch's abort flag, one arrival counter per tile]; ``expected``
    is the number of arrivals so far (barrier count × SPLITS), so counters never need resetting.
    Arrival is a release add.  Polls are relaxed atomics (served by L2, no L1 invalidation each
    try); after the wait one acquire read of the counter decides whether the barrier opened.
    That read's value is used, so the compiler keeps it (an acquire whose result is dropped is
    erased as dead), and it synchronizes with every release add it counts: the other splits'
    writes before their arrival are visible to this CTA after the CTA barrier that follows.
    A wait past its bound (``_waited_too_long``: programs that are not co-resident) raises the
    abort flag, which every waiting program sees, so the launch ends instead of hanging and the
    host falls back to the per-step driver.  With one split only the CTA barrier is needed.
    """
    tl.debug_barrier()
    ok = True
    if cfg.SPLITS > 1:
        counter = sync_ptr + 1 + pb
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        arrived = tl.atomic_add(counter, 0, sem="relaxed", scope="gpu")
        aborted = tl.atomic_add(sync_ptr, 0, sem="relaxed", scope="gpu")
        spins = 0
        start = 0
        if not INTERPRETING:
            start = _now_ns()
        while (arrived < expected) & (aborted == 0):
            if _waited_too_long(spins, start, cfg):
                aborted = 1
            else:
                arrived = tl.atomic_add(counter, 0, sem="relaxed", scope="gpu")
                aborted = tl.atomic_add(sync_ptr, 0, sem="relaxed", scope="gpu")
                spins += 1
        ok = tl.atomic_add(counter, 0, sem="acquire", scope="gpu") >= expected
        if not ok:
            tl.atomic_xchg(sync_ptr, 1, sem="relaxed", scope="gpu")
        tl.debug_barrier()
    return ok


# --------------------------------------------------------------------- recurrent weight

@triton.jit
def weight_chunk(w_ptr, cols, col_ok, k: tl.constexpr, H, cfg: tl.constexpr):
    """Chunk k [4·BLOCK_U, BLOCK_K] of the program's rows of W_hh [G·H, H]."""
    ks = k * cfg.BLOCK_K + tl.arange(0, cfg.BLOCK_K)
    offsets = cols[:, None] * H + ks[None, :]
    mask = col_ok[:, None] & chunk_ok(ks, H, cfg)[None, :]
    return tl.load(w_ptr + offsets, mask=mask, other=0.0).to(cfg.DOT_DTYPE)


@triton.jit
def hoisted_weights(w_ptr, cols, col_ok, H, cfg: tl.constexpr):
    """The program's W_hh rows as NUM_K chunks kept on chip for the whole launch (HOIST), or an
    empty tuple (then each product reads its chunk from memory)."""
    chunks = ()
    if cfg.HOIST:
        for k in tl.static_range(cfg.NUM_K):
            chunks = chunks + (weight_chunk(w_ptr, cols, col_ok, k, H, cfg),)
    return chunks


@triton.jit
def weight_chunk_of(chunks, w_ptr, cols, col_ok, k: tl.constexpr, H, cfg: tl.constexpr):
    if cfg.HOIST:
        return chunks[k]
    return weight_chunk(w_ptr, cols, col_ok, k, H, cfg)


@triton.jit
def empty_product(cfg: tl.constexpr):
    return tl.zeros([GATE_SLOTS * cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)


@triton.jit
def add_chunk_product(acc, chunks, w_ptr, cols, col_ok, k: tl.constexpr, x, H, cfg: tl.constexpr):
    """acc + W_slice[:, chunk k] · x for the input chunk x [BLOCK_K, rows]: the recurrent
    product [4·BLOCK_U, rows] is accumulated chunk by chunk, each chunk used as soon as it is
    made (bounded register live ranges)."""
    return tl.dot(weight_chunk_of(chunks, w_ptr, cols, col_ok, k, H, cfg), x.to(cfg.DOT_DTYPE),
                  acc, input_precision=cfg.PRECISION)


@triton.jit
def publish_transposed_product(chunks, w_ptr, cols, col_ok, d_hh, partials_ptr, pb, pc, rows,
                               row_ok, B, H, cfg: tl.constexpr):
    """This split's share of W_hhᵀ d_hh for every hidden unit of its rows: chunk k of
    W_sliceᵀ [BLOCK_K, 4·BLOCK_U] · d_hh [4·BLOCK_U, rows], written where the split owning
    each unit reads it (``reduce_transposed_product``): partials [SPLITS (owner), SPLITS
    (writer), B, BLOCK_U] float32."""
    d_dot = d_hh.to(cfg.DOT_DTYPE)
    within = tl.arange(0, cfg.BLOCK_K)
    for k in tl.static_range(cfg.NUM_K):
        share = tl.dot(tl.trans(weight_chunk_of(chunks, w_ptr, cols, col_ok, k, H, cfg)), d_dot,
                       input_precision=cfg.PRECISION)
        if cfg.BLOCK_K % cfg.BLOCK_U == 0:
            # Unit k·BLOCK_K + j belongs to split k·BLOCK_K / BLOCK_U + j // BLOCK_U: the
            # offsets of j are the same for every chunk, whose start goes into the pointer.
            start = partials_ptr + (k * cfg.BLOCK_K // cfg.BLOCK_U) * cfg.SPLITS * B * cfg.BLOCK_U
            unit = within
        else:
            start = partials_ptr
            unit = k * cfg.BLOCK_K + within
        offsets = ((unit[:, None] // cfg.BLOCK_U * cfg.SPLITS + pc) * B + rows[None, :]) \
            * cfg.BLOCK_U + unit[:, None] % cfg.BLOCK_U
        tl.store(start + offsets, share,
                 mask=chunk_ok(k * cfg.BLOCK_K + within, H, cfg)[:, None] & row_ok[None, :])


@triton.jit
def reduce_transposed_product(partials_ptr, pc, rows, row_ok, B, cfg: tl.constexpr):
    """[BLOCK_U, rows]: the sum over every split of its share for this split's units, read as
    one contiguous block per writer and summed in a fixed order (deterministic)."""
    acc = tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)
    units = tl.arange(0, cfg.BLOCK_U)
    for writer in range(0, cfg.SPLITS):
        offsets = ((pc * cfg.SPLITS + writer) * B + rows[None, :]) * cfg.BLOCK_U + units[:, None]
        acc += tl.load(partials_ptr + offsets, mask=row_ok[None, :], other=0.0,
                       cache_modifier=".cg")
    return acc


# ------------------------------------------------------------- exchanges between splits
# Per-row values each split publishes for the others of its batch tile: [rows, SLOTS, SPLITS_P2]
# float32 (rows padded to whole batch tiles, the splits to a power of two, zero-filled), so that
# a reader loads one slot of every split as one contiguous block per row, unmasked, and keeps
# only that block in registers.

@triton.jit
def publish_row_values(ptr, pc, rows, row_ok, values, SLOTS: tl.constexpr, cfg: tl.constexpr):
    """Stores the tuple ``values`` of [rows] tensors in slots 0, 1, ... of this split."""
    base = rows * (SLOTS * cfg.SPLITS_P2) + pc
    for j in tl.static_range(len(values)):
        tl.store(ptr + base + j * cfg.SPLITS_P2, values[j], mask=row_ok)


@triton.jit
def read_slot(ptr, rows, j: tl.constexpr, SLOTS: tl.constexpr, cfg: tl.constexpr):
    """[rows, SPLITS_P2] float32: slot j of every split (0 past the last split)."""
    splits = tl.arange(0, cfg.SPLITS_P2)
    return tl.load(ptr + (rows[:, None] * SLOTS + j) * cfg.SPLITS_P2 + splits[None, :],
                   cache_modifier=".cg")


@triton.jit
def split_sum(ptr, rows, j: tl.constexpr, SLOTS: tl.constexpr, cfg: tl.constexpr):
    """[rows]: slot j summed over the splits, in a fixed order (every split gets the same)."""
    return tl.sum(read_slot(ptr, rows, j, SLOTS, cfg), axis=1)


# ---------------------------------------------------------------------------- layer norm
# Statistics of W_hh h over groups of gates: per gate (GROUPS = GATES) or over all G·H units
# (GROUPS = 1).  Each split publishes, per row and group, the count, sum and centred sum of
# squares of its columns; readers merge them exactly (Chan et al.): M2 = Σ m2_s + n_s (mean_s
# − mean)².  Every split merges the same values in the same order, so all agree bit for bit.

@triton.jit
def gate_valid(unit_ok, row_ok, gate: tl.constexpr, cfg: tl.constexpr):
    return unit_ok[:, None] & row_ok[None, :] & (gate < cfg.GATES)


@triton.jit
def column_moments(x, valid):
    """Per-row (count, sum, centred sum of squares) of the valid entries of a [units, rows]
    tile, centred on the tile's own mean so the variance stays exact when the mean is large."""
    count = tl.sum(valid.to(tl.float32), axis=0)
    total = tl.sum(tl.where(valid, x, 0.0), axis=0)
    centred = tl.where(valid, x - (total / tl.maximum(count, 1.0))[None, :], 0.0)
    return count, total, tl.sum(centred * centred, axis=0)


@triton.jit
def group_moments(gates, unit_ok, row_ok, group: tl.constexpr, cfg: tl.constexpr):
    """(count, sum, m2) per row of this split's columns of layer-norm group ``group``."""
    if cfg.GROUPS == 1:
        count = tl.zeros([cfg.BLOCK_B], tl.float32)
        total = count
        for gate in tl.static_range(cfg.GATES):
            valid = gate_valid(unit_ok, row_ok, gate, cfg)
            count += tl.sum(valid.to(tl.float32), axis=0)
            total += tl.sum(tl.where(valid, gates[gate], 0.0), axis=0)
        mean = total / tl.maximum(count, 1.0)
        m2 = tl.zeros([cfg.BLOCK_B], tl.float32)
        for gate in tl.static_range(cfg.GATES):
            centred = tl.where(gate_valid(unit_ok, row_ok, gate, cfg),
                               gates[gate] - mean[None, :], 0.0)
            m2 += tl.sum(centred * centred, axis=0)
        moments = (count, total, m2)
    else:
        moments = column_moments(gates[group], gate_valid(unit_ok, row_ok, group, cfg))
    return moments


@triton.jit
def norm_statistics(ptr, rows, group: tl.constexpr, SLOTS: tl.constexpr, cfg: tl.constexpr):
    """(mean, rstd) per row of a normalized group from every split's (count, sum, m2),
    published in slots 3·group ... 3·group + 2, merged exactly (Chan et al.): the splits' own
    counts come with them (zero for the padding), so nothing here depends on the split widths."""
    counts = read_slot(ptr, rows, 3 * group, SLOTS, cfg)
    sums = read_slot(ptr, rows, 3 * group + 1, SLOTS, cfg)
    n = tl.maximum(tl.sum(counts, axis=1), 1.0)
    mean = tl.sum(sums, axis=1) / n
    spread = sums / tl.maximum(counts, 1.0) - mean[:, None]
    m2 = read_slot(ptr, rows, 3 * group + 2, SLOTS, cfg) + counts * spread * spread
    return mean, 1.0 / tl.sqrt(tl.sum(m2, axis=1) / n + cfg.EPS)


@triton.jit
def gate_group(gate: tl.constexpr, cfg: tl.constexpr):
    return gate * cfg.GROUPS // cfg.GATES


@triton.jit
def load_gate_vector(ptr, units, unit_ok, gate: tl.constexpr, H, cfg: tl.constexpr):
    """[units] float32 of gate ``gate``'s slice of a [G·H] vector (0 for the empty slot)."""
    return tl.load(ptr + gate * H + units, mask=unit_ok & (gate < cfg.GATES),
                   other=0.0).to(tl.float32)
