"""The __host__ __device__ code of csrc/ run on the CPU: nvcc builds a small host library from
philox.cuh, cell_math.cuh, sequence.cuh and episodes.cuh, and it is compared with fastrnn.masks
(bit for bit) and with the reference cells of fastrnn.reference (values and autograd gradients).

Skipped where nvcc is missing.  No GPU needed.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastrnn import masks as M
from fastrnn import reference as R
from fastrnn.cells import GRUCall, LSTMCall

CSRC = Path(__file__).resolve().parents[1] / "csrc"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")

# Thin extern "C" loops over the header functions, so ctypes can call them on arrays.
HOST_SOURCE = r"""
#include <cstdint>
#include "cell_math.cuh"
#include "episodes.cuh"
#include "philox.cuh"
#include "sequence.cuh"
using namespace fastrnn;
extern "C" {
void philox_many(uint64_t seed, uint32_t kind, const int64_t* index, int64_t n, uint32_t* bits) {
  for (int64_t k = 0; k < n; ++k) bits[k] = philox_bits(seed, kind, static_cast<uint64_t>(index[k]));
}
void hits_many(uint64_t seed, uint32_t kind, const int64_t* index, int64_t n, uint32_t threshold, uint8_t* hit) {
  for (int64_t k = 0; k < n; ++k) hit[k] = mask_hit(seed, kind, static_cast<uint64_t>(index[k]), threshold);
}
void lstm_points(const float* a, const float* c_prev, const float* s, int64_t n, float* c_candidate, float* h) {
  for (int64_t k = 0; k < n; ++k) {
    const LstmGates g{a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]};
    c_candidate[k] = lstm_candidate_cell(g, c_prev[k], s[k]);
    h[k] = lstm_hidden(g.o, c_candidate[k]);
  }
}
// Gradients of (c~, h~ = σ(o) tanh(c~)) given d h~ and d c~ (the cell norm off).
void lstm_point_grads(const float* a, const float* c_prev, const float* s, const float* d_h,
                      const float* d_c, int64_t n, float* d_a, float* d_c_prev) {
  for (int64_t k = 0; k < n; ++k) {
    const LstmGates g{a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]};
    const float c_candidate = lstm_candidate_cell(g, c_prev[k], s[k]);
    const LstmHiddenGrads out = lstm_hidden_backward(g.o, c_candidate, d_h[k]);
    const LstmCellGrads cell = lstm_candidate_cell_backward(g, c_prev[k], s[k], d_c[k] + out.d_y);
    d_a[4 * k] = cell.d_i; d_a[4 * k + 1] = cell.d_f; d_a[4 * k + 2] = cell.d_g; d_a[4 * k + 3] = out.d_o;
    d_c_prev[k] = cell.d_c_prev;
  }
}
void gru_points(const float* gx, const float* hh, const float* h_prev, const float* s, int64_t n, float* a, float* h) {
  for (int64_t k = 0; k < n; ++k) {
    const GruStep st = gru_cell(gx[3 * k], gx[3 * k + 1], gx[3 * k + 2], hh[3 * k], hh[3 * k + 1],
                                hh[3 * k + 2], h_prev[k], s[k]);
    a[3 * k] = st.a_r; a[3 * k + 1] = st.a_z; a[3 * k + 2] = st.a_n; h[k] = st.h;
  }
}
void gru_point_grads(const float* a, const float* hh_n, const float* h_prev, const float* s, const float* d_h,
                     int64_t n, float* d_a, float* d_hh_n, float* d_h_prev) {
  for (int64_t k = 0; k < n; ++k) {
    const GruGrads g = gru_cell_backward(a[3 * k], a[3 * k + 1], a[3 * k + 2], hh_n[k], h_prev[k], s[k], d_h[k]);
    d_a[3 * k] = g.d_a_r; d_a[3 * k + 1] = g.d_a_z; d_a[3 * k + 2] = g.d_a_n;
    d_hh_n[k] = g.d_hh_n; d_h_prev[k] = g.d_h_prev;
  }
}
void moments_of_parts(const float* counts, const float* means, const float* m2s, int parts, float* result) {
  const Moments m = combine_moments(parts, [&](int k) { return Partial{counts[k], means[k], m2s[k]}; });
  result[0] = m.mean; result[1] = m.rstd;
}
float ln_input_grad(float rstd, float d_n, float n, float mean_d_n, float mean_d_n_n) {
  return layer_norm_input_grad(rstd, d_n, n, mean_d_n, mean_d_n_n);
}
float zoneout_point(float previous, float candidate, float p, int training, int hit) {
  return zoneout_blend(previous, candidate, zoneout_weight(p, training, hit));
}
float dropout_point(float p, int training, int hit) { return dropout_scale(p, training, hit); }
int64_t previous_step(int64_t t, int64_t length, int reverse) { return previous_time(t, length, reverse); }
// The state every step (t, b) of a call reads, as the kernels find it: a time, kInitialState or
// kResetState; -3 at inactive steps.  lengths may be null.
void states_read(const uint8_t* resets, const int64_t* lengths, int64_t steps, int64_t batch, int reverse,
                 int64_t* read) {
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t length = sequence_length(lengths, b, steps);
      read[t * batch + b] = t < length
          ? state_read(t, length, reverse != 0, episode_start(resets, t, b, batch, length)) : -3;
    }
  }
}
// One row's backward carry over n steps (in the backward's order): carried += increments[k], then
// the episode start routes it to *reset_grad; carried[k] is what goes on to the step before.
void route_row(const uint8_t* starts, const float* increments, int64_t n, float* carried, float* reset_grad) {
  float value = 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    value = route_episode_start(starts[k] != 0, value + increments[k], reset_grad);
    carried[k] = value;
  }
}
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    build = tmp_path_factory.mktemp("csrc_host")
    source, library = build / "host_math.cu", build / "libhost_math.so"
    source.write_text(HOST_SOURCE)
    subprocess.run([NVCC, "-std=c++17", "-O2", "-shared", "-Xcompiler", "-fPIC", "-I", str(CSRC),
                    str(source), "-o", str(library)], check=True, capture_output=True, text=True)
    handle = ctypes.CDLL(str(library))
    handle.ln_input_grad.restype = ctypes.c_float
    handle.ln_input_grad.argtypes = [ctypes.c_float] * 5
    handle.zoneout_point.restype = ctypes.c_float
    handle.zoneout_point.argtypes = [ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    handle.dropout_point.restype = ctypes.c_float
    handle.dropout_point.argtypes = [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    handle.previous_step.restype = ctypes.c_int64
    handle.previous_step.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    handle.states_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.c_int, ctypes.c_void_p]
    handle.route_row.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                 ctypes.c_void_p]
    handle.philox_many.argtypes = [ctypes.c_uint64, ctypes.c_uint32] + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    handle.hits_many.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_uint32, ctypes.c_void_p]
    handle.moments_of_parts.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_void_p]
    return handle


