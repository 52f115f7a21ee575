"""The modules' docstrings (``help(fastrnn.LSTM)``, ``help(fastrnn.GRU.forward)``): the offline
documentation of an installed wheel, which ships no docs/.  LSTM and GRU share most of what they
say, so each docstring is composed here from one set of fragments and a few facts per cell
(``CellFacts``); fastrnn/modules.py assigns the results.  Keep them in step with docs/api.md,
docs/cells.md and docs/sequences.md, which say the same at length.
"""
from __future__ import annotations

import dataclasses
import inspect
import textwrap
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class CellFacts:
    """What differs between the LSTM's and the GRU's docstrings."""
    name: str                 # "LSTM", "GRU"
    title: str                # the first line's description of the network
    gates: str                # e.g. "i, f, g, o"
    num_gates: int            # G
    candidate: str            # what candidate_dropout drops
    cell_norm: str            # what layer_norm adds beyond the two products ("" for none)
    torch_only_args: str      # Args lines after torch's common ones (proj_size)
    zoneout_args: str         # the zoneout Args lines
    extra_args: str           # Args lines after dropconnect (forget_bias)
    width: str                # the width of h, out and h_n: "H" or "P"
    states: Tuple[str, ...]   # ("h", "c") or ("h",)
    example_options: str      # keyword options of the docstring example


SHAPES = """\
Shapes: T time steps, B sequences, I = input_size, H = hidden_size, L = num_layers, D = 2 if
bidirectional else 1, G = {num_gates} gates ({gates}, in torch.nn's order){projection}.
"""

TORCH_ARGS = """\
input_size: the number of features of the input, I.
hidden_size: the number of features of the hidden state, H.
num_layers: the number of stacked layers, a positive integer; layer k > 0 reads layer k-1's
    output. Default: 1
bias: if ``False``, the layers have no ``bias_ih`` and ``bias_hh``. Default: ``True``
batch_first: if ``True``, ``input`` and ``output`` are (B, T, feature) instead of
    (T, B, feature); the states stay (D*L, B, feature). Default: ``False``
dropout: in training, dropout with this probability on the output of every layer but the
    last (after the residual add), in [0, 1]. Default: 0.0
bidirectional: if ``True``, each layer also runs every sequence backwards from its own last
    step, and the next layer reads both directions' outputs concatenated. Default: ``False``
"""

PROJ_SIZE_ARG = """\
proj_size: if > 0, h is projected to P = proj_size features by ``weight_hr_l{k}`` (P, H), as
    in torch.nn.LSTM; an integer in [0, H). Default: 0 (P = H)
"""

# Each regularizer acts in training only (``module.train()``); the ranges are checked when the
# module is built.
FASTRNN_ARGS = """\
layer_norm: if ``True``, layer norm with a learned gain over W_ih x and over W_hh h, before
    their biases{cell_norm}. Default: ``False`` (``True`` for LayerNorm{name})
ln_groups: the layer norm's statistics over all G*H gate values (1) or per gate ({num_gates}).
    Default: 1
{zoneout_args}recurrent_dropout: probability of dropping a unit of h_{{t-1}} where W_hh reads it,
    one mask per sequence and unit fixed over time (Gal and Ghahramani); the carried state is
    not dropped. In [0, 1). Default: 0.0
candidate_dropout: probability of dropping a unit of the candidate ({candidate}), drawn afresh
    at every step. In [0, 1). Default: 0.0
dropconnect: probability of dropping an entry of W_hh, one mask per layer, direction and
    call. In [0, 1). Default: 0.0
{extra_args}learn_initial_state: if ``True``, the initial states (when ``hx`` is not given) are
    learned per layer and direction: ``initial_hidden_l{{k}}``{initial_cell}, zero at init.
    Default: ``False``
residual: if ``True``, each layer from the second on adds its input to its output.
    Default: ``False``
backend: which implementation runs the layers: "auto" (torch's own kernel for a layer with
    torch.nn's math, else the fused kernels on CUDA and the reference on CPU), "reference",
    "triton", "cuda" or "native"; ``fastrnn.backends.devices()`` says what runs here.
    Default: "auto"
device: the device of the parameters. Default: torch's default device
dtype: the dtype of the parameters. Default: torch's default dtype
"""

