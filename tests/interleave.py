"""A cooperative executor for Triton's interpreter: the programs of a grid run interleaved, so
kernels whose programs wait for each other (the persistent recurrences' tile barriers) run on a
CPU.

Triton's interpreter (TRITON_INTERPRET=1) runs a grid's programs one after another, and a spin
barrier between them never opens.  Here each program runs as its own greenlet; at every atomic
operation and every CTA barrier (``tl.debug_barrier``) — and, with probability
``memory_switch``, at a load or store — it hands control back to a scheduler, which picks the
program that runs next: ``RoundRobin`` (lock-step), ``RandomOrder`` (seeded) or ``Skewed``
(seeded, each program at its own speed for the launch, some many times slower than others).
Memory stays sequentially consistent, so this finds protocol and indexing errors (a barrier
that opens early, an exchange buffer reused while a partner still reads it), not weak-memory
ones.  Round-robin alone keeps the programs in step, which hides a barrier that opens early:
run random and skewed schedules too.

Also, per launch of a kernel:
  * an address check: every active lane of a load, store or atomic must lie inside one of the
    launch's tensor arguments, else ``AddressError`` names the kernel's file:line (the
    interpreter would otherwise read or write whatever memory is there);
  * ``Fault``: a program that never runs, or stops for good after its k-th atomic — a partner
    that is not resident, or stalls mid-protocol;
  * a bound on scheduling switches, so that a protocol which cannot finish fails the test
    (``NoProgress``) instead of hanging it.
Tile barriers are bounded by ``spin_limit`` polls (``launch.barrier_spin_limit``): well above
what a wait takes here (``Launch.longest_wait``), far below the default bound, which would take
hours of interpreted polling (a poll costs about a millisecond).

Everything this relies on in triton's interpreter is in ``_Interpreter``: where those internals
differ from what it expects, ``unsupported()`` says how, for a test skip.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import random
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

# Switches a launch may make before it counts as stuck: a persistent recurrence at test sizes
# makes at most about ten thousand (one per atomic and CTA barrier, a quarter of the loads and
# stores; 8,400 the most seen, a skewed schedule's backward in the slow tier), and a barrier
# that gives up two per poll of each program waiting there (16,000 each at SPIN_LIMIT).
MAX_SWITCHES = 200_000
# The executor's barrier bound, in polls (two atomics each): over ten times the longest wait
# seen in the persistent recurrences at test sizes (about 660 polls, a skewed schedule's
# backward in the slow tier; 340 in the default tier, about ten under random order).
SPIN_LIMIT = 8000

_HERE = os.path.abspath(__file__)


class AddressError(AssertionError):
    """A load, store or atomic with an active lane outside every tensor argument."""


class NoProgress(AssertionError):
    """A launch made MAX_SWITCHES switches without finishing."""


# ----------------------------------------------------------------------------------- adapter

class _Interpreter:
    """Every use of triton's interpreter internals (checked against triton 3.6.0 and 3.9.0):
    ``GridExecutor.__call__`` loops over the grid, setting ``interpreter_builder.grid_idx`` (the
    only per-program state) and then calling ``self.fn(**args)`` once per program; memory and
    synchronization go through methods of ``interpreter_builder``, pointers being numpy arrays
    of host addresses in ``TensorHandle.data``, and CPU tensors are run in place (the addresses
    are the arguments' own)."""

    # method -> its leading parameters, which the wrappers read (the rest pass through: the
    # cache hints differ between versions)
    METHODS = {
        "create_masked_load": ("self", "ptrs", "mask"),
        "create_masked_store": ("self", "ptrs", "value", "mask"),
        "create_atomic_rmw": ("self", "rmwOp", "ptr", "val", "mask"),
        "create_atomic_cas": ("self", "ptr"),
        "create_barrier": ("self",),
    }

    def __init__(self):
        from triton.runtime import interpreter
        self.module = interpreter
        self.builder = interpreter.interpreter_builder

    @staticmethod
    def unsupported() -> Optional[str]:
        """Why this adapter cannot drive the installed triton's interpreter (None: it can)."""
        try:
            import triton
            from triton.runtime import interpreter
        except ImportError as error:
            return f"triton's interpreter is not importable ({error})"
        where = f"triton {triton.__version__}'s interpreter"
        for name in ("GridExecutor", "InterpreterBuilder", "interpreter_builder", "TensorHandle"):
            if not hasattr(interpreter, name):
                return f"{where} has no {name}"
        executor = interpreter.GridExecutor
        if list(inspect.signature(executor.__init__).parameters)[:2] != ["self", "fn"]:
            return f"{where}: GridExecutor(...) no longer takes the program function first"
        try:
            source = inspect.getsource(executor.__call__)
        except (OSError, TypeError):
            return f"{where}: GridExecutor.__call__ has no source to check"
        if "set_grid_idx(" not in source or "self.fn(**args)" not in source:
            return (f"{where}: GridExecutor.__call__ does not run each program as "
                    "self.fn(**args) after set_grid_idx")
        for name, attribute in (("set_grid_idx", "grid_idx"), ("set_grid_dim", "grid_dim")):
            setter = getattr(interpreter.InterpreterBuilder, name, None)
            if setter is None or f"self.{attribute} =" not in inspect.getsource(setter):
                return f"{where}: InterpreterBuilder.{name} does not set self.{attribute}"
        for name, parameters in _Interpreter.METHODS.items():
            method = getattr(interpreter.InterpreterBuilder, name, None)
            if method is None:
                return f"{where}: InterpreterBuilder has no {name}"
            taken = tuple(inspect.signature(method).parameters)
            if taken[:len(parameters)] != parameters:
                return (f"{where}: InterpreterBuilder.{name} takes {taken}, not "
                        f"{parameters} first")
        if not hasattr(interpreter.TensorHandle, "get_element_ty"):
            return f"{where}: TensorHandle has no get_element_ty"
        return None

    @property
    def grid_idx(self) -> tuple:
        return self.builder.grid_idx

    @grid_idx.setter
    def grid_idx(self, index: tuple) -> None:
        self.builder.grid_idx = index

    def programs(self) -> int:
        nx, ny, nz = self.builder.grid_dim
        return nx * ny * nz

    @staticmethod
    def lanes(pointers, mask) -> Tuple[object, int]:
        """(addresses of the active lanes, bytes per element) of a pointer handle."""
        addresses = pointers.data.reshape(-1)
        if mask is not None:
            addresses = addresses[mask.data.reshape(-1).astype(bool)]
        return addresses, max(pointers.get_element_ty().primitive_bitwidth // 8, 1)

    @contextlib.contextmanager
    def patched(self, executor: "Executor"):
        """Within the block every interpreted launch runs through ``executor``."""
        grid_call = self.module.GridExecutor.__call__
        builder = self.builder
        originals = {name: getattr(builder, name) for name in
                     ("create_masked_load", "create_masked_store", "create_atomic_rmw",
                      "create_atomic_cas", "create_barrier")}

        def call(grid_executor, *args, **kwargs):
            program = grid_executor.fn
            grid_executor.fn = _Deferred(program, executor)
            try:
                with executor.launch(program.__name__, _extents((args, kwargs))):
                    return grid_call(grid_executor, *args, **kwargs)
            finally:
                grid_executor.fn = program

        def load(ptrs, mask, *rest):
            executor.memory(*self.lanes(ptrs, mask), "load")
            return originals["create_masked_load"](ptrs, mask, *rest)

        def store(ptrs, value, mask, *rest):
            executor.memory(*self.lanes(ptrs, mask), "store")
            return originals["create_masked_store"](ptrs, value, mask, *rest)

        def atomic_rmw(rmw_op, ptr, val, mask, *rest):
            executor.atomic(*self.lanes(ptr, mask))
            return originals["create_atomic_rmw"](rmw_op, ptr, val, mask, *rest)

        def atomic_cas(ptr, *rest):
            executor.atomic(*self.lanes(ptr, None))
            return originals["create_atomic_cas"](ptr, *rest)

        def barrier():
            executor.barrier()
            return originals["create_barrier"]()

        self.module.GridExecutor.__call__ = call
        for name, wrapper in (("create_masked_load", load), ("create_masked_store", store),
                              ("create_atomic_rmw", atomic_rmw),
                              ("create_atomic_cas", atomic_cas), ("create_barrier", barrier)):
            setattr(builder, name, wrapper)
        try:
            yield
        finally:
            self.module.GridExecutor.__call__ = grid_call
            for name in originals:
                delattr(builder, name)      # the class's methods again


class _Deferred:
    """Stands in for a launch's program function: each call (one per program, its index in
    ``grid_idx``) queues the program; the last one runs them all, interleaved.  It shows the
    function's signature and globals, which the grid executor binds arguments to and patches
    triton.language through."""

    def __init__(self, program: Callable, executor: "Executor"):
        self.program = program
        self.executor = executor
        self.__signature__ = inspect.signature(program)
        self.__globals__ = program.__globals__
        self.__name__ = program.__name__

    def __call__(self, **args):
        self.executor.queue(self.program, args)


def _extents(value, found=None) -> List[Tuple[int, int]]:
    """[(first byte, end byte)] of every tensor in a launch's (nested tuple) arguments."""
    found = [] if found is None else found
    if isinstance(value, torch.Tensor):
        if value.numel():
            span = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride()))
            found.append((value.data_ptr(), value.data_ptr() + span * value.element_size()))
    elif isinstance(value, dict):
        for item in value.values():
            _extents(item, found)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _extents(item, found)
    return found


