"""Shared test machinery: the option cases every backend is checked on, random recurrence calls,
and backend-vs-reference runs of the fastrnn ops.

A fused backend is judged by running the same op call (same seed, so the same masks) through
it and through backend="reference", then comparing every output and every gradient.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, Optional

import torch

import fastrnn  # noqa: F401  (registers torch.ops.fastrnn)
from fastrnn import masks as M
from fastrnn import ops
from fastrnn.check import compare
from fastrnn.cells import CELLS, cell_of

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def compiled_backends(device=DEVICE, dtype=torch.float32):
    """The compiled backends ("cpu", "triton", "cuda") that run ``dtype`` on ``device`` here: on
    a CPU machine the C++ kernels of "cpu" (where a compiler builds them) and Triton under
    TRITON_INTERPRET=1, on a GPU machine those built for it."""
    names = []
    for name in ("cpu", "triton", "cuda"):
        backend = fastrnn.backends.get(name)
        if (backend.unavailable() is None
                and backend.unsupported(torch.device(device), dtype) is None):
            names.append(name)
    return names

# Fixed relative tolerances (max |a - b| / max |b|), for comparisons that have no yardstick to
# scale with: a float32 computation's own accuracy against float64 (the reference's projection
# and norms of huge values), two runs in the same dtype of code that is the same but for the op
# (tests/test_properties.py's module level, whose misses go to the op level).  A backend against
# the float64 reference is judged by ``fastrnn.check.compare`` (``check_call_against_reference``),
# whose bound scales with the reference's own error in the backend's dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}

REGULARIZED = dict(zoneout_cell=0.3, zoneout_hidden=0.2, candidate_dropout=0.3,
                   recurrent_dropout=0.3)

# The option sets of one recurrence call that every backend is checked on, by name, for the
# default sizes of ``Case`` (T=5, B=3).  ``per_gate`` means ln_groups = the cell's gate count;
# zoneout_cell is the LSTM's only (dropped for the GRU).
OPTIONS: Dict[str, dict] = {
    "plain": {},
    "no_bias": dict(bias=False),
    "layer_norm": dict(layer_norm=True),
    "layer_norm_per_gate": dict(layer_norm=True, per_gate=True),
    "layer_norm_no_bias": dict(layer_norm=True, bias=False),
    "zoneout": dict(zoneout_cell=0.4, zoneout_hidden=0.3),
    "zoneout_eval": dict(zoneout_cell=0.4, zoneout_hidden=0.3, training=False),
    "zoneout_one": dict(zoneout_cell=1.0, zoneout_hidden=1.0),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "candidate_dropout": dict(candidate_dropout=0.4),
    "candidate_dropout_eval": dict(candidate_dropout=0.4, training=False),
    "lengths": dict(lengths=[5, 2, 4]),
    "tile_shorter_than_T": dict(steps=6, lengths=[3, 1, 2]),
    "one_row_one_step": dict(steps=1, batch=1),
    "reverse": dict(reverse=True),
    "reverse_lengths": dict(reverse=True, lengths=[2, 5, 3]),
    "everything": dict(layer_norm=True, lengths=[4, 5, 1], bias=False, **REGULARIZED),
    "everything_per_gate_reverse": dict(layer_norm=True, per_gate=True, reverse=True,
                                        lengths=[5, 2, 4], **REGULARIZED),
    "everything_eval": dict(layer_norm=True, training=False, reverse=True, lengths=[3, 5, 2],
                            zoneout_cell=0.3, zoneout_hidden=0.2, candidate_dropout=0.2),
}

# The LSTM's projection (proj_size, call field w_hr) with the options above, for the backends
# that run it (fastrnn.backends: FEATURES); P = 3 < H.
PROJECTION: Dict[str, dict] = {
    "projection": dict(proj_size=3),
    "projection_lengths_reverse": dict(proj_size=3, reverse=True, lengths=[2, 5, 3]),
    "projection_everything": dict(proj_size=3, layer_norm=True, lengths=[4, 5, 1], bias=False,
                                  **REGULARIZED),
    "projection_everything_per_gate_reverse": dict(proj_size=3, layer_norm=True, per_gate=True,
                                                   reverse=True, lengths=[5, 2, 4], **REGULARIZED),
    "projection_everything_eval": dict(proj_size=3, layer_norm=True, training=False,
                                       lengths=[3, 5, 2], zoneout_cell=0.3, zoneout_hidden=0.2,
                                       candidate_dropout=0.2),
}

# Episode starts (call fields resets, h_reset, c_reset) with the options above, for the backends
# that run them (fastrnn.backends: FEATURES); starts drawn with probability 0.3 and at (0, 0).
RESETS: Dict[str, dict] = {
    "resets": dict(resets=0.3),
    "resets_reverse_lengths": dict(resets=0.3, reverse=True, lengths=[2, 5, 3]),
    "resets_layer_norm_per_gate": dict(resets=0.3, layer_norm=True, per_gate=True, steps=7),
    "resets_everything": dict(resets=0.3, layer_norm=True, lengths=[4, 5, 1], bias=False,
                              **REGULARIZED),
    "resets_everything_reverse": dict(resets=0.4, layer_norm=True, reverse=True, steps=7,
                                      batch=4, lengths=[5, 2, 7, 6], **REGULARIZED),
    "resets_eval": dict(resets=0.3, layer_norm=True, training=False, zoneout_cell=0.3,
                        zoneout_hidden=0.2, lengths=[3, 5, 2]),
}


@dataclasses.dataclass
class Case:
    """One op call: cell, sizes and options."""
    cell: str = "lstm"               # "lstm" or "gru"
    steps: int = 5
    batch: int = 3
    hidden: int = 7
    layer_norm: bool = False
    ln_groups: int = 1
    bias: bool = True
    zoneout_cell: float = 0.0        # LSTM only
    zoneout_hidden: float = 0.0
    candidate_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    training: bool = True
    reverse: bool = False
    lengths: Optional[list] = None
    proj_size: int = 0               # LSTM only: h has P = proj_size units
    resets: float = 0.0              # > 0: episode starts (call.resets) with this probability

    @property
    def spec(self):
        return CELLS[self.cell]

    @property
    def gates(self) -> int:
        return self.spec.num_gates

    @property
    def width(self) -> int:
        """The width of h (P under a projection)."""
        return self.proj_size or self.hidden


def case(cell: str, name: str, **overrides) -> Case:
    """The option set ``name`` of OPTIONS (or PROJECTION) for ``cell``, with ``overrides``."""
    options = dict({**OPTIONS, **PROJECTION, **RESETS}[name], **overrides)
    if options.pop("per_gate", False):
        options["ln_groups"] = CELLS[cell].num_gates
    if cell != "lstm":
        options.pop("zoneout_cell", None)
    return Case(cell=cell, **options)


def cases(names=None, cells=tuple(CELLS), **overrides) -> Dict[str, Case]:
    """{"<cell>-<name>": Case} for every cell and option set (or the ``names`` given)."""
    return {f"{cell}-{name}": case(cell, name, **overrides)
            for cell in cells for name in (names or OPTIONS)}


def make_inputs(case: Case, dtype=torch.float32, device="cpu", generator_seed=0):
    """The call's tensor fields as a dict: float64 CPU master tensors (cast per run; ``dtype``
    and ``device`` are not used), the seed, the lengths and the recurrent-dropout mask.  The
    options come from the case (``make_call``)."""
    g = torch.Generator().manual_seed(generator_seed)
    T, B, H, G, P = case.steps, case.batch, case.hidden, case.gates, case.width

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    inputs = {
        "gx": rnd(T, B, G * H),
        "w_hh": rnd(G * H, P, scale=P ** -0.5),
        "b_hh": rnd(G * H, scale=0.1) if case.bias else None,
        "ln_hh_weight": (1 + rnd(G * H, scale=0.2)) if case.layer_norm else None,
        "h0": rnd(B, P, scale=0.5),
    }
    if "proj_size" in case.spec.features:
        inputs["w_hr"] = rnd(P, H, scale=H ** -0.5) if case.proj_size else None
    if case.spec.cell_norm:
        inputs["ln_cell_weight"] = (1 + rnd(H, scale=0.2)) if case.layer_norm else None
        inputs["ln_cell_bias"] = rnd(H, scale=0.1) if case.layer_norm else None
    if "c" in case.spec.states:
        inputs["c0"] = rnd(B, H, scale=0.5)
    if case.resets:
        inputs["resets"] = torch.rand(T, B, generator=g) < case.resets
        inputs["resets"][0, 0] = True   # the call's first step too (its initial state unread)
        for state in case.spec.states:
            inputs[f"{state}_reset"] = rnd(*inputs[f"{state}0"].shape, scale=0.5)
    seed = torch.tensor(int(torch.randint(0, 1 << 62, (), generator=g)), dtype=torch.int64)
    inputs["seed"] = seed
    inputs["lengths"] = None if case.lengths is None else torch.tensor(case.lengths, dtype=torch.int64)
    inputs["recurrent_mask"] = (M.keep_scale(seed, M.RECURRENT_DROPOUT, case.recurrent_dropout,
                                             (B, P), torch.float64)
                                if case.recurrent_dropout > 0 and case.training else None)
    return inputs


def cast(inputs, dtype, device):
    """Floating-point inputs to ``dtype``; every tensor to ``device``."""
    out = {}
    for name, value in inputs.items():
        if value is None:
            out[name] = None
        elif value.is_floating_point():
            out[name] = value.to(device=device, dtype=dtype)
        else:
            out[name] = value.to(device)
    return out


def make_call(case: Case, tensors):
    """The cell's call object from ``make_inputs``-style tensors and the case's options."""
    # The call's options are the case's fields of the same name; the tensors of a feature the
    # case leaves off (resets, h_reset, ...) keep their default, None.
    options = {name: getattr(case, name) for name in case.spec.call._fields
               if name not in tensors and name != "resets" and hasattr(case, name)}
    return case.spec.call(**{name: tensors[name] for name in case.spec.call._fields
                             if name in tensors}, **options)


def differentiable_names(case: Case):
    return list(case.spec.differentiable)


def run_call(call, backend: str, dtype, device="cpu", grad_seed=1):
    """Forward ``call`` (floating-point tensors cast to ``dtype``, every tensor moved to
    ``device``) through the op with autograd, then backward of a random weighted sum of out and
    the final states. Returns ({output name: tensor}, {call field: grad})."""
    spec = cell_of(call)
    fields = {name: (value.detach().to(device=device, dtype=dtype) if value.is_floating_point()
                     else value.to(device)) if isinstance(value, torch.Tensor) else value
              for name, value in call._asdict().items()}
    names = [n for n in spec.differentiable if fields[n] is not None]
    for n in names:
        fields[n].requires_grad_(True)
    outputs = ops.forward(spec.call(**fields), backend)
    named = dict(zip(spec.forward_outputs, outputs))
    g = torch.Generator().manual_seed(grad_seed)
    loss_terms = spec.forward_outputs[:1 + len(spec.states)]
    loss = sum((named[k].double() * torch.randn(named[k].shape, generator=g, dtype=torch.float64)
                .to(device)).sum() for k in loss_terms)
    grads = torch.autograd.grad(loss, [fields[n] for n in names])
    return ({k: v.detach() for k, v in named.items()}, dict(zip(names, grads)))


def error_messages(error: BaseException):
    """The messages of ``error`` and of every exception it was raised from or during."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return messages


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if not expected.numel():
        return 0.0
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-6)
    return ((actual - expected).abs().max() / scale).item()


