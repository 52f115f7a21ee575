"""The mask stream: Philox bits, rates, reproducibility, capture and replay."""
import math
import threading

import pytest
import torch

import fastrnn
from fastrnn import masks as M
from fastrnn import reference as R
from fastrnn.cells import LSTMCall
from fastrnn.functional import gru_layer, lstm_layer


def test_philox_known_answer():
    # Random123's known-answer vector for philox4x32_10: counter 0, key 0.
    bits = M.philox_bits(torch.tensor(0), 0, torch.tensor([0]))
    assert int(bits[0]) == 0x6627E8D5


def test_philox_depends_on_every_counter_word_and_key():
    index = torch.tensor([0, 1, 1 << 32, (1 << 32) + 1])
    base = M.philox_bits(torch.tensor(5), 0, index)
    assert len(set(base.tolist())) == 4
    assert not torch.equal(base, M.philox_bits(torch.tensor(5), 1, index))
    assert not torch.equal(base, M.philox_bits(torch.tensor(5 + (1 << 40)), 0, index))
    assert int(base.min()) >= 0 and int(base.max()) < (1 << 32)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_bernoulli_rate(p):
    count = 200_000
    hits = M.bernoulli(torch.tensor(2024), M.ZONEOUT_HIDDEN, p, (count,))
    standard_error = math.sqrt(max(p * (1 - p), 1e-12) / count)
    assert abs(hits.double().mean().item() - p) <= 5 * standard_error + 1e-12


def test_keep_scale_is_inverted_dropout():
    scale = M.keep_scale(torch.tensor(9), M.RECURRENT_DROPOUT, 0.25, (400, 500), torch.float64)
    values = set(torch.unique(scale).tolist())
    assert values == {0.0, 1 / 0.75}
    assert abs(scale.mean().item() - 1.0) < 0.01


def test_step_hits_are_slices_of_the_call_mask():
    seed = torch.tensor(77)
    full = M.expand_step_masks(seed, M.CANDIDATE_DROPOUT, 0.3, 4, 3, 5)
    for t in range(4):
        assert torch.equal(full[t], M.step_hits(seed, M.CANDIDATE_DROPOUT, 0.3, t, 3, 5))


def _lstm_args(steps=5, batch=3, inputs=4, hidden=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(steps, batch, inputs, generator=g, dtype=dtype),
            torch.randn(4 * hidden, inputs, generator=g, dtype=dtype) * 0.5,
            torch.randn(4 * hidden, hidden, generator=g, dtype=dtype) * 0.5,
            torch.randn(4 * hidden, generator=g, dtype=dtype),
            torch.randn(4 * hidden, generator=g, dtype=dtype),
            torch.randn(batch, hidden, generator=g, dtype=dtype),
            torch.randn(batch, hidden, generator=g, dtype=dtype))


REGULARIZED = dict(zoneout_cell=0.3, zoneout_hidden=0.2, recurrent_dropout=0.3,
                   candidate_dropout=0.2, dropconnect=0.25, training=True)


def test_manual_seed_reproduces_a_training_step():
    args = _lstm_args()
    torch.manual_seed(11)
    first = lstm_layer(*args, **REGULARIZED)
    torch.manual_seed(11)
    second = lstm_layer(*args, **REGULARIZED)
    third = lstm_layer(*args, **REGULARIZED)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], third[0])


def test_captured_masks_replay_through_the_reference():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _lstm_args()
    lengths = torch.tensor([5, 2, 4])
    with fastrnn.capture_masks() as calls:
        out, h_n, c_n = lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, **REGULARIZED)
    (call,) = calls
    assert call.zoneout_cell.shape == call.zoneout_hidden.shape == call.candidate_dropout.shape == (5, 3, 6)
    assert call.zoneout_cell.dtype == torch.bool
    assert call.recurrent_mask.shape == (3, 6) and call.dropconnect_mask.shape == (24, 6)
    gx = R.project_input(x, w_ih, b_ih, None, 1)
    expected = R.lstm_sequence(
        LSTMCall(gx, w_hh * call.dropconnect_mask, b_hh, None, None, None, h0, c0, lengths,
                 call.recurrent_mask, torch.zeros((), dtype=torch.int64), 1, 0.3, 0.2, 0.2,
                 True, False), R.MaskSource(captured=call))
    for mine, ref in zip((out, h_n, c_n), expected):
        assert torch.allclose(mine, ref, rtol=1e-12, atol=1e-12)


def test_each_call_draws_fresh_masks_and_eval_draws_none():
    x, w_ih, w_hh, b_ih, b_hh, h0, _ = _lstm_args()
    w_ih, w_hh, b_ih, b_hh = w_ih[:18], w_hh[:18], b_ih[:18], b_hh[:18]
    with fastrnn.capture_masks() as calls:
        gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, zoneout=0.5, training=True)
        gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, zoneout=0.5, training=True, direction=1)
        gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, zoneout=0.5, training=False)
    assert len(calls) == 2
    assert [c.direction for c in calls] == [0, 1]
    assert not torch.equal(calls[0].zoneout_hidden, calls[1].zoneout_hidden)
    assert calls[0].zoneout_cell is None and calls[0].candidate_dropout is None


def test_capture_collects_only_this_threads_calls():
    """A thread inside ``capture_masks`` that makes no call captures nothing while another
    thread runs a model, and that thread's own capture gets its calls."""
    model = fastrnn.GRU(3, 4, num_layers=2, zoneout=0.5).train()
    inside, done = threading.Event(), threading.Event()
    worker_calls = []

    def worker():
        inside.wait(timeout=60)
        with torch.no_grad(), fastrnn.capture_masks() as calls:
            model(torch.randn(4, 2, 3))
        worker_calls.extend(calls)
        with torch.no_grad():
            model(torch.randn(4, 2, 3))  # outside any capture of its own
        done.set()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    with fastrnn.capture_masks() as mine:
        inside.set()
        assert done.wait(timeout=60), "the worker thread did not finish"
    thread.join(timeout=60)
    assert mine == []
    assert [(c.layer, c.direction) for c in worker_calls] == [(0, 0), (1, 0)]


def test_nested_captures_each_get_their_own_calls():
    """Leaving an inner capture stops only that one, even when both hold the same calls (a
    list removed by equality would drop the outer one instead)."""
    model = fastrnn.GRU(3, 4, zoneout=0.5).train()
    with torch.no_grad(), fastrnn.capture_masks() as outer:
        with fastrnn.capture_masks() as inner:
            model(torch.randn(4, 2, 3))
        model(torch.randn(4, 2, 3))
    assert len(inner) == 1 and len(outer) == 2
    assert outer[0] is inner[0]
    assert not fastrnn.masks.capturing()
