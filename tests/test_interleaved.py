"""The persistent Triton recurrences with several column splits — what a GPU runs by default —
run on a CPU, their programs interleaved (tests/interleave.py), against the float64 reference.

Under the plain interpreter a grid's programs run one after another, so a tile barrier never
opens and those kernels are only ever read.  Here every program is a greenlet switched at each
atomic and CTA barrier (and, in the seeded schedules, at a quarter of the loads and stores):
the tile barriers, the step-parity exchange buffers, the layer-norm moment and sum exchanges,
the cell-norm LSTM's cell exchange and the abort flag run as a protocol between programs.

* Each cell family (LSTM, GRU; with layer norm over one group and per gate) and option group
  (regularizers in training, lengths, reverse, eval) runs its forward and backward at forced
  tilings of ``support.TILINGS`` made persistent: two and three column splits (the last one
  partial), two batch tiles (the second partial, ending steps before the first), hoisted and
  streamed weights, reduction chunks wider and narrower than a split (both ways of publishing
  the transposed product).  Each under round-robin — lock-step, which hides a barrier that
  opens early — and seeded random and skewed-speed schedules, with the address check on;
  results must match the reference and be the same under every schedule (bit for bit).
* A partner that never runs, one that stops mid-protocol, and a wait bound of one poll must
  end in the project's abort: the launch gives up, the call is rerun on the per-step driver
  (with the reference's results) and warns; never a hang (the executor bounds its switches).
The default tier runs one shape per (cell, option group), under round-robin only without layer
norm, and each abort with one cell; the slow tier sweeps every shape under more schedules and
runs each abort with the other cell.
"""
import dataclasses
import inspect
import warnings

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import interleave  # noqa: E402
import support  # noqa: E402
from fastrnn.backends.fused import poisoned_outputs  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402
from interleave import Fault, RandomOrder, RoundRobin, Skewed, interleaved  # noqa: E402
from support import REGULARIZED, check_against_reference, tiling_case  # noqa: E402
# Autouse: every test starts with no configuration remembered as aborted (one remembered from
# another test would send its calls to the per-step driver, and nothing here would be tested).
from test_fallback import fresh_fallbacks  # noqa: E402,F401

pytestmark = pytest.mark.skipif(interleave.unsupported() is not None,
                                reason=str(interleave.unsupported()))
CELLS = ("lstm", "gru")
MEMORY_SWITCH = 0.25

# Persistent tilings with several splits: (variant of support.TILINGS, tiling fields over it).
SPLIT_TILINGS = {
    # 2 splits (H = 24: the second half empty) x 2 batch tiles of 16 (B = 18: the second has 2
    # rows, whose lengths end it one step early); chunks the width of a split.
    "2_splits_2_tiles": ("driver_2_splits_2_batch_tiles", {}),
    # 3 splits (H = 40: the third half empty), chunks two splits wide.
    "3_splits": ("driver_3_splits", {}),
    # 2 splits of 32 (the second of 8 units), the weight streamed in chunks narrower than a
    # split (``publish_transposed_product``'s other branch).
    "streamed_narrow_chunks": ("streamed_chunks", dict(block_u=32)),
    # 3 splits, the weight streamed in chunks of a split's width.
    "3_splits_streamed": ("driver_streamed", {}),
}