def _ptr(array: np.ndarray):
    return array.ctypes.data_as(ctypes.c_void_p)


def _f32(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(torch.float32).numpy())


def _call(fn, *arrays, n, outputs):
    results = [np.zeros(shape, dtype=np.float32) for shape in outputs]
    fn(*[_ptr(a) for a in arrays], ctypes.c_int64(n), *[_ptr(r) for r in results])
    return [torch.from_numpy(r) for r in results]


# ------------------------------------------------------------------------------------- masks

SEEDS = [0, 1, 12345, (1 << 62) - 1, 0x0123456789ABCDEF & ((1 << 62) - 1), -7]
INDICES = torch.tensor([0, 1, 2, 255, 1 << 20, (1 << 32) - 1, 1 << 32, (1 << 32) + 5, (1 << 40) + 12345,
                        (1 << 62) + 3], dtype=torch.int64)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", [M.ZONEOUT_CELL, M.ZONEOUT_HIDDEN, M.CANDIDATE_DROPOUT,
                                  M.RECURRENT_DROPOUT, M.DROPCONNECT])
def test_philox_bits_match_masks_py(lib, seed, kind):
    index = torch.cat([INDICES, torch.randint(0, 1 << 45, (200,), generator=torch.Generator().manual_seed(seed & 0xFFFF))])
    expected = M.philox_bits(torch.tensor(seed, dtype=torch.int64), kind, index)
    index_np = np.ascontiguousarray(index.numpy())
    bits = np.zeros(len(index_np), dtype=np.uint32)
    lib.philox_many(ctypes.c_uint64(seed & ((1 << 64) - 1)), kind, _ptr(index_np), len(index_np), _ptr(bits))
    assert torch.equal(torch.from_numpy(bits.astype(np.int64)), expected)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.999])
