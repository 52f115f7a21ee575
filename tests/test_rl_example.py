"""examples/rl_recall.py: episode starts reach the LSTM as ``resets``, and the agent learns to
recall a cue (above the 1 / cues a memoryless agent gets)."""
from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest

from support import option_helps
import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rl_recall.py"
# A tiny setting: 2 cues (chance 0.5), episodes of 2-4 steps, 16-step rollouts.
TINY = ["--cues", "2", "--min-length", "2", "--max-length", "4", "--envs", "32",
        "--rollout", "16", "--hidden-size", "16", "--lr", "1e-2", "--print-every", "5",
        "--device", "cpu", "--plot", ""]


@pytest.fixture(scope="module")
def rl_recall():
    spec = importlib.util.spec_from_file_location("rl_recall", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()   # main() sets torch's thread count (--threads)
    yield
    torch.set_num_threads(threads)


def test_the_agent_learns_to_recall_the_cue(rl_recall, capsys):
    """30 updates of the tiny setting on the reference backend (deterministic for the seed):
    the last 5 rollouts' success rate is far above chance (0.5); measured 0.98 and 0.99 for
    seeds 0 and 1."""
    rates = rl_recall.main(TINY + ["--updates", "30", "--backend", "reference", "--seed", "0"])
    assert len(rates) == 30 and all(0.0 <= r <= 1.0 for r in rates), rates
    assert sum(rates[-5:]) / 5 > 0.8, rates
    assert sum(rates[:5]) / 5 < 0.7, rates   # it starts near chance: the success is learned
    printed = capsys.readouterr().out
    for update in (5, 10, 30):
        assert f"update {update}: success" in printed


def test_auto_backend_runs(rl_recall, tmp_path):
    """The default backend ("auto": the fused "cpu" backend where it runs resets) trains a few
    updates to finite numbers and writes the plot."""
    plot = tmp_path / "rl.png"
    rates = rl_recall.main(TINY[:-1] + [str(plot), "--updates", "3"])
    assert len(rates) == 3 and all(math.isfinite(r) for r in rates)
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0


def test_is_init_marks_every_episode_start_and_reaches_the_lstm(rl_recall):
    """A rollout's is_init is True exactly at each episode's first step (the step after a done,
    and the very first step); the update's LSTM call gets it as resets [B, T]."""
    torch.manual_seed(0)
    env = rl_recall.RecallEnv(6, 3, 2, 5, 0.0, torch.Generator().manual_seed(1), "cpu")
    agent = rl_recall.Agent(env.observation_size, 3, 8, 0.1, "reference")
    rollout, next_value, start, state = rl_recall.collect(agent, env, None, 20)
    is_init, done, obs = rollout["is_init"], rollout["done"], rollout["obs"]
    assert is_init.shape == done.shape == (6, 20) and is_init.dtype == torch.bool
    assert is_init[:, 0].all() and start is None
    assert torch.equal(is_init[:, 1:], done[:, :-1])
    assert done.any(dim=1).all() and is_init[:, 1:].any(dim=1).all()
    # The cue is visible at the episode starts only, the query flag at the last steps only.
    assert torch.equal(obs[..., :3].sum(-1) > 0.5, is_init)
    assert torch.equal(obs[..., 3] > 0.5, done)

    seen = []
    agent.rnn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("resets")), with_kwargs=True)
    args = rl_recall.parse_args(["--backend", "reference"])
    rl_recall.update(agent, torch.optim.Adam(agent.parameters()), rollout, next_value, start,
                     args)
    assert len(seen) == 1 and torch.equal(seen[0], is_init)


def test_resets_from_is_init(rl_recall):
    is_init = torch.zeros(3, 5, 1, dtype=torch.bool)   # TorchRL: [B, T, 1]
    is_init[0, 0] = is_init[1, 3] = True
    resets = rl_recall.resets_from_is_init({"is_init": is_init})
    assert resets.shape == (3, 5) and resets.dtype == torch.bool
    assert torch.equal(resets, is_init[..., 0])
    time_first = rl_recall.resets_from_is_init(is_init, batch_first=False)
    assert torch.equal(time_first, is_init[..., 0].t())
    with pytest.raises(ValueError):
        rl_recall.resets_from_is_init(torch.zeros(3, 5, 2, dtype=torch.bool))


def test_help_describes_every_option_and_its_default(rl_recall, capsys):
    """--help: each option has a description and its default."""
    with pytest.raises(SystemExit):
        rl_recall.parse_args(["--help"])
    helps = option_helps(capsys.readouterr().out)
    for option in ("--device", "--backend", "--updates", "--seed", "--plot", "--envs",
                   "--rollout"):
        assert any(name.startswith(option + " ") for name in helps), (option, helps)
    assert len(helps) == 21, helps
    undescribed = [name for name, text in helps.items()
                   if "(default: " not in text or not text.split("(default: ")[0].strip()]
    assert not undescribed, helps
