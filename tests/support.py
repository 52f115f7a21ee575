"""Shared test machinery: random layer inputs, backend-vs-reference runs of the fastrnn ops.

A fused backend is judged by running the same op call (same seed, so the same masks) through
it and through backend="reference", then comparing every output and every gradient.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

import fastrnn  # noqa: F401  (registers torch.ops.fastrnn)
from fastrnn import masks as M

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Relative tolerances (max |a - b| / max |b|) against the reference run in float64.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


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


@dataclass
class Case:
    """One op call: cell, sizes and options."""
    cell: str = "lstm"               # "lstm" or "gru"
    steps: int = 5
    batch: int = 3
    hidden: int = 7
    layer_norm: bool = False
    ln_groups: int = 1
    bias: bool = True
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    candidate_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    training: bool = True
    reverse: bool = False
    lengths: Optional[list] = None

    @property
    def gates(self):
        return 4 if self.cell == "lstm" else 3


def make_inputs(case: Case, dtype=torch.float32, device="cpu", generator_seed=0):
    """Op inputs as a dict of float64 master tensors (cast per run) plus the call's seed."""
    g = torch.Generator().manual_seed(generator_seed)
    T, B, H, G = case.steps, case.batch, case.hidden, case.gates

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    inputs = {
        "gx": rnd(T, B, G * H),
        "w_hh": rnd(G * H, H, scale=H ** -0.5),
        "b_hh": rnd(G * H, scale=0.1) if case.bias else None,
        "ln_hh_weight": (1 + rnd(G * H, scale=0.2)) if case.layer_norm else None,
        "h0": rnd(B, H, scale=0.5),
    }
    if case.cell == "lstm":
        inputs["ln_cell_weight"] = (1 + rnd(H, scale=0.2)) if case.layer_norm else None
        inputs["ln_cell_bias"] = rnd(H, scale=0.1) if case.layer_norm else None
        inputs["c0"] = rnd(B, H, scale=0.5)
    seed = torch.tensor(int(torch.randint(0, 1 << 62, (), generator=g)), dtype=torch.int64)
    inputs["seed"] = seed
    inputs["lengths"] = None if case.lengths is None else torch.tensor(case.lengths, dtype=torch.int64)
    inputs["recurrent_mask"] = (M.keep_scale(seed, M.RECURRENT_DROPOUT, case.recurrent_dropout,
                                             (B, H), torch.float64)
                                if case.recurrent_dropout > 0 and case.training else None)
    return inputs


def _cast(inputs, dtype, device):
    out = {}
    for name, value in inputs.items():
        if value is None:
            out[name] = None
        elif value.is_floating_point():
            out[name] = value.to(device=device, dtype=dtype)
        else:
            out[name] = value.to(device)
    return out


def forward_args(case: Case, t):
    if case.cell == "lstm":
        return (t["gx"], t["w_hh"], t["b_hh"], t["ln_hh_weight"], t["ln_cell_weight"],
                t["ln_cell_bias"], t["h0"], t["c0"], t["lengths"], t["recurrent_mask"], t["seed"],
                case.ln_groups, case.zoneout_cell, case.zoneout_hidden, case.candidate_dropout,
                case.training, case.reverse)
    return (t["gx"], t["w_hh"], t["b_hh"], t["ln_hh_weight"], t["h0"], t["lengths"],
            t["recurrent_mask"], t["seed"], case.ln_groups, case.zoneout_hidden,
            case.candidate_dropout, case.training, case.reverse)


def differentiable_names(case: Case):
    names = ["gx", "w_hh", "b_hh", "ln_hh_weight"]
    names += ["ln_cell_weight", "ln_cell_bias", "h0", "c0"] if case.cell == "lstm" else ["h0"]
    return names


def run(case: Case, inputs, backend: str, dtype, device="cpu", grad_seed=1):
    """Forward through the op with autograd, then backward of a random weighted sum of out and
    the final states. Returns ({output name: tensor}, {param name: grad})."""
    t = _cast(inputs, dtype, device)
    names = [n for n in differentiable_names(case) if t[n] is not None]
    for n in names:
        t[n].requires_grad_(True)
    op = torch.ops.fastrnn.lstm_forward if case.cell == "lstm" else torch.ops.fastrnn.gru_forward
    outputs = op(*forward_args(case, t), backend)
    keys = (["out", "h_n", "c_n", "preact", "cell", "stats"] if case.cell == "lstm"
            else ["out", "h_n", "preact", "hidden_n", "stats"])
    named = dict(zip(keys, outputs))
    g = torch.Generator().manual_seed(grad_seed)
    loss_terms = ["out", "h_n", "c_n"] if case.cell == "lstm" else ["out", "h_n"]
    loss = sum((named[k].double() * torch.randn(named[k].shape, generator=g, dtype=torch.float64)
                .to(device)).sum() for k in loss_terms)
    grads = torch.autograd.grad(loss, [t[n] for n in names])
    return ({k: v.detach() for k, v in named.items()}, dict(zip(names, grads)))


def active_rows(case: Case) -> Optional[torch.Tensor]:
    """[T, B] bool of computed steps (saved rows of skipped steps are unspecified)."""
    if case.lengths is None:
        return None
    return torch.arange(case.steps)[:, None] < torch.tensor(case.lengths)[None, :]


def check_against_reference(case: Case, backend: str, dtype, device="cpu", generator_seed=0):
    """Runs ``backend`` at ``dtype`` and the reference at float64 on the same inputs; asserts
    every output, saved tensor (on computed steps) and gradient agree within TOLERANCE[dtype]."""
    inputs = make_inputs(case, dtype, device, generator_seed)
    got_out, got_grad = run(case, inputs, backend, dtype, device)
    # The reference sees the same inputs rounded to ``dtype``: the comparison measures the
    # backend's arithmetic, not the rounding of its inputs.
    rounded = {name: (value.to(dtype).double() if value is not None and value.is_floating_point()
                      else value) for name, value in inputs.items()}
    ref_out, ref_grad = run(case, rounded, "reference", torch.float64, "cpu")
    rows = active_rows(case)
    for name, expected in ref_out.items():
        actual = got_out[name].cpu()
        if rows is not None and name not in ("out", "h_n", "c_n"):
            actual, expected = actual[rows], expected[rows]
        assert_close(actual, expected, dtype, f"{backend} {name}")
    for name, expected in ref_grad.items():
        assert_close(got_grad[name].cpu(), expected, dtype, f"{backend} d{name}")
