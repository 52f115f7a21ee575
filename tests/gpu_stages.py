"""The Python stages of scripts/gpu_check.sh, each result a JSON line written as soon as it is
known (a stage killed at its limit keeps what it finished).

    python tests/gpu_stages.py smoke    --out FILE [--device cuda] [--limit N] [--dry-run]
    python tests/gpu_stages.py headline --out FILE [--device cuda] [--limit N] [--dry-run] [--tiny]
    python tests/gpu_stages.py bench    I [bench.run arguments]
    python tests/gpu_stages.py prewarm  --out FILE [--device cuda] [--shard I/N] [--stages ...]
                                        [--sm-count N] [--limit N] [--tiny] [--dry-run]
    python tests/gpu_stages.py summary  [--brief] FILE...

smoke: every kernel variant of ``support.variant_runs`` (T = 8 or less, small shapes) on the
device, checked as the test suite checks a backend (``support.check_call_against_reference``:
outputs, saved tensors and every gradient), the first call (loading or compiling the kernels)
and the second timed.

headline: each benchmark cell (ln_lstm, gru_reg, lstm, gru) as a bidirectional module with
lengths at the headline shapes (B=64 H=512 T=512 bfloat16, B=16 H=768 T=1024 float16):
outputs and the gradients of the input and every parameter against the same module on the
reference backend (same weights, input and masks).

Both judge with ``fastrnn.check.compare``, the comparison a user's ``python -m fastrnn.check``
runs: the error relative to the float64 reference, within a bound set by the reference
backend's own error in the run's dtype on the same rounded inputs.

bench I: ``python -m bench.run`` on headline shape I (``bench_args``) with the arguments given.

prewarm: records the Triton launches that the smoke, headline, bench and check (``python -m
fastrnn.check``) stages will make on this GPU — their own code, with the launches recorded
instead of run, the headline and bench runs at a T the JIT specializes the same — and compiles
one launch per Triton cache key into TRITON_CACHE_DIR with ``bench.static.compile_launch``: the
entries their launches then find instead of compiling within their stages' time limits.
``--shard I/N`` compiles every N-th launch from I (the most expensive to compile dealt out
first); ``--dry-run`` records and lists them, compiling nothing.  ``--device cpu --sm-count N``
records on CPU tensors the launches of a GPU with N SMs (a CPU check; slow at headline shapes).

summary: the digest gpu_check.sh prints after each stage — pass/fail counts and the first
error of each kind from JSON lines, a bench result's rows, the tail of a log.  It imports
nothing but the standard library, so that it costs milliseconds, not a torch import.

``--device cpu`` under TRITON_INTERPRET=1 runs smoke and headline on the CPU (with ``--limit``
and ``--tiny``, to check the runners); ``--dry-run`` lists the runs without running them.
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# ------------------------------------------------------------------------------------ summary

ERROR_KINDS = 5        # distinct first error lines a digest shows per file
LINE = 200             # characters of one digest line


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:LINE] if (text or "").strip() else ""


def _errors(lines, failures):
    """Each distinct first error line once, with how many failures gave it."""
    kinds = {}
    for label, error in failures:
        kinds.setdefault(_first_line(error), []).append(label)
    for error, labels in list(kinds.items())[:ERROR_KINDS]:
        lines.append(f"  FAIL x{len(labels)} (first: {labels[0][:80]}): {error}")
    if len(kinds) > ERROR_KINDS:
        lines.append(f"  ... {len(kinds) - ERROR_KINDS} more kinds of failure")


def _digest_jsonl(paths, name):
    """One digest of the JSON lines of ``paths`` (a stage's, or every prewarm shard's)."""
    rows, total = [], 0
    for path in paths:
        with open(path) as f:
            mine = []
            for line in f:
                try:
                    mine.append(json.loads(line))
                except ValueError:
                    pass                  # a line cut short by the stage's kill
        rows += mine
        total += mine[-1].get("of", len(mine)) if mine else 0   # what the file was to hold
    counts = {}
    for row in rows:
        counts[row.get("status", "?")] = counts.get(row.get("status", "?"), 0) + 1
    seconds = sum(row.get("compile_s", 0) for row in rows)
    lines = [f"{name}: {len(rows)} of {total} done: "
             + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
             + (f"; {seconds:.0f} s compiling in all" if seconds else "")]
    warned = [row for row in rows if row.get("warnings")]
    if warned:
        lines.append(f"  {len(warned)} runs warned, first ({warned[0]['run'][:80]}): "
                     f"{warned[0]['warnings'][0][:LINE]}")
    _errors(lines, [(row.get("run", "?"), row.get("error")) for row in rows
                    if row.get("status") == "fail"])
    return lines


def _rows_digest(document):
    """A line per row: µs per step, × cuDNN (as its run computed it), × the torch loop (from the
    loop row of the same cell and workload, which a later run of gpu_check measures) and the
    error against float64."""
    def workload(row):
        return tuple(row[k] for k in ("cell", "B", "H", "T", "dtype", "mode"))

    rows = document.get("rows", [])
    loop = {workload(r): r["ms"] for r in rows if r["impl"] == "torch-loop" and r.get("ms")}
    lines = []
    for row in rows:
        ms = row.get("ms")
        ratio = row.get("ratio_vs_cudnn")
        slower = loop.get(workload(row)) if row["impl"] != "torch-loop" else None
        error = row.get("max_rel_err")
        lines.append(
            f"  {row['impl']:15} {row['cell']:8} B={row['B']} H={row['H']} T={row['T']} "
            f"{row['dtype']:8} {row['mode']:7} "
            + ("not timed" if ms is None else f"{ms * 1e3 / row['T']:8.3g} us/step")
            + ("" if ratio is None else f"  x{ratio:.3g} cuDNN")
            + ("" if not (ms and slower) else f"  x{ms / slower:.3g} loop")
            + ("" if error is None else f"  err {error:.1e}"))
    _errors(lines, [(f"{f['impl']} {f['cell']} {f['dtype']} {f['mode']}", f["error"])
                    for f in document.get("failed", [])])
    return lines


def _check_digest(document, name):
    """fastrnn.check's JSON: its checks by status, each failure, its speed table."""
    rows = document.get("correctness", [])
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"{name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    _errors(lines, [(f"{r['backend']} {r['cell']} {r['options']} {r['shape']} {r['dtype']}",
                     r.get("message") or f"{r['worst']} {r['error']:.2e} > bound {r['bound']:.1e}")
                    for r in rows if r["status"] == "fail"])
    for row in document.get("speed", []):
        lines.append(f"  speed {row['cell']:5} {row['implementation']:10} "
                     f"{row.get('backend') or '':9} forward {row['forward_ms']:.3g} ms, "
                     f"train {row['train_ms']:.3g} ms ({row['shape']} {row['dtype']})")
    return lines


