"""The workloads of a benchmark run: cells, shapes, dtypes and modes (bench/README.md, "The
protocol")."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence

import torch


# The RL workload's episode starts: one per 32 steps of a row on average.
RESET_PROBABILITY = 1 / 32

# The fastrnn module options that draw masks in train mode.
REGULARIZERS = ("zoneout", "zoneout_cell", "zoneout_hidden", "recurrent_dropout",
                "candidate_dropout", "dropconnect")


@dataclasses.dataclass(frozen=True)
class Cell:
    """A benchmarked cell: the fastrnn family, its module options, and the plain cell it is
    measured against (the cuDNN floor lacks layer norm and regularizers)."""
    family: str                     # "lstm" or "gru"
    options: Dict[str, object]
    training: bool = False          # run the module in train mode (masks drawn) in both modes
    resets: float = 0.0             # > 0: episode starts with this probability per (t, b)

    @property
    def baseline(self) -> str:
        """The plain cell measured beside it: torch.nn's (on the split segments with resets)."""
        return f"{self.family}_rs" if self.resets else self.family

    @property
    def plain(self) -> bool:
        """No layer norm, no regularizer and no resets: torch.nn runs this cell itself."""
        return not self.options and not self.resets

    @property
    def draws_masks(self) -> bool:
        """A step of this cell draws random masks (zoneout, dropout)."""
        return self.training and any(self.options.get(name, 0.0) > 0 for name in REGULARIZERS)


CELLS: Dict[str, Cell] = {
    "lstm": Cell("lstm", {}),
    "gru": Cell("gru", {}),
    "ln_lstm": Cell("lstm", {"layer_norm": True, "ln_groups": 1}),
    # What a CPU user of layer norm trains with (the CPU preset): zoneout on both states, masks
    # drawn in both modes like gru_reg.
    "ln_lstm_zo": Cell("lstm", {"layer_norm": True, "ln_groups": 1, "zoneout_cell": 0.1,
                                "zoneout_hidden": 0.1}, training=True),
    # The regularized GRU is measured in train mode in both modes: the masks are part of its cost.
    "gru_reg": Cell("gru", {"zoneout": 0.1, "recurrent_dropout": 0.25}, training=True),
    # The RL workload (bench/README.md): the layer-norm cells with and without episode starts,
    # and the plain cells with them, which torch.nn runs on the split segments.
    "ln_gru": Cell("gru", {"layer_norm": True, "ln_groups": 1}),
    "ln_lstm_rs": Cell("lstm", {"layer_norm": True, "ln_groups": 1}, resets=RESET_PROBABILITY),
    "ln_gru_rs": Cell("gru", {"layer_norm": True, "ln_groups": 1}, resets=RESET_PROBABILITY),
    "lstm_rs": Cell("lstm", {}, resets=RESET_PROBABILITY),
    "gru_rs": Cell("gru", {}, resets=RESET_PROBABILITY),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("forward", "train")


@dataclasses.dataclass(frozen=True)
class Workload:
    cell: str
    B: int
    H: int
    T: int
    dtype: str
    mode: str

    @property
    def input_size(self) -> int:
        return self.H  # the protocol: I = H

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def spec(self) -> Cell:
        return CELLS[self.cell]

    def with_cell(self, cell: str) -> "Workload":
        return dataclasses.replace(self, cell=cell)

    def label(self) -> str:
        return f"{self.cell} B={self.B} H={self.H} T={self.T} {self.dtype} {self.mode}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A product of axes plus a few extra points (the peers' published shape)."""
    cells: Sequence[str]
    batch: Sequence[int]
    hidden: Sequence[int]
    steps: Sequence[int]
    dtypes: Sequence[str]
    modes: Sequence[str]
    extra: Sequence[Workload] = ()


def _peer_shape(cells: Sequence[str]) -> List[Workload]:
    return [Workload(cell, 16, 768, 1024, "float16", mode) for cell in cells for mode in MODES]


ALL_CELLS = ("ln_lstm", "ln_lstm_zo", "gru_reg", "lstm", "gru", "ln_gru", "ln_lstm_rs",
             "ln_gru_rs", "lstm_rs", "gru_rs")
RL_CELLS = ("ln_lstm", "ln_lstm_rs", "ln_gru", "ln_gru_rs")
# The RL preset's shape (I = H): a batch of rollouts of recurrent-policy environments.
RL = dict(B=64, H=128, T=128)
GPU_CELLS = ("ln_lstm", "gru_reg", "lstm", "gru")
CPU_CELLS = ("ln_lstm_zo", "gru_reg", "lstm", "gru")

# The CPU preset's shapes (I = H, the protocol's): a recurrent policy's and a language model's.
CPU_RL = dict(B=16, H=64, T=128)
CPU_LM = dict(B=32, H=256, T=100)

PRESETS: Dict[str, Preset] = {
    "gpu": Preset(GPU_CELLS, (16, 64, 256), (256, 512, 1024), (512,),
                  ("bfloat16", "float16", "float32"), MODES, extra=_peer_shape(GPU_CELLS)),
    "headline": Preset(("ln_lstm", "gru_reg"), (64,), (512,), (512,), ("bfloat16",), ("train",),
                       extra=_peer_shape(GPU_CELLS)),
    # The fused C++ kernels (fastrnn-cpu) beside the reference, the torch loop and torch.nn at
    # the two shapes above, float32 (bench/README.md states the measured time).
    # The RL shape's H is swept (32, 64, 128) so that the plot, drawn along H at the RL shape's
    # B and T, has three points per line; the LM shape is in the tables.
    "cpu": Preset(CPU_CELLS, (CPU_RL["B"],), (CPU_RL["H"] // 2, CPU_RL["H"], CPU_RL["H"] * 2),
                  (CPU_RL["T"],), ("float32",), MODES,
                  extra=[Workload(cell, CPU_LM["B"], CPU_LM["H"], CPU_LM["T"], "float32", mode)
                         for cell in CPU_CELLS for mode in MODES]),
    # Episode starts (``--rl``): each layer-norm cell with and without resets, on any device.
    "rl": Preset(RL_CELLS, (RL["B"],), (RL["H"],), (RL["T"],), ("float32",), MODES),
}


def build_grid(preset: Preset, cells: Optional[Sequence[str]] = None,
               batch: Optional[Sequence[int]] = None, hidden: Optional[Sequence[int]] = None,
               steps: Optional[Sequence[int]] = None, dtypes: Optional[Sequence[str]] = None,
               modes: Optional[Sequence[str]] = None) -> List[Workload]:
    """The preset's workloads with any axis replaced by the given values.

    Giving a shape axis (batch, hidden, steps) drops the preset's extra points: the grid is then
    exactly the product the caller asked for.
    """
    axes = [cells or preset.cells, batch or preset.batch, hidden or preset.hidden,
            steps or preset.steps, dtypes or preset.dtypes, modes or preset.modes]
    points = [Workload(*values) for values in itertools.product(*axes)]
    if not (batch or hidden or steps):
        points += [w for w in preset.extra
                   if w.cell in axes[0] and w.dtype in axes[4] and w.mode in axes[5]]
    unique = list(dict.fromkeys(points))
    for workload in unique:
        if workload.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {workload.cell!r}")
        if workload.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {workload.dtype!r}")
        if workload.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {workload.mode!r}")
    # All dtypes of one shape and mode run back to back so that their float64 reference is
    # computed once.
    return sorted(unique, key=lambda w: (ALL_CELLS.index(w.cell), w.B, w.H, w.T, w.mode,
                                         list(DTYPES).index(w.dtype)))
