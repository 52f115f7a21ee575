"""Helpers shared by every Triton kernel of fastrnn: activations, the mask stream, barriers.

The mask bits are those of ``fastrnn.masks`` (Philox4x32-10, key = seed, counter = (index,
kind)), computed here in uint32 arithmetic so that kernels regenerate masks instead of storing
them.
"""
import triton
import triton.language as tl

PHILOX_ROUNDS: tl.constexpr = 10
THRESHOLD_SHIFT: tl.constexpr = 8  # 32 random bits -> the 24 that fastrnn.masks.threshold uses


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
