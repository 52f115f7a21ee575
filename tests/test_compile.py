"""torch.compile (fullgraph, no graph break), torch.export, torch.autocast and CUDA-graph capture
of models built from fastrnn layers."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

import fastrnn


class Stack(nn.Module):
    """LSTM -> GRU -> linear head, every fastrnn option that changes the graph switched on."""

    def __init__(self, device=None, dtype=None, **gru_options):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.lstm = fastrnn.LayerNormLSTM(3, 6, num_layers=2, bidirectional=True, dropout=0.2,
                                          zoneout_cell=0.1, zoneout_hidden=0.2,
                                          recurrent_dropout=0.2, candidate_dropout=0.1,
                                          dropconnect=0.2, **factory)
        self.gru = fastrnn.GRU(12, 5, residual=True, learn_initial_state=True, **gru_options,
                               **factory)
        self.head = nn.Linear(5, 2, **factory)

    def forward(self, x):
        y, (h_n, c_n) = self.lstm(x)
        z, _ = self.gru(y)
        return self.head(z) + h_n[-1].sum() + c_n[-1].sum()


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_inference_equals_eager():
    model = Stack(zoneout=0.3).eval()
    compiled = torch.compile(model, fullgraph=True)
    for steps in (5, 7):
        x = torch.randn(steps, 2, 3)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


# The exhaustive tier: the quick tier's compiled training step is tests/test_resets.py's (a
# layer-norm LSTM with zoneout and recurrent dropout, a GRU with a learned state); this one adds
# dropconnect, inter-layer dropout and a residual GRU at 54 s on 2 cores.
@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    """Same seed, same masks: inductor must leave torch.randint/dropout to aten (its own
    generator would draw other seeds), hence fallback_random."""
    model = Stack(dtype=torch.float64, zoneout=0.3, recurrent_dropout=0.3)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)

    def step(run):
        model.zero_grad()
        torch.manual_seed(5)
        out = run(x)
        out.square().sum().backward()
        return out.detach(), grads(model)

    with inductor_config.patch(fallback_random=True):
        compiled_out, compiled_grads = step(compiled)
    eager_out, eager_grads = step(model)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-10, atol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), compiled_grads, eager_grads):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_compiled_training_is_reproducible_with_inductor_random():
    """Without fallback_random inductor draws the seeds with its own generator: other masks
    than eager, but still a pure function of torch.manual_seed."""
    model = fastrnn.GRU(3, 4, zoneout=0.3, candidate_dropout=0.2)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(5, 2, 3)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(compiled(x)[0])
    assert torch.equal(runs[0], runs[1])


def test_export_of_eval_model():
    """One op per layer and direction: the fastrnn op for the layer-norm LSTM, torch's own
    kernel (fastrnn::gru_native) for the GRU, whose options are torch.nn's."""
    model = Stack().eval()
    x = torch.randn(5, 2, 3)
    exported = torch.export.export(model, (x,))
    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count("fastrnn.lstm_forward.default") == 4
    assert targets.count("fastrnn.gru_native.default") == 1
    torch.testing.assert_close(exported.module()(x), model(x))


def test_cpu_autocast_runs_in_bfloat16():
    model = fastrnn.LayerNormLSTM(3, 8, num_layers=2, zoneout_hidden=0.1).eval()
    x = torch.randn(6, 2, 3)
    expected, (h_n, _) = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_low, c_low) = model(x)
    assert out.dtype == h_low.dtype == c_low.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=5e-2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(x)
    out.float().sum().backward()
    assert model.weight_hh_l1.grad.dtype == torch.float32
    assert torch.isfinite(model.weight_hh_l1.grad).all()


def _states(state):
    return state if isinstance(state, tuple) else (state,)


def _hx(model, states):
    return tuple(states) if len(model.state_names) == 2 else states[0]


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.LayerNormGRU], ids=lambda c: c.__name__)
def test_cpu_autocast_states_feed_back_as_hx(cls):
    """Truncated BPTT under autocast: the bfloat16 states a call returns are the next call's hx
    (float32 input), and float32 states go with a bfloat16 input, as torch.nn accepts; both
    are cast to the autocast dtype, so the two chunks agree exactly."""
    model = cls(3, 6, num_layers=2, bidirectional=True).train()
    x = torch.randn(10, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, state = model(x[:5])
        low = [s.detach() for s in _states(state)]
        assert all(s.dtype == torch.bfloat16 for s in low)
        torch.manual_seed(2)
        second, second_state = model(x[5:], _hx(model, low))
        torch.manual_seed(2)
        mixed, mixed_state = model(x[5:].bfloat16(), _hx(model, [s.float() for s in low]))
    assert second.dtype == mixed.dtype == torch.bfloat16
    for a, b in zip((second, *_states(second_state)), (mixed, *_states(mixed_state))):
        assert torch.equal(a, b)
    (first.float().sum() + second.float().sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_cpu_autocast_refuses_a_float64_hx():
    """Autocast leaves float64 alone (as torch's does), so a float64 hx cannot join a
    lower-precision call: a TypeError naming it, not an error from inside the op."""
    model = fastrnn.GRU(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), \
            pytest.raises(TypeError, match=r"hx must be .*under autocast.*got torch.float64"):
        model(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))


@pytest.mark.gpu
def test_cuda_autocast_runs_in_bfloat16():
    model = Stack(device="cuda").eval()
    x = torch.randn(6, 2, 3, device="cuda")
    expected, _ = model.lstm(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, (h_n, c_n) = model.lstm(x)
        result = model(x)
    assert out.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=5e-2)
    assert torch.isfinite(result).all()


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_training_step():
    model = Stack(device="cuda", zoneout=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    static_x = torch.randn(6, 4, 3, device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = model(static_x).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):                 # warm up: autotuning, lazy allocations
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        losses.append(static_loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(set(losses)) == 3, "each replay reads the new input"
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