def assert_close(actual, expected, dtype, name):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = max_rel_err(actual, expected)
    assert err <= TOLERANCE[dtype], f"{name}: max relative error {err:.2e} > {TOLERANCE[dtype]:.0e}"


def reduction(call, name: str) -> int:
    """The number of terms summed into each element of quantity ``name`` of a call (an output
    or ``d<field>``): T·B for the gradient of a parameter (a field with neither time nor batch
    axis), which sums over every step and row; 1 otherwise."""
    spec = cell_of(call)
    per_row = {"gx"} | {f"{state}0" for state in spec.states}
    if not name.startswith("d") or name[1:] in per_row:
        return 1
    steps, batch = call.gx.shape[:2]
    if name[1:] in spec.reset_states:   # a row's episode starts: up to T terms
        return steps
    return steps * batch


def check_call_against_reference(call, backend: str, dtype, device="cpu"):
    """Runs ``call`` through ``backend`` at ``dtype`` and through the reference on the same
    values at ``dtype`` and at float64 (both on the CPU); asserts that every output, saved
    tensor (on computed steps) and gradient passes ``fastrnn.check.compare``: within a bound
    that scales with the reference's own error at ``dtype`` (so a quantity whose math float32
    cannot pin down, such as a layer norm over a few values of rank-one input, gets the slack
    its conditioning needs) and with the length of the sum behind a parameter gradient."""
    got_out, got_grad = run_call(call, backend, dtype, device)
    # The references see the same inputs rounded to ``dtype``: the comparison measures the
    # backend's arithmetic, not the rounding of its inputs.
    rounded = call._replace(**{
        name: value.detach().cpu().to(dtype).double() for name, value in call._asdict().items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()})
    ref_out, ref_grad = run_call(rounded, "reference", torch.float64, "cpu")
    own_out, own_grad = run_call(rounded, "reference", dtype, "cpu")
    spec = cell_of(call)
    steps = call.gx.shape[0]
    # [T, B] computed steps: saved rows of skipped steps are unspecified.
    rows = (None if call.lengths is None
            else torch.arange(steps)[:, None] < call.lengths.cpu()[None, :])
    finals = spec.forward_outputs[:1 + len(spec.states)]
    quantities = [(name, got_out[name].cpu(), own_out[name], expected)
                  for name, expected in ref_out.items()]
    if rows is not None:
        quantities = [(name, *(t[rows] for t in tensors)) if name not in finals
                      else (name, *tensors) for name, *tensors in quantities]
    quantities += [(f"d{name}", got_grad[name].cpu(), own_grad[name], expected)
                   for name, expected in ref_grad.items()]
    for name, actual, own, expected in quantities:
        result = compare(f"{backend} {name}", actual, own, expected, dtype=dtype,
                         reduction=reduction(call, name))
        assert result.passed, (
            f"{result.name}: max relative error {result.error:.2e} > bound {result.bound:.2e} "
            f"(the reference's own {str(dtype)[6:]} error {max_rel_err(own, expected):.2e})"
            + ("" if actual.shape == expected.shape and torch.isfinite(actual).all()
               else f"; shape {tuple(actual.shape)}, finite: {bool(torch.isfinite(actual).all())}"))


