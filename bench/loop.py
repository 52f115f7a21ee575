"""The alternative a user has today for a layer-norm or regularized cell ("torch-loop"): the
loop layers of ``fastrnn.loop`` (which ``python -m fastrnn.check`` times too) as a benchmark
implementation.  The masks come from torch's generator, not fastrnn's Philox stream, so a row
that draws masks differs from the reference by design.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from fastrnn.loop import LOOPS, PARAMETER_NAMES
from .data import episode_starts
from .grid import CELLS, Workload
from .implementations import Implementation, module_prepared
from .measure import Prepared


# The fastrnn options the loop implements, per family.
SUPPORTED_OPTIONS = {"lstm": {"layer_norm", "ln_groups", "zoneout_cell", "zoneout_hidden",
                              "recurrent_dropout"},
                     "gru": {"layer_norm", "ln_groups", "zoneout", "recurrent_dropout"}}


def loop_module(workload: Workload, params: Dict[str, Tensor], device: torch.device) -> nn.Module:
    """The loop layer of the workload's cell in its dtype, holding ``params``."""
    spec = workload.spec
    options = {k: v for k, v in spec.options.items() if k != "ln_groups"}
    module = LOOPS[spec.family](workload.input_size, workload.H, device=device,
                                dtype=workload.torch_dtype, **options)
    module.load_state_dict({PARAMETER_NAMES[name]: value for name, value in params.items()})
    return module.train(spec.training)


class TorchLoop(Implementation):
    name = "torch-loop"
    # The regularized and layer-norm cells: for the plain ones torch.nn itself is the answer
    # (with episode starts, on the split segments).
    cells = tuple(name for name, cell in CELLS.items() if cell.options)

    def unsupported(self, workload, device):
        spec = workload.spec
        extra = set(spec.options) - SUPPORTED_OPTIONS[spec.family]
        if extra:
            return f"torch-loop does not implement {sorted(extra)}"
        if spec.options.get("ln_groups", 1) != 1:
            return "torch-loop normalizes the whole gate vector (ln_groups=1) only"
        return None

    def not_compared(self, workload):
        if workload.spec.draws_masks:
            return ("no error by design: its masks come from torch.bernoulli, not fastrnn's "
                    "Philox stream")
        return None

    def prepare(self, workload, params, device):
        return loop_prepared(loop_module(workload, params, device), params,
                             episode_starts(workload, device))


def loop_prepared(module: nn.Module, names, resets=None) -> Prepared:
    """The loop's forward (``resets``: its episode starts), its gradients named by fastrnn's
    parameter ``names`` so that they meet the reference's."""
    own = dict(module.named_parameters())
    return Prepared(module_prepared(module, resets).forward,
                    {name: own[PARAMETER_NAMES[name]] for name in names})

