"""The op boundary: ``torch.ops.fastrnn.<cell>_forward`` / ``<cell>_backward``, one recurrence
(one layer, one direction, all T steps) per call.

Every backend (reference, Triton, CUDA) implements these ops, so ``torch.compile`` sees one
opaque op per recurrence (the fake implementations below give it the shapes) and autograd sees
one registered formula.  The schemas are generated from the call types of ``fastrnn.cells``
(``LSTMCall``, ``GRUCall``): the fields of a call, in order, then ``str backend``.  The
``backend`` argument names the implementation; the caller resolves it
(``fastrnn.backends.resolve``) before the op runs.

* forward: ``(*call, backend) -> (out, h_n[, c_n], *saved)``; ``saved`` are the fields of the
  cell's ``saved`` type after ``out`` (``preact``, ``cell`` or ``hidden_n``, ``stats``).
* inference: ``(*call, backend) -> (out, h_n[, c_n])``, the forward when no gradient will be
  taken: the backend keeps nothing for a backward (``save=False``), and the op has no autograd
  formula.  ``fastrnn.functional`` calls it when grad mode is off or no input requires grad.
* backward: ``(grad_out, grad_h_n[, grad_c_n], *saved, *call[1:], backend)`` -> the gradients of
  the cell's ``differentiable`` call fields; an absent optional parameter gets an empty tensor.
  The backward works from the saved tensors: ``gx`` is not an argument (backends see
  ``call.gx = None``).

A call with torch.nn's math (``Cell.is_plain``) can instead run torch's own kernel through
``torch.ops.fastrnn.<cell>_native``, whose schema is generated from the cell's ``native_call``:
``(x, w_ih, b_ih, <native fields>) -> (out, h_n[, c_n])``.  Its autograd is torch's: in eager mode
the op runs ``torch._VF.lstm`` / ``gru`` with autograd recording (the kernels and backward of
torch.nn), and below autograd (no gradient needed, ``torch.export``, ``torch.compile`` for
inference) it is one opaque op with a fake implementation.

docs/ops.md is the full contract.
"""
from __future__ import annotations

import functools
import typing
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import backends
from .cells import CELLS, Cell, cell_of

_LIBRARY = torch.library.Library("fastrnn", "DEF")
# The forward and backward ops' autograd formulas as autograd.Functions, by op name (``_function``).
_FUNCTIONS = {}
_SCHEMA_TYPES = {Tensor: "Tensor", Optional[Tensor]: "Tensor?", int: "int", float: "float",
                 bool: "bool"}


def _argument_list(fields: Sequence[Tuple[str, object]]) -> str:
    return ", ".join(f"{_SCHEMA_TYPES[hint]} {name}" for name, hint in fields)


def _call_fields(cell: Cell):
    return list(typing.get_type_hints(cell.call).items())


def _grad_names(cell: Cell) -> Tuple[str, ...]:
    """The backward op's first arguments: the gradients of out and of the final states."""
    return tuple(f"grad_{name}" for name in cell.forward_outputs[:1 + len(cell.states)])


def forward_schema(cell: Cell) -> str:
    results = ", ".join("Tensor" for _ in cell.forward_outputs)
    return f"({_argument_list(_call_fields(cell))}, str backend) -> ({results})"


def inference_schema(cell: Cell) -> str:
    results = ", ".join("Tensor" for _ in cell.native_outputs)
    return f"({_argument_list(_call_fields(cell))}, str backend) -> ({results})"


def backward_schema(cell: Cell) -> str:
    arguments = ([(name, Tensor) for name in _grad_names(cell)]
                 + [(name, Tensor) for name in cell.saved._fields] + _call_fields(cell)[1:])
    results = ", ".join("Tensor" for _ in cell.differentiable)
    return f"({_argument_list(arguments)}, str backend) -> ({results})"


def native_schema(cell: Cell) -> str:
    fields = list(typing.get_type_hints(cell.native_call).items())
    results = ", ".join("Tensor" for _ in cell.native_outputs)
    return f"({_argument_list(fields)}) -> ({results})"