def _union(extents: List[Tuple[int, int]]):
    """(starts, ends) int64 arrays of the disjoint byte ranges the extents cover, sorted."""
    merged: List[List[int]] = []
    for start, end in sorted(extents):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return (np.array([m[0] for m in merged], dtype=np.int64),
            np.array([m[1] for m in merged], dtype=np.int64))


# ----------------------------------------------------------------------------------- executor

class Schedule:
    """Picks the program that runs next among those that can."""
    name = "schedule"

    def start(self, programs: Sequence["Program"], rng: random.Random) -> None:
        """A launch begins (its programs in grid order)."""

    def pick(self, runnable: List["Program"], rng: random.Random) -> "Program":
        raise NotImplementedError

    def __repr__(self):
        return self.name


class RoundRobin(Schedule):
    """Each program in turn, in grid order: the programs move in lock-step."""
    name = "round_robin"

    def start(self, programs, rng):
        self.last = -1

    def pick(self, runnable, rng):
        after = [p for p in runnable if p.order > self.last]
        chosen = after[0] if after else runnable[0]
        self.last = chosen.order
        return chosen


class RandomOrder(Schedule):
    """Any program, uniformly at random."""

    def __init__(self, seed: int):
        self.seed = seed
        self.name = f"random_{seed}"

    def pick(self, runnable, rng):
        return rng.choice(runnable)