def test_mask_hits_match_masks_py(lib, p):
    seed = torch.tensor(987654321, dtype=torch.int64)
    steps, batch, hidden = 3, 5, 7
    expected = M.expand_step_masks(seed, M.ZONEOUT_HIDDEN, p, steps, batch, hidden).reshape(-1)
    index = np.arange(steps * batch * hidden, dtype=np.int64)
    hits = np.zeros(len(index), dtype=np.uint8)
    lib.hits_many(ctypes.c_uint64(int(seed)), M.ZONEOUT_HIDDEN, _ptr(index), len(index), M.threshold(p), _ptr(hits))
    assert torch.equal(torch.from_numpy(hits).bool(), expected)
    if p in (0.1, 0.5):  # both outcomes occur among 105 draws, so the comparison is not vacuous
        assert 0 < hits.sum() < len(hits)


# -------------------------------------------------------------------------- cells vs reference

def _random(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _dropout_scales(hits, p):
    return torch.where(hits, torch.zeros(()), torch.full((), 1.0 / (1.0 - p)))


def test_lstm_cell_matches_reference(lib):
    batch, hidden, p = 4, 6, 0.3
    gx, h, c = _random(batch, 4 * hidden, seed=1, scale=2), _random(batch, hidden, seed=2), _random(batch, hidden, seed=3)
    hits = _random(batch, hidden, seed=4) > 0.5
    call = LSTMCall(gx[None], torch.zeros(4 * hidden, hidden), None, None, None, None, h, c, None,
                    None, torch.zeros((), dtype=torch.int64), 1, 0.0, 0.0, p, True, False)
    masks = SimpleNamespace(zoneout_cell=None, zoneout_hidden=None, candidate_dropout=hits)
    h_t, c_t, a, _ = R.lstm_step(call, gx, h, c, masks)
    a_rows = a.reshape(batch, 4, hidden).permute(0, 2, 1).reshape(-1, 4)  # (b, j) -> gates i, f, g, o
    c_cand, h_cand = _call(lib.lstm_points, _f32(a_rows), _f32(c.reshape(-1)),
                           _f32(_dropout_scales(hits, p).reshape(-1)), n=batch * hidden,
                           outputs=[(batch * hidden,), (batch * hidden,)])
    torch.testing.assert_close(c_cand.reshape(batch, hidden), c_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_cand.reshape(batch, hidden), h_t, rtol=1e-6, atol=1e-6)


def test_lstm_cell_gradients_match_autograd(lib):
    n, p = 40, 0.25
    a = _random(n, 4, seed=5, scale=2).double().requires_grad_()
    c_prev = _random(n, seed=6).double().requires_grad_()
    scale = _dropout_scales(_random(n, seed=7) > 0.6, p).double()
    d_h, d_c = _random(n, seed=8).double(), _random(n, seed=9).double()
    i, f, g, o = a.unbind(-1)
    c_cand = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g) * scale
    h = torch.sigmoid(o) * torch.tanh(c_cand)
    grads = torch.autograd.grad((h * d_h + c_cand * d_c).sum(), (a, c_prev))
    d_a, d_c_prev = _call(lib.lstm_point_grads, _f32(a), _f32(c_prev), _f32(scale), _f32(d_h), _f32(d_c),
                          n=n, outputs=[(n, 4), (n,)])
    torch.testing.assert_close(d_a.double(), grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_c_prev.double(), grads[1], rtol=1e-5, atol=1e-6)