def forward(call, backend: str, save: bool = True) -> Tuple[Tensor, ...]:
    """Runs a recurrence call through the op: (out, h_n[, c_n], *saved), or with ``save=False``
    through the inference op, which keeps nothing for a backward: (out, h_n[, c_n])."""
    cell = cell_of(call)
    _refuse_forward_mode(cell, call)
    if not save:
        return _inference_op(cell)(*call, backend)
    return _differentiable(_forward_op(cell))(*call, backend)


def _refuse_forward_mode(cell: Cell, call) -> None:
    """The ops have no forward-mode formula, and torch would drop a tangent silently (a custom
    op's output is then a plain tensor): refuse dual inputs (torch.func.jvp / jacfwd,
    torch.autograd.forward_ad) instead."""
    if forward_ad._current_level < 0 and torch._C._functorch.peek_interpreter_stack() is None:
        return   # no dual level and no torch.func transform: no tangent can be attached
    if any(isinstance(value, Tensor) and forward_ad.unpack_dual(value).tangent is not None
           for value in call):
        raise RuntimeError(
            f"fastrnn: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) "
            f"through {cell.name} is not supported: the ops have no forward-mode formula; use "
            f"reverse mode (torch.func.vjp, jacrev, grad)")


def native(call) -> Tuple[Tensor, ...]:
    """Runs a native call (``fastrnn.cells``) on torch's own kernel: (out, h_n[, c_n])."""
    return _native_op(cell_of(call))(*call)


def _forward_op(cell: Cell):
    return getattr(torch.ops.fastrnn, f"{cell.name}_forward").default


def _inference_op(cell: Cell):
    return getattr(torch.ops.fastrnn, f"{cell.name}_inference").default


def _native_op(cell: Cell):
    return getattr(torch.ops.fastrnn, f"{cell.name}_native").default


def _backward_op(cell: Cell):
    return getattr(torch.ops.fastrnn, f"{cell.name}_backward").default


# ------------------------------------------------------------------------- implementations

def _split_forward_arguments(cell: Cell, arguments):
    *fields, backend = arguments
    return cell.call(*fields), backend


def _split_backward_arguments(cell: Cell, arguments):
    grads = len(cell.states) + 1
    saved_end = grads + len(cell.saved._fields)
    *rest, backend = arguments[saved_end:]
    return (arguments[:grads], cell.saved(*arguments[grads:saved_end]), cell.call(None, *rest),
            backend)


def _check_layer_norm_parameters(cell: Cell, call) -> None:
    """The recurrence's layer norm is on or off as a whole (γ_hh, and γ_c, β_c for the LSTM)."""
    given = [getattr(call, name) is not None for name in cell.norm_parameters]
    if any(given) and not all(given):
        raise ValueError(f"{cell.name}_forward: {', '.join(cell.norm_parameters)} must be all "
                         f"given or all None, got {given}")