def _digest_json(path, brief=False):
    with open(path) as f:
        document = json.load(f)
    name = os.path.basename(path)
    if "correctness" in document:
        return _check_digest(document, name)
    unfinished = [run["unfinished"] for run in document.get("runs", []) if "unfinished" in run]
    head = [f"{name}: {len(document['rows'])} rows, {len(document['failed'])} failed"
            + (f" ({unfinished[-1]})" if unfinished else "")]
    return head + ([] if brief else _rows_digest(document))


def _digest_log(path, tail=6):
    with open(path, errors="replace") as f:
        text = f.read().splitlines()
    return [f"{os.path.basename(path)} (last {min(tail, len(text))} lines):"] + [
        "  " + line[:LINE] for line in text[-tail:]]


def summary_lines(patterns, brief=False):
    """The digest of each file pattern: its JSON lines files together, else file by file;
    ``brief``: a bench result's counts without its rows."""
    lines = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern))
        name = os.path.basename(pattern)
        try:
            if not paths:
                lines.append(f"{name}: not written")
            elif pattern.endswith(".jsonl"):
                lines += _digest_jsonl(paths, name)
            else:
                for path in paths:
                    lines += (_digest_json(path, brief) if path.endswith(".json")
                              else _digest_log(path))
        except Exception as error:   # a digest must never hide the rest of the run
            lines.append(f"{name}: unreadable ({type(error).__name__}: {error})")
    return lines