ZONEOUT_ARG = """\
{name}: probability that a unit of {state} keeps its previous value at a step (in eval the
    expectation p * old + (1 - p) * new); in [0, 1]. Default: 0.0
"""

FORGET_BIAS_ARG = """\
forget_bias: the initial value of the forget gate's slice of ``bias_ih``. Default: 1.0
"""

INPUTS = """\
input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a PackedSequence.
hx: the initial state{hx_plural}: {hx_shapes}, without the B axis for unbatched input.
    Default: zeros (or the learned initial states with ``learn_initial_state``).
lengths: for padded input, B ints L_b in [1, T] (a list, tuple or 1-D integer tensor): sequence
    b runs steps t < L_b, its state stops there and its output is zero after it. Not with a
    PackedSequence (it carries its own) or unbatched input. Default: None (all T steps).
resets: episode starts for reinforcement learning: a bool tensor of the input's leading shape,
    (T, B), (B, T) with ``batch_first`` or (T,) unbatched; True at (t, b) means row b starts a
    new episode at step t. Every layer and direction then runs each episode as its own
    sequence: the forward direction restarts from the fresh initial state (zeros, or the learned
    one with ``learn_initial_state``), its first episode from hx unless it starts at t = 0; the
    reverse direction runs
    each episode from its last step, its last episode from hx. No gradient crosses a start,
    starts at padded steps are ignored, and the recurrent-dropout mask stays one per row for
    the whole call. Not with a PackedSequence (pad it and pass lengths). Default: None.
"""

OUTPUTS = """\
output: (T, B, D*{width}) (batch_first: (B, T, D*{width})), each layer's last output; a
    PackedSequence for a PackedSequence input.
{finals}"""

FINAL = "{state}_n: (D*L, B, {width}), the final {long} state of every layer and direction.\n"

INTRO = """\
A drop-in replacement for torch.nn.{name}, with torch.nn's arguments, parameter names, call and
outputs, and fastrnn's keyword-only options: layer norm, zoneout, recurrent and candidate
dropout, dropconnect, learned initial states and residual connections.  With these options off
it computes torch.nn.{name}'s function of its weights.  The init differs: weight_ih
Xavier-uniform, weight_hh orthogonal per gate, biases zero{forget};
``fastrnn.{name}.from_torch(torch.nn.{name}(...))`` gives torch.nn's.  Every regularizer acts in
training mode only (``module.train()``).
"""

CLASS = """\
{title}

{intro}
{shapes}
Args:
{args}
Inputs: input, hx=None, lengths=None, resets=None
{inputs}
Outputs: output, {outputs_line}
{outputs}
{parameters}
Example::

{example}
"""

FORWARD = """\
Runs every layer and direction over ``input``.

{shapes}
Args:
{inputs}
Returns:
    ``(output, {outputs_line})``:

{outputs}
Example::

{example}
"""

EXAMPLE = """\
>>> import torch, fastrnn
>>> rnn = fastrnn.{name}(8, 16, num_layers=2,
...                   {options})
>>> x = torch.randn(5, 3, 8)                        # (T, B, I)
>>> output, {outputs_line} = rnn(x, lengths=[5, 3, 2])
>>> [tuple(t.shape) for t in (output, {finals})]
{shapes}
"""


PARAMETERS = """\
Parameters, per layer k and suffix "" or "_reverse": weight_ih_l{{k}} (G*H, I or D*{width}),
weight_hh_l{{k}} (G*H, {width}), bias_ih_l{{k}} and bias_hh_l{{k}} (G*H){more_parameters}; with
layer_norm ln_ih_weight_l{{k}} and ln_hh_weight_l{{k}} (G*H){ln_cell}.
"""

WIDTH = 88


def _indent(text: str, by: int = 4) -> str:
    return textwrap.indent(text, " " * by)


def _fill(text: str) -> str:
    """Refills a paragraph, or a list of entries (a line that does not start with a space
    begins one; its continuation lines are indented by 4), to ``WIDTH`` columns: the fragments
    are wrapped by hand, and what is substituted into them is not."""
    entries = []
    for line in text.strip("\n").splitlines():
        if line.startswith(" ") and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    return "".join(textwrap.fill(entry, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
                   + "\n" for entry in entries)


def _fill_paragraph(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), WIDTH, break_on_hyphens=False) + "\n"


