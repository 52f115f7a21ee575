"""The benchmark's one entry point: ``python -m bench.run`` from the repository root.

On a CUDA machine it runs the benchmark grid (``--headline`` for the headline rows only) and
publishes bench/results/<gpu>-<date>.{json,md,png}; the JSON and the markdown are rewritten as
each row finishes, so that a run killed midway keeps what it measured.  Without a GPU it runs a small CPU grid
(the fastrnn reference and the torch loop against torch.nn) into bench/cache/, which checks the
harness and says nothing about the fused kernels.  bench/README.md states the protocol: grid,
implementations, fields and targets.  ``--headline-table FILE`` prints the README's headline
table from a result JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import warnings
from typing import List, Optional

STARTED = time.perf_counter()
if __name__ == "__main__":
    # torch, triton and fastrnn take seconds to import (many more on a cold disk): say so
    # before they start, so that a first run is not silent.
    print("bench.run: importing torch and fastrnn ...", flush=True)

import torch  # noqa: E402  (after the line above on purpose)

from . import report  # noqa: E402
from .grid import CELLS, DTYPES, MODES, PRESETS, build_grid  # noqa: E402
from .implementations import BASELINES, baseline_name  # noqa: E402
from .measure import LoadMonitor, Settings, peak_memory_method  # noqa: E402
from .suite import all_implementations, plan, progress_style, run_jobs  # noqa: E402

IMPORTED = time.perf_counter()

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")   # published GPU runs only
CACHE_DIR = os.path.join(BENCH_DIR, "cache")       # git-ignored: CPU and scratch runs
# Too slow to be a default off GPU: inductor compiles a C++ kernel per shape for minutes.
CPU_DEFAULT_SKIPS = ("reference-compiled",)
IMPL_ALIASES = {"torch-nn": "cudnn", "cudnn": "torch-nn"}


def _csv(cast):
    return lambda text: [cast(v) for v in text.split(",") if v]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headline", action="store_true",
                   help="only the headline rows (B=64 H=512 T=512 bf16 train for ln_lstm and "
                        "gru_reg; B=16 H=768 T=1024 fp16 for every cell) and their torch.nn rows")
    p.add_argument("--cells", type=_csv(str), help=f"subset of {','.join(CELLS)}")
    p.add_argument("--batch", "-B", type=_csv(int), help="batch sizes, e.g. 16,64")
    p.add_argument("--hidden", "-H", type=_csv(int), help="hidden sizes (I = H)")
    p.add_argument("--steps", "-T", type=_csv(int), help="sequence lengths")
    p.add_argument("--dtypes", type=_csv(str), help=f"subset of {','.join(DTYPES)}")
    p.add_argument("--modes", type=_csv(str), help=f"subset of {','.join(MODES)}")
    p.add_argument("--impls", type=_csv(str),
                   help="implementations to run (default: all; on CPU all but reference-compiled)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int,
                   help="torch's CPU thread count for the run (default: torch's); on CPU it is "
                        "part of the device name, so each count has its own result files")
    p.add_argument("--out-dir", help="where result files go (default: bench/results on a GPU, "
                                     "bench/cache on CPU)")
    p.add_argument("--fresh", action="store_true",
                   help="overwrite today's result file instead of merging into it")
    p.add_argument("--compile-budget", type=float, default=600.0,
                   help="seconds torch.compile may take per row before the row reports a timeout")
    p.add_argument("--warmup", type=int, help="untimed calls per row")
    p.add_argument("--repeats", type=int, help="most timed calls per row")
    p.add_argument("--min-repeats", type=int, help="fewest timed calls per row")
    p.add_argument("--row-seconds", type=float,
                   help="stop timing a row after this long once min-repeats are done")
    p.add_argument("--load-factor", type=float,
                   help="a row whose calibration before or after it ran more than this many "
                        "times slower than the run's quietest is loaded (default 1.3; CPU only)")
    p.add_argument("--load-retries", type=int,
                   help="times a loaded row is measured again before it is flagged (default 2)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: a line per row instead (also when stderr is not a "
                        "terminal)")
    p.add_argument("--cpu-table", metavar="JSON",
                   help="print the README's CPU table (fastrnn-cpu beside the torch loop, "
                        "torch.nn and the reference at the CPU grid's two shapes) from a result "
                        "file, and exit")
    p.add_argument("--rl", action="store_true",
                   help="the episode-starts grid instead (B=64 H=128 T=128 float32: the "
                        "layer-norm LSTM and GRU with and without resets), into its own result "
                        "files (<device>-rl-<date>)")
    p.add_argument("--rl-table", metavar="JSON",
                   help="print the README's episode-starts table of an --rl result file and "
                        "exit")
    p.add_argument("--headline-table", metavar="JSON",
                   help="print the README headline table of a result file and exit")
    p.add_argument("--render", metavar="JSON",
                   help="rewrite the markdown table and plot beside a result file and exit")
    return p.parse_args(argv)


def settings_for(args, device: torch.device) -> Settings:
    defaults = (Settings() if device.type == "cuda"
                else Settings(warmup=1, min_repeats=3, max_repeats=10, row_seconds=0.5))
    return Settings(warmup=args.warmup if args.warmup is not None else defaults.warmup,
                    min_repeats=args.min_repeats or defaults.min_repeats,
                    max_repeats=args.repeats or defaults.max_repeats,
                    row_seconds=args.row_seconds if args.row_seconds is not None
                    else defaults.row_seconds,
                    load_factor=args.load_factor or defaults.load_factor,
                    load_retries=args.load_retries if args.load_retries is not None
                    else defaults.load_retries)


def workloads(args, device_type: str):
    """The run's workloads: its preset (by ``--headline`` and the device) narrowed by the
    arguments; ValueError names a bad one."""
    preset = PRESETS["headline" if args.headline else "rl" if args.rl
                     else ("gpu" if device_type == "cuda" else "cpu")]
    return build_grid(preset, args.cells, args.batch, args.hidden, args.steps, args.dtypes,
                      args.modes)


@contextlib.contextmanager
def fastrnn_warnings():
    """Yields a list that collects the messages of the warnings fastrnn gives in the block (a
    persistent kernel that falls back to the per-step driver says so only by a warning, which
    a log would bury); the caller empties it as it reports them.  Other warnings are shown as
    usual."""
    caught: List[str] = []
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message).startswith("fastrnn") or f"{os.sep}fastrnn{os.sep}" in filename:
            caught.append(f"{category.__name__}: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield caught
    finally:
        warnings.showwarning = shown


def select_implementations(args, device: torch.device):
    impls = all_implementations(device, args.compile_budget)
    names = [i.name for i in impls]
    if args.impls is None:
        skipped = CPU_DEFAULT_SKIPS if device.type != "cuda" else ()
        for name in skipped:
            print(f"note: {name} is not run by default without a GPU (inductor compiles C++ "
                  f"per shape for minutes); add it with --impls")
        return [i for i in impls if i.name not in skipped]
    wanted = {IMPL_ALIASES.get(n, n) if n not in names else n for n in args.impls}
    unknown = wanted - set(names)
    if unknown:
        sys.exit(f"--impls: unknown {sorted(unknown)}; choose from {names}")
    return [i for i in impls if i.name in wanted]


def main(argv: Optional[List[str]] = None) -> int:
    began = time.perf_counter()
    args = parse_args(argv)
    if args.cpu_table:
        with open(args.cpu_table) as f:
            print(report.cpu_table(json.load(f)), end="")
        return 0
    if args.rl_table:
        with open(args.rl_table) as f:
            print(report.rl_table(json.load(f)), end="")
        return 0
    if args.headline_table:
        with open(args.headline_table) as f:
            print(report.headline_table(json.load(f)), end="")
        return 0
    if args.render:
        report.render(args.render)
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        grid = workloads(args, device.type)
    except ValueError as error:
        sys.exit(str(error))
    settings = settings_for(args, device)
    if args.threads is not None:
        if args.threads < 1:
            sys.exit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    environment = report.environment(device)
    base = BASELINES[baseline_name(device)]
    print(f"device: {environment['device']}; torch {environment['torch']}, "
          f"triton {environment['triton']}, CUDA {environment['cuda']} "
          f"(imports took {IMPORTED - STARTED:.1f} s)")
    print(f"baseline ({base['impl']}): {base['what']}; every ratio_vs_cudnn is against it")
    if device.type != "cuda":
        print(f"No CUDA GPU here: fastrnn-triton and fastrnn-cuda need one. This run times "
              f"fastrnn's CPU kernels (fastrnn-cpu) and the reference against the torch loop "
              f"and torch.nn on {torch.get_num_threads()} thread(s): results for the CPU "
              f"backend of this machine.")
    jobs, missing = plan(grid, select_implementations(args, device), device)
    for entry in missing:
        dtype = f" ({entry['dtype']})" if entry.get("dtype") else ""
        print(f"missing: {entry['impl']}{dtype}: {entry['reason']}")
    print(f"{len(grid)} workloads, {len(jobs)} rows; each row warms up, times, measures "
          f"peak memory and checks against a float64 reference (once per shape and mode)",
          flush=True)
    monitor = LoadMonitor(device, settings.load_factor)
    if monitor.active:
        print(f"load check: a fixed calibration workload is timed between rows; a row beside "
              f"one more than {settings.load_factor}× slower than the run's quietest is "
              f"measured again (up to {settings.load_retries} times), then flagged as loaded",
              flush=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    this_run = {"started": started, "argv": sys.argv[1:] if argv is None else argv,
                "settings": vars(settings)}
    document = {**environment, **({"grid": "rl"} if args.rl else {}),
                "baseline": base, "peak_mem": peak_memory_method(device),
                "rows": [], "missing": missing, "failed": [], "runs": [this_run]}
    out_dir = args.out_dir or (RESULTS_DIR if device.type == "cuda" else CACHE_DIR)
    previous = None if args.fresh else report.existing(document, out_dir)
    warned: List[str] = []

    def write_so_far(rows, failed, caught):
        # Each finished row is written at once: a run killed midway (a time limit) keeps
        # every row it measured; the plot waits for the end.
        done = f"{len(rows) + len(failed)} of {len(jobs)} rows"
        for text in caught:   # given during the row just done
            print(f"warning (row {done}): {text}", flush=True)
            warned.append(f"row {done}: {text}")
        del caught[:]
        this_run["unfinished"] = f"{done} written"
        this_run["calibration"] = monitor.describe()
        report.write_merged(dict(document, rows=rows, failed=failed), previous, out_dir,
                            plot_too=False)

    rows_began = time.perf_counter()
    with fastrnn_warnings() as caught:
        rows, failed = run_jobs(jobs, settings, device,
                                progress=progress_style(not args.no_progress),
                                on_row=lambda rows, failed: write_so_far(rows, failed, caught),
                                monitor=monitor)
    rows_s = time.perf_counter() - rows_began
    this_run.pop("unfinished", None)
    this_run["calibration"] = monitor.describe()
    if warned:
        this_run["warnings"] = warned
    document.update(rows=rows, failed=failed)
    moved = report.moved(previous, document) if previous is not None else []
    this_run["moved"] = moved
    writing_began = time.perf_counter()
    paths = report.write_merged(document, previous, out_dir)
    writing_s = time.perf_counter() - writing_began
    if len(rows) <= 80:
        print(report.rows_table(rows, document) + "\n" + report.legend(document), end="")
    unsteady = sum(1 for r in rows if r["unsteady"])
    if unsteady:
        print(f"{unsteady} of {len(rows)} rows are unsteady (⚠, see above): run them again on a "
              f"quiet machine before reading them")
    loaded = [r for r in rows if r["loaded"]]
    if loaded:
        print(f"{len(loaded)} rows were measured on a loaded machine (a calibration beside "
              f"each ran more than {settings.load_factor}× slower than this run's quietest, "
              f"{monitor.quietest_ms:.3g} ms; measured up to {1 + settings.load_retries} "
              f"times): run them again on a quiet machine before reading them:")
        for row in loaded:
            print(f"  {row['impl']} {report.row_label(row)}: {row['ms']:.3g} ms median, "
                  f"calibration {row['load_ratio']:.3g}× the quietest")
    if moved:
        print(f"{len(moved)} rows moved by more than {report.MOVED_FACTOR}× from today's "
              f"earlier run in {paths['json']} (one of the two runs was disturbed):")
        for line in moved:
            print(f"  {line}")
    for entry in failed:
        print(f"failed: {entry['impl']} {entry['cell']} B={entry['B']} H={entry['H']} "
              f"{entry['dtype']} {entry['mode']}: {entry['error'][:300]}")
    print("wrote " + ", ".join(paths.values()))
    imports_s = IMPORTED - STARTED
    print(f"took {imports_s + time.perf_counter() - began:.1f} s: imports {imports_s:.1f} s, "
          f"{len(jobs)} rows {rows_s:.1f} s, result files {writing_s:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
