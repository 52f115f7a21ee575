"""fastrnn: fused layer-norm and regularized LSTM / GRU for PyTorch."""
from . import backends, cells, masks, ops, reference  # noqa: F401  (ops registers torch.ops.fastrnn)
from .masks import CallMasks, capture_masks
from .modules import GRU, LSTM, LayerNormGRU, LayerNormLSTM


def _register_onnx_translations() -> None:
    """torch.onnx.export(dynamo=True) finds the fastrnn ops' translations without arguments
    (fastrnn/onnx_export.py), when onnxscript is installed."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("onnxscript") is None:
        return
    try:
        from . import onnx_export  # noqa: F401
    except Exception as error:  # an onnxscript this code does not know must not break fastrnn
        warnings.warn(f"fastrnn: ONNX export of fastrnn modules is unavailable: the ONNX "
                      f"translations could not be registered ({type(error).__name__}: {error})")


_register_onnx_translations()

__all__ = ["backends", "cells", "masks", "ops", "reference", "CallMasks", "capture_masks",
           "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU"]