if __name__ == "__main__" and sys.argv[1:2] == ["summary"]:
    brief = sys.argv[2:3] == ["--brief"]
    print("\n".join(summary_lines(sys.argv[2 + brief:], brief)))
    sys.exit(0)

# ---------------------------------------------------------------------- the device stages

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Optional  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

import fastrnn  # noqa: E402
from bench import run as bench_run  # noqa: E402
from bench.data import input_sets, master_parameters  # noqa: E402
from bench.grid import CELLS as BENCH_CELLS, GPU_CELLS  # noqa: E402
from bench.implementations import FastrnnBackend  # noqa: E402
from bench.measure import step as bench_step  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn.backends import triton_backend  # noqa: E402
from fastrnn.backends.fused import poisoned_outputs  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402
from tests import support  # noqa: E402

HEADLINE_SHAPES = ((64, 512, 512, torch.bfloat16), (16, 768, 1024, torch.float16))
TINY_SHAPES = ((3, 16, 6, torch.bfloat16),)   # --tiny: the runners' logic on a CPU
BENCH_MODES = "train,forward"


def bench_args(shape) -> list:
    """bench.run's arguments for the rows of one headline shape, every cell and mode."""
    B, H, T, dtype = shape
    return ["-B", str(B), "-H", str(H), "-T", str(T), "--dtypes", str(dtype)[6:],
            "--cells", ",".join(GPU_CELLS), "--modes", BENCH_MODES]


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compare(got: dict, own: dict, reference64: dict, dtype, steps, batch) -> dict:
    """Every named module result through fastrnn.check.compare, as ``python -m fastrnn.check``
    judges a module (``own``: the reference backend in the run's dtype; a parameter's gradient
    sums T·B terms): the worst, or AssertionError naming each value out of its bound."""
    from fastrnn import check

    results = check.compare_step(got, own, reference64, dtype, steps * batch)
    failed = [r for r in results if not r.passed]
    if failed:
        raise AssertionError("out of bound: " + ", ".join(
            f"{r.name} {r.error:.2e} > {r.bound:.1e}" for r in failed))
    worst = max(results, key=lambda r: r.error / r.bound if r.bound else r.error)
    return {"worst": worst.name, "worst_error": float(f"{worst.error:.3e}"),
            "bound": float(f"{worst.bound:.3e}")}


# ----------------------------------------------------------------------------------- smoke

def smoke_runs():
    return [(label, (test_case, tiling, dtype, support.runs_inference(label, dtype)))
            for label, test_case, tiling, dtype in support.variant_runs()]


def _smoke_call(run):
    test_case = run[0]
    return support.make_call(test_case, support.make_inputs(test_case))


@contextlib.contextmanager
def _smoke_settings(run):
    with launch.forced_tiling(**run[1]), poisoned_outputs():
        yield


def smoke_triton(run, device, recording=False):
    """The Triton part of a smoke run (small enough to record as it is)."""
    with _smoke_settings(run):
        support.run_call(_smoke_call(run), "triton", run[2], device)
        if run[3]:
            _inference_forwards(run, device)


def _inference_forwards(run, device):
    """(inference results, the saving forward's) of the run's call: out and the final states."""
    test_case = run[0]
    call = support.make_call(test_case, support.cast(support.make_inputs(test_case), run[2],
                                                     device))
    return ops.forward(call, "triton", save=False), ops.forward(call, "triton")


