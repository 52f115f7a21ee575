"""One layer, one direction: the input projection, the call's masks, then the recurrence op.

The modules (``fastrnn.modules``) stack these; ``lstm_layer`` / ``gru_layer`` are also the
functional API for users who keep their own parameters.  A call with torch.nn's math runs on
torch's own kernel when its backend resolves to "native" (``fastrnn.backends``): that kernel takes
the layer input and W_ih itself, so no input projection is computed here.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends
from . import masks as M
from . import ops
from .cells import FIELD_PARAMETERS, GRU, LAYER_NORM_EPS, LSTM, Cell
from .reference import norm_scale


def project_input(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], ln_ih_weight: Optional[Tensor],
                  ln_groups: int) -> Tensor:
    """gx = W_ih x + b_ih (or γ_ih ⊙ N(W_ih x) + b_ih) for all steps: one GEMM, one norm pass.

    The layer norm over ``ln_groups`` slices with a per-element gain is exactly group norm over
    the G·H features (layer norm for one group), whose fused kernel saves only its input and
    statistics for backward.
    Groups of huge values are first brought to a size whose float32 statistics do not overflow
    (``reference.norm_scale``): one more pass over W_ih x, and ``ln_groups`` more saved values
    per (t, b), the factors.
    """
    gx = torch.matmul(x, w_ih.t())
    if ln_ih_weight is None:
        return gx if b_ih is None else gx + b_ih
    grouped = gx.reshape(-1, ln_groups, gx.shape[-1] // ln_groups)
    scaled = (grouped * norm_scale(grouped)).reshape(-1, gx.shape[-1])
    if ln_groups == 1:
        # The same function as group norm with one group, and the same saved tensors; on CPU
        # torch's layer-norm kernels (forward and backward) are about 5x faster than its
        # group-norm kernels (82 vs 16 ms at [8192, 512], 1 thread).
        flat = F.layer_norm(scaled, (gx.shape[-1],), ln_ih_weight, b_ih, eps=LAYER_NORM_EPS)
    else:
        flat = F.group_norm(scaled, ln_groups, ln_ih_weight, b_ih, eps=LAYER_NORM_EPS)
    return flat.reshape(gx.shape)


@torch.compiler.assume_constant_result
def _resolve_backend(name: str, device: torch.device, dtype: torch.dtype, cell: str, hidden: int,
                     plain: bool, features: Tuple[str, ...], compiling_for_grad: bool) -> str:
    """``backends.resolve``, run by torch.compile at trace time: its module import is not
    traceable, and its answer depends only on these arguments, which the graph guards."""
    return backends.resolve(name, device, dtype, backends.Request(
        cell=cell, hidden=hidden, plain=plain, features=frozenset(features),
        compiling_for_grad=compiling_for_grad))


@torch.compiler.assume_constant_result
def _onnx_exporting() -> bool:
    """torch.onnx.is_in_onnx_export(), read in Python even where dynamo traces the caller (the
    exporter's strict fallback), which would fold the call itself to False."""
    return torch.onnx.is_in_onnx_export()


def onnx_training_error(cell: str) -> ValueError:
    """Why a training-mode call with regularizers does not export to ONNX, and what to do."""
    return ValueError(
        f"fastrnn: ONNX export of {cell} in training mode with its regularizers on (zoneout, "
        "recurrent or candidate dropout, dropconnect): in training they draw new random masks "
        "on every call, which no exported graph reproduces, and ONNX export translates the "
        "eval-mode expectation instead (zoneout as p·s_{t-1} + (1-p)·s~_t, the dropouts as the "
        "identity). Call model.eval() (training=False in fastrnn.functional) before "
        "torch.onnx.export")


def without_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """x [T, B, I] with zeros at the padded steps t >= lengths[b] (a new tensor).

    The op skips those steps, but the input projection covers all T: its backward multiplies
    their zero gradient by x, and the input layer norm normalizes them, so a NaN or Inf there
    (padding left uninitialised) would reach W_ih's and γ_ih's gradients.  ``where`` selects
    instead of multiplying, so nothing of a padded value survives, forward or backward.
    """
    valid = torch.arange(x.shape[0], device=x.device)[:, None] < lengths[None, :]
    return torch.where(valid.unsqueeze(-1), x, x.new_zeros(()))


def episode_starts(resets: Tensor, lengths: Optional[Tensor], reverse: bool) -> Tensor:
    """The op's ``resets`` [T, B] from the caller's episode starts: which steps read the reset
    state instead of the state their predecessor in the call's order left.

    A forward call reads it where an episode starts.  A reverse call runs each episode from its
    last step, so a step reads it where the *next* step starts an episode (t + 1 < T).  Episode
    starts at padded steps (t >= lengths[b]) are dropped first: the op holds the state there.
    """
    steps = torch.arange(resets.shape[0], device=resets.device)[:, None]
    starts = resets if lengths is None else resets & (steps < lengths[None, :])
    if reverse:
        # roll, not a slice and a cat: torch.export keeps T symbolic through it (T >= 2 too).
        starts = starts.roll(-1, 0) & (steps < resets.shape[0] - 1)
    return starts.contiguous()


def recurrence(cell: Cell, x: Tensor, weights: Dict[str, Optional[Tensor]],
               initial: Dict[str, Tensor], lengths: Optional[Tensor], *, ln_groups: int,
               step_probabilities: Dict[str, float], recurrent_dropout: float, dropconnect: float,
               training: bool, reverse: bool, backend: str, layer: int = 0,
               direction: int = 0, resets: Optional[Tensor] = None,
               reset_states: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, ...]:
    """x [T, B, I] -> (out [T, B, P], *final states) for one layer and direction (P = H, or
    proj_size with the LSTM's ``weight_hr``; c is H-sized).

    ``weights``: weight_ih, weight_hh, bias_ih, bias_hh, weight_hr and the layer-norm parameters
    present (module names without the layer suffix); ``initial``: the call fields h0 (and c0);
    ``step_probabilities``: the cell's per-step mask probabilities by call field (zoneout,
    candidate dropout).  ``backend``: a name of ``fastrnn.backends.CHOICES``, "auto" included.
    ``resets`` [T, B] bool: the episode starts (``episode_starts``), ``reset_states`` the call
    fields h_reset (and c_reset), the states an episode starts from [B, width].
    """
    steps, batch = x.shape[0], x.shape[1]
    if lengths is not None:
        x = without_padding(x, lengths)
    w_hh = weights["weight_hh"]
    width = w_hh.shape[1]  # of h (P under a projection), which the recurrent mask multiplies
    stochastic = (recurrent_dropout > 0 or dropconnect > 0
                  or any(p > 0 for p in step_probabilities.values()))
    active = training and stochastic
    # Refused here, while the exporter traces the model: the ONNX translation's own refusal
    # comes only after tracing, inside a generic ConversionError, and never sees dropconnect
    # (applied to W_hh below, before the op), whose random mask would be exported as is.
    if active and _onnx_exporting():
        raise onnx_training_error(cell.name)
    seed = (M.draw_seed(x.device) if active
            else torch.zeros((), dtype=torch.int64, device=x.device))
    recurrent_mask = dropconnect_mask = None
    if training and recurrent_dropout > 0:
        recurrent_mask = M.keep_scale(seed, M.RECURRENT_DROPOUT, recurrent_dropout,
                                      (batch, width), x.dtype)
    if training and dropconnect > 0:
        dropconnect_mask = M.keep_scale(seed, M.DROPCONNECT, dropconnect, tuple(w_hh.shape),
                                        w_hh.dtype)
        w_hh = w_hh * dropconnect_mask
    fields = dict(
        w_hh=w_hh, b_hh=weights.get("bias_hh"),
        **{name: weights.get(name) for name in cell.norm_parameters}, **initial,
        lengths=lengths, recurrent_mask=recurrent_mask, seed=seed, ln_groups=ln_groups,
        **{field: float(p) for field, p in step_probabilities.items()},
        training=bool(training), reverse=bool(reverse),
        **{field: weights.get(FIELD_PARAMETERS[field]) for field in cell.features.values()
           if field in FIELD_PARAMETERS})
    if resets is not None:
        fields.update(resets=episode_starts(resets, lengths, reverse),
                      **{field: state.contiguous() for field, state in reset_states.items()})
    probe = cell.call(None, **fields)
    # torch's kernel has neither dropconnect (applied to W_hh above) nor the input layer norm.
    plain = (cell.is_plain(probe) and dropconnect_mask is None
             and weights.get("ln_ih_weight") is None)
    compiling_for_grad = (torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                          and torch.is_grad_enabled())
    backend = _resolve_backend(backend, x.device, x.dtype, cell.name,
                               weights["weight_ih"].shape[0] // cell.num_gates, plain,
                               tuple(sorted(cell.features_of(probe))), compiling_for_grad)
    if backend == backends.NATIVE:
        return ops.native(cell.native_call(
            x=x, w_ih=weights["weight_ih"], b_ih=weights.get("bias_ih"),
            **{field: fields[field] for field in cell.native_fields}))
    call = cell.call(gx=project_input(x, weights["weight_ih"], weights.get("bias_ih"),
                                      weights.get("ln_ih_weight"), ln_groups), **fields)
    if active and M.capturing():
        expanded = {field: (M.expand_step_masks(seed, kind, step_probabilities[field], steps,
                                                batch, cell.mask_width(field, call))
                            if step_probabilities[field] > 0 else None)
                    for field, kind in cell.step_masks.items()}
        M.record(M.CallMasks(layer=layer, direction=direction, cell=cell.name,
                             recurrent_mask=recurrent_mask, dropconnect_mask=dropconnect_mask,
                             **expanded))
    # Without a backward to come, the inference op keeps nothing of what only a backward needs.
    save = torch.is_grad_enabled() and any(
        isinstance(value, Tensor) and value.requires_grad for value in call)
    results = ops.forward(call, backend, save=save)
    return results[:1 + len(cell.states)]


def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], h0: Tensor, c0: Tensor, lengths: Optional[Tensor] = None, *,
               ln_ih_weight: Optional[Tensor] = None, ln_hh_weight: Optional[Tensor] = None,
               ln_cell_weight: Optional[Tensor] = None, ln_cell_bias: Optional[Tensor] = None,
               ln_groups: int = 1, zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0,
               recurrent_dropout: float = 0.0, candidate_dropout: float = 0.0,
               dropconnect: float = 0.0, training: bool = False, reverse: bool = False,
               w_hr: Optional[Tensor] = None, backend: str = "reference", layer: int = 0,
               direction: int = 0, resets: Optional[Tensor] = None,
               h_reset: Optional[Tensor] = None,
               c_reset: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """x [T, B, I] -> (out [T, B, P], h_n [B, P], c_n [B, H]) for one LSTM layer and direction;
    P = H, or the rows of the projection ``w_hr`` [P, H] (then w_hh is [4H, P], h0 [B, P]).

    ``resets`` [T, B] bool marks episode starts: the row's state is replaced there by
    (``h_reset`` [B, P], ``c_reset`` [B, H]), zeros when not given, and no gradient crosses
    it; with ``reverse`` each episode runs from its last step (docs/sequences.md).
    ``layer`` and ``direction`` only label the call's masks for ``fastrnn.capture_masks``."""
    weights = dict(weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh,
                   ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight,
                   ln_cell_weight=ln_cell_weight, ln_cell_bias=ln_cell_bias, weight_hr=w_hr)
    return recurrence(
        LSTM, x, weights, dict(h0=h0, c0=c0), lengths, ln_groups=ln_groups,
        step_probabilities=dict(zoneout_cell=zoneout_cell, zoneout_hidden=zoneout_hidden,
                                candidate_dropout=candidate_dropout),
        recurrent_dropout=recurrent_dropout, dropconnect=dropconnect, training=training,
        reverse=reverse, backend=backend, layer=layer, direction=direction, resets=resets,
        reset_states=_reset_states(LSTM, resets, dict(h_reset=h_reset, c_reset=c_reset),
                                   dict(h_reset=h0, c_reset=c0)))


