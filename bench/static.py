"""Static facts of the Triton kernels, compiled for sm_90 on any machine (no GPU needed).

    python -m bench.static [--out DIR] [--cells ...] [--shapes B:H:dtype,...] [--modes ...]

For every Triton kernel that a benchmark cell launches for a training step (forward in train
mode, then backward) and for an inference forward, at the static shapes (B=64 H=512 bf16,
B=16 H=768 fp16, B=256 H=1024 bf16), this runs fastrnn's Triton backend on CPU tensors of
RECORDED_STEPS steps with the launches recorded instead of run (the host code chooses the
tiling an H100/H200 with 132 SMs gets), then compiles each recorded launch with the JIT's own
binder — the same specialization, options and so the same Triton cache key as a real launch
(``cache_key``; TRITON_CACHE_DIR set, the compiled kernels are the entries an sm_90 GPU's
launches find) — for GPUTarget("cuda", 90, 32), down to a cubin.

Compiled facts (read from the compilation, never predicted): registers and stack from the cubin
(``cuobjdump -res-usage``; registers else from the ptxas log), spill bytes from the ptxas log of
that very compilation, shared memory from the kernel's metadata plus the cubin's static shared
memory, the number of tile barriers per step from the PTX (one release add each; every barrier
is in the step loop), and the memory operations with release and acquire semantics (each
barrier needs an acquire after its wait). Derived from those facts: CTAs per SM (registers, shared memory, warps),
how many SMs the grid keeps busy and whether every program can be resident. From the tiling: the
bytes each CTA reads from L2/HBM per step. ``est_us_per_step`` is an ESTIMATE on those facts,
with the assumptions written beside it in the result file; it is not a measurement.

Writes ``static-<triton version>.json`` (an object with ``triton``, ``date``, ``target``,
``kind``, ``assumptions`` and ``rows``) and ``.md`` into --out (default bench/results).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple

# Compile, do not interpret.  Nothing else in the environment is touched: the variables Triton
# puts into its cache key (``get_cache_invalidating_env_vars``) must be those of the process
# that launches, so that a prewarm (scripts/gpu_check.sh) fills the entries the launches find.
os.environ.pop("TRITON_INTERPRET", None)
if "TRITON_CACHE_DIR" not in os.environ:
    # A kernel found in Triton's cache is not compiled again, so ptxas would print no log.
    import atexit
    import shutil
    _cache = tempfile.mkdtemp(prefix="fastrnn-static-")
    atexit.register(shutil.rmtree, _cache, True)
    os.environ["TRITON_CACHE_DIR"] = _cache

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton._C.libtriton import get_cache_invalidating_env_vars  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.compiler.compiler import get_cache_key  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from fastrnn import masks as M  # noqa: E402
from fastrnn.backends import triton_backend  # noqa: E402
from fastrnn.cells import CELLS as FAMILIES  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402

from .grid import CELLS, DTYPES  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SM_COUNT = 132                      # H100 SXM and H200
SHARED_PER_SM = 228 * 1024          # bytes an sm_90 SM can give its CTAs
RESERVED_SHARED_PER_CTA = 1024      # the driver's share of each CTA
REGISTERS_PER_SM = 65536
WARPS_PER_SM = 64
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STATIC_SHAPES = ((64, 512, "bfloat16"), (16, 768, "float16"), (256, 1024, "bfloat16"))
RECORDED_STEPS = 16                 # divisible by 16 like T = 512: the same specialization

ASSUMPTIONS = {
    "barrier_us": 1.0,
    "l2_round_trip_us": 0.35,
    "l2_bytes_per_cycle_per_sm": 64,
    "clock_ghz": 1.755,
    "dependent_round_trips_per_phase": 2,
    "note": ("ESTIMATE, not a measurement: per step = barriers x barrier_us + phases x "
             "dependent_round_trips_per_phase x l2_round_trip_us + bytes_per_step / "
             "(l2_bytes_per_cycle_per_sm x clock); the tensor-core work (< 0.1 us at these "
             "shapes) is left out. barrier_us: a spin barrier's arrive + poll through L2, of "
             "the order of the 0.73 us grid.sync measured on an RTX 3090 (no H100 figure "
             "published); l2_round_trip_us: ~600 cycles."),
}


# ------------------------------------------------------------------------------- recording

def _call(cell_name: str, batch: int, hidden: int, dtype: torch.dtype, training: bool):
    """A recurrence call of benchmark cell ``cell_name`` (module options of bench.grid)."""
    spec = CELLS[cell_name]
    family = FAMILIES[spec.family]
    options = spec.options
    generator = torch.Generator().manual_seed(0)
    gates = family.num_gates

    def rnd(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    layer_norm = bool(options.get("layer_norm"))
    seed = torch.tensor(1, dtype=torch.int64)
    recurrent = options.get("recurrent_dropout", 0.0)
    fields = dict(
        gx=rnd(RECORDED_STEPS, batch, gates * hidden), w_hh=rnd(gates * hidden, hidden),
        b_hh=rnd(gates * hidden), ln_hh_weight=rnd(gates * hidden) if layer_norm else None,
        lengths=None, seed=seed, ln_groups=options.get("ln_groups", 1),
        recurrent_mask=(M.keep_scale(seed, M.RECURRENT_DROPOUT, recurrent, (batch, hidden), dtype)
                        if training and recurrent > 0 else None),
        candidate_dropout=options.get("candidate_dropout", 0.0), training=training,
        reverse=False)
    for module_option, field in family.zoneout.items():
        fields[field] = options.get(module_option, 0.0)
    for state in family.states:
        fields[f"{state}0"] = rnd(batch, hidden)
    for name in family.norm_parameters[1:]:
        fields[name] = rnd(hidden) if layer_norm else None
    return family, family.call(**fields)


def record(cell_name: str, batch: int, hidden: int, dtype: torch.dtype, mode: str,
           tiling: Optional[dict] = None) -> List[tuple]:
    """The launches of one benchmark row: (kernel, grid, args, kwargs, pass) each."""
    spec = CELLS[cell_name]
    training = spec.training or mode == "train"
    family, call = _call(cell_name, batch, hidden, dtype, training)
    launches = []
    overrides = launch.forced_tiling(**tiling) if tiling else contextlib.nullcontext()
    with launch.target_sm_count(SM_COUNT), overrides, launch.recording() as recorded:
        # A forward-only row runs without gradients: the inference forward, no saved tensors.
        outputs = triton_backend.forward(call, save=mode == "train")
        launches += [entry + ("forward",) for entry in recorded]
        recorded.clear()
        if mode == "train":
            finals = 1 + len(family.states)
            saved = family.saved(outputs[0], *outputs[finals:])
            grads = tuple(torch.zeros_like(o) for o in outputs[:finals])
            triton_backend.backward(call._replace(gx=None), saved, grads)
            launches += [entry + ("backward",) for entry in recorded]
    return launches


# ------------------------------------------------------------------------------- compiling

def _tools_dir() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@contextlib.contextmanager
def _ptxas_log():
    """Captures the log Triton's own ptxas run prints (it is given -v)."""
    knobs = triton.knobs.nvidia
    previous = knobs.dump_ptxas_log
    knobs.dump_ptxas_log = True
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        knobs.dump_ptxas_log = previous


