"""One benchmark run: which (implementation, workload) pairs run, then running them into rows.

Every row of a run shares its weights and inputs with the other implementations of the same
workload, and every checked row is compared with one float32 reference step of that workload.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from fastrnn import backends

from .compiled import ReferenceCompiled
from .data import input_sets, master_parameters
from .grid import ALL_CELLS, CELLS, DTYPES, Workload
from .implementations import (FastrnnBackend, Implementation, ReferenceEager, TorchNN,
                              baseline_name, float32_reference)
from .measure import Settings, errors
from .peers import FlashRNN, Haste


def all_implementations(device: torch.device, compile_budget_s: float) -> List[Implementation]:
    return ([FastrnnBackend(name) for name in backends.NAMES if name != "reference"]
            + [ReferenceEager(), ReferenceCompiled(compile_budget_s), TorchNN(device),
               FlashRNN(), Haste()])


@dataclasses.dataclass
class Job:
    impl: Implementation
    workload: Workload


def plan(workloads: Sequence[Workload], impls: Sequence[Implementation],
         device: torch.device) -> Tuple[List[Job], List[dict]]:
    """(jobs, missing): every supported pair, plus the plain torch.nn cell of each workload's
    family so that every ratio to cuDNN is taken within this run; ``missing`` lists each
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
    # Grouped by workload so that one float32 reference serves all rows of a group.
    order = list(jobs.values())
    order.sort(key=lambda job: _group(job.workload) + (list(DTYPES).index(job.workload.dtype),))
    return order, missing


def _group(w: Workload) -> tuple:
    """Workloads that share weights, inputs and the float32 reference (all but the dtype)."""
    return (ALL_CELLS.index(w.cell), w.B, w.H, w.T, w.mode)


def run_jobs(jobs: Sequence[Job], settings: Settings, device: torch.device,
             progress: bool = True) -> Tuple[List[dict], List[dict]]:
    """(rows, failed): a row per job that ran; an entry with the error for each that raised."""
    rows: List[dict] = []
    failed: List[dict] = []
    group = None
    bar = tqdm(jobs, unit="row", disable=not progress, dynamic_ncols=True)
    for job in bar:
        workload = job.workload
        bar.set_description(f"{job.impl.name} {workload.label()}")
        if _group(workload) != group:
            group = _group(workload)
            params = master_parameters(workload, settings.seed)
            inputs32 = input_sets(workload, settings.input_sets, settings.seed + 1, device)
            reference = None
        try:
            inputs = [x.to(workload.torch_dtype) for x in inputs32]
            measured = job.impl.measure(workload, params, inputs, settings, device)
            accuracy: Dict[str, Optional[float]] = {
                "max_rel_err": None, "max_rel_err_out": None, "max_rel_err_grad": None}
            if measured.result is not None:
                if reference is None:
                    reference = float32_reference(workload, params, inputs32[0], device,
                                                  settings.seed)
                accuracy = errors(measured.result, reference)
            rows.append(_row(job.impl.name, workload, measured, accuracy))
        except Exception as error:  # one broken implementation must not end the run
            failed.append({"impl": job.impl.name, **dataclasses.asdict(workload),
                           "error": f"{type(error).__name__}: {error}"[:2000]})
            tqdm.write(f"FAILED {job.impl.name} {workload.label()}: {failed[-1]['error'][:300]}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    add_ratios(rows, baseline_name(device))
    return rows, failed


def _row(impl: str, workload: Workload, measured, accuracy: dict) -> dict:
    ms = statistics.median(measured.times_ms) if measured.times_ms else None
    return {"impl": impl, **dataclasses.asdict(workload),
            "ms": ms, "us_per_step": None if ms is None else ms * 1e3 / workload.T,
            "ms_min": min(measured.times_ms) if measured.times_ms else None,
            "repeats": len(measured.times_ms), "peak_mem_bytes": measured.peak_mem_bytes,
            **accuracy, "ratio_vs_cudnn": None, "ratio_vs_eager": None,
            "compile_s": measured.compile_s, "note": measured.note}


def add_ratios(rows: List[dict], baseline: str) -> None:
    """ratio_vs_cudnn: against the plain torch.nn cell of the same family, shape, dtype and mode
    (ln_lstm against lstm, gru_reg against gru); ratio_vs_eager: against reference-eager of the
    same cell."""
    def key(row, cell):
        return (cell, row["B"], row["H"], row["T"], row["dtype"], row["mode"])

    floor = {key(r, r["cell"]): r["ms"] for r in rows if r["impl"] == baseline}
    eager = {key(r, r["cell"]): r["ms"] for r in rows if r["impl"] == "reference-eager"}
    for row in rows:
        base = floor.get(key(row, CELLS[row["cell"]].baseline))
        slow = eager.get(key(row, row["cell"]))
        row["ratio_vs_cudnn"] = row["ms"] / base if row["ms"] and base else None
        row["ratio_vs_eager"] = row["ms"] / slow if row["ms"] and slow else None