def _reset_states(cell: Cell, resets: Optional[Tensor], given: Dict[str, Optional[Tensor]],
                  like: Dict[str, Tensor]) -> Optional[Dict[str, Tensor]]:
    """The reset-state call fields: as given, else zeros shaped like the initial states."""
    if resets is None:
        return None
    return {field: torch.zeros_like(like[field]) if given[field] is None else given[field]
            for field in cell.reset_states}


def gru_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor] = None, *,
              ln_ih_weight: Optional[Tensor] = None, ln_hh_weight: Optional[Tensor] = None,
              ln_groups: int = 1, zoneout: float = 0.0, recurrent_dropout: float = 0.0,
              candidate_dropout: float = 0.0, dropconnect: float = 0.0, training: bool = False,
              reverse: bool = False, backend: str = "reference", layer: int = 0,
              direction: int = 0, resets: Optional[Tensor] = None,
              h_reset: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """x [T, B, I] -> (out [T, B, H], h_n [B, H]) for one GRU layer and direction; ``resets``
    and ``h_reset`` as in ``lstm_layer``."""
    weights = dict(weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh,
                   ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight)
    return recurrence(
        GRU, x, weights, dict(h0=h0), lengths, ln_groups=ln_groups,
        step_probabilities=dict(zoneout_hidden=zoneout, candidate_dropout=candidate_dropout),
        recurrent_dropout=recurrent_dropout, dropconnect=dropconnect, training=training,
        reverse=reverse, backend=backend, layer=layer, direction=direction, resets=resets,
        reset_states=_reset_states(GRU, resets, dict(h_reset=h_reset), dict(h_reset=h0)))
