"""The modules' docstrings are the offline documentation of an installed wheel (it ships no
docs/): each public module class and its ``forward`` say every argument, and their examples run."""
from __future__ import annotations

import doctest
import inspect
import pydoc

import pytest
import torch

import fastrnn
from fastrnn import modules

CLASSES = [getattr(fastrnn, name) for name in fastrnn.__all__
           if isinstance(getattr(fastrnn, name), type)
           and issubclass(getattr(fastrnn, name), torch.nn.Module)]


def test_every_public_module_class_is_checked():
    assert {cls.__name__ for cls in CLASSES} == {"LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU"}


def _arguments(cls):
    return [name for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_class_docstring_names_every_argument(cls):
    doc = cls.__doc__
    arguments = _arguments(cls)
    assert "input_size" in arguments and "backend" in arguments  # the real signature
    for section in ("Args:", "Inputs:", "Outputs:", "Example::", ">>> "):
        assert section in doc, section
    for name in arguments:
        assert f"\n    {name}: " in doc, f"{cls.__name__}: argument {name} is not described"
    for name in ("input", "hx", "lengths", "output", "h_n"):
        assert f"\n    {name}: " in doc, name


def test_the_layer_norm_classes_show_their_default():
    for cls, base in ((fastrnn.LayerNormLSTM, fastrnn.LSTM), (fastrnn.LayerNormGRU, fastrnn.GRU)):
        signature = inspect.signature(cls)
        assert signature.parameters["layer_norm"].default is True
        assert _arguments(cls) == _arguments(base)
        assert "layer_norm`` defaulting to ``True``" in " ".join(cls.__doc__.split())
        assert cls(3, 4).layer_norm and not base(3, 4).layer_norm


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_forward_is_documented(cls):
    doc = cls.forward.__doc__
    assert doc != torch.nn.Module.forward.__doc__
    for name in ("input", "hx", "lengths", "output", "h_n"):
        assert f"\n    {name}: " in doc, name
    assert "Returns:" in doc and ">>> " in doc
    assert ("c_n" in doc) == issubclass(cls, fastrnn.LSTM)
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "Should be overridden by all subclasses" not in text
    assert "Initialize internal Module state" not in text


def test_the_docstring_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [test for test in finder.find(modules, "fastrnn.modules") if test.examples]
    names = {test.name.rsplit(".", 2)[-2] if test.name.endswith("forward")
             else test.name.rsplit(".", 1)[-1] for test in tests}
    assert {"LSTM", "GRU"} <= names
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0