# Option groups: (option set of support.OPTIONS, fields over it).  Without layer norm the
# recurrent input is exchanged through ``out`` (plain) or, with recurrent dropout, the
# step-parity ``inputs`` buffer; the layer-norm LSTM exchanges its cell instead.
OPTION_GROUPS = {
    "plain": ("plain", {}),
    "regularized_reverse": ("reverse_lengths", REGULARIZED),
    "everything": ("everything", {}),
    "everything_per_gate_reverse": ("everything_per_gate_reverse", {}),
    "everything_eval": ("everything_eval", {}),
    # Episode starts (support.RESETS): the reset state replaces the exchanged recurrent input
    # (and, for the layer-norm LSTM, h_{t-1} computed from the cell exchange and the state its
    # zoneout keeps), the carried c; backward, the carries go to the reset states' gradients.
    "resets_everything_reverse": ("resets_everything_reverse", {}),
    "resets_eval": ("resets_eval", {}),
}
# The default tier's shape per option group: every shape with and without layer norm.
DEFAULT_SHAPE = {"plain": "streamed_narrow_chunks", "regularized_reverse": "2_splits_2_tiles",
                 "everything": "3_splits", "everything_per_gate_reverse": "2_splits_2_tiles",
                 "everything_eval": "3_splits_streamed",
                 "resets_everything_reverse": "2_splits_2_tiles", "resets_eval": None}
# Option groups whose default-tier shape runs under one seeded schedule only (the schedules'
# own coverage comes from the groups above; these add the paths of one feature).
ONE_SCHEDULE_GROUPS = ("resets_everything_reverse",)
# Option groups the default tier also runs under round-robin.  Lock-step hides a barrier that
# opens early (every program has arrived by the time any leaves), but it lets a program run
# from one barrier to the next before its partners move on: into the next step's writes of a
# buffer they still read, which the step-parity buffers prevent.  Without layer norm a step has
# one barrier and those buffers alone keep the steps apart; the layer-norm groups (a second
# barrier per step) run round-robin in the slow tier, to keep the default tier short.
LOCK_STEP_GROUPS = ("plain", "regularized_reverse")


def schedules(tier):
    """(schedule, memory switch) of each run of a configuration: round-robin at atomics and
    barriers only, then seeded schedules that also switch at loads and stores."""
    if tier == "default":
        return [(RoundRobin(), 0.0), (RandomOrder(1), MEMORY_SWITCH),
                (Skewed(2), MEMORY_SWITCH)]
    return [(RandomOrder(11), MEMORY_SWITCH), (Skewed(12), MEMORY_SWITCH)]


def split_case(cell: str, group: str, shape: str):
    """(case, tiling fields, splits) of option group ``group`` at persistent tiling ``shape``."""
    variant, fields = SPLIT_TILINGS[shape]
    options, overrides = OPTION_GROUPS[group]
    test_case, tiling = tiling_case(cell, options, variant)
    overrides = {name: value for name, value in overrides.items()
                 if name != "zoneout_cell" or cell == "lstm"}
    test_case = dataclasses.replace(test_case, **overrides)
    tiling = dict(tiling, **fields, persistent=True)
    return test_case, tiling, triton.cdiv(test_case.hidden, tiling["block_u"])


def run_interleaved(test_case, tiling, schedule, memory_switch, **executor_options):
    """The case against the reference, with ``tiling`` forced, every launch interleaved.
    Returns (executor, RuntimeWarnings raised)."""
    with warnings.catch_warnings(record=True) as caught, \
            interleaved(schedule, memory_switch=memory_switch, **executor_options) as executor, \
            launch.forced_tiling(**tiling), poisoned_outputs():
        warnings.simplefilter("always")
        check_against_reference(test_case, "triton", torch.float32)
    return executor, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def check_persistent(cell, group, shape, schedule, memory_switch):
    test_case, tiling, splits = split_case(cell, group, shape)
    executor, warned = run_interleaved(test_case, tiling, schedule, memory_switch)
    assert not warned, [str(w.message) for w in warned]      # no barrier gave up
    ran = {record.kernel: record for record in executor.launches}
    # Both passes ran persistent, with every split; nothing fell back to the per-step driver.
    assert set(ran) == {"forward_persistent", "backward_persistent"}, sorted(ran)
    for record in ran.values():
        assert record.grid[1] == splits > 1 and record.atomics > 0, record


