"""examples/char_lm.py trains: a few epochs on a tiny text lower the loss."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from support import option_helps

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "char_lm.py"


@pytest.fixture(scope="module")
def char_lm():
    spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_decreases_on_a_tiny_text(char_lm, tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 6)
    losses = char_lm.main([str(text), "--epochs", "4", "--seq-len", "16", "--batch-size", "4",
                           "--embedding-size", "8", "--hidden-size", "32", "--lr", "1e-2",
                           "--sample-length", "20", "--device", "cpu"])
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.3, losses
    printed = capsys.readouterr().out
    for epoch in range(1, 5):
        assert f"epoch {epoch}: loss" in printed


def test_default_text_exists(char_lm):
    assert pathlib.Path(char_lm.default_text_path()).stat().st_size > 10_000


def test_help_describes_every_option_and_its_default(char_lm, capsys):
    """--help: each argument (the positional text too) has a description and its default."""
    with pytest.raises(SystemExit):
        char_lm.parse_args(["--help"])
    helps = option_helps(capsys.readouterr().out)
    assert len(helps) == 16, helps
    undescribed = [name for name, text in helps.items()
                   if "(default: " not in text or not text.split("(default: ")[0].strip()]
    assert not undescribed, helps