class Skewed(Schedule):
    """Each program runs at a speed drawn for the launch (log-uniform over 1 : ``spread``), one
    of them always the slowest: partners wait long at barriers, in every order."""

    def __init__(self, seed: int, spread: float = 50.0):
        self.seed = seed
        self.spread = spread
        self.name = f"skewed_{seed}"

    def start(self, programs, rng):
        self.speed = {p.order: self.spread ** rng.random() for p in programs}
        self.speed[rng.randrange(len(programs))] = 1.0

    def pick(self, runnable, rng):
        return rng.choices(runnable, weights=[self.speed[p.order] for p in runnable])[0]


@dataclasses.dataclass(frozen=True)
class Fault:
    """In launches of ``kernel``, program ``program`` (its grid index (x, y)) never runs
    (``atomics`` None) or stops for good once it has made ``atomics`` atomic operations."""
    kernel: str
    program: Tuple[int, int]
    atomics: Optional[int] = None


@dataclasses.dataclass
class Program:
    index: tuple
    order: int
    runner: object = None            # its greenlet
    atomics: int = 0
    since_barrier: int = 0           # atomics since its last CTA barrier
    stop_after: Optional[int] = None
    stopped: bool = False


@dataclasses.dataclass
class Launch:
    """What the executor saw of one launch."""
    kernel: str
    grid: tuple = ()
    switches: int = 0
    atomics: int = 0
    # The most atomics a program made between two CTA barriers: a tile barrier's wait is about
    # half as many polls.
    longest_wait: int = 0
    never_ran: List[tuple] = dataclasses.field(default_factory=list)
    stopped: List[tuple] = dataclasses.field(default_factory=list)