def runs(tier):
    """(cell, option group, shape, schedule, memory switch) of a tier's runs: the default tier
    runs one shape per option group under the default schedules (round-robin only for
    ``LOCK_STEP_GROUPS``), the slow tier every shape under two more seeded schedules and
    round-robin wherever the default tier does not run it."""
    found = []
    for cell in CELLS:
        for group in OPTION_GROUPS:
            for shape in SPLIT_TILINGS:
                lock_step, *seeded = schedules("default")
                in_default = shape == DEFAULT_SHAPE[group]
                lock_step_in_default = in_default and group in LOCK_STEP_GROUPS
                if tier == "default":
                    if group in ONE_SCHEDULE_GROUPS:
                        seeded = seeded[:1]
                    chosen = ([lock_step] if lock_step_in_default else []) \
                        + (seeded if in_default else [])
                else:
                    chosen = schedules("sweep") + ([] if lock_step_in_default else [lock_step])
                found += [(cell, group, shape, *run) for run in chosen]
    return found


def run_ids(found):
    return ["-".join([cell, group, shape, f"{schedule}{'_memory' if memory else ''}"])
            for cell, group, shape, schedule, memory in found]


# --------------------------------------------------------------------- the executor itself

@triton.jit
def _meet(counter, seen_ptr, LIMIT: tl.constexpr):
    """Each program arrives, then polls (at most LIMIT times) until every program has."""
    tl.atomic_add(counter, 1)
    seen = tl.atomic_add(counter, 0)
    polls = 0
    while (seen < tl.num_programs(0)) & (polls < LIMIT):
        seen = tl.atomic_add(counter, 0)
        polls += 1
    tl.store(seen_ptr + tl.program_id(0), seen)


@triton.jit
def _bump(x_ptr, n):
    lanes = tl.arange(0, 8)
    tl.store(x_ptr + lanes, tl.load(x_ptr + lanes, mask=lanes < n, other=0.0) + 1.0,
             mask=lanes < n)


def _meeting(programs=3, **executor_options):
    counter = torch.zeros(1, dtype=torch.int32)
    seen = torch.zeros(programs, dtype=torch.int32)
    with interleaved(executor_options.pop("schedule", RoundRobin()),
                     **executor_options) as executor:
        _meet[(programs,)](counter, seen, 200)
    return seen.tolist(), executor.launches[0]


@pytest.mark.parametrize("schedule", [RoundRobin(), RandomOrder(0), Skewed(0)], ids=str)
def test_programs_meet_at_a_spin_barrier(schedule):
    """The plain interpreter runs the programs one after another: each sees only the arrivals
    before its own.  Interleaved, every program sees every arrival."""
    seen, record = _meeting(schedule=schedule, memory_switch=0.5)
    assert seen == [3, 3, 3] and record.grid == (3, 1, 1)


def test_a_program_that_never_runs_or_stops():
    seen, record = _meeting(faults=[Fault("_meet", (1, 0))])
    assert seen == [2, 0, 2] and record.never_ran == [(1, 0, 0)]
    # Stopped after its arrival: the others see it arrive; its own result is never written.
    seen, record = _meeting(faults=[Fault("_meet", (2, 0), atomics=1)])
    assert seen == [3, 3, 0] and record.stopped == [(2, 0, 0)]


def test_an_access_outside_every_tensor_names_the_kernel_line():
    x = torch.zeros(6)
    with interleaved(RoundRobin()):
        _bump[(1,)](x, 6)            # every active lane inside x
    assert x.tolist() == [1.0] * 6
    with pytest.raises(Exception) as raised, interleaved(RoundRobin()):
        _bump[(1,)](x[:5], 6)   # one lane past the view: inside x's storage, not an argument
    messages = support.error_messages(raised.value)
    source, first = inspect.getsourcelines(_bump.fn)
    line = first + next(i for i, text in enumerate(source) if "tl.load" in text)
    assert any(f"test_interleaved.py:{line}" in m and "load of 4 bytes" in m for m in messages), \
        messages


def test_changed_interpreter_internals_are_named(monkeypatch):
    from triton.runtime import interpreter

    def create_atomic_rmw(self, op, pointer, value, mask, sem, scope):
        raise AssertionError("not called")
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_atomic_rmw", create_atomic_rmw)
    reason = interleave.unsupported()
    assert reason is not None and "InterpreterBuilder.create_atomic_rmw takes" in reason


