"""Compiles the Triton kernels for an sm_90 GPU on a machine without one.

The host functions of kernels/lstm.py and kernels/gru.py run on small CPU tensors with their
kernels replaced by recorders; every recorded launch (kernel, argument types, constexprs,
num_warps, num_stages) is then compiled by the real Triton compiler for cuda:90 down to a
cubin.  This catches what TRITON_INTERPRET=1 cannot: constructs the compiler rejects, and
shared memory beyond an SM's.  Run with TRITON_INTERPRET unset (tests/test_triton_compile.py).

    python tests/sm90_compile.py      # prints one line per kernel, then "N compiled, M failed"
"""
import sys

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastrnn.kernels import common, gru, lstm

TARGET = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_PER_SM = 227 * 1024
POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
                 torch.int64: "*i64", torch.int32: "*i32"}
DOT_TYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
KERNELS = {lstm: ("_lstm_forward_persistent", "_lstm_forward_phase",
                  "_lstm_backward_persistent", "_lstm_backward_phase"),
           gru: ("_gru_forward_persistent", "_gru_forward_phase",
                 "_gru_backward_persistent", "_gru_backward_phase")}


class Recorder:
    """Stands in for a kernel: ``kernel[grid](...)`` records the launch instead of running it."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def record_launches(module, tiling, dtype, layer_norm, groups, regularized, reverse,
                    steps=4, batch=5, hidden=48):
    """Runs the module's forward and backward host code; returns the launches they make."""
    launches = []
    for name in KERNELS[module]:
        kernel = getattr(module, name)
        kernel = kernel.kernel if isinstance(kernel, Recorder) else kernel
        setattr(module, name, Recorder(kernel, launches))
    module.tiling_for = lambda *args, **kwargs: tiling
    gates = 4 if module is lstm else 3
    torch.manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape).to(dtype)

    w_hh, b_hh, h0 = rnd(gates * hidden, hidden), rnd(gates * hidden), rnd(batch, hidden)
    ln_hh = rnd(gates * hidden) if layer_norm else None
    lengths = torch.arange(batch) % steps + 1 if regularized else None
    recurrent_mask = rnd(batch, hidden) if regularized else None
    seed = torch.tensor(1)
    p = 0.2 if regularized else 0.0
    common_args = (lengths, recurrent_mask, seed, groups)
    if module is lstm:
        ln_cell = (rnd(hidden), rnd(hidden)) if layer_norm else (None, None)
        out, h_n, c_n, preact, cell, stats = lstm.lstm_forward(
            rnd(steps, batch, gates * hidden), w_hh, b_hh, ln_hh, *ln_cell, h0, h0, *common_args,
            p, p, p, True, reverse)
        lstm.lstm_backward(out, h_n, c_n, out, preact, cell, stats, w_hh, b_hh, ln_hh, *ln_cell,
                           h0, h0, *common_args, p, p, p, True, reverse)
    else:
        out, h_n, preact, hidden_n, stats = gru.gru_forward(
            rnd(steps, batch, gates * hidden), w_hh, b_hh, ln_hh, h0, *common_args, p, p, True,
            reverse)
        gru.gru_backward(out, h_n, out, preact, hidden_n, stats, w_hh, b_hh, ln_hh, h0,
                         *common_args, p, p, True, reverse)
    return launches


def ast_source(kernel, args, kwargs, dtype):
    """The compiler's view of one launch: argument types, constexpr values, divisibility hints."""
    bound = dict(zip(kernel.arg_names, args), **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = bound[name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = DOT_TYPES[dtype] if name == "DOT_DTYPE" else value
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if abs(value) < 2 ** 31 else "i64"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {name} of type {type(value)}")
    return ASTSource(kernel, signature, constexprs, attrs)


HEADLINE = dict(batch=64, hidden=512)  # BENCHMARKS.md's headline training shape


def configurations():
    """Each family, forward and backward: the barrier path (persistent, three column splits,
    hoisted W_hh, bfloat16, per-gate layer norm, every regularizer, reverse), a persistent single
    split streaming W_hh in float16, the per-step driver with three splits in float32, and the
    tiling an H100 gets by default at the headline shape (layer norm, regularized, bfloat16)."""
    for module in (lstm, gru):
        gates = 4 if module is lstm else 3
        headline = common.choose_tiling(HEADLINE["batch"], HEADLINE["hidden"], gates, 2, 132)
        yield (module, common.Tiling(16, 16, 64, True, True, 8), torch.bfloat16, True, gates,
               True, True, {})
        yield (module, common.Tiling(16, 64, 16, False, True, 4), torch.float16, True, 1, True,
               False, {})
        yield (module, common.Tiling(16, 16, 16, False, False, 4), torch.float32, False, 1,
               False, False, {})
        yield module, headline, torch.bfloat16, True, 1, True, False, HEADLINE


def main() -> int:
    compiled, failed, seen = 0, 0, set()
    for module, tiling, dtype, layer_norm, groups, regularized, reverse, sizes in configurations():
        for kernel, args, kwargs in record_launches(module, tiling, dtype, layer_norm, groups,
                                                    regularized, reverse, **sizes):
            kwargs = dict(kwargs)
            options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
            kwargs.pop("launch_cooperative_grid", None)
            source = ast_source(kernel, args, kwargs, dtype)
            key = (kernel.__name__, source.hash(), tuple(sorted(options.items())))
            if key in seen:
                continue
            seen.add(key)
            label = f"{kernel.__name__} {str(dtype)[6:]} PHASE={kwargs.get('PHASE', '-')} {tiling}"
            try:
                binary = triton.compile(source, target=TARGET, options=options)
            except Exception as error:  # report every kernel, then fail
                failed += 1
                print(f"FAIL {label}: {type(error).__name__}: {str(error).strip()[-800:]}")
                continue
            compiled += 1
            shared = binary.metadata.shared
            fits = shared <= SHARED_MEMORY_PER_SM
            failed += not fits
            print(f"{'OK  ' if fits else 'FAIL'} {label} shared={shared}")
    print(f"{compiled} compiled, {failed} failed")
    return 1 if failed or not compiled else 0


if __name__ == "__main__":
    sys.exit(main())