class Executor:
    """See the module docstring; made by ``interleaved``."""

    def __init__(self, schedule: Schedule, memory_switch: float, check_addresses: bool,
                 faults: Sequence[Fault], seed: int, max_switches: int):
        self.schedule = schedule
        self.memory_switch = memory_switch
        self.check_addresses = check_addresses
        self.faults = list(faults)
        self.rng = random.Random(f"{schedule.name}/{seed}")
        self.max_switches = max_switches
        self.interpreter = _Interpreter()
        self.launches: List[Launch] = []
        self._current: Optional[Launch] = None
        self._extents = _union([])
        self._queued: List[Tuple[tuple, Callable, dict]] = []
        self._running: Optional[Program] = None
        self._hub = None

    # -- the launch and its programs

    @contextlib.contextmanager
    def launch(self, kernel: str, extents):
        self._current = Launch(kernel)
        self._extents = _union(extents)
        self._queued = []
        self.launches.append(self._current)
        try:
            yield
        finally:
            self._current = None
            self._queued = []

    def queue(self, program: Callable, args: dict) -> None:
        self._queued.append((self.interpreter.grid_idx, program, args))
        if len(self._queued) == self.interpreter.programs():
            self._run_all()

    def _run_all(self) -> None:
        import greenlet

        record = self._current
        record.grid = tuple(max(index[axis] for index, _, _ in self._queued) + 1
                            for axis in range(3))
        programs, runnable = [], []
        self._hub = greenlet.getcurrent()
        for order, (index, function, args) in enumerate(self._queued):
            program = Program(index, order)
            program.runner = greenlet.greenlet(
                lambda function=function, args=args: function(**args), parent=self._hub)
            programs.append(program)
            fault = self._fault(record.kernel, index)
            if fault is not None and fault.atomics is None:
                record.never_ran.append(index)
            else:
                program.stop_after = None if fault is None else fault.atomics
                runnable.append(program)
        self.schedule.start(programs, self.rng)
        try:
            while runnable:
                if record.switches >= self.max_switches:
                    raise NoProgress(f"{record.kernel} {record.grid}: no end after "
                                     f"{record.switches} switches under {self.schedule}")
                program = self.schedule.pick(runnable, self.rng)
                record.switches += 1
                self.interpreter.grid_idx = program.index
                self._running = program
                program.runner.switch()
                if program.runner.dead or program.stopped:
                    runnable.remove(program)
        finally:
            self._running = None
            for program in programs:   # stopped, never started, or left by an error
                if not program.runner.dead:
                    program.runner.throw(greenlet.GreenletExit)

    def _fault(self, kernel: str, index: tuple) -> Optional[Fault]:
        for fault in self.faults:
            if fault.kernel == kernel and tuple(fault.program) == tuple(index[:2]):
                return fault
        return None

    def _switch(self) -> None:
        """The running program lets the scheduler choose who runs next."""
        program = self._running
        self._hub.switch()
        self._running = program

    # -- the interpreter's operations (called by the adapter before each runs)

    def memory(self, addresses, size: int, what: str) -> None:
        self._check(addresses, size, what)
        if self.memory_switch and self.rng.random() < self.memory_switch:
            self._switch()

    def atomic(self, addresses, size: int) -> None:
        self._check(addresses, size, "atomic")
        program = self._running
        if program.stop_after is not None and program.atomics >= program.stop_after:
            program.stopped = True
            self._current.stopped.append(program.index)
            self._switch()     # for good: the scheduler drops it, then ends it (GreenletExit)
        self._switch()
        program.atomics += 1
        program.since_barrier += 1
        self._current.atomics += 1

    def barrier(self) -> None:
        program = self._running
        self._current.longest_wait = max(self._current.longest_wait, program.since_barrier)
        program.since_barrier = 0
        self._switch()

    def _check(self, addresses, size: int, what: str) -> None:
        if not self.check_addresses or not len(addresses):
            return
        starts, ends = self._extents
        addresses = addresses.astype(np.int64)
        inside = np.searchsorted(starts, addresses, side="right") - 1
        outside = (inside < 0) | (addresses + size > ends[np.maximum(inside, 0)])
        if outside.any():
            address = int(addresses[outside][0])
            raise AddressError(
                f"{self._current.kernel}, program {self._running.index[:2]}: {what} of "
                f"{size} bytes at {address:#x} is outside every tensor argument "
                f"({int(outside.sum())} lanes), at {_kernel_location()}")


def _kernel_location() -> str:
    """file:line (innermost first) of the kernel code running, outside triton and this file."""
    import triton
    skip = (os.path.dirname(os.path.abspath(triton.__file__)), _HERE,
            os.path.dirname(os.path.abspath(contextlib.__file__)))
    places = []
    frame = sys._getframe(1)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(skip) and "site-packages" not in name:
            places.append(f"{os.path.relpath(name)}:{frame.f_lineno} ({frame.f_code.co_name})")
        frame = frame.f_back
    return " <- ".join(places[:4]) or "an unknown place"


def unsupported() -> Optional[str]:
    """Why the executor cannot run here (None: it can): a test skip's reason."""
    try:
        import greenlet  # noqa: F401
    except ImportError:
        return "the interleaving executor needs greenlet (the test extra)"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "the interleaving executor drives triton's interpreter (TRITON_INTERPRET=1)"
    return _Interpreter.unsupported()


@contextlib.contextmanager
def interleaved(schedule: Schedule, *, memory_switch: float = 0.0, check_addresses: bool = True,
                faults: Sequence[Fault] = (), seed: int = 0, spin_limit: int = SPIN_LIMIT,
                max_switches: int = MAX_SWITCHES):
    """Within the block every Triton launch runs its programs interleaved under ``schedule``;
    persistent kernels with several column splits are allowed (``launch.interleaved_programs``)
    and their barriers give up after ``spin_limit`` polls.  Yields the ``Executor``, whose
    ``launches`` record what ran."""
    from fastrnn.kernels import launch

    executor = Executor(schedule, memory_switch, check_addresses, faults, seed, max_switches)
    with executor.interpreter.patched(executor), launch.interleaved_programs(), \
            launch.barrier_spin_limit(spin_limit):
        yield executor
