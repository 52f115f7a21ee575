"""Regularizer masks: one counter-based random stream shared by every backend.

Every mask of a layer call is a pure function of a 64-bit ``seed`` (drawn from torch's
generator of the input's device, so ``torch.manual_seed`` reproduces a step), a mask ``kind``
and an element index.  Bits come from Philox4x32-10 (Salmon et al., SC'11):

    key     = (seed & 0xffffffff, seed >> 32)
    counter = (index & 0xffffffff, index >> 32, kind, 0)
    bits    = first word of philox4x32_10(counter, key)
    hit     = (bits >> 8) < threshold(p),   threshold(p) = round(p * 2**24)

The Triton kernels (``fastrnn.kernels.common``) and the CUDA kernels (``csrc/philox.cuh``)
compute the very same bits, so the masks are never stored: ``[T, B, H]`` masks are
regenerated wherever they are needed, and tests replay a call exactly with ``capture_masks``.

Element indices: ``(t * B + b) * W + j`` for per-step masks (zoneout, candidate dropout), W the
width of the state each acts on (H for c and the candidate; for h, P under an LSTM projection),
``b * P + j`` for the recurrent-dropout mask and ``row * P + col`` for the dropconnect mask of
W_hh [G·H, P] (P = H without a projection).
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator, List, Optional

import torch

ZONEOUT_CELL = 0
ZONEOUT_HIDDEN = 1
CANDIDATE_DROPOUT = 2
RECURRENT_DROPOUT = 3
DROPCONNECT = 4

THRESHOLD_BITS = 24
_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10


def threshold(p: float) -> int:
    """Integer threshold on 24 random bits: an element is hit with probability p."""
    return int(round(float(p) * (1 << THRESHOLD_BITS)))


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of the product a * b for a uint32 constant and uint32 values held in int64."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low_part = a * b_lo  # < 2**48
    high_part = a * b_hi  # < 2**48
    hi = (high_part + (low_part >> 16)) >> 16
    lo = (((high_part & 0xFFFF) << 16) + low_part) & _MASK32
    return hi, lo


def philox_bits(seed: torch.Tensor, kind: int, index: torch.Tensor) -> torch.Tensor:
    """First output word of Philox4x32-10 for counters (index, kind) under key ``seed``.

    ``seed``: int64 scalar tensor; ``index``: int64 tensor of non-negative element indices.
    Returns int64 values in [0, 2**32).
    """
    seed = seed.to(device=index.device, dtype=torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = index & _MASK32
    c1 = index >> 32
    c2 = torch.full_like(index, kind)
    c3 = torch.zeros_like(index)
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0


def bernoulli(seed: torch.Tensor, kind: int, p: float, shape,
              first_index: int = 0) -> torch.Tensor:
    """Boolean tensor of ``shape`` on the seed's device, True with probability p, for
    consecutive element indices starting at ``first_index`` (row-major over ``shape``)."""
    count = 1
    for size in shape:
        count *= size
    index = torch.arange(first_index, first_index + count, device=seed.device, dtype=torch.int64)
    hits = (philox_bits(seed, kind, index) >> (32 - THRESHOLD_BITS)) < threshold(p)
    return hits.reshape(shape)


def step_hits(seed: torch.Tensor, kind: int, p: float, t: int, batch: int,
              hidden: int) -> torch.Tensor:
    """[B, H] boolean mask of a per-step mask kind at time step t (zoneout, candidate dropout)."""
    return bernoulli(seed, kind, p, (batch, hidden), first_index=t * batch * hidden)


def keep_scale(seed: torch.Tensor, kind: int, p: float, shape, dtype) -> torch.Tensor:
    """Inverted-dropout mask: 0 where dropped, 1/(1-p) where kept."""
    dropped = bernoulli(seed, kind, p, shape)
    return (~dropped).to(dtype) / (1.0 - p)


def draw_seed(device) -> torch.Tensor:
    """A fresh 62-bit seed from torch's generator for ``device``, kept on that device (no host sync)."""
    return torch.randint(0, 1 << 62, (), device=device, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Capturing the masks of a call, so that tests can replay a training step through the reference.

@dataclasses.dataclass
class CallMasks:
    """Every mask of one layer / direction call, expanded to full tensors, named as the fields
    of the call (``fastrnn.cells``) whose probability draws them.

    ``zoneout_cell`` (LSTM), ``zoneout_hidden``, ``candidate_dropout``: bool [T, B, W], W the
    width of the state each acts on (H, or P for h under a projection; True = zoned out /
    dropped), or None when the option is off.  ``recurrent_mask``: the [B, P]
    inverted-dropout scale applied to h_{t-1} before the recurrent product.
    ``dropconnect_mask``: the [G*H, P] scale on W_hh.
    """
    layer: int
    direction: int
    cell: str
    zoneout_cell: Optional[torch.Tensor] = None
    zoneout_hidden: Optional[torch.Tensor] = None
    candidate_dropout: Optional[torch.Tensor] = None
    recurrent_mask: Optional[torch.Tensor] = None
    dropconnect_mask: Optional[torch.Tensor] = None


# Each thread captures only its own calls: a model running in another thread must not leak
# its masks into this thread's block.
_local = threading.local()


def _captures() -> List[List[CallMasks]]:
    if not hasattr(_local, "captures"):
        _local.captures = []
    return _local.captures


@contextlib.contextmanager
def capture_masks() -> Iterator[List[CallMasks]]:
    """Record the masks of every training-mode layer call this thread makes inside the block.

    >>> with fastrnn.capture_masks() as calls:
    ...     out, _ = model(x)
    >>> calls[0].zoneout_hidden.shape          # (T, B, H)

    The list holds one ``CallMasks`` per layer and direction, in call order.  Meant for tests:
    expanding the masks costs time and memory that a normal call never spends.
    """
    calls: List[CallMasks] = []
    captures = _captures()
    captures.append(calls)
    try:
        yield calls
    finally:
        # By identity: nested captures holding the same calls are equal lists, and
        # list.remove would drop the first of them, the outer one.
        del captures[next(i for i, c in enumerate(captures) if c is calls)]


def capturing() -> bool:
    return bool(_captures())


def record(call: CallMasks) -> None:
    for calls in _captures():
        calls.append(call)


def expand_step_masks(seed: torch.Tensor, kind: int, p: float, steps: int, batch: int,
                      hidden: int) -> torch.Tensor:
    """bool [T, B, H]: the per-step mask of ``kind`` for every step of a call."""
    return bernoulli(seed, kind, p, (steps, batch, hidden))