def test_a_stuck_launch_fails_instead_of_hanging():
    with pytest.raises(Exception) as raised:
        _meeting(faults=[Fault("_meet", (0, 0))], max_switches=50)
    assert any("no end after 50 switches" in m for m in support.error_messages(raised.value))


# ----------------------------------------------------------- persistent kernels, interleaved

@pytest.mark.parametrize("cell,group,shape,schedule,memory_switch", runs("default"),
                         ids=run_ids(runs("default")))
def test_persistent_splits_match_the_reference(cell, group, shape, schedule, memory_switch):
    check_persistent(cell, group, shape, schedule, memory_switch)


@pytest.mark.slow
@pytest.mark.parametrize("cell,group,shape,schedule,memory_switch", runs("sweep"),
                         ids=run_ids(runs("sweep")))
def test_persistent_splits_sweep(cell, group, shape, schedule, memory_switch):
    check_persistent(cell, group, shape, schedule, memory_switch)


@pytest.mark.parametrize("cell", CELLS)
def test_the_per_step_driver_reads_inside_its_tensors(cell):
    """The per-step driver (one launch per step, what an abort falls back to) under the address
    check, reversed with lengths in two batch tiles: at the call's first step a row past its
    length once read its previous state one step past the end of ``out`` (and the LSTM's
    ``middle``), which no result showed."""
    test_case, tiling = tiling_case(cell, "reverse_lengths", "driver_2_splits_2_batch_tiles")
    run_interleaved(test_case, dict(tiling, persistent=False), RandomOrder(3), MEMORY_SWITCH)


def _results(test_case, tiling, schedule, memory_switch):
    call = support.make_call(test_case, support.cast(support.make_inputs(test_case),
                                                     torch.float32, "cpu"))
    with interleaved(schedule, memory_switch=memory_switch), launch.forced_tiling(**tiling), \
            poisoned_outputs():
        outputs, grads = support.run_call(call, "triton", torch.float32)
    return {**outputs, **{f"d{name}": grad for name, grad in grads.items()}}


@pytest.mark.parametrize("cell,group,shape", [
    ("gru", "everything_per_gate_reverse", "3_splits"),
    pytest.param("lstm", "everything", "2_splits_2_tiles", marks=pytest.mark.slow),
    pytest.param("lstm", "regularized_reverse", "3_splits_streamed", marks=pytest.mark.slow)])
def test_results_do_not_depend_on_the_schedule(cell, group, shape):
    """Every sum runs in a fixed order: any order of the programs gives the same bits (and
    leaves the same positions unwritten: the saved rows of steps a row skips stay NaN)."""
    test_case, tiling, _ = split_case(cell, group, shape)
    results = [_results(test_case, tiling, *run) for run in schedules("default")]
    for other in results[1:]:
        for name, value in results[0].items():
            torch.testing.assert_close(other[name], value, rtol=0, atol=0, equal_nan=True,
                                       msg=name)


# ----------------------------------------------------------------------------------- aborts

# Each waiting program polls ABORT_POLLS times before it gives up: far above its waits under a
# random schedule (tens of polls), a fraction of a second of interpreted polling.
ABORT_POLLS = 200
ABORTS = {
    # A partner of batch tile 0 (forward) or 1 (backward) never runs: its splits wait alone.
    "forward_partner_never_runs": [Fault("forward_persistent", (0, 1))],
    "backward_partner_never_runs": [Fault("backward_persistent", (1, 0))],
    # A partner stops after arriving at its first barrier (its partners pass that one and wait
    # at the next), or inside the second batch tile's protocol, several barriers in.
    "forward_partner_stops_after_arriving": [Fault("forward_persistent", (0, 0), atomics=1)],
    "backward_partner_stops_mid_protocol": [Fault("backward_persistent", (1, 1), atomics=9)],
    # Everyone runs, but a barrier gives up after one poll, before a late partner arrives.
    "one_poll": [],
}
# The default tier runs each abort with one cell, the slow tier with the other.
ABORT_RUNS = [pytest.param(abort, cell, marks=[pytest.mark.slow] if i % 2 == slow else [],
                           id=f"{abort}-{cell}")
              for i, abort in enumerate(ABORTS) for slow, cell in enumerate(CELLS)]


