"""Compiles the Triton kernel variants the interpreter tests run, for sm_90, on a machine without
a GPU: TRITON_INTERPRET=1 runs a kernel's math but never compiles it, so constructs the compiler
rejects, spills and shared memory beyond an SM's would otherwise surface only on a GPU.

Each run of ``support.variant_runs`` (both cells; the tiling an H100/H200 gets for a small shape
and every forced tiling of tests/support.py, on their option sets) runs fastrnn's Triton backend
forward and backward on small CPU tensors with the launches recorded; every distinct launch, and
bench.barrier's kernel, is then compiled with the JIT's binder for GPUTarget("cuda", 90, 32).

    python tests/static_variants.py [--shard I/N]   # one JSON line per distinct kernel
    python tests/static_variants.py --count         # the number of variants
    python tests/static_variants.py --cache-keys    # per variant: does the static compile fill
                                                    # the cache entry the JIT launch looks up?

Run by tests/test_static.py (shards in parallel, TRITON_INTERPRET unset).
"""
import argparse
import hashlib
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


def _launches(test_case, dtype, tiling, inference):
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
        if inference:
            triton_backend.forward(call, save=False)
    return list(recorded)


def variants():
    """(label, kernel, args, kwargs) of every distinct launch, in a fixed order."""
    seen, found = set(), []
    for run_label, test_case, tiling, dtype in support.variant_runs():
        inference = support.runs_inference(run_label, dtype)
        for kernel, _, args, kwargs in _launches(test_case, dtype, tiling, inference):
            key = (static._kernel_name(kernel), kwargs["cfg"], kwargs["num_warps"],
                   tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__
                         for a in _flat(args)))
            if key not in seen:
                seen.add(key)
                found.append((f"{run_label} {static._kernel_name(kernel)}", kernel, args, kwargs))
    # bench.barrier's kernel: the tile barrier alone, at the most programs it measures.
    sync = torch.zeros(2, dtype=torch.int32)
    config = barrier.BarrierConfig(max(barrier.PROGRAMS), launch.SPIN_LIMIT, launch.WAIT_NS)
    found.append(("bench.barrier", barrier._barriers, (sync, barrier.LONG),
                  dict(cfg=config, num_warps=4)))
    return found


def _flat(args):
    for value in args:
        if isinstance(value, tuple):
            yield from _flat(value)
        else:
            yield value


class _Sm90Driver:
    """What the JIT's launch path asks of Triton's active driver, for an sm_90 GPU that this
    machine does not have."""
    def get_current_device(self):
        return "sm_90 without a device"

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return static.TARGET


class _Key(Exception):
    pass


def jit_cache_key(kernel, grid, args, kwargs) -> str:
    """The Triton cache key that ``launch._launch`` of these arguments makes the JIT look up on
    an sm_90 GPU: the real launch path, stopped where it would compile."""
    import triton
    import triton.compiler
    from triton.runtime.driver import driver

    def compile_stand_in(src, target=None, options=None, _env_vars=None):
        assert target == static.TARGET, target
        raise _Key(static.cache_key(src, options))

    real_compile, active = triton.compiler.compile, driver._active
    triton.compiler.compile = compile_stand_in
    driver.set_active(_Sm90Driver())
    try:
        launch._launch(kernel, grid, args, **kwargs)
    except _Key as key:
        return str(key)
    finally:
        triton.compiler.compile = real_compile
        driver.set_active(active)
        kernel.device_caches.pop(_Sm90Driver().get_current_device(), None)
    raise AssertionError("the launch path did not compile")


def cache_keys():
    """One JSON line with the environment variables in Triton's cache key, then one per variant:
    the key of its static compile and the key its JIT launch looks up (hashed)."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    print(json.dumps({"env_vars": get_cache_invalidating_env_vars()}), flush=True)
    for label, kernel, launch_args, kwargs in variants():
        grid = (1, kwargs["cfg"].SPLITS)

        def digest(key):
            return hashlib.sha256(key.encode()).hexdigest()[:16]
        static_key = static.cache_key(*static.launch_source(kernel, launch_args, kwargs))
        print(json.dumps({"variant": label, "static": digest(static_key),
                          "jit": digest(jit_cache_key(kernel, grid, launch_args, kwargs))}),
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant from I")
    parser.add_argument("--count", action="store_true", help="print the number of variants")
    parser.add_argument("--cache-keys", action="store_true",
                        help="print each variant's static and JIT cache keys (no compiling)")
    args = parser.parse_args()
    if args.cache_keys:
        cache_keys()
        return 0
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