def launch_source(kernel, args, kwargs):
    """(ASTSource, options) of one recorded launch, specialized as the JIT specializes it: its
    own binder and ``_pack_args`` on the launch's arguments and keyword arguments, as
    ``launch._launch`` passes them (launch_cooperative_grid included: an option, so part of the
    cache key)."""
    kwargs = launch.constexpr_options(kwargs)
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options.__dict__


def cache_key(source, options: dict) -> str:
    """The key under which ``triton.compile`` caches ``source`` for sm_90 in this process."""
    backend = make_backend(TARGET)
    parsed = backend.parse_options(dict(options, **source.parse_options()))
    return get_cache_key(source, backend, parsed, env_vars=get_cache_invalidating_env_vars())


def compile_launch(kernel, args, kwargs):
    """(compiled kernel, ptxas log) of one recorded launch, into the Triton cache entry that
    the same launch on an sm_90 GPU looks up (``tests/test_static.py`` checks the keys)."""
    source, options = launch_source(kernel, args, kwargs)
    with _ptxas_log() as log:
        binary = triton.compile(source, target=TARGET, options=options)
    return binary, log.getvalue()


def _resources(binary) -> Dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the cubin as cuobjdump -res-usage prints them."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(binary.asm["cubin"])
        cubin.flush()
        text = subprocess.run([os.path.join(_tools_dir(), "cuobjdump"), "-res-usage", cubin.name],
                              capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def _from_log(log: str, pattern: str) -> int:
    found = re.search(pattern, log)
    return int(found.group(1)) if found else 0


def kernel_facts(binary, log: str, num_warps: int) -> dict:
    resources = _resources(binary)
    registers = resources.get("REG", _from_log(log, r"Used (\d+) registers"))
    spill_stores = _from_log(log, r"(\d+) bytes spill stores")
    spill_loads = _from_log(log, r"(\d+) bytes spill loads")
    shared = binary.metadata.shared + resources.get("SHARED", 0)
    ptx = binary.asm["ptx"]
    warp_registers = -(-registers * 32 // 256) * 256          # allocated per warp in 256s
    by_registers = REGISTERS_PER_SM // max(1, warp_registers * num_warps)
    by_shared = SHARED_PER_SM // (shared + RESERVED_SHARED_PER_CTA)
    return {
        "registers": registers, "spill_bytes": spill_stores + spill_loads,
        "stack_bytes": resources.get("STACK", 0), "shared_bytes": shared,
        "num_warps": num_warps,
        "ctas_per_sm": min(by_registers, by_shared, WARPS_PER_SM // num_warps),
        # Each tile barrier arrives with one release add (its polls compile to relaxed loads).
        "barriers_per_step": len(re.findall(r"(?:atom|red)\.[^;]*release[^;]*\.add", ptx)),
        # Memory operations with release / acquire semantics (a fence.acq_rel or an acq_rel
        # atomic counts as both): each barrier needs an acquire after its wait, or the other
        # splits' writes are not ordered before this CTA's reads.
        "release_ops": len(re.findall(r"\b(?:(?:atom|red|st)\.[^;\s]*\b(?:release|acq_rel)|"
                                      r"fence\.(?:acq_rel|sc))\b", ptx)),
        "acquire_ops": len(re.findall(r"\b(?:(?:atom|ld)\.[^;\s]*\b(?:acquire|acq_rel)|"
                                      r"fence\.(?:acq_rel|sc))\b", ptx)),
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "mma_sync": len(re.findall(r"\bmma\.sync", ptx)),
    }


# ------------------------------------------------------------------------ what moves per step

def bytes_per_step(cfg, dims, element: int, kernel_pass: str) -> int:
    """Bytes one CTA reads from L2/HBM per step, from its tiling (loads, not stores)."""
    rows, units, hidden = cfg.BLOCK_B, cfg.BLOCK_U, dims.H
    slots = 4 * units
    weight = 0 if cfg.HOIST else slots * cfg.NUM_K * cfg.BLOCK_K * element
    if kernel_pass == "forward":
        if cfg.MERGED:
            fields = 3 if cfg.PUBLISH_ZONEOUT else 2
            recurrent = rows * hidden * 4 * fields + rows * cfg.SPLITS_P2 * 2 * 4
            recurrent += rows * hidden * element if cfg.ZONE_H else 0
        else:
            recurrent = rows * hidden * element
        moments = rows * cfg.SPLITS_P2 * cfg.MOMENT_SLOTS * 4 if cfg.LAYER_NORM else 0
        return recurrent + moments + slots * rows * element + weight
    per_step = (slots * rows * element      # preact
                + 2 * units * rows * element  # grad_out, out / h0
                + units * rows * 4 * (1 + cfg.CELL_NORM))  # the LSTM's cell, the GRU's q_n
    if cfg.LAYER_NORM:
        per_step += rows * hidden * element + rows * cfg.SPLITS_P2 * cfg.SUM_SLOTS * 4
    return per_step + cfg.SPLITS * rows * units * 4 + weight


def estimate_us(barriers: int, phases: int, moved: int) -> float:
    a = ASSUMPTIONS
    transfer = moved / (a["l2_bytes_per_cycle_per_sm"] * a["clock_ghz"] * 1e3)
    return (barriers * a["barrier_us"] + phases * a["dependent_round_trips_per_phase"]
            * a["l2_round_trip_us"] + transfer)


# ------------------------------------------------------------------------------------- rows

def _kernel_name(kernel) -> str:
    return getattr(kernel, "__name__", None) or kernel.fn.__name__


def static_rows(cells: Iterable[str], shapes: Iterable[Tuple[int, int, str]],
                modes=("train", "forward"), tiling: Optional[dict] = None,
                progress=print) -> List[dict]:
    """One row per distinct compiled kernel of the given cells, shapes and modes."""
    rows, compiled = [], {}
    for batch, hidden, dtype_name in shapes:
        dtype = DTYPES[dtype_name]
        for cell in cells:
            for mode in modes:
                for kernel, grid, args, kwargs, kernel_pass in record(cell, batch, hidden, dtype,
                                                                       mode, tiling):
                    cfg = kwargs["cfg"]
                    key = (_kernel_name(kernel), kernel_pass, cfg, batch, hidden, dtype_name)
                    if key not in compiled:
                        progress(f"compiling {cell} {mode} {kernel_pass} {_kernel_name(kernel)} "
                                 f"B={batch} H={hidden} {dtype_name}")
                        binary, log = compile_launch(kernel, args, kwargs)
                        compiled[key] = kernel_facts(binary, log, kwargs["num_warps"])
                    facts = compiled[key]
                    dims = args[2]
                    ctas = grid[0] * grid[1]
                    persistent = cfg.PERSISTENT
                    moved = bytes_per_step(cfg, dims, torch.finfo(dtype).bits // 8, kernel_pass)
                    phases = 1 + int(cfg.LAYER_NORM) if kernel_pass == "forward" else (
                        2 + int(cfg.LAYER_NORM))
                    row = {
                        "cell": cell, "B": batch, "H": hidden, "dtype": dtype_name, "mode": mode,
                        "pass": kernel_pass, "kernel": _kernel_name(kernel),
                        "grid": list(grid), "ctas": ctas, **facts,
                        "sms_busy": min(ctas, SM_COUNT) if persistent else None,
                        "co_resident": persistent and ctas <= SM_COUNT * facts["ctas_per_sm"],
                        "block_b": cfg.BLOCK_B, "block_u": cfg.BLOCK_U, "block_k": cfg.BLOCK_K,
                        "w_hh_on_chip": bool(cfg.HOIST and persistent),
                        "bytes_per_step": moved,
                        "est_us_per_step": round(estimate_us(facts["barriers_per_step"], phases,
                                                             moved), 2) if persistent else None,
                    }
                    if row not in rows:
                        rows.append(row)
    return _distinct(rows)


def _distinct(rows: List[dict]) -> List[dict]:
    """One row per compiled kernel and mode: a forward row of each mode (the inference forward
    writes no saved tensor, so it is its own kernel), the backward once."""
    seen, kept = set(), []
    for row in rows:
        key = (row["cell"], row["B"], row["H"], row["dtype"], row["pass"], row["kernel"],
               row["registers"], row["shared_bytes"],
               row["mode"] if row["pass"] == "forward" else "")
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


# ----------------------------------------------------------------------------------- output

COLUMNS = ("cell", "B", "H", "dtype", "mode", "pass", "kernel", "grid", "ctas", "registers",
           "spill_bytes", "shared_bytes", "ctas_per_sm", "sms_busy", "co_resident",
           "w_hh_on_chip", "barriers_per_step", "release_ops", "acquire_ops", "bytes_per_step",
           "est_us_per_step")


def markdown(document: dict) -> str:
    lines = ["# Static facts of the Triton kernels (sm_90, compiled, no GPU run)\n",
             f"triton {document['triton']}, target {document['target']}, {document['date']}. "
             "Registers, spills and shared memory are read from the compiled kernels; "
             "`est_us_per_step` is an **estimate** (assumptions below), not a measurement; "
             "no figure here was measured on a GPU.\n",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in document["rows"]:
        lines.append("| " + " | ".join("—" if row.get(c) is None else
                                        ("×".join(map(str, row[c])) if c == "grid" else str(row[c]))
                                        for c in COLUMNS) + " |")
    lines += ["", "Estimate assumptions: " + json.dumps(document["assumptions"]), ""]
    return "\n".join(lines)


def write(rows: List[dict], out_dir: str) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    document = {"triton": triton.__version__, "date": datetime.date.today().isoformat(),
                "target": f"cuda sm_{TARGET.arch}, {SM_COUNT} SMs", "kind": "static (compiled)",
                "assumptions": ASSUMPTIONS, "rows": rows}
    stem = os.path.join(out_dir, f"static-{triton.__version__}")
    with open(stem + ".json", "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    with open(stem + ".md", "w") as f:
        f.write(markdown(document))
    return {"json": stem + ".json", "md": stem + ".md"}


def _shapes(text: str) -> List[Tuple[int, int, str]]:
    shapes = []
    for part in text.split(","):
        batch, hidden, dtype = part.split(":")
        shapes.append((int(batch), int(hidden), dtype))
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=RESULTS_DIR, help="where the files go")
    parser.add_argument("--cells", default="ln_lstm,gru_reg,lstm,gru")
    parser.add_argument("--shapes", type=_shapes, default=list(STATIC_SHAPES),
                        help="B:H:dtype,... (default: the static set)")
    parser.add_argument("--modes", default="train,forward")
    args = parser.parse_args(argv)
    rows = static_rows(args.cells.split(","), args.shapes, tuple(args.modes.split(",")),
                       progress=lambda text: print(text, file=sys.stderr, flush=True))
    paths = write(rows, args.out)
    print(markdown({"triton": triton.__version__, "target": f"sm_{TARGET.arch}",
                    "date": datetime.date.today().isoformat(), "assumptions": ASSUMPTIONS,
                    "rows": rows}))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
