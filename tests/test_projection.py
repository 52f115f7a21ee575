"""The LSTM's projection (torch.nn's ``proj_size``): torch.nn.LSTM(proj_size) equality in float64
(outputs and every gradient) on the reference and on torch's own kernel, packed, bidirectional,
multi-layer; its state_dict; and every fastrnn option acting on the H-sized cell while zoneout of
h and recurrent dropout act on the projected h."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from support import max_rel_err
from test_modules import BACKENDS, LAYOUTS, assert_same_results, random_hx, run_both, tensors_of

H, P = 5, 3


def twin(backend, **kwargs):
    reference = nn.LSTM(hidden_size=H, proj_size=P, dtype=torch.float64, **kwargs)
    return reference, fastrnn.LSTM.from_torch(reference, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matches_torch_for_every_layout(layout, backend):
    spec = LAYOUTS[layout]
    reference, module = twin(backend, input_size=4, **spec["kwargs"])
    assert module.proj_size == P
    x = torch.randn(*spec["shape"], dtype=torch.float64)
    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x)
    assert out[0].shape[-1] == P * module.num_directions
    assert_same_results(out, grads, ref_out, ref_grads)
    assert any(name.startswith("weight_hr") for name in grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_with_hx(bidirectional, backend):
    reference, module = twin(backend, input_size=3, num_layers=2, bidirectional=bidirectional)
    hx = random_hx(module, batch=4)
    assert hx[0].shape[-1] == P and hx[1].shape[-1] == H
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x, hx=hx)
    assert_same_results(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_matches_torch_for_packed_sequences(enforce_sorted, backend):
    reference, module = twin(backend, input_size=3, num_layers=2, bidirectional=True)
    lengths = [6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4]
    x = torch.randn(6, 4, 3, dtype=torch.float64)

    def make_input(leaf):
        return pack_padded_sequence(leaf, lengths, enforce_sorted=enforce_sorted)

    (ref_out, ref_grads), (out, grads) = run_both(reference, module, x, make_input,
                                                  hx=random_hx(module, batch=4))
    assert_same_results(out, grads, ref_out, ref_grads)


def test_state_dict_is_torch_nn_s():
    reference = nn.LSTM(3, H, num_layers=2, bidirectional=True, proj_size=P)
    module = fastrnn.LSTM(3, H, num_layers=2, bidirectional=True, proj_size=P)
    assert ({k: v.shape for k, v in module.state_dict().items()}
            == {k: v.shape for k, v in reference.state_dict().items()})
    assert [n for n, _ in module.named_parameters()] == [n for n, _ in reference.named_parameters()]
    module.load_state_dict(reference.state_dict())
    reference.load_state_dict(module.state_dict())
    assert module.weight_hr_l1_reverse.shape == (P, H)
    assert module.weight_hh_l1.shape == (4 * H, P) and module.weight_ih_l1.shape == (4 * H, 2 * P)
    assert repr(module) == "LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=3)"


def test_init_of_the_projection_is_orthogonal():
    module = fastrnn.LSTM(3, 8, proj_size=4)
    w = module.weight_hr_l0.detach()
    torch.testing.assert_close(w @ w.t(), torch.eye(4), atol=1e-5, rtol=0)
    for block in module.weight_hh_l0.detach().chunk(4):  # (H, P) blocks: orthonormal columns
        torch.testing.assert_close(block.t() @ block, torch.eye(4), atol=1e-5, rtol=0)


OPTIONS = dict(layer_norm=True, ln_groups=4, zoneout_cell=0.3, zoneout_hidden=0.2,
               recurrent_dropout=0.25, candidate_dropout=0.15, dropconnect=0.35,
               learn_initial_state=True, residual=True)


def test_fastrnn_options_act_on_the_right_widths():
    """Layer norm and the cell's regularizers on H; zoneout of h, recurrent dropout, learned h0 on
    P (parameters and the masks each call draws)."""
    module = fastrnn.LSTM(3, H, num_layers=2, bidirectional=True, proj_size=P, **OPTIONS,
                          dtype=torch.float64)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert shapes["ln_ih_weight_l1"] == shapes["ln_hh_weight_l1"] == (4 * H,)
    assert shapes["ln_cell_weight_l1"] == shapes["ln_cell_bias_l1"] == (H,)
    assert shapes["initial_hidden_l1"] == (P,) and shapes["initial_cell_l1"] == (H,)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    with fastrnn.capture_masks() as calls:
        out, (h_n, c_n) = module(x, lengths=[6, 2, 5, 3])
    assert out.shape == (6, 4, 2 * P) and h_n.shape == (4, 4, P) and c_n.shape == (4, 4, H)
    for call in calls:
        assert call.recurrent_mask.shape == (4, P)
        assert call.zoneout_hidden.shape == (6, 4, P)
        assert call.zoneout_cell.shape == call.candidate_dropout.shape == (6, 4, H)
        assert call.dropconnect_mask.shape == (4 * H, P)


@pytest.mark.parametrize("backend", ["auto", "reference", "native"])
def test_eval_without_fastrnn_options_is_torch_s_and_auto_runs_it(backend):
    """In eval mode recurrent dropout and dropconnect are off: the same module is plain."""
    reference = nn.LSTM(3, H, proj_size=P, dtype=torch.float64).eval()
    module = fastrnn.LSTM.from_torch(reference, recurrent_dropout=0.3, dropconnect=0.2,
                                     backend=backend)
    assert not module.training
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for a, b in zip(tensors_of(module(x)), tensors_of(reference(x))):
        assert max_rel_err(a, b) <= 1e-12
