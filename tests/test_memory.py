"""What a training step keeps for backward: values saved per (t, b), counted by autograd hooks.

The LayerNormLSTM keeps fewer values per (t, b) than Haste's ~15·H (README), the regularized GRU
5·H, and both exactly that many per (t, b) however long the sequence.  Masks are never stored:
they are regenerated from the call's seed.
"""
import pytest
import torch

import fastrnn
from bench.measure import cpu_peak_bytes

HIDDEN, BATCH = 16, 3


def saved_values(model, steps):
    """Distinct saved storages' element counts during a forward, inputs and parameters excluded."""
    x = torch.randn(steps, BATCH, HIDDEN, requires_grad=True)
    excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
    excluded.add(x.untyped_storage().data_ptr())
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(seen.values()), seen


def per_step_values(model, steps=6):
    """Saved values per (t, b): the growth of the saved total from T to 2T steps."""
    torch.manual_seed(0)
    short, _ = saved_values(model, steps)
    torch.manual_seed(0)
    long, _ = saved_values(model, 2 * steps)
    return (long - short) / (steps * BATCH)


def layer_norm_lstm(ln_groups):
    return fastrnn.LayerNormLSTM(HIDDEN, HIDDEN, ln_groups=ln_groups, zoneout_cell=0.1,
                                 zoneout_hidden=0.1, recurrent_dropout=0.25).train()


def layer_norm_lstm_per_step(ln_groups):
    # W_ih x (4H, the input norm's input), its 2·groups statistics and groups power-of-two
    # factors (reference.norm_scale); preact (4H), out (H), the cell (H) and 2·groups + 2
    # statistics of the recurrence.
    return 10 * HIDDEN + 5 * ln_groups + 2


def regularized_gru():
    return fastrnn.GRU(HIDDEN, HIDDEN, zoneout=0.1, recurrent_dropout=0.25,
                       candidate_dropout=0.1).train()


GRU_PER_STEP = 5 * HIDDEN  # preact (3H), hidden_n (H), out (H); no mask is kept


@pytest.mark.parametrize("ln_groups", [1, 4])
def test_layer_norm_lstm_saves_fewer_values_than_haste(ln_groups):
    per_step = per_step_values(layer_norm_lstm(ln_groups))
    assert per_step == layer_norm_lstm_per_step(ln_groups)
    assert per_step < 15 * HIDDEN


def test_regularized_gru_saves_at_most_five_h():
    assert per_step_values(regularized_gru()) == GRU_PER_STEP


@pytest.mark.slow
@pytest.mark.parametrize("name", ["layer_norm_lstm", "regularized_gru"])
def test_saved_values_grow_linearly_over_thousands_of_steps(name):
    """The backend "auto" picks on CPU ("cpu", or the reference without a compiler), T = 1000,
    2000, 4000: each doubling adds exactly the per-(t, b) count above, so the saved total is
    a + b·T with nothing growing faster (or hidden per step) on long sequences."""
    model, expected = ((layer_norm_lstm(1), layer_norm_lstm_per_step(1))
                       if name == "layer_norm_lstm" else (regularized_gru(), GRU_PER_STEP))
    assert model.backend == "auto" and fastrnn.backends.resolve(
        "auto", torch.device("cpu"), torch.float32) in ("cpu", "reference")
    for steps in (1000, 2000):
        assert per_step_values(model, steps) == expected, f"from T = {steps} to {2 * steps}"


def test_no_mask_is_saved():
    """With every per-step regularizer on, the saved values equal those of eval mode."""
    def model():
        return fastrnn.LSTM(HIDDEN, HIDDEN, zoneout_cell=0.3, zoneout_hidden=0.3,
                            candidate_dropout=0.3)
    assert per_step_values(model().train()) == per_step_values(model().eval())


# ------------------------------------------------------------------------------ inference

# Backends whose forward keeps nothing for a backward when none will follow (``save=False``):
# every backend but torch's own kernel ("native", which saves nothing of ours), measured on CPU
# tensors where the backend runs them (Triton under TRITON_INTERPRET=1), on a GPU otherwise.
SAVES_NOTHING_IN_INFERENCE = ("reference", "cpu", "triton", "cuda")


def inference_backends():
    cpu = torch.device("cpu")
    return [name for name in SAVES_NOTHING_IN_INFERENCE if name in fastrnn.backends.NAMES
            and fastrnn.backends.refusal(name, cpu, torch.float32) is None]


def _peak_bytes(device: str, fn) -> int:
    """Peak bytes ``fn`` holds allocated beyond what was allocated before it."""
    if device == "cpu":
        return cpu_peak_bytes(fn)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def check_inference_memory(backend: str, name: str, device: str):
    """The inference op (what a forward without gradients runs): the peak of what the backend
    allocates beyond out and the final states does not grow with T (O(B·H)), where the forward
    op's grows by the saved tensors; and out and the states equal the forward op's."""
    from support import case as make_case, cast, make_call, make_inputs
    from fastrnn import ops
    extra = {}
    for steps in (16, 64):
        case = make_case(name.split("-")[0], name.split("-")[1], steps=steps, batch=3, hidden=8,
                         lengths=None)
        call = make_call(case, cast(make_inputs(case), torch.float32, device))
        results = []
        inference = _peak_bytes(device, lambda: results.append(
            ops.forward(call, backend, save=False)))
        outputs = sum(t.numel() * t.element_size() for t in results[0])
        saving = _peak_bytes(device, lambda: results.append(ops.forward(call, backend)))
        for kept, full in zip(results[0], results[1]):
            torch.testing.assert_close(kept, full, rtol=0, atol=0)
        assert len(results[0]) == 1 + len(case.spec.states)
        extra[steps] = inference - outputs, saving - outputs
    (short, short_saving), (long, long_saving) = extra[16], extra[64]
    assert long - short <= 8 * 3 * 8 * 4 * 4, extra      # a few [B, G·H] float32 buffers at most
    assert long_saving - short_saving >= 48 * 3 * 8 * 4, extra  # saving keeps ≥ H per (t, b)


@pytest.mark.parametrize("backend", inference_backends())
@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything"])
def test_inference_keeps_only_outputs_and_states(backend, name):
    check_inference_memory(backend, name, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything",
                                  "lstm-resets_everything_reverse"])
def test_gpu_inference_keeps_only_outputs_and_states(backend, name):
    check_inference_memory(backend, name, "cuda")
