"""Device checks of the Triton kernels for scripts/gpu_check.sh, each result a JSON line written
as soon as it is known (a killed stage keeps what it finished).

    python tests/gpu_stages.py smoke    --out FILE [--device cuda] [--limit N] [--dry-run]
    python tests/gpu_stages.py headline --out FILE [--device cuda] [--limit N] [--dry-run] [--tiny]

smoke: every kernel variant of ``support.variant_runs`` (T = 8, small shapes) on the device
against the float64 reference — outputs, saved tensors and every gradient — with its first-call
time (compile and run) and its second-call time (run).

headline: each benchmark cell (ln_lstm, gru_reg, lstm, gru) as a bidirectional module with
lengths at the headline shapes (B=64 H=512 T=512 bfloat16, B=16 H=768 T=1024 float16): the
Triton module against the same module on the reference backend in float32 on the device (same
weights, input and masks), outputs and the gradients of the input and every parameter, within
the dtype's tolerance.

``--device cpu`` under TRITON_INTERPRET=1 runs the same code on the CPU (with ``--limit``, to
check the runner); ``--dry-run`` lists the runs without running them.
"""
import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import fastrnn  # noqa: E402
from bench.grid import CELLS as BENCH_CELLS  # noqa: E402
from fastrnn.backends.fused import poisoned_outputs  # noqa: E402
from fastrnn.kernels.launch import forced_tiling  # noqa: E402
from tests import support  # noqa: E402

HEADLINE_SHAPES = ((64, 512, 512, torch.bfloat16), (16, 768, 1024, torch.float16))
TINY_SHAPES = ((3, 16, 6, torch.bfloat16),)   # --tiny: the headline runner's logic on a CPU


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smoke_runs():
    return [(label, (test_case, tiling, dtype))
            for label, test_case, tiling, dtype in support.variant_runs()]


def smoke_one(run, device):
    test_case, tiling, dtype = run
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with forced_tiling(**tiling), poisoned_outputs():
            support.check_against_reference(test_case, "triton", dtype, device)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"first_call_s": round(times[0], 3), "run_s": round(times[1], 3)}


def headline_runs(shapes=HEADLINE_SHAPES):
    return [(f"{cell} B={B} H={H} T={T} {str(dtype)[6:]} bidirectional lengths",
             (cell, B, H, T, dtype)) for B, H, T, dtype in shapes for cell in BENCH_CELLS]


def _modules(cell, hidden, dtype, device):
    """The Triton module in ``dtype`` and its twin on the reference in float32 (the same
    weights, rounded to ``dtype``)."""
    spec = BENCH_CELLS[cell]
    cls = fastrnn.LSTM if spec.family == "lstm" else fastrnn.GRU
    torch.manual_seed(0)
    module = cls(hidden, hidden, bidirectional=True, backend="triton", device=device,
                 **spec.options).to(dtype).train(spec.training)
    twin = cls(hidden, hidden, bidirectional=True, backend="reference", device=device,
               **spec.options).train(spec.training)
    twin.load_state_dict({name: value.float() for name, value in module.state_dict().items()})
    return module, twin


def _results(module, x, lengths, seed):
    torch.manual_seed(seed)  # the masks' seed
    out, state = module(x, lengths=lengths)
    tensors = [out] + list(state if isinstance(state, tuple) else (state,))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    loss = sum((t.float() * torch.randn(t.shape, generator=generator, device=x.device)).sum()
               for t in tensors)
    parameters = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [x] + list(parameters.values()))
    named = {f"output {i}": t.detach() for i, t in enumerate(tensors)}
    named.update({"d input": grads[0]})
    named.update({f"d {name}": g for name, g in zip(parameters, grads[1:])})
    return named


def headline_one(run, device):
    cell, B, H, T, dtype = run
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, H, generator=generator).to(dtype).to(device)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=generator)
    lengths[0] = T
    module, twin = _modules(cell, H, dtype, device)
    start = time.perf_counter()
    got = _results(module, x.requires_grad_(True), lengths, 2)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    expected = _results(twin, x.detach().float().requires_grad_(True), lengths, 2)
    # Steps past a sequence's length are zero in both (the module's padding), so whole tensors
    # compare.
    errors = {name: support.max_rel_err(got[name].float(), value)
              for name, value in expected.items()}
    tolerance = support.TOLERANCE[dtype]
    worst = max(errors, key=errors.get)
    failed = {name: f"{err:.2e}" for name, err in errors.items() if not err <= tolerance}
    if failed:
        raise AssertionError(f"above tolerance {tolerance:.0e}: {failed}")
    return {"triton_call_s": round(elapsed, 3), "tolerance": tolerance,
            "worst": worst, "worst_error": float(f"{errors[worst]:.3e}")}


STAGES = {"smoke": (smoke_runs, smoke_one), "headline": (headline_runs, headline_one)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/gpu_stages.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--out", required=True, help="JSON lines, one per run, appended")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--limit", type=int, default=None, help="only the first N runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    parser.add_argument("--tiny", action="store_true",
                        help="headline: one tiny shape instead (a CPU check of the runner)")
    args = parser.parse_args(argv)
    runs_of, run_one = STAGES[args.stage]
    runs = (headline_runs(TINY_SHAPES) if args.tiny and args.stage == "headline"
            else runs_of())[:args.limit]
    device = torch.device(args.device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    failures = 0
    with open(args.out, "a") as log:
        for index, (label, run) in enumerate(runs):
            row = {"stage": args.stage, "run": label, "index": index, "of": len(runs)}
            if args.dry_run:
                row["status"] = "listed"
            else:
                try:
                    row.update(run_one(run, device), status="pass")
                except Exception as error:  # every run is reported; the stage goes on
                    failures += 1
                    row.update(status="fail", error=f"{type(error).__name__}: {error}"[-3000:],
                               where=traceback.format_exc(limit=-3)[-2000:])
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{args.stage} {index + 1}/{len(runs)} {row['status']:6} {label}"
                  + (f"  {row.get('error', '')[:200]}" if row["status"] == "fail" else ""),
                  flush=True)
    print(f"{args.stage}: {len(runs) - failures} of {len(runs)} "
          f"{'listed' if args.dry_run else 'passed'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