def test_gru_cell_matches_reference(lib):
    batch, hidden, p = 3, 5, 0.4
    gx, h, b_hh = _random(batch, 3 * hidden, seed=10, scale=2), _random(batch, hidden, seed=11), _random(3 * hidden, seed=12)
    hits = _random(batch, hidden, seed=13) > 0.3
    call = GRUCall(gx[None], torch.zeros(3 * hidden, hidden), b_hh, None, h, None, None,
                   torch.zeros((), dtype=torch.int64), 1, 0.0, p, True, False)
    masks = SimpleNamespace(zoneout_hidden=None, candidate_dropout=hits)
    h_t, a, hh_n, _ = R.gru_step(call, gx, h, masks)
    per_unit = lambda v: v.reshape(batch, 3, hidden).permute(0, 2, 1).reshape(-1, 3)  # noqa: E731
    hh = b_hh.expand(batch, -1)
    a_out, h_out = _call(lib.gru_points, _f32(per_unit(gx)), _f32(per_unit(hh)), _f32(h.reshape(-1)),
                         _f32(_dropout_scales(hits, p).reshape(-1)), n=batch * hidden,
                         outputs=[(batch * hidden, 3), (batch * hidden,)])
    torch.testing.assert_close(a_out, per_unit(a), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_out.reshape(batch, hidden), h_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(per_unit(hh)[:, 2].reshape(batch, hidden), hh_n)


def test_gru_cell_gradients_match_autograd(lib):
    n, p = 40, 0.2
    a = _random(n, 3, seed=14, scale=2).double().requires_grad_()
    hh_n = _random(n, seed=15).double().requires_grad_()
    h_prev = _random(n, seed=16).double().requires_grad_()
    scale = _dropout_scales(_random(n, seed=17) > 0.5, p).double()
    d_h = _random(n, seed=18).double()
    a_r, a_z, a_n = a.unbind(-1)
    # a_n = gx_n + r * hh_n: a_n's own gradient is d gx_n, and hh_n reaches h only through a_n.
    r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
    a_n_total = a_n + r * hh_n - (r * hh_n).detach()
    h = (1 - z) * torch.tanh(a_n_total) * scale + z * h_prev
    grads = torch.autograd.grad((h * d_h).sum(), (a, hh_n, h_prev))
    d_a, d_hh_n, d_h_prev = _call(lib.gru_point_grads, _f32(a), _f32(hh_n), _f32(h_prev), _f32(scale),
                                  _f32(d_h), n=n, outputs=[(n, 3), (n,), (n,)])
    torch.testing.assert_close(d_a.double(), grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_hh_n.double(), grads[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_h_prev.double(), grads[2], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- layer norm pieces

@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_combined_moments_match_normalize(lib, offset):
    values = _random(37, seed=19) * 0.01 + offset  # a large mean tests the merge's stability
    sizes = [8, 8, 8, 8, 5]
    parts = torch.split(values.double(), sizes)
    counts = np.array(sizes, dtype=np.float32)
    means = np.array([p.mean().item() for p in parts], dtype=np.float32)
    m2s = np.array([((p - p.mean()) ** 2).sum().item() for p in parts], dtype=np.float32)
    result = np.zeros(2, dtype=np.float32)
    lib.moments_of_parts(_ptr(counts), _ptr(means), _ptr(m2s), len(sizes), _ptr(result))
    _, mean, rstd = R.normalize(values.double().unsqueeze(0), 1)
    assert abs(result[0] - mean.item()) <= 1e-6 * max(1.0, abs(mean.item()))
    assert abs(result[1] - rstd.item()) <= 1e-4 * rstd.item()


def test_layer_norm_input_grad_matches_autograd(lib):
    v = _random(24, seed=20, scale=3).double().requires_grad_()
    d_n = _random(24, seed=21).double()
    normalized, _, rstd = R.normalize(v.unsqueeze(0), 1)
    expected, = torch.autograd.grad((normalized.squeeze(0) * d_n).sum(), v)
    n = normalized.detach().squeeze(0)
    mean_d_n, mean_d_n_n = d_n.mean().item(), (d_n * n).mean().item()
    got = [lib.ln_input_grad(rstd.item(), d_n[k].item(), n[k].item(), mean_d_n, mean_d_n_n) for k in range(24)]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- regularizers and order

def test_zoneout_and_dropout_scale_follow_the_spec(lib):
    previous, candidate = 2.0, -1.0
    assert lib.zoneout_point(previous, candidate, 0.0, 1, 1) == candidate  # off: the hit is ignored
    assert lib.zoneout_point(previous, candidate, 0.3, 1, 1) == previous
    assert lib.zoneout_point(previous, candidate, 0.3, 1, 0) == candidate
    assert lib.zoneout_point(previous, candidate, 0.25, 0, 1) == pytest.approx(0.25 * previous + 0.75 * candidate)
    assert lib.zoneout_point(previous, candidate, 1.0, 1, 1) == previous
    assert lib.dropout_point(0.2, 1, 1) == 0.0
    assert lib.dropout_point(0.2, 1, 0) == pytest.approx(1.25)
    assert lib.dropout_point(0.2, 0, 1) == 1.0


@pytest.mark.parametrize("reverse", [False, True])
def test_previous_step_follows_sequence_order(lib, reverse):
    steps, length = 6, 4
    order = [t for t in (range(steps - 1, -1, -1) if reverse else range(steps)) if t < length]
    expected = {t: (order[k - 1] if k > 0 else -1) for k, t in enumerate(order)}
    assert {t: lib.previous_step(t, length, int(reverse)) for t in order} == expected


# --------------------------------------------------------------------------- episode starts

@pytest.mark.parametrize("lengths", [None, [6, 3, 1, 5, 0]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True])
def test_state_read_matches_reference_previous_states(lib, reverse, lengths):
    """episodes.cuh's choice of the state a step reads (its previous step's, h0 / c0, or the
    reset state) is fastrnn.reference's at every active step, flags at padded steps ignored."""
    steps, batch = 6, 5
    g = torch.Generator().manual_seed(31)
    resets = torch.rand(steps, batch, generator=g) < 0.35
    resets[0, 0] = resets[steps - 1, 1] = True   # the first step of either order
    resets[:, 3] = False
    lengths_t = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    active = (torch.ones(steps, batch, dtype=torch.bool) if lengths_t is None
              else torch.arange(steps)[:, None] < lengths_t[None, :])
    flags = np.ascontiguousarray(resets.numpy().astype(np.uint8))  # padded steps' flags kept
    length_array = None if lengths_t is None else np.ascontiguousarray(lengths_t.numpy())
    read = np.zeros((steps, batch), dtype=np.int64)
    lib.states_read(_ptr(flags), None if length_array is None else _ptr(length_array), steps, batch,
                    int(reverse), _ptr(read))
    # The reference on labelled states: out[t] = t, the initial state -1, the reset state -2.
    out = torch.arange(steps, dtype=torch.float64)[:, None, None].expand(steps, batch, 1)
    expected = R.previous_states(out, torch.full((batch, 1), -1.0, dtype=torch.float64), lengths_t,
                                 reverse, resets & active, torch.full((batch, 1), -2.0,
                                                                      dtype=torch.float64))
    expected = torch.where(active, expected[..., 0].long(), torch.full_like(active, -3, dtype=torch.long))
    assert torch.equal(torch.from_numpy(read), expected)
    assert (read == -2).sum() == (resets & active).sum()  # no flag at a padded step is read


def test_episode_start_routes_the_carried_gradient(lib):
    """Backward: at an episode start the carried gradient goes to the reset state's accumulator
    (summed over the row's starts) and nothing is carried to the step before."""
    starts = np.array([0, 1, 0, 0, 1, 1, 0], dtype=np.uint8)
    increments = np.array([0.5, 1.0, -2.0, 0.25, 3.0, 4.0, 1.5], dtype=np.float32)
    carried = np.zeros(len(starts), dtype=np.float32)
    reset_grad = np.array([10.0], dtype=np.float32)  # the kernels zero it first; here: it adds
    lib.route_row(_ptr(starts), _ptr(increments), len(starts), _ptr(carried), _ptr(reset_grad))
    assert carried.tolist() == [0.5, 0.0, -2.0, -1.75, 0.0, 0.0, 1.5]
    assert reset_grad[0] == 10.0 + 1.5 + 1.25 + 4.0