def _outputs_line(facts: CellFacts) -> str:
    finals = [f"{state}_n" for state in facts.states]
    return finals[0] if len(finals) == 1 else f"({', '.join(finals)})"


def _parts(facts: CellFacts) -> dict:
    long_names = {"h": "hidden", "c": "cell"}
    widths = {"h": facts.width, "c": "H"}
    hx_shapes = ", ".join(f"{state}_0 (D*L, B, {widths[state]})" for state in facts.states)
    if len(facts.states) > 1:
        hx_shapes = f"a tuple ({hx_shapes})"
    finals = "".join(FINAL.format(state=state, width=widths[state], long=long_names[state])
                     for state in facts.states)
    outputs_line = _outputs_line(facts)
    example_shapes = [(5, 3, 16)] + [(2, 3, 16)] * len(facts.states)
    example = EXAMPLE.format(name=facts.name, options=facts.example_options,
                             outputs_line=outputs_line,
                             finals=", ".join(f"{state}_n" for state in facts.states),
                             shapes=example_shapes)
    projection = ", P = proj_size or H" if facts.width == "P" else ""
    return dict(
        shapes=_fill_paragraph(SHAPES.format(num_gates=facts.num_gates, gates=facts.gates,
                                             projection=projection)),
        inputs=_indent(_fill(INPUTS.format(hx_plural="s" if len(facts.states) > 1 else "",
                                           hx_shapes=hx_shapes))),
        outputs=_indent(_fill(OUTPUTS.format(width=facts.width, finals=finals))),
        outputs_line=outputs_line, example=_indent(example))


def class_doc(facts: CellFacts) -> str:
    """The class docstring: what it is, Args, Inputs, Outputs, parameters, an example."""
    parts = _parts(facts)
    initial_cell = " and ``initial_cell_l{k}``" if "c" in facts.states else ""
    args = (TORCH_ARGS + facts.torch_only_args
            + FASTRNN_ARGS.format(cell_norm=facts.cell_norm, name=facts.name,
                                  num_gates=facts.num_gates, zoneout_args=facts.zoneout_args,
                                  candidate=facts.candidate, extra_args=facts.extra_args,
                                  initial_cell=initial_cell))
    ln_cell = (", ln_cell_weight_l{k} and ln_cell_bias_l{k} (H)" if facts.cell_norm else "")
    more = ", weight_hr_l{k} (P, H) with proj_size" if facts.width == "P" else ""
    forget = " but the forget gate's slice of bias_ih (forget_bias)" if "c" in facts.states else ""
    intro = INTRO.format(name=facts.name, forget=forget)
    parameters = PARAMETERS.format(width=facts.width, more_parameters=more, ln_cell=ln_cell)
    return CLASS.format(title=facts.title, intro=_fill_paragraph(intro),
                        args=_indent(_fill(args)), parameters=_fill_paragraph(parameters),
                        **parts)


def forward_doc(facts: CellFacts) -> str:
    """``forward``'s docstring: input, hx, lengths, resets and the returns."""
    parts = _parts(facts)
    return FORWARD.format(**parts)


def zoneout_args(*names_and_states: Tuple[str, str]) -> str:
    return "".join(ZONEOUT_ARG.format(name=name, state=state) for name, state in names_and_states)


def layer_norm_variant(cls, base) -> None:
    """``cls`` (LayerNormLSTM, LayerNormGRU) is ``base`` with layer_norm defaulting to True: its
    docstring says so above the base's, and ``help`` shows the base's signature."""
    cls.__doc__ = _fill_paragraph(f"``fastrnn.{base.__name__}(..., layer_norm=True)``: the same "
                                  f"arguments, with ``layer_norm`` defaulting to ``True``.")
    cls.__doc__ += "\n" + base.__doc__
    cls.__init__.__doc__ = base.__init__.__doc__
    signature = inspect.signature(base.__init__)
    parameters = [p.replace(default=True) if p.name == "layer_norm" else p
                  for p in signature.parameters.values()]
    cls.__init__.__signature__ = signature.replace(parameters=parameters)
