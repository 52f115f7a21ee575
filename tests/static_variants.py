"""Compiles the Triton kernel variants the interpreter tests run, for sm_90, on a machine without
a GPU: TRITON_INTERPRET=1 runs a kernel's math but never compiles it, so constructs the compiler
rejects, spills and shared memory beyond an SM's would otherwise surface only on a GPU.

Each option case of VARIANT_CASES, for both cells, in float32 and bfloat16, runs fastrnn's
Triton backend forward and backward on small CPU tensors with the launches recorded (the tiling
an H100/H200 gets for the shape, and every forced tiling of tests/support.py); every distinct
launch is then compiled with the JIT's binder for GPUTarget("cuda", 90, 32).

    python tests/static_variants.py [--shard I/N]   # one JSON line per distinct kernel

Run by tests/test_static.py (shards in parallel, TRITON_INTERPRET unset).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import static  # noqa: E402  (first: it unsets TRITON_INTERPRET before triton loads)
import torch  # noqa: E402

from fastrnn.backends import triton_backend  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402
from tests import support  # noqa: E402

# Each tiling with the option sets test_triton.py runs it on, in float32; the default tiling
# also in bfloat16 and on more option sets.
TILED_CASES = ("plain", "everything", "everything_per_gate_reverse")
DEFAULT_CASES = TILED_CASES + ("layer_norm_per_gate", "everything_eval")
# Sizes of the default-tiling runs: two column splits and a partial batch tile.
DEFAULT_SIZES = dict(steps=4, batch=5, hidden=24)


def _launches(test_case, dtype, tiling):
    tensors = support.cast(support.make_inputs(test_case), dtype, "cpu")
    call = support.make_call(test_case, tensors)
    spec = test_case.spec
    forced = launch.forced_tiling(**tiling)
    with launch.target_sm_count(static.SM_COUNT), forced, launch.recording() as recorded:
        outputs = triton_backend.forward(call)
        if test_case.training:
            finals = 1 + len(spec.states)
            saved = spec.saved(outputs[0], *outputs[finals:])
            grads = tuple(torch.zeros_like(o) for o in outputs[:finals])
            triton_backend.backward(call._replace(gx=None), saved, grads)
    return list(recorded)


def variants():
    """(label, kernel, args, kwargs) of every distinct launch, in a fixed order."""
    seen, found = set(), []
    for cell in ("lstm", "gru"):
        runs = [(name, "default", dtype) for name in DEFAULT_CASES
                for dtype in (torch.float32, torch.bfloat16)]
        runs += [(name, tiling_name, torch.float32) for name in TILED_CASES
                 for tiling_name in support.TILINGS]
        for name, tiling_name, dtype in runs:
                if tiling_name == "default":
                    test_case, tiling = support.case(cell, name, **DEFAULT_SIZES), {}
                    if test_case.lengths is not None:
                        test_case.lengths = [4, 1, 3, 2, 4]
                else:
                    test_case, tiling = support.tiling_case(cell, name, tiling_name)
                if True:
                    for kernel, _, args, kwargs in _launches(test_case, dtype, tiling):
                        key = (static._kernel_name(kernel), kwargs["cfg"], kwargs["num_warps"],
                               tuple(str(a.dtype) if isinstance(a, torch.Tensor) else
                                     type(a).__name__ for a in _flat(args)))
                        if key not in seen:
                            seen.add(key)
                            label = (f"{cell}-{name} {tiling_name} {str(dtype)[6:]} "
                                     f"{static._kernel_name(kernel)}")
                            found.append((label, kernel, args, kwargs))
    return found


def _flat(args):
    for value in args:
        if isinstance(value, tuple):
            yield from _flat(value)
        else:
            yield value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant from I")
    parser.add_argument("--count", action="store_true", help="print the number of variants")
    args = parser.parse_args()
    index, shards = map(int, args.shard.split("/"))
    found = variants()
    if args.count:
        print(len(found))
        return 0
    for label, kernel, launch_args, kwargs in found[index::shards]:
        try:
            binary, log = static.compile_launch(kernel, launch_args, kwargs)
            facts = static.kernel_facts(binary, log, kwargs["num_warps"])
            facts["fits_shared"] = (facts["shared_bytes"] + static.RESERVED_SHARED_PER_CTA
                                    <= static.SHARED_PER_SM)
        except Exception as error:  # reported, not raised: one line per variant
            facts = {"error": f"{type(error).__name__}: {str(error)[-2000:]}"}
        print(json.dumps({"variant": label, **facts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