@pytest.mark.parametrize("abort,cell", ABORT_RUNS)
def test_an_abort_ends_in_the_per_step_rerun(abort, cell):
    faults = ABORTS[abort]
    test_case, tiling, _ = split_case(cell, "everything", "2_splits_2_tiles")
    executor, warned = run_interleaved(test_case, tiling, RandomOrder(5), MEMORY_SWITCH,
                                       faults=faults, spin_limit=ABORT_POLLS if faults else 1)
    kernels = [record.kernel for record in executor.launches]
    for fault in faults:
        record = executor.launches[kernels.index(fault.kernel)]
        assert (record.never_ran if fault.atomics is None else record.stopped) \
            == [(*fault.program, 0)], record
    # Each aborted pass warned (naming it) and was rerun by the per-step driver, whose results
    # check_against_reference has compared; a pass without a fault ran persistent to its end.
    aborted = {fault.kernel for fault in faults} or {"forward_persistent", "backward_persistent"}
    messages = [str(w.message) for w in warned]
    assert len(messages) == len(aborted), messages
    for kernel in aborted:
        kernel_pass = kernel.split("_")[0]
        assert any(f"Triton {cell} " in m and f"{kernel_pass} kernel at B=18 H=24" in m
                   and "stopped at a grid barrier" in m for m in messages), messages
        assert kernels.index(f"{kernel_pass}_phase") > kernels.index(kernel)
    assert set(kernels) - {"forward_phase", "backward_phase"} \
        == {"forward_persistent", "backward_persistent"}, kernels


def _inference(test_case, tiling, faults, save):
    """(results, launched kernels, RuntimeWarnings) of the Triton forward op of the case, with or
    without its saved tensors, its programs interleaved (seeded), the given faults injected."""
    from fastrnn import ops
    call = support.make_call(test_case, support.cast(support.make_inputs(test_case),
                                                     torch.float32, "cpu"))
    # The first run's abort must neither send the second per-step nor silence its warning.
    launch._per_step.clear()
    launch._warned.clear()
    with warnings.catch_warnings(record=True) as caught, \
            interleaved(RandomOrder(7), memory_switch=MEMORY_SWITCH, faults=faults,
                        spin_limit=ABORT_POLLS) as executor, \
            launch.forced_tiling(**tiling), poisoned_outputs():
        warnings.simplefilter("always")
        results = ops.forward(call, "triton", save=save)
    warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    return results, [record.kernel for record in executor.launches], warned


@pytest.mark.parametrize("aborted", [False, True], ids=["persistent", "aborted"])
def test_inference_with_several_splits_and_its_rerun(aborted):
    """A forward no backward follows (no saved tensor given): the persistent layer-norm LSTM
    with two splits exchanging its cell, and, when a partner never runs, its per-step rerun,
    which carries c in two slots instead of the saved cell.  Out and the final states are
    bitwise the saving forward's under the same faults."""
    test_case, tiling, _ = split_case("lstm", "everything", "2_splits_2_tiles")
    faults = [Fault("forward_persistent", (0, 1))] if aborted else []
    kept, kernels, warned = _inference(test_case, tiling, faults, save=False)
    full, full_kernels, _ = _inference(test_case, tiling, faults, save=True)
    assert kernels == full_kernels
    assert ("forward_phase" in kernels) == aborted == bool(warned), (kernels, warned)
    assert len(kept) == 3
    for name, a, b in zip(("out", "h_n", "c_n"), kept, full):
        assert torch.equal(a, b), name