def smoke_one(run, device):
    """The test suite's check of a call (``support.check_call_against_reference``: outputs,
    saved tensors of the computed steps and gradients through fastrnn.check.compare), twice:
    the first call loads (or compiles) the kernels.  Runs of ``support.runs_inference`` also
    compare the inference forward (no saved tensor given to the kernels) with the saving one:
    the same math with fewer stores, so float32's default closeness (the compiler may contract
    differently) and nothing written to a saved tensor's place."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with _smoke_settings(run):
            support.check_call_against_reference(_smoke_call(run), "triton", run[2], device)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    if run[3]:
        with _smoke_settings(run):
            kept, full = _inference_forwards(run, device)
        for name, a, b in zip(run[0].spec.forward_outputs, kept, full):
            torch.testing.assert_close(a, b, msg=lambda m: f"inference {name}: {m}")
    return {"first_call_s": round(times[0], 3), "run_s": round(times[1], 3)}


# -------------------------------------------------------------------------------- headline

def headline_runs(shapes=HEADLINE_SHAPES):
    return [(f"{cell} B={B} H={H} T={T} {str(dtype)[6:]} bidirectional lengths",
             (cell, B, H, T, dtype)) for B, H, T, dtype in shapes for cell in GPU_CELLS]


def _headline_module(cell, hidden, dtype, device, backend):
    """The run's bidirectional module on ``backend`` in ``dtype``; every module of a run has the
    same weights (drawn in float32, then rounded to the run's dtype)."""
    spec = BENCH_CELLS[cell]
    cls = fastrnn.LSTM if spec.family == "lstm" else fastrnn.GRU
    torch.manual_seed(0)
    module = cls(hidden, hidden, bidirectional=True, backend=backend, device=device,
                 **spec.options)
    return module.to(dtype).train(spec.training)


def headline_results(run, device, backend="triton", dtype=None, steps=None, weights=None):
    """({name: tensor}, loss weights) of a training step of the run's module on ``backend`` in
    ``dtype`` (default the run's) on the run's input (rounded to the run's dtype) and lengths:
    ``fastrnn.check``'s step (outputs, the input's and every parameter's gradient of a weighted
    sum of the outputs; pass the weights of the first call to the others)."""
    from fastrnn import check

    cell, B, H, T, run_dtype = run
    dtype = dtype or run_dtype
    steps = steps or T
    module = _headline_module(cell, H, run_dtype, device, backend).to(dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(steps, B, H, generator=generator).to(run_dtype).to(device=device, dtype=dtype)
    lengths = torch.randint(steps // 2, steps + 1, (B,), generator=generator)
    lengths[0] = steps
    return check.train_step(module, x, lengths, 2, weights)


def headline_triton(run, device, recording=False):
    return headline_results(run, device, steps=recorded_steps(run[3]) if recording else None)


def headline_one(run, device):
    _, B, _, T, dtype = run
    start = time.perf_counter()
    got, weights = headline_triton(run, device)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    # Steps past a sequence's length are zero in all three (the module's padding), so whole
    # tensors compare.
    own, _ = headline_results(run, device, "reference", weights=weights)
    reference64, _ = headline_results(run, device, "reference", torch.float64, weights=weights)
    return {"triton_call_s": round(elapsed, 3), **_compare(got, own, reference64, dtype, T, B)}


# ----------------------------------------------------------------------------------- bench

def bench_runs(shapes=HEADLINE_SHAPES):
    """The fastrnn-triton rows of the bench stages, as bench.run builds them."""
    runs = []
    for shape in shapes:
        for workload in bench_run.workloads(bench_run.parse_args(bench_args(shape)), "cuda"):
            runs.append((f"bench {workload.label()}", workload))
    return runs


def bench_triton(workload, device, recording=False):
    """One timed call of the row, as bench.measure makes it."""
    if recording:
        workload = dataclasses.replace(workload, T=recorded_steps(workload.T))
    prepared = FastrnnBackend("triton").prepare(workload, master_parameters(workload, 0), device)
    x = input_sets(workload, 1, 1, device)[0].to(workload.torch_dtype)
    return bench_step(prepared, x, workload.mode)


# ----------------------------------------------------------------------------------- check

def check_triton(_, device, recording=False):
    """The Triton launches of ``python -m fastrnn.check --device cuda`` (its correctness checks
    and its speed table's "auto" rows)."""
    from fastrnn import check

    check.correctness(device, backends=["triton"])
    shape = check._default_speed_shape(device)
    if recording:
        shape = shape._replace(steps=recorded_steps(shape.steps))
    check.speed(device, shape=shape, repeats=1)


# --------------------------------------------------------------------------------- prewarm

def recorded_steps(steps: int) -> int:
    """A sequence length the JIT specializes as it does ``steps`` (an integer argument is
    specialized on == 1 and on divisibility by 16): short, so that the host code a recording
    runs (input projections, the backward's products, the eager loops of fastrnn.check's speed
    table) costs little."""
    return min(steps, 16 if steps % 16 == 0 else 17)


def _cpu_triton(device, dtype):
    """triton_backend.unsupported for a recording on CPU: CPU tensors stand in for the GPU's."""
    return None if dtype in triton_backend.DTYPES else "not a Triton dtype"


@contextlib.contextmanager
def recorded_launches(device, sm_count: Optional[int] = None):
    """Within the block the Triton backend records its launches instead of running them (the
    host code runs: on a GPU its work is quick, the tensors real).  On CPU, CPU tensors stand
    in for a GPU's of ``sm_count`` SMs (its tilings)."""
    with contextlib.ExitStack() as stack:
        if device.type == "cpu":
            stack.enter_context(mock.patch.object(triton_backend, "unsupported", _cpu_triton))
            stack.enter_context(launch.target_sm_count(sm_count))
        yield stack.enter_context(launch.recording())


def _compile_cost(entry) -> tuple:
    """Larger first: the layer-norm kernels at the largest H compile longest."""
    _, _, args, kwargs = entry
    hidden = next((a.H for a in args if isinstance(a, launch.Dims)), 0)
    cfg = kwargs["cfg"]
    return (hidden * cfg.NUM_K, cfg.LAYER_NORM, cfg.MERGED, cfg.TRAINING)


def distinct_launches(stages, device, sm_count=None, progress=print):
    """[(label, kernel, args, kwargs)]: one launch per Triton cache entry the stages' runs
    look up on the GPU, most expensive to compile first (the same order in every shard)."""
    from bench import static

    found = {}
    for name, runs in stages:
        for label, run in runs:
            with recorded_launches(device, sm_count) as recorded:
                try:
                    PREWARMED[name](run, device, recording=True)
                except Exception as error:   # a recording still holds what ran before
                    progress(f"recording {label}: {type(error).__name__}: {error}")
            for kernel, _, args, kwargs in recorded:
                key = static.cache_key(*static.launch_source(kernel, args, kwargs))
                found.setdefault(key, (f"{label}: {static._kernel_name(kernel)}", kernel, args,
                                       kwargs))
    return sorted(found.values(), key=_compile_cost, reverse=True)


def prewarm(args) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("prewarm compiles for the GPU: run it without TRITON_INTERPRET=1")
    from bench import static

    device = torch.device(args.device)
    sm_count = (torch.cuda.get_device_properties(device).multi_processor_count
                if device.type == "cuda" else args.sm_count or static.SM_COUNT)
    shapes = TINY_SHAPES if args.tiny else HEADLINE_SHAPES
    runs = {"smoke": smoke_runs()[:args.limit], "headline": headline_runs(shapes),
            "bench": bench_runs(shapes), "check": [("fastrnn.check", None)]}
    began = time.perf_counter()
    launches = distinct_launches([(name, runs[name]) for name in args.stages.split(",")],
                                 device, sm_count,
                                 progress=lambda text: print(text, file=sys.stderr, flush=True))
    index, shards = map(int, args.shard.split("/"))
    mine = launches[index::shards]
    print(f"prewarm {args.shard}: {len(launches)} distinct launches of {args.stages} on "
          f"{sm_count} SMs, recorded in {time.perf_counter() - began:.1f} s; "
          f"{'listing' if args.dry_run else 'compiling'} {len(mine)}", flush=True)
    failures = 0
    with open(args.out, "a") as log:
        for number, (label, kernel, launch_args, kwargs) in enumerate(mine):
            row = {"stage": "prewarm", "run": label, "index": number, "of": len(mine),
                   "shard": args.shard, "sm_count": sm_count, "status": "listed"}
            if not args.dry_run:
                start = time.perf_counter()
                try:
                    binary, _ = static.compile_launch(kernel, launch_args, kwargs)
                    if device.type == "cuda":
                        # Loads it as a first launch does; triton 3.6 also compiles the
                        # kernel's C launcher there (gcc, about a second), cached beside it.
                        binary._init_handles()
                    row["status"] = "pass"
                except Exception as error:  # the stage that launches it reports it again
                    failures += 1
                    row.update(status="fail", error=f"{type(error).__name__}: {error}"[-3000:])
                row["compile_s"] = round(time.perf_counter() - start, 2)
            log.write(json.dumps(row) + "\n")
            log.flush()
    return 1 if failures else 0


# ------------------------------------------------------------------------------------ main

STAGES = {"smoke": (smoke_runs, smoke_one), "headline": (headline_runs, headline_one)}
# The Triton part of each stage's run, which prewarm records (``recording``: on CPU tensors,
# with a shorter T that specializes the same, ``recorded_steps``).
PREWARMED = {"smoke": smoke_triton, "headline": headline_triton, "bench": bench_triton,
             "check": check_triton}


def run_stage(args) -> int:
    runs_of, run_one = STAGES[args.stage]
    runs = (headline_runs(TINY_SHAPES) if args.tiny and args.stage == "headline"
            else runs_of())[:args.limit]
    device = torch.device(args.device)
    if device.type == "cuda":
        # Products in float32 as the references compute them (no TF32).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    failures = 0
    with open(args.out, "a") as log:
        for index, (label, run) in enumerate(runs):
            row = {"stage": args.stage, "run": label, "index": index, "of": len(runs)}
            if args.dry_run:
                row["status"] = "listed"
            else:
                with bench_run.fastrnn_warnings() as warned:
                    try:
                        row.update(run_one(run, device), status="pass")
                    except Exception as error:  # every run is reported; the stage goes on
                        failures += 1
                        row.update(status="fail",
                                   error=f"{type(error).__name__}: {error}"[-3000:],
                                   where=traceback.format_exc(limit=-3)[-2000:])
                if warned:  # e.g. a persistent kernel that fell back to the per-step driver
                    row["warnings"] = [text[:1000] for text in warned]
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{args.stage} {index + 1}/{len(runs)} {row['status']:6} {label}"
                  + (f"  {row.get('error', '')[:200]}" if row["status"] == "fail" else "")
                  + (f"  WARNED {row['warnings'][0][:200]}" if row.get("warnings") else ""),
                  flush=True)
    print(f"{args.stage}: {len(runs) - failures} of {len(runs)} "
          f"{'listed' if args.dry_run else 'passed'}", flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        shape = HEADLINE_SHAPES[int(argv[1])]
        return bench_run.main(bench_args(shape) + argv[2:])
    parser = argparse.ArgumentParser(prog="python tests/gpu_stages.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=sorted(STAGES) + ["prewarm"])
    parser.add_argument("--out", required=True, help="JSON lines, one per run, appended")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--limit", type=int, default=None, help="only the first N runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    parser.add_argument("--tiny", action="store_true",
                        help="one tiny headline shape instead (a CPU check of the runners)")
    parser.add_argument("--shard", default="0/1", help="prewarm: I/N, every N-th launch from I")
    parser.add_argument("--sm-count", type=int, default=None,
                        help="prewarm --device cpu: the SM count of the GPU it stands in for "
                             "(default 132)")
    parser.add_argument("--stages", default=",".join(PREWARMED),
                        help="prewarm: whose launches (default: all)")
    args = parser.parse_args(argv)
    return prewarm(args) if args.stage == "prewarm" else run_stage(args)


if __name__ == "__main__":
    sys.exit(main())
