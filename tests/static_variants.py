"""Compiles the Triton kernel variants the interpreter tests run, for sm_90, on a machine without
a GPU: TRITON_INTERPRET=1 runs a kernel's math but never compiles it, so constructs the compiler
rejects, spills and shared memory beyond an SM's would otherwise surface only on a GPU.

Each run of ``support.variant_runs`` (both cells; the tiling an H100/H200 gets for a small shape
and every forced tiling of tests/support.py, on their option sets) runs fastrnn's Triton backend
forward and backward on small CPU tensors with the launches recorded; every distinct launch, and
bench.barrier's kernel, is then compiled with the JIT's binder for GPUTarget("cuda", 90, 32).

    python tests/static_variants.py [--shard I/N]   # one JSON line per distinct kernel
    python tests/static_variants.py --count         # the number of variants

Run by tests/test_static.py (shards in parallel, TRITON_INTERPRET unset).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import static  # noqa: E402  (first: it unsets TRITON_INTERPRET before triton loads)
from bench import barrier  # noqa: E402
import torch  # noqa: E402

from fastrnn.backends import triton_backend  # noqa: E402
from fastrnn.kernels import launch  # noqa: E402
from tests import support  # noqa: E402


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
    for run_label, test_case, tiling, dtype in support.variant_runs():
        for kernel, _, args, kwargs in _launches(test_case, dtype, tiling):
            key = (static._kernel_name(kernel), kwargs["cfg"], kwargs["num_warps"],
                   tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__
                         for a in _flat(args)))
            if key not in seen:
                seen.add(key)
                found.append((f"{run_label} {static._kernel_name(kernel)}", kernel, args, kwargs))
    # bench.barrier's kernel: the tile barrier alone, at the most programs it measures.
    sync = torch.zeros(2, dtype=torch.int32)
    config = barrier.BarrierConfig(max(barrier.PROGRAMS), barrier.SPIN_LIMIT)
    found.append(("bench.barrier", barrier._barriers, (sync, barrier.LONG),
                  dict(cfg=config, num_warps=4)))
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
