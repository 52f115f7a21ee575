"""The reference cells under torch.compile ("reference-compiled"), measured in a child process.

What is compiled is a plain function of ``fastrnn.reference`` (``project_input`` then
``lstm_sequence`` / ``gru_sequence``), not the ``fastrnn`` custom op, which is opaque to the
compiler.  Dynamo unrolls the loop over time, so compiling can take many minutes at T = 512:
the child reports its compile time as soon as the first step returns, and the parent kills it
when that takes longer than the budget, so a compile that never ends is a row that says so
rather than a hung run.  Run as ``python -m bench.compiled JOB_JSON`` by the parent only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import torch

from fastrnn import masks as M
from fastrnn import reference as R
from fastrnn.cells import CELLS

from .data import input_sets, master_parameters
from .grid import Workload
from .implementations import Implementation, Measurement, measure_prepared
from .measure import Prepared, Result, Settings, step, synchronize

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Marks the child's reports among whatever else the compiler prints on stdout.
REPORT_PREFIX = "bench.compiled: "
# After the compile, the child still warms up, times and checks: this much more time is allowed.
MEASURE_ALLOWANCE_S = 600.0


def _layer_function(workload: Workload):
    """(x, seed, weights) -> (out, h_n[, c_n]): the whole layer as plain reference code."""
    spec = workload.spec
    cell = CELLS[spec.family]
    options = spec.options
    groups = options.get("ln_groups", 1)
    recurrent_dropout = options.get("recurrent_dropout", 0.0)
    probabilities = {cell.zoneout[name]: options.get(name, 0.0) for name in cell.zoneout}
    probabilities["candidate_dropout"] = options.get("candidate_dropout", 0.0)
    batch, hidden = workload.B, workload.H

    def recurrent_mask(seed, dtype):
        if not (spec.training and recurrent_dropout > 0):
            return None
        return M.keep_scale(seed, M.RECURRENT_DROPOUT, recurrent_dropout, (batch, hidden), dtype)

    def layer(x, seed, w):
        gx = R.project_input(x, w["weight_ih_l0"], w["bias_ih_l0"], w.get("ln_ih_weight_l0"), groups)
        zeros = x.new_zeros(batch, hidden)
        call = cell.call(gx=gx, w_hh=w["weight_hh_l0"], b_hh=w["bias_hh_l0"],
                         **{name: w.get(f"{name}_l0") for name in cell.norm_parameters},
                         **{f"{state}0": zeros for state in cell.states}, lengths=None,
                         recurrent_mask=recurrent_mask(seed, x.dtype), seed=seed,
                         ln_groups=groups, **probabilities, training=spec.training,
                         reverse=False)
        sequence, _ = R.SEQUENCES[cell.name]
        results = sequence(call, R.MaskSource(seed))
        # states shaped (layers, B, H) as the modules return them
        return (results[0],) + tuple(state[None] for state in results[1:1 + len(cell.states)])

    return layer


def compiled_prepared(workload: Workload, params, device: torch.device) -> Prepared:
    weights = {name: p.to(device=device, dtype=workload.torch_dtype).requires_grad_(True)
               for name, p in params.items()}
    layer = torch.compile(_layer_function(workload), dynamic=False)
    stochastic = workload.spec.training

    def forward(x):
        # The seed is drawn outside the compiled graph, as the fastrnn module draws it, so that
        # the same torch.manual_seed gives the same masks as the eager reference.
        seed = (M.draw_seed(device) if stochastic
                else torch.zeros((), dtype=torch.int64, device=device))
        return layer(x, seed, weights)

    return Prepared(forward, weights)


# ------------------------------------------------------------------------------- child side

def _child(job: dict) -> None:
    workload = Workload(**job["workload"])
    settings = Settings(**job["settings"])
    device = torch.device(job["device"])
    params = master_parameters(workload, settings.seed)
    inputs = [x.to(workload.torch_dtype) for x in
              input_sets(workload, settings.input_sets, settings.seed + 1, device)]
    prepared = compiled_prepared(workload, params, device)
    began = time.perf_counter()
    step(prepared, inputs[0], workload.mode)
    synchronize(device)
    _report({"compile_s": time.perf_counter() - began})
    measured = measure_prepared(prepared, workload.mode, inputs, settings, device, checked=True)
    torch.save({"outputs": [t.cpu() for t in measured.result.outputs],
                "grads": {n: g.cpu() for n, g in measured.result.grads.items()}}, job["tensors"])
    _report({"times_ms": measured.times_ms, "peak_mem_bytes": measured.peak_mem_bytes})


def _report(message: dict) -> None:
    print(REPORT_PREFIX + json.dumps(message), flush=True)


# ------------------------------------------------------------------------------ parent side

class ReferenceCompiled(Implementation):
    name = "reference-compiled"

    def __init__(self, compile_budget_s: float = 600.0):
        self.compile_budget_s = compile_budget_s

    def unsupported(self, workload, device):
        if workload.spec.resets:
            return "the compiled reference is not run with episode starts"
        return None

    def measure(self, workload, params, inputs, settings, device):
        with tempfile.TemporaryDirectory(prefix="fastrnn-bench-") as scratch:
            job = {"workload": dataclasses.asdict(workload),
                   "settings": dataclasses.asdict(settings), "device": str(device),
                   "tensors": os.path.join(scratch, "result.pt")}
            # stderr goes to a file: compiler warnings must not fill a pipe nobody reads.
            errors = open(os.path.join(scratch, "stderr.txt"), "w+")
            child = subprocess.Popen([sys.executable, "-m", "bench.compiled", json.dumps(job)],
                                     stdout=subprocess.PIPE, stderr=errors, text=True,
                                     cwd=REPO_ROOT, start_new_session=True)
            lines: "queue.Queue[str]" = queue.Queue()
            threading.Thread(target=_forward_lines, args=(child.stdout, lines), daemon=True).start()
            try:
                compiled = self._next(lines, child, errors, self.compile_budget_s)
                if compiled is None:
                    return Measurement([], None, None, note=(
                        f"torch.compile did not finish within the {self.compile_budget_s:.0f} s "
                        "budget (--compile-budget)"))
                measured = self._next(lines, child, errors, MEASURE_ALLOWANCE_S)
                if measured is None:
                    raise RuntimeError(f"the compiled reference took over {MEASURE_ALLOWANCE_S:.0f} s "
                                       "to time after compiling")
            finally:
                # The child's own process group: inductor's compile workers go with it.
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                errors.close()
            tensors = torch.load(job["tensors"])
        result = Result([t.to(device) for t in tensors["outputs"]],
                        {n: g.to(device) for n, g in tensors["grads"].items()})
        return Measurement(measured["times_ms"], measured["peak_mem_bytes"], result,
                           compile_s=compiled["compile_s"])

    @staticmethod
    def _next(lines: "queue.Queue[str]", child: subprocess.Popen, errors, timeout_s: float):
        """The child's next JSON report; None on timeout; RuntimeError with its stderr if it died."""
        deadline = time.monotonic() + timeout_s
        line = None
        while line is None or not (line == "" or line.startswith(REPORT_PREFIX)):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
        if not line:
            child.wait()
            errors.seek(0)
            raise RuntimeError(f"the compiled reference exited with {child.returncode}: "
                               f"{errors.read().strip()[-2000:]}")
        return json.loads(line[len(REPORT_PREFIX):])


def _forward_lines(stream, lines: "queue.Queue[str]") -> None:
    """Moves the child's stdout lines into a queue (read with a timeout); "" marks its end."""
    for line in stream:
        lines.put(line)
    lines.put("")


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
