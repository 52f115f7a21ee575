"""Weights and inputs of a workload, the same for every implementation and every process.

Everything is drawn from seeded generators, so the compiled reference, which runs in its own
process, sees exactly the tensors the other implementations of the row saw.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from fastrnn.cells import CELLS

from .grid import Workload

RESETS_SEED = 32



def master_parameters(workload: Workload, seed: int) -> Dict[str, torch.Tensor]:
    """float32 CPU parameters named as in torch.nn.LSTM / GRU (and fastrnn's modules), layer 0.

    The layer-norm gains and the cell-norm bias are perturbed away from their initial values so
    that a kernel that ignored them would show up in ``max_rel_err``.
    """
    generator = torch.Generator().manual_seed(seed)
    spec = workload.spec
    hidden, rows = workload.H, CELLS[spec.family].num_gates * workload.H
    bound = hidden ** -0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    def near_one(*shape):
        return 1 + 0.1 * torch.randn(*shape, generator=generator)

    params = {"weight_ih_l0": uniform(rows, workload.input_size),
              "weight_hh_l0": uniform(rows, hidden),
              "bias_ih_l0": uniform(rows),
              "bias_hh_l0": uniform(rows)}
    if spec.options.get("layer_norm"):
        params["ln_ih_weight_l0"] = near_one(rows)
        params["ln_hh_weight_l0"] = near_one(rows)
        if spec.family == "lstm":
            params["ln_cell_weight_l0"] = near_one(hidden)
            params["ln_cell_bias_l0"] = 0.1 * torch.randn(hidden, generator=generator)
    return params


def episode_starts(workload: Workload, device: torch.device) -> Optional[torch.Tensor]:
    """[T, B] bool episode starts of a workload whose cell has resets (None otherwise): drawn
    with the cell's probability from a fixed seed, the same for every implementation."""
    probability = workload.spec.resets
    if not probability:
        return None
    generator = torch.Generator().manual_seed(RESETS_SEED)
    return (torch.rand(workload.T, workload.B, generator=generator) < probability).to(device)


def input_sets(workload: Workload, count: int, seed: int, device: torch.device) -> List[torch.Tensor]:
    """``count`` float32 inputs [T, B, I] drawn on ``device`` (cycled while timing)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (workload.T, workload.B, workload.input_size)
    return [torch.randn(shape, generator=generator, device=device) for _ in range(count)]