def check_against_reference(case: Case, backend: str, dtype, device="cpu", generator_seed=0):
    """``check_call_against_reference`` of the case's call on random inputs."""
    inputs = make_inputs(case, dtype, device, generator_seed)
    check_call_against_reference(make_call(case, inputs), backend, dtype, device)


# Tilings of the Triton kernels forced on small shapes (``fastrnn.kernels.launch.forced_tiling``),
# each with the sizes that exercise it: (case overrides, tiling fields).  Under the interpreter a
# persistent kernel runs one column split only (programs run one after another).
TILINGS: Dict[str, tuple] = {
    # 2 column splits of 16 units (H = 24: the second split half empty), 2 batch tiles of 16.
    "driver_2_splits_2_batch_tiles": (dict(steps=3, batch=18, hidden=24, lengths=[3, 1, 2] * 6),
                                      dict(block_b=16, block_u=16, block_k=16, persistent=False)),
    "driver_3_splits": (dict(steps=3, batch=4, hidden=40, lengths=[3, 1, 2, 3]),
                        dict(block_u=16, block_k=32, persistent=False)),
    "driver_1_split": (dict(lengths=[2, 5, 3]), dict(persistent=False)),
    "persistent_2_batch_tiles": (dict(batch=18, hidden=24, lengths=[5, 2, 4] * 6),
                                 dict(block_b=16)),
    # The reduction in chunks smaller than the program's units, the weight streamed.
    "streamed_chunks": (dict(hidden=40, lengths=[5, 2, 4]), dict(hoist=False, block_k=16)),
    "driver_streamed": (dict(hidden=40, batch=4, lengths=[3, 1, 2, 3]),
                        dict(block_u=16, hoist=False, block_k=16, persistent=False)),
    # H and B whole multiples of the chunk and the batch tile: the loads without masks.
    "whole_blocks": (dict(batch=16, hidden=32, lengths=[5, 2, 4, 5] * 4), dict(block_k=16)),
}


