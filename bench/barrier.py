"""The cost of one grid barrier of the persistent kernels, against the number of programs.

    python -m bench.barrier [--programs 8,16,...] [--out-dir DIR] [--device cuda]

Each program of a grid (1, P) — one batch tile of P column splits, as the persistent kernels
launch it, cooperatively — runs N tile barriers (``kernels.common.tile_barrier``, the one the
recurrences use) and nothing else.  µs per barrier is the slope between N = SHORT and N = LONG
launches (the launch cost cancels), the median of REPEATS pairs timed with CUDA events.  Writes
``barrier-<gpu>-<date>.json``, ``.md`` and ``.png`` into --out-dir (default bench/results).

``--device cpu`` (under TRITON_INTERPRET=1, one program, where a barrier is a CTA barrier) runs
the same code to check it; it measures nothing and writes nothing unless --out-dir is given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List, NamedTuple

import torch
import triton
import triton.language as tl

from fastrnn.kernels.common import INTERPRETING, tile_barrier
from fastrnn.kernels.launch import SPIN_LIMIT, WAIT_NS, constexpr_options

from .report import environment, file_stem

PROGRAMS = (8, 16, 32, 48, 64, 96, 128)
SHORT, LONG = 100, 2100
REPEATS = 5
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class BarrierConfig(NamedTuple):
    """The fields of the kernels' Config that ``tile_barrier`` reads."""
    SPLITS: int
    SPIN_LIMIT: int
    WAIT_NS: int


@triton.jit
def _barriers(sync_ptr, count, cfg: tl.constexpr):
    ok = True
    for i in range(count):
        if ok:
            ok = tile_barrier(sync_ptr, 0, (i + 1) * cfg.SPLITS, cfg)


def _launch(programs: int, count: int, device: torch.device) -> torch.Tensor:
    """One launch; returns its abort flag (nonzero: the barriers gave up, the programs were not
    co-resident)."""
    sync = torch.zeros(2, dtype=torch.int32, device=device)  # abort flag, one tile's counter
    options = constexpr_options(dict(cfg=BarrierConfig(programs, SPIN_LIMIT, WAIT_NS),
                                     num_warps=4))
    if not INTERPRETING:
        options["launch_cooperative_grid"] = programs > 1
    _barriers[(1, programs)](sync, count, **options)
    return sync[0]


def _seconds(programs: int, count: int, device: torch.device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        aborted = _launch(programs, count, device)
        elapsed = time.perf_counter() - start
    else:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        aborted = _launch(programs, count, device)
        end.record()
        end.synchronize()
        elapsed = begin.elapsed_time(end) / 1e3
    if int(aborted.item()) != 0:
        raise RuntimeError(f"{programs} programs: the barrier gave up (not co-resident)")
    return elapsed


def measure(programs: int, device: torch.device, short=SHORT, long=LONG,
            repeats=REPEATS) -> dict:
    _seconds(programs, short, device)  # compiles, and checks co-residency
    slopes = []
    for _ in range(repeats):
        slopes.append((_seconds(programs, long, device) - _seconds(programs, short, device))
                      / (long - short) * 1e6)
    return {"programs": programs, "us_per_barrier": round(statistics.median(slopes), 4),
            "min_us": round(min(slopes), 4), "max_us": round(max(slopes), 4),
            "repeats": repeats, "barriers": [short, long]}


def write(rows: List[dict], device: torch.device, out_dir: str) -> List[str]:
    document = {**environment(device), "kind": "measured", "what": __doc__.split("\n\n")[0],
                "method": (f"slope of CUDA-event times between {SHORT} and {LONG} barriers per "
                           f"launch, median of {REPEATS}"), "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, "barrier-" + file_stem(document))
    with open(stem + ".json", "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    lines = [f"# Grid barrier cost — {document['device']}, {document['date']}", "",
             f"torch {document['torch']}, triton {document['triton']}, CUDA {document['cuda']}. "
             f"Measured: {document['method']}.", "",
             "| programs | µs / barrier (median) | min | max |", "|---|---|---|---|"]
    lines += [f"| {r['programs']} | {r['us_per_barrier']} | {r['min_us']} | {r['max_us']} |"
              for r in rows]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    paths = [stem + ".json", stem + ".md"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar([r["programs"] for r in rows], [r["us_per_barrier"] for r in rows],
                  yerr=[[r["us_per_barrier"] - r["min_us"] for r in rows],
                        [r["max_us"] - r["us_per_barrier"] for r in rows]], marker="o")
    axis.set_xlabel("programs in the barrier (one batch tile's column splits)")
    axis.set_ylabel("µs per barrier")
    axis.set_ylim(bottom=0)
    axis.set_title(f"tile_barrier on {document['device']}")
    figure.tight_layout()
    figure.savefig(stem + ".png", dpi=120)
    return paths + [stem + ".png"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.barrier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", default=",".join(map(str, PROGRAMS)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default=None, help="default: bench/results on a GPU")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    counts = [int(p) for p in args.programs.split(",")]
    if device.type != "cuda" and counts != [1]:
        parser.error("without a GPU only --programs 1 runs (the interpreter runs programs one "
                     "after another, so a barrier of several would wait forever)")
    rows = []
    for programs in counts:
        kwargs = {} if device.type == "cuda" else dict(short=1, long=3, repeats=1)
        rows.append(measure(programs, device, **kwargs))
        print(json.dumps(rows[-1]), flush=True)
    out_dir = args.out_dir or (RESULTS_DIR if device.type == "cuda" else None)
    if out_dir:
        print("wrote " + ", ".join(write(rows, device, out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
