"""Recurrent actor-critic on "recall the cue": episode starts passed to the LSTM as ``resets``.

    python examples/rl_recall.py                     # under a minute on a CPU
    python examples/rl_recall.py --backend reference # the same run, about two minutes
    python examples/rl_recall.py --device cuda --envs 256

Each of ``--envs`` environments plays short episodes back to back. At an episode's first step
the observation shows one of ``--cues`` cues (one-hot); then come blank (slightly noisy)
steps, a random number of them, and at the last step a query flag asks for an action: reward 1
if it names the cue, else 0 (no other rewards). An agent without memory succeeds with
probability 1 / cues; this one has a ``fastrnn.LayerNormLSTM`` (layer norm, zoneout, a learned
initial state) and learns to carry the cue to the query.

The agent is trained by advantage actor-critic (A2C, with generalized advantage estimation)
on rollouts of ``--rollout`` steps that cross episode boundaries, TorchRL style: the rollout
records ``is_init`` (True at every episode's first step), and the LSTM reads it as ``resets``
(``batch_first=True``: a [B, T] bool), both when acting step by step and when the update
re-runs the policy over the whole rollout (truncated backpropagation through time over the
rollout). At a reset the row's state becomes the learned initial state and no gradient crosses
it; between rollouts the state is carried over, detached. The agent acts in eval mode
(zoneout's expectation) and the update runs in training mode (zoneout sampled).

Prints the success rate (the mean return of the episodes that ended in the last updates) every
``--print-every`` updates, returns the per-update success rates from ``main`` and plots them to
``--plot``. With the defaults the success rate climbs from chance (0.25) to about 0.99 in 60
updates.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

import fastrnn


def resets_from_is_init(is_init: Union[Tensor, Mapping[str, Tensor]],
                        batch_first: bool = True) -> Tensor:
    """TorchRL's ``is_init`` flags -> fastrnn's ``resets``.

    TorchRL's ``InitTracker`` transform writes ``is_init`` (True at the first step of every
    episode) into the rollout's TensorDict with shape [B, T, 1]: batch first, with a trailing
    singleton feature axis. fastrnn's ``resets`` has the input's leading dimensions and no
    feature axis: [B, T] with ``batch_first=True``, [T, B] without. So::

        resets = td["is_init"].squeeze(-1)            # [B, T], for batch_first=True
        resets = td["is_init"].squeeze(-1).t()        # [T, B], for batch_first=False

    ``is_init`` may be given as the tensor or as the TensorDict (anything with
    ``["is_init"]``). A rollout that starts in the middle of an episode has ``is_init`` False
    at its first step, and the row continues from the ``hx`` carried over from the previous
    rollout; a row with ``is_init`` True at step 0 ignores its ``hx``.
    """
    if not isinstance(is_init, Tensor):
        is_init = is_init["is_init"]
    if is_init.dim() == 3 and is_init.shape[-1] == 1:
        is_init = is_init.squeeze(-1)
    if is_init.dim() != 2:
        raise ValueError(f"is_init: expected [B, T, 1] or [B, T], got {tuple(is_init.shape)}")
    resets = is_init.bool()
    return resets if batch_first else resets.t()


class RecallEnv:
    """B environments of "recall the cue", stepped together (tensors on ``device``).

    Observation features: ``cues`` one-hot cue (at an episode's first step only), a query flag
    (at its last step only) and Gaussian noise of scale ``noise`` on every feature. Episodes
    last ``min_length`` to ``max_length`` steps (uniform); the action at the last step earns 1
    if it equals the cue. After the last step the next episode starts at once.
    """

    def __init__(self, batch: int, cues: int, min_length: int, max_length: int, noise: float,
                 generator: torch.Generator, device):
        if not 2 <= min_length <= max_length:
            raise ValueError("episode lengths: need 2 <= min_length <= max_length")
        self.batch, self.cues, self.noise = batch, cues, noise
        self.min_length, self.max_length = min_length, max_length
        self.generator, self.device = generator, device
        self.cue = torch.zeros(batch, dtype=torch.long)
        self.length = torch.zeros(batch, dtype=torch.long)
        self.step_index = torch.zeros(batch, dtype=torch.long)
        self._new_episodes(torch.ones(batch, dtype=torch.bool))

    @property
    def observation_size(self) -> int:
        return self.cues + 1

    def _new_episodes(self, rows: Tensor) -> None:
        count = int(rows.sum())
        self.cue[rows] = torch.randint(self.cues, (count,), generator=self.generator)
        self.length[rows] = torch.randint(self.min_length, self.max_length + 1, (count,),
                                          generator=self.generator)
        self.step_index[rows] = 0

    def observe(self) -> Tuple[Tensor, Tensor]:
        """(observation [B, cues + 1], is_init [B] bool) of the current step."""
        first = self.step_index == 0
        obs = torch.zeros(self.batch, self.observation_size)
        obs[first, self.cue[first]] = 1.0
        obs[:, self.cues] = (self.step_index == self.length - 1).float()
        if self.noise > 0:
            obs += self.noise * torch.randn(obs.shape, generator=self.generator)
        return obs.to(self.device), first.to(self.device)

    def step(self, action: Tensor) -> Tuple[Tensor, Tensor]:
        """Acts; returns (reward [B], done [B]) and moves on (a done row starts a new episode)."""
        action = action.cpu()
        done = self.step_index == self.length - 1
        reward = (done & (action == self.cue)).float()
        self.step_index += 1
        self._new_episodes(done)
        return reward.to(self.device), done.to(self.device)


class Agent(nn.Module):
    """obs -> LayerNormLSTM (zoneout, learned initial state, batch first) -> policy and value."""

    def __init__(self, observation_size: int, actions: int, hidden_size: int, zoneout: float,
                 backend: str):
        super().__init__()
        self.rnn = fastrnn.LayerNormLSTM(observation_size, hidden_size, batch_first=True,
                                         zoneout_cell=zoneout, zoneout_hidden=zoneout,
                                         learn_initial_state=True, backend=backend)
        self.policy = nn.Linear(hidden_size, actions)
        self.value = nn.Linear(hidden_size, 1)

    def forward(self, obs: Tensor, state, resets: Tensor):
        """obs [B, T, F], resets [B, T] -> (logits [B, T, A], values [B, T], state)."""
        out, state = self.rnn(obs, state, resets=resets)
        return self.policy(out), self.value(out).squeeze(-1), state


def detach(state):
    return None if state is None else tuple(s.detach() for s in state)


@torch.no_grad()
def collect(agent: Agent, env: RecallEnv, state, steps: int):
    """Acts for ``steps`` steps, one LSTM call per step with that step's ``resets``.

    Returns the rollout (a dict of [B, T] tensors: obs [B, T, F], is_init, action, reward,
    done, value), the bootstrap value of the step after it, the state at its start (what the
    update re-runs from) and the state at its end (carried into the next rollout).
    """
    start_state = state
    agent.eval()                 # act with zoneout's expectation; the update trains with it
    rollout = {key: [] for key in ("obs", "is_init", "action", "reward", "done", "value")}
    for _ in range(steps):
        obs, is_init = env.observe()
        logits, value, state = agent(obs[:, None], state, resets=is_init[:, None])
        action = torch.distributions.Categorical(logits=logits[:, 0]).sample()
        reward, done = env.step(action)
        for key, item in zip(rollout, (obs, is_init, action, reward, done, value[:, 0])):
            rollout[key].append(item)
    obs, is_init = env.observe()
    _, next_value, _ = agent(obs[:, None], state, resets=is_init[:, None])
    rollout = {key: torch.stack(items, dim=1) for key, items in rollout.items()}
    return rollout, next_value[:, 0], start_state, state


def advantages(reward: Tensor, done: Tensor, value: Tensor, next_value: Tensor, gamma: float,
               lam: float) -> Tuple[Tensor, Tensor]:
    """Generalized advantage estimation over [B, T]; ``done`` cuts the bootstrap."""
    steps = reward.shape[1]
    advantage = torch.zeros_like(reward)
    running = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else value[:, t + 1]
        alive = 1.0 - done[:, t].float()
        delta = reward[:, t] + gamma * following * alive - value[:, t]
        running = delta + gamma * lam * alive * running
        advantage[:, t] = running
    return advantage, advantage + value


def update(agent: Agent, optimizer, rollout, next_value: Tensor, start_state, args) -> float:
    """One A2C step: re-runs the policy over the rollout with ``resets`` (zoneout on)."""
    advantage, returns = advantages(rollout["reward"], rollout["done"], rollout["value"],
                                    next_value, args.gamma, args.lam)
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    agent.train()
    resets = resets_from_is_init(rollout["is_init"][..., None], batch_first=True)
    logits, values, _ = agent(rollout["obs"], start_state, resets=resets)
    dist = torch.distributions.Categorical(logits=logits)
    policy_loss = -(dist.log_prob(rollout["action"]) * advantage).mean()
    value_loss = 0.5 * (returns - values).square().mean()
    loss = policy_loss + args.value_coef * value_loss - args.entropy_coef * dist.entropy().mean()
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.clip)
    optimizer.step()
    return loss.item()


def plot(path: str, rates: List[float], chance: float) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(rates) + 1), rates, label="LayerNormLSTM agent")
    ax.axhline(chance, color="gray", linestyle="--", label="without memory (1 / cues)")
    ax.set_xlabel("update")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.set_title("Recall the cue: episode starts as resets")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def parse_args(argv: Optional[List[str]]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--updates", type=int, default=60, help="A2C updates (one per rollout)")
    parser.add_argument("--envs", type=int, default=64,
                        help="environments stepped in parallel (the batch B)")
    parser.add_argument("--rollout", type=int, default=64,
                        help="steps per rollout (T; episodes cross its boundaries)")
    parser.add_argument("--cues", type=int, default=4,
                        help="number of cues and actions (chance success is 1 / cues)")
    parser.add_argument("--min-length", type=int, default=4, help="shortest episode, in steps")
    parser.add_argument("--max-length", type=int, default=12, help="longest episode, in steps")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="scale of the Gaussian noise on every observation feature")
    parser.add_argument("--hidden-size", type=int, default=64, help="LSTM hidden size")
    parser.add_argument("--zoneout", type=float, default=0.05,
                        help="zoneout probability of the cell and the hidden state")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    parser.add_argument("--lam", type=float, default=0.95,
                        help="lambda of generalized advantage estimation")
    parser.add_argument("--value-coef", type=float, default=0.5, help="weight of the value loss")
    parser.add_argument("--entropy-coef", type=float, default=0.01,
                        help="weight of the entropy bonus")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="gradient norm clipped to this value")
    parser.add_argument("--print-every", type=int, default=10,
                        help="print a line every N updates (0: never)")
    parser.add_argument("--plot", default="rl_recall.png",
                        help="where to save the success-rate plot (empty: no plot)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (the default is cuda when there is a GPU)")
    parser.add_argument("--backend", default="auto", choices=fastrnn.backends.CHOICES,
                        help="fastrnn backend of the LSTM (docs/api.md, \"Backends\")")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of torch and of the environments")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); one is fastest for these "
                        "small matrices, above all on a busy machine")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[float]:
    """Trains; returns the success rate (mean episode return) of every update's rollout."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    env = RecallEnv(args.envs, args.cues, args.min_length, args.max_length, args.noise,
                    torch.Generator().manual_seed(args.seed), device)
    agent = Agent(env.observation_size, args.cues, args.hidden_size, args.zoneout,
                  args.backend).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.lr)
    backend = fastrnn.backends.resolve(
        args.backend, device, torch.float32,
        fastrnn.backends.Request(cell="lstm", features=frozenset({"resets"})))
    chance = 1.0 / args.cues
    print(f"{args.envs} envs x {args.rollout} steps per rollout, {args.cues} cues (chance "
          f"{chance:.2f}), episodes of {args.min_length}-{args.max_length} steps, "
          f"{agent.rnn}, backend {backend}, device {device}", flush=True)
    state, rates, begin = None, [], time.perf_counter()
    for number in range(1, args.updates + 1):
        rollout, next_value, start_state, state = collect(agent, env, state, args.rollout)
        state = detach(state)
        loss = update(agent, optimizer, rollout, next_value, start_state, args)
        episodes = rollout["done"].sum().item()
        rates.append(rollout["reward"].sum().item() / max(episodes, 1))
        if args.print_every and number % args.print_every == 0:
            recent = rates[-args.print_every:]
            print(f"update {number}: success {sum(recent) / len(recent):.3f} over the last "
                  f"{len(recent)} updates (chance {chance:.2f}), loss {loss:.3f}, "
                  f"{time.perf_counter() - begin:.0f} s", flush=True)
    if args.plot:
        plot(args.plot, rates, chance)
    return rates


if __name__ == "__main__":
    main(sys.argv[1:])