def _register(cell: Cell) -> None:
    forward_name, backward_name = f"{cell.name}_forward", f"{cell.name}_backward"
    inference_name = f"{cell.name}_inference"
    _LIBRARY.define(forward_name + forward_schema(cell))
    _LIBRARY.define(inference_name + inference_schema(cell))
    _LIBRARY.define(backward_name + backward_schema(cell))

    def forward_impl(*arguments, save=True):
        call, backend = _split_forward_arguments(cell, arguments)
        _check_layer_norm_parameters(cell, call)
        # The results must be the op's own tensors: autograd forbids in-place edits of a view
        # that a multi-output function returns (torch.nn's outputs allow them), and a
        # backend's result can be one: under the op's dispatch the reference's torch.stack is
        # a view of a cat.  Copying such a result costs one pass over it; others are as is.
        return tuple(result.clone() if result._is_view() else result
                     for result in backends.forward(backend, call, save=save))

    def forward_fake(*arguments, save=True):
        call, _ = _split_forward_arguments(cell, arguments)
        _check_layer_norm_parameters(cell, call)
        results = _fake_forward(cell, call)
        return results if save else results[:len(cell.native_outputs)]

    def backward_impl(*arguments):
        grads, saved, call, backend = _split_backward_arguments(cell, arguments)
        return backends.backward(backend, call, saved, grads)

    def backward_fake(*arguments):
        _, saved, call, _ = _split_backward_arguments(cell, arguments)
        like = call.w_hh
        return (saved.preact.new_empty(saved.preact.shape),) + tuple(
            like.new_empty(0) if getattr(call, name) is None
            else getattr(call, name).new_empty(getattr(call, name).shape)
            for name in cell.differentiable[1:])

    tensor_fields = tuple(name for name, hint in _call_fields(cell)[1:]
                          if hint in (Tensor, Optional[Tensor]))

    def setup_context(ctx, inputs, output):
        call, backend = _split_forward_arguments(cell, inputs)
        saved = cell.saved(output[0], *output[1 + len(cell.states):])
        ctx.mark_non_differentiable(*saved[1:])
        ctx.options = {name: getattr(call, name) for name in call._fields[1:]
                       if name not in tensor_fields}
        ctx.backend = backend
        ctx.save_for_backward(*saved, *(getattr(call, name) for name in tensor_fields))

    def backward_formula(ctx, *output_grads):
        stored = ctx.saved_tensors
        count = len(cell.saved._fields)
        saved = cell.saved(*stored[:count])
        call = cell.call(None, **dict(zip(tensor_fields, stored[count:])), **ctx.options)
        initial = [getattr(call, f"{state}0") for state in cell.states]
        grads = [torch.zeros_like(like) if grad is None else grad
                 for grad, like in zip(output_grads, [saved.out] + initial)]
        results = dict(zip(cell.differentiable, _differentiable(_backward_op(cell))(
            *grads, *saved, *call[1:], ctx.backend)))
        # gx is always there; an absent optional parameter has no gradient.
        return tuple(results[name] if name in results and (name == "gx" or
                                                          getattr(call, name) is not None)
                     else None for name in cell.call._fields) + (None,)

    def no_double_backward(ctx, *grads):
        raise RuntimeError(f"fastrnn: double backward (a gradient of the gradient) through "
                           f"{cell.name} is not supported")

    torch.library.impl(f"fastrnn::{forward_name}", "CompositeExplicitAutograd",
                       func=forward_impl, lib=_LIBRARY)
    torch.library.impl(f"fastrnn::{backward_name}", "CompositeExplicitAutograd",
                       func=backward_impl, lib=_LIBRARY)
    torch.library.impl(f"fastrnn::{inference_name}", "CompositeExplicitAutograd",
                       func=functools.partial(forward_impl, save=False), lib=_LIBRARY)
    torch.library.register_fake(f"fastrnn::{inference_name}",
                                functools.partial(forward_fake, save=False), lib=_LIBRARY)
    torch.library.register_fake(f"fastrnn::{forward_name}", forward_fake, lib=_LIBRARY)
    torch.library.register_fake(f"fastrnn::{backward_name}", backward_fake, lib=_LIBRARY)
    torch.library.register_autograd(f"fastrnn::{forward_name}", backward_formula,
                                    setup_context=setup_context, lib=_LIBRARY)
    torch.library.register_autograd(f"fastrnn::{backward_name}", no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None, lib=_LIBRARY)
    # The same formulas as Functions for eager mode (``_differentiable``), and torch.vmap.
    _FUNCTIONS[forward_name] = _function(_forward_op(cell), setup_context, backward_formula)
    _FUNCTIONS[backward_name] = _function(_backward_op(cell), lambda ctx, inputs, output: None,
                                          no_double_backward)
    for op in (_forward_op(cell), _inference_op(cell), _backward_op(cell)):
        torch.library.register_vmap(op, functools.partial(_vmap_rule, op), lib=_LIBRARY)


def _function(op, setup_context, backward) -> type:
    """``op`` with its autograd formula as an autograd.Function that has setup_context, which
    the torch.func transforms (grad, vjp, jacrev, vmap of them) require and the Function that
    ``register_autograd`` generates lacks.  Its forward runs the op with grad mode off."""
    function = type(f"{op._opname}_function", (torch.autograd.Function,), dict(
        forward=staticmethod(op), setup_context=staticmethod(setup_context),
        backward=staticmethod(backward),
        vmap=staticmethod(lambda info, in_dims, *arguments: _vmap_by_loop(
            function.apply, info, in_dims, arguments))))
    return function


