"""A persistent Triton launch whose grid barrier gives up falls back to the per-step driver.

On a CPU the interpreter runs a grid's programs one after another, so a persistent kernel with
several column splits can never pass its first tile barrier: with a small wait bound
(``barrier_spin_limit``) it aborts every time, which is how these tests force the abort a GPU
meets when its programs are not all resident.  The call must then come back with the per-step
driver's results (bit for bit), warn once naming the shape, and later calls of that
configuration must take the per-step driver directly.  The deferred check a GPU uses (the flag
read when its copy has arrived, never waited on) is tested with a stand-in event.
"""
import warnings

import pytest
import torch

pytest.importorskip("triton")

import support  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn.backends.fused import poisoned_outputs  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402
from support import case, cast, make_call, make_inputs  # noqa: E402

pytestmark = pytest.mark.skipif(not support.INTERPRET,
                                reason="CPU Triton tests need TRITON_INTERPRET=1")
PERSISTENT_SPLITS = dict(block_u=16, persistent=True)   # H = 24: two column splits
PER_STEP = dict(block_u=16, persistent=False)


@pytest.fixture(autouse=True)
def fresh_fallbacks():
    """Each test starts with no configuration remembered and nothing pending."""
    def clear():
        launch._per_step.clear()
        launch._warned.clear()
        launch._pending.clear()
        launch._captured.clear()
    clear()
    yield
    clear()


def _train(c, tiling, launched=None):
    """Forward and backward of the op on the Triton backend with ``tiling`` forced; the
    results, the gradients and the warnings raised."""
    call = make_call(c, cast(make_inputs(c, generator_seed=3), torch.float32, "cpu"))
    with warnings.catch_warnings(record=True) as caught, poisoned_outputs(), \
            launch.forced_tiling(**tiling), launch.barrier_spin_limit(20):
        warnings.simplefilter("always")
        outputs, grads = support.run_call(call, "triton", torch.float32)
    return outputs, grads, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _kernels_launched(monkeypatch):
    names = []
    original = launch._launch

    def spy(kernel, grid, args, **kwargs):
        names.append(kernel.fn.__name__)
        return original(kernel, grid, args, **kwargs)
    monkeypatch.setattr(launch, "_launch", spy)
    return names


@pytest.mark.slow  # the quick tier aborts real launches in test_interleaved.py
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_aborted_launch_returns_the_per_step_drivers_result(cell, monkeypatch):
    c = case(cell, "everything", hidden=24)
    want_out, want_grad, quiet = _train(c, PER_STEP)
    assert not quiet
    launched = _kernels_launched(monkeypatch)
    got_out, got_grad, warned = _train(c, PERSISTENT_SPLITS)
    # Both passes aborted (their programs never meet under the interpreter) and were rerun.
    assert "forward_persistent" in launched and "backward_persistent" in launched
    assert "forward_phase" in launched and "backward_phase" in launched
    for name, value in want_out.items():
        torch.testing.assert_close(got_out[name], value, rtol=0, atol=0, msg=name)
    for name, value in want_grad.items():
        torch.testing.assert_close(got_grad[name], value, rtol=0, atol=0, msg=f"d{name}")
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2, messages       # one per configuration: forward, backward
    for message, kernel_pass in zip(messages, ("forward", "backward")):
        assert f"{cell} " in message and kernel_pass in message
        assert "B=3 H=24" in message and "per-step driver" in message


@pytest.mark.slow  # the quick tier aborts real launches in test_interleaved.py
def test_the_configuration_is_remembered(monkeypatch):
    c = case("lstm", "layer_norm", hidden=24)
    first_out, _, warned = _train(c, PERSISTENT_SPLITS)
    assert len(warned) == 2
    launched = _kernels_launched(monkeypatch)
    again_out, _, warned_again = _train(c, PERSISTENT_SPLITS)
    assert not warned_again                   # warned once per configuration
    assert "forward_persistent" not in launched and "backward_persistent" not in launched
    for name, value in first_out.items():
        torch.testing.assert_close(again_out[name], value, rtol=0, atol=0, msg=name)
    # Another shape is another configuration: it tries the persistent kernel again.
    launched.clear()
    _, _, warned_other = _train(case("lstm", "layer_norm", hidden=24, batch=4), PERSISTENT_SPLITS)
    assert "forward_persistent" in launched and len(warned_other) == 2


def test_a_call_that_does_not_abort_is_not_rerun(monkeypatch):
    """One split has no barrier; nothing is watched, nothing rerun, nothing warned."""
    launched = _kernels_launched(monkeypatch)
    _, _, warned = _train(case("gru", "zoneout", hidden=24), dict(persistent=True))
    assert launched == ["forward_persistent", "backward_persistent"] and not warned
    assert not launch._per_step


class _Event:
    """A CUDA event stand-in whose work completes when the test says so."""
    def __init__(self):
        self.done = False
        self.waited = False

    def query(self):
        return self.done

    def synchronize(self):
        self.waited = True
        self.done = True


def _pending_watch(flag, reruns):
    event = _Event()
    key = ("cuda:0", "forward", 8, 32, torch.bfloat16)
    watch = launch._Watch(key, "lstm forward kernel at B=8 H=32 T=4 bfloat16",
                          torch.tensor([flag], dtype=torch.int32), event,
                          lambda: reruns.append(key), None)
    launch._pending.append(watch)
    return event, key


def test_a_deferred_flag_is_read_once_its_copy_has_arrived():
    reruns = []
    event, key = _pending_watch(1, reruns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        launch.check_barriers()               # not arrived: nothing read, nothing waited for
        assert not reruns and not event.waited and len(launch._pending) == 1
        event.done = True
        launch.check_barriers()               # arrived: read, rerun, reported late
    assert reruns == [key] and not launch._pending and key in launch._per_step
    assert len(caught) == 1 and "work queued between" in str(caught[0].message)


def test_waiting_resolves_every_pending_flag():
    reruns = []
    aborted, _ = _pending_watch(1, reruns)
    fine, _ = _pending_watch(0, reruns)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        launch.check_barriers(wait=True)
    assert aborted.waited and fine.waited and len(reruns) == 1 and not launch._pending


def test_a_captured_graphs_flag_is_read_only_on_request():
    """Under CUDA graph capture the workspace flag is kept; reading a device flag synchronizes,
    so only ``check_barriers(wait=True)`` reads it, and a replay cannot be rerun."""
    key = ("cuda:0", "backward", 8, 32, torch.float16)
    flag = torch.tensor([1], dtype=torch.int32)
    launch._captured.append(launch._Watch(key, "gru backward kernel at B=8 H=32 T=4 float16",
                                          flag, None, None, None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        launch.check_barriers()
        assert not caught and launch._captured
        launch.check_barriers(wait=True)
    assert not launch._captured and key in launch._per_step
    assert len(caught) == 1 and "capture the graph again" in str(caught[0].message)