def tiling_case(cell: str, options: str, variant: str):
    """(case, tiling fields) of option set ``options`` run with tiling ``variant`` of TILINGS at
    the sizes that variant needs (an option set's own lengths fit its own batch only: the
    variant's lengths replace them, with the batch they fit, or they are dropped where the
    variant sets none)."""
    sizes, tiling = TILINGS[variant]
    overrides = dict(sizes)
    if "lengths" in {**OPTIONS, **PROJECTION, **RESETS}[options] and "lengths" not in sizes:
        overrides["lengths"] = None
    if "lengths" in sizes and "batch" not in sizes:
        overrides["batch"] = len(sizes["lengths"])   # whatever batch the option set has
    return case(cell, options, **overrides), tiling


# The kernel variants compiled for sm_90 (tests/static_variants.py) and run on a GPU at T = 8
# (tests/gpu_stages.py): each forced tiling on the option sets test_triton.py runs it on, in
# float32; the tiling a GPU gets by default for a small shape (two column splits, a partial batch
# tile) on more option sets, in float32 and bfloat16.
TILED_OPTIONS = ("plain", "everything", "everything_per_gate_reverse")
DEFAULT_TILING_OPTIONS = TILED_OPTIONS + ("layer_norm_per_gate", "everything_eval")
DEFAULT_TILING_SIZES = dict(steps=8, batch=5, hidden=24)