def _differentiable(op):
    """How to call a forward or backward op with its autograd: in eager mode through its
    Function (``_function``, so that torch.func works), under torch.compile as the op itself
    (one opaque node whose formula ``register_autograd`` gives AOTAutograd)."""
    if torch.compiler.is_compiling():
        return op
    return _FUNCTIONS[op._schema.name.split("::")[1]].apply


def _vmap_rule(op, info, in_dims, *arguments):
    return _vmap_by_loop(op, info, in_dims, arguments)


def _vmap_by_loop(run, info, in_dims, arguments):
    """torch.vmap of a recurrence op: one call per sample, results stacked along dim 0.  A
    recurrence batches its rows already; a vmapped dimension usually batches weights too (per-
    sample gradients, ensembles), which one call cannot share, so this loops in Python."""
    results = []
    for index in range(info.batch_size):
        results.append(run(*(argument if dim is None else argument.select(dim, index)
                             for argument, dim in zip(arguments, in_dims))))
    stacked = tuple(torch.stack(column) for column in zip(*results))
    return stacked, (0,) * len(stacked)


def _fake_forward(cell: Cell, call) -> Tuple[Tensor, ...]:
    """Shapes and dtypes of the forward results (docs/ops.md), without computing anything: out
    and the final states have the widths of the initial states (h is P-sized under a
    projection), the other saved tensors the cell's H (gates G·H, stats their own)."""
    gx = call.gx
    steps, batch, hidden = gx.shape[0], gx.shape[1], gx.shape[2] // cell.num_gates
    width = cell.stats_width(call.ln_hh_weight is not None, call.ln_groups)
    shapes = {"out": (steps, batch, call.h0.shape[1]), "preact": tuple(gx.shape),
              "stats": (steps, batch, width)}
    results = [gx.new_empty(shapes["out"])]
    results += [gx.new_empty(getattr(call, f"{state}0").shape) for state in cell.states]
    for field in cell.saved._fields[1:]:
        results.append(gx.new_empty(shapes.get(field, (steps, batch, hidden)),
                                    dtype=cell.saved_dtype(field, gx.dtype)))
    return tuple(results)


def _register_native(cell: Cell) -> None:
    """``fastrnn::<cell>_native``: torch's own kernel, with torch's autograd (module docstring)."""
    name = f"{cell.name}_native"
    _LIBRARY.define(name + native_schema(cell))
    op = _native_op(cell)

    def run(*arguments):
        return tuple(backends.get(backends.NATIVE).run(cell.native_call(*arguments)))

    def autograd_kernel(*arguments):
        recorded = torch.is_grad_enabled() and any(
            isinstance(a, Tensor) and a.requires_grad for a in arguments)
        if recorded and not torch.compiler.is_compiling():
            return run(*arguments)   # torch's ops record their own backward
        if recorded and not torch.compiler.is_exporting():
            raise ValueError(backends.NATIVE_NOT_COMPILED_FOR_GRAD)
        # Nothing to record, or torch.export tracing the op as one node: below autograd, the
        # fake implementation gives the shapes (symbolic in T and B) and ``run`` the values.
        with torch._C._AutoDispatchBelowAutograd():
            return op(*arguments)

    _LIBRARY.impl(name, autograd_kernel, "Autograd")
    _LIBRARY.impl(name, run, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fastrnn::{name}",
                                lambda *arguments: _fake_native(cell, cell.native_call(*arguments)),
                                lib=_LIBRARY)


def _fake_native(cell: Cell, call) -> Tuple[Tensor, ...]:
    steps, batch = call.x.shape[0], call.x.shape[1]
    initial = [getattr(call, f"{state}0") for state in cell.states]
    return (call.x.new_empty(steps, batch, initial[0].shape[1]),
            *(state.new_empty(state.shape) for state in initial))


for _cell in CELLS.values():
    _register(_cell)
    _register_native(_cell)
