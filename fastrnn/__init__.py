"""fastrnn: fused layer-norm and regularized LSTM / GRU for PyTorch."""
from . import backends, cells, masks, ops, reference  # noqa: F401  (ops registers torch.ops.fastrnn)
from .masks import CallMasks, capture_masks
from .modules import GRU, LSTM, LayerNormGRU, LayerNormLSTM

__all__ = ["backends", "cells", "masks", "ops", "reference", "CallMasks", "capture_masks",
           "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU"]