# Option sets whose float32 variant runs also run the inference forward (the kernels given no
# saved tensor to write): compiled by tests/static_variants.py, run by the GPU smoke stage.
INFERENCE_OPTIONS = ("everything", "everything_eval")


def runs_inference(label: str, dtype) -> bool:
    """Whether variant run ``label`` (``variant_runs``) also runs the inference forward."""
    options = label.split(" ")[0].split("-", 1)[1]
    return options in INFERENCE_OPTIONS and dtype == torch.float32


def variant_runs():
    """[(label, case, tiling fields, dtype)] of the kernel variants, in a fixed order."""
    runs = []
    for cell in CELLS:
        for options in DEFAULT_TILING_OPTIONS:
            test_case = case(cell, options, **DEFAULT_TILING_SIZES)
            if test_case.lengths is not None:
                test_case.lengths = [8, 1, 5, 2, 8]
            for dtype in (torch.float32, torch.bfloat16):
                runs.append((f"{cell}-{options} default {str(dtype)[6:]}", test_case, {}, dtype))
        for options in TILED_OPTIONS:
            for variant in TILINGS:
                test_case, tiling = tiling_case(cell, options, variant)
                runs.append((f"{cell}-{options} {variant} float32", test_case, tiling,
                             torch.float32))
    return runs


# Half-precision cases: hidden=24, since with 7 units a layer-norm group of bfloat16 values is
# ill-conditioned enough that the reference itself misses the tolerance.
HALF_PRECISION = ("plain", "zoneout", "reverse_lengths", "layer_norm", "layer_norm_per_gate",
                  "everything", "everything_per_gate_reverse")


def option_helps(help_text: str) -> Dict[str, str]:
    """An argparse ``--help`` text -> {invocation: its help text} (after two spaces or on the
    indented lines below), without ``-h, --help``."""
    helps: Dict[str, str] = {}
    invocation = None
    for line in help_text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            invocation, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            helps[invocation] = " ".join(text)
        elif line.startswith("   ") and invocation is not None:
            helps[invocation] += " " + line.strip()
    helps.pop("-h, --help", None)
    return helps
