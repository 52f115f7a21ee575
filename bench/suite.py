"""One benchmark run: which (implementation, workload) pairs run, then running them into rows.

Every row of a run shares its weights and inputs with the other implementations of the same
workload, and every compared row is measured against one float64 reference step of the
workload's shape and mode (shared by its dtypes).
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from fastrnn import backends

from .compiled import ReferenceCompiled
from .data import input_sets, master_parameters
from .grid import ALL_CELLS, CELLS, DTYPES, Workload
from .implementations import (FastrnnBackend, Implementation, ReferenceEager, TorchNN,
                              baseline_name, float64_reference)
from .loop import TorchLoop
from .measure import LoadMonitor, Settings, errors, unsteady
from .peers import FlashRNN, Haste

LOOP = TorchLoop.name
EAGER = ReferenceEager.name


def all_implementations(device: torch.device, compile_budget_s: float) -> List[Implementation]:
    return ([FastrnnBackend(name) for name in backends.NAMES if name != "reference"]
            + [ReferenceEager(), ReferenceCompiled(compile_budget_s), TorchNN(device),
               TorchLoop(), FlashRNN(), Haste()])


@dataclasses.dataclass
class Job:
    impl: Implementation
    workload: Workload


def plan(workloads: Sequence[Workload], impls: Sequence[Implementation],
         device: torch.device) -> Tuple[List[Job], List[dict]]:
    """(jobs, missing): every supported pair, plus the plain torch.nn cell of each workload's
    family so that every ratio to it is taken within this run; ``missing`` lists each
    implementation (or implementation and dtype) that cannot run here, with the reason."""
    missing: List[dict] = []
    present = []
    for impl in impls:
        reason = impl.missing(device)
        if reason is None:
            present.append(impl)
        else:
            missing.append({"impl": impl.name, "reason": reason})
    jobs: Dict[Tuple[str, Workload], Job] = {}
    for workload in workloads:
        for impl in present:
            target = workload
            if isinstance(impl, TorchNN):
                target = workload.with_cell(workload.spec.baseline)
            elif workload.cell not in impl.cells:
                continue
            reason = impl.unsupported(target, device)
            if reason is None:
                jobs.setdefault((impl.name, target), Job(impl, target))
            elif not any(m["impl"] == impl.name and m.get("dtype") == target.dtype for m in missing):
                missing.append({"impl": impl.name, "dtype": target.dtype, "reason": reason})
    # Grouped by workload so that one float64 reference serves all rows of a group.
    order = list(jobs.values())
    order.sort(key=lambda job: _group(job.workload) + (list(DTYPES).index(job.workload.dtype),))
    return order, missing


def _group(w: Workload) -> tuple:
    """Workloads that share weights, inputs and the float64 reference (all but the dtype)."""
    return (ALL_CELLS.index(w.cell), w.B, w.H, w.T, w.mode)


PROGRESS_STYLES = ("bar", "lines", "off")


def progress_style(bar_wanted: bool) -> str:
    """A tqdm bar when wanted and stderr is a terminal; else one line per row on stdout (a log
    or a pipe gets lines, not a bar's carriage returns), so that a run is never silent."""
    return "bar" if bar_wanted and sys.stderr.isatty() else "lines"


def run_jobs(jobs: Sequence[Job], settings: Settings, device: torch.device,
             progress: str = "bar",
             on_row: Optional[Callable[[List[dict], List[dict]], None]] = None,
             monitor: Optional[LoadMonitor] = None) -> Tuple[List[dict], List[dict]]:
    """(rows, failed): a row per job that ran; an entry with the error for each that raised.

    ``progress``: "bar" (tqdm), "lines" (a line per row on stdout) or "off".  ``on_row``: called
    with (rows, failed) so far after each job (bench.run writes them: a run killed midway keeps
    what it measured); their ratios are those among the rows so far.  ``monitor``: the run's
    calibrations (bench.run reports them); a row measured on a loaded machine is measured
    again (``measure_unloaded``), and every row's ``loaded`` is judged again against the
    quietest calibration of the run so far after each row; at the end, a row found loaded only
    later is measured again with the tries it has left (``_remeasure_loaded``).
    """
    if progress not in PROGRESS_STYLES:
        raise ValueError(f"progress must be one of {PROGRESS_STYLES}, got {progress!r}")
    monitor = monitor if monitor is not None else LoadMonitor(device, settings.load_factor)
    monitor.check()   # the first row's "before"
    rows: List[dict] = []
    failed: List[dict] = []
    jobs_of_rows: List[Job] = []
    group = None
    bar = tqdm(jobs, unit="row", disable=progress != "bar", dynamic_ncols=True)
    for index, job in enumerate(bar, 1):
        workload = job.workload
        bar.set_description(f"{job.impl.name} {workload.label()}")
        began = time.perf_counter()
        reference_s = None
        if _group(workload) != group:
            group = _group(workload)
            params = master_parameters(workload, settings.seed)
            inputs32 = input_sets(workload, settings.input_sets, settings.seed + 1, device)
            reference = None
        try:
            inputs = [x.to(workload.torch_dtype) for x in inputs32]
            measured, calibrations, tries = measure_unloaded(job, params, inputs, settings,
                                                             device, monitor)
            accuracy: Dict[str, Optional[float]] = {
                "max_rel_err": None, "max_rel_err_out": None, "max_rel_err_grad": None}
            if measured.result is not None:
                if reference is None:
                    bar.set_description(f"float64 reference {workload.label()}")
                    reference_began = time.perf_counter()
                    reference = float64_reference(workload, params, inputs32[0], device,
                                                  settings.seed)
                    reference_s = time.perf_counter() - reference_began
                accuracy = errors(measured.result, reference)
            note = "; ".join(n for n in (measured.note, job.impl.not_compared(workload)) if n)
            rows.append(_row(job.impl.name, workload, measured, accuracy, note or None))
            rows[-1].update(calibration_ms=calibrations, tries=tries)
            jobs_of_rows.append(job)
            judge_load(rows[-1:], monitor)
            outcome = _timing_summary(rows[-1])
        except Exception as error:  # one broken implementation must not end the run
            failed.append({"impl": job.impl.name, **dataclasses.asdict(workload),
                           "error": f"{type(error).__name__}: {error}"[:2000]})
            outcome = f"FAILED {failed[-1]['error'][:300]}"
            if progress == "bar":
                tqdm.write(f"{job.impl.name} {workload.label()}: {outcome}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if progress == "lines":
            took = f"{time.perf_counter() - began:.1f} s"
            if reference_s is not None and reference_s >= 0.05:
                took += f", of which {reference_s:.1f} s the float64 reference"
            counter = f"[{index:{len(str(len(jobs)))}}/{len(jobs)}]"
            print(f"{counter} {job.impl.name} {workload.label()}: {outcome} ({took})", flush=True)
        if on_row is not None:
            judge_load(rows, monitor)
            add_ratios(rows, baseline_name(device))
            on_row(rows, failed)
    judge_load(rows, monitor)
    _remeasure_loaded(rows, jobs_of_rows, settings, device, monitor, progress,
                      None if on_row is None else lambda: on_row(rows, failed))
    add_ratios(rows, baseline_name(device))
    return rows, failed


def _remeasure_loaded(rows: List[dict], jobs_of_rows: List[Job], settings: Settings,
                      device: torch.device, monitor: LoadMonitor, progress: str,
                      written: Optional[Callable[[], None]]) -> None:
    """Measures again each loaded row that has tries left, the rows a quieter calibration
    found loaded after they were judged (a run that starts on a loaded machine has only loaded
    calibrations to judge its first rows by).  Its timing is replaced when the new try ran
    beside quieter calibrations; its accuracy and peak memory, which load does not change, are
    kept.  A row is measured at most 1 + load_retries times in all."""
    late = [(row, job) for row, job in zip(rows, jobs_of_rows)
            if row["loaded"] and row["tries"] <= settings.load_retries]
    for index, (row, job) in enumerate(late, 1):
        began = time.perf_counter()
        workload = job.workload
        params = master_parameters(workload, settings.seed)
        inputs = [x.to(workload.torch_dtype) for x in
                  input_sets(workload, settings.input_sets, settings.seed + 1, device)]
        try:
            measured, calibrations, tries = measure_unloaded(
                job, params, inputs, settings, device, monitor,
                tries_left=1 + settings.load_retries - row["tries"])
        except Exception as error:  # the first measurement stands
            outcome = f"measuring again FAILED ({type(error).__name__}: {error}); kept the first"
        else:
            before = row["tries"]
            if _noisiest(calibrations) < _noisiest(row["calibration_ms"]):
                kept = {k: row[k] for k in ("peak_mem_bytes", "max_rel_err", "max_rel_err_out",
                                            "max_rel_err_grad", "compile_s", "note")}
                row.update(_row(row["impl"], workload, measured, {}, None), **kept,
                           calibration_ms=calibrations)
            row["tries"] = before + tries
            judge_load([row], monitor)
            outcome = _timing_summary(row)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if progress != "off":
            print(f"[again {index}/{len(late)}] {job.impl.name} {workload.label()}: {outcome} "
                  f"({time.perf_counter() - began:.1f} s)", flush=True)
        judge_load(rows, monitor)
        if written is not None:
            add_ratios(rows, baseline_name(device))
            written()


def _noisiest(calibrations: Optional[Sequence[Optional[float]]]) -> float:
    return max((c for c in calibrations or () if c is not None), default=0.0)


def measure_unloaded(job: Job, params, inputs, settings: Settings, device: torch.device,
                     monitor: LoadMonitor, tries_left: Optional[int] = None):
    """(measurement, [calibration before, after] in ms, tries): the job measured, and measured
    again while a calibration beside it says the machine was loaded, at most ``tries_left``
    times in all (default 1 + ``settings.load_retries``); the try with the quietest
    calibrations is kept.  A retry gets a fresh calibration before it: the one after a loaded
    try is likely loaded too.
    """
    if tries_left is None:
        tries_left = 1 + max(0, settings.load_retries)
    tries = []
    for attempt in range(max(1, tries_left)):
        before = monitor.latest_ms if attempt == 0 else monitor.check()
        measured = job.impl.measure(job.workload, params, inputs, settings, device)
        calibrations = [before, monitor.check()]
        tries.append((measured, calibrations))
        # A row that timed nothing (a compile over its budget) has nothing load could skew.
        if not measured.times_ms or not monitor.loaded(calibrations):
            break
    measured, calibrations = min(tries, key=lambda t: _noisiest(t[1]))
    return measured, calibrations if monitor.active else None, len(tries)


def judge_load(rows: List[dict], monitor: LoadMonitor) -> None:
    """Sets ``load_ratio`` and ``loaded`` of timed rows against the quietest calibration so
    far: a quieter one found later shows that rows judged earlier ran on a loaded machine
    (``_remeasure_loaded`` gives them their tries left at the end)."""
    for row in rows:
        timed = row["ms"] is not None and row.get("calibration_ms") is not None
        row["load_ratio"] = monitor.ratio(row["calibration_ms"]) if timed else None
        row["loaded"] = monitor.loaded(row["calibration_ms"]) if timed else False


def _timing_summary(row: dict) -> str:
    if row["ms"] is None:
        return row["note"] or "not timed"
    text = (f"{row['ms']:.3g} ms median, {row['ms_min']:.3g}–{row['ms_max']:.3g} "
            f"over {row['repeats']}")
    flags = ["unsteady"] if row["unsteady"] else []
    if row.get("loaded"):
        flags.append(f"loaded: calibration {row['load_ratio']:.3g}× the quietest, "
                     f"{row['tries']} tries")
    elif row.get("tries", 1) > 1:
        flags.append(f"try {row['tries']}: the machine was loaded before")
    return text + (f" ({'; '.join(flags)})" if flags else "")


def _row(impl: str, workload: Workload, measured, accuracy: dict, note: Optional[str]) -> dict:
    times = measured.times_ms
    ms = statistics.median(times) if times else None
    return {"impl": impl, **dataclasses.asdict(workload),
            "ms": ms, "us_per_step": None if ms is None else ms * 1e3 / workload.T,
            "ms_min": min(times) if times else None, "ms_max": max(times) if times else None,
            "unsteady": unsteady(times), "loaded": False, "load_ratio": None,
            "calibration_ms": None, "tries": 1,
            "repeats": len(times), "peak_mem_bytes": measured.peak_mem_bytes,
            **accuracy, "ratio_vs_cudnn": None, "ratio_vs_loop": None, "ratio_vs_eager": None,
            "compile_s": measured.compile_s, "note": note}


def add_ratios(rows: List[dict], baseline: str) -> None:
    """ratio_vs_cudnn: against ``baseline`` (the torch.nn rows: cuDNN on CUDA) of the plain cell
    of the same family, shape, dtype and mode (ln_lstm against lstm, gru_reg against gru);
    ratio_vs_loop: against torch-loop of the same cell, the user's alternative for a layer-norm
    or regularized cell; ratio_vs_eager: against reference-eager of the same cell."""
    def key(row, cell):
        return (cell, row["B"], row["H"], row["T"], row["dtype"], row["mode"])

    def times_of(impl):
        return {key(r, r["cell"]): r["ms"] for r in rows if r["impl"] == impl}

    floor, loop, eager = times_of(baseline), times_of(LOOP), times_of(EAGER)
    for row in rows:
        for field, times, cell in (("ratio_vs_cudnn", floor, CELLS[row["cell"]].baseline),
                                   ("ratio_vs_loop", loop, row["cell"]),
                                   ("ratio_vs_eager", eager, row["cell"])):
            other = times.get(key(row, cell))
            row[field] = row["ms"] / other if row["ms"] and other else None
