"""Character-level language model: embedding -> LayerNormLSTM with zoneout and recurrent
dropout -> linear, trained with truncated backpropagation through time.

    python examples/char_lm.py                      # on the source of Python's argparse module
    python examples/char_lm.py my.txt --epochs 5 --device cuda --backend triton

Prints the mean training loss (nats per character) of every epoch and a short sample.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn

import fastrnn

try:
    from tqdm import tqdm
except ImportError:             # the per-epoch line is printed either way
    tqdm = None


def default_text_path() -> str:
    return argparse.__file__


class Vocabulary:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                 zoneout: float, recurrent_dropout: float, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.rnn = fastrnn.LayerNormLSTM(embedding_size, hidden_size, num_layers,
                                         zoneout_cell=zoneout, zoneout_hidden=zoneout,
                                         recurrent_dropout=recurrent_dropout, backend=backend)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state


def streams(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, B]: the text cut into B contiguous streams, read in parallel (state carries over)."""
    length = len(ids) // batch_size
    return ids[:length * batch_size].view(batch_size, length).t()


def windows(data: torch.Tensor, seq_len: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(input [T, B], target [T, B]) windows of the streams, targets shifted by one."""
    for start in range(0, data.shape[0] - 1, seq_len):
        end = min(start + seq_len, data.shape[0] - 1)
        yield data[start:end], data[start + 1:end + 1]


def detach(state):
    return tuple(s.detach() for s in state)


def train_epoch(model: CharLM, data: torch.Tensor, optimizer, seq_len: int, clip: float,
                description: str) -> float:
    model.train()
    batches = list(windows(data, seq_len))
    progress = tqdm(batches, desc=description, leave=False) if tqdm is not None else batches
    state, total, count = None, 0.0, 0
    for inputs, targets in progress:
        logits, state = model(inputs, state)
        state = detach(state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += loss.item() * targets.numel()
        count += targets.numel()
        if tqdm is not None:
            progress.set_postfix(loss=f"{loss.item():.3f}")
    return total / count


@torch.no_grad()
def sample(model: CharLM, vocab: Vocabulary, prompt: str, length: int, device) -> str:
    model.eval()
    ids = vocab.encode(prompt).to(device).unsqueeze(1)
    logits, state = model(ids)
    generated = []
    for _ in range(length):
        next_id = torch.multinomial(logits[-1, 0].softmax(-1), 1)
        generated.append(int(next_id))
        logits, state = model(next_id.view(1, 1), state)
    return prompt + vocab.decode(generated)


def parse_args(argv: Optional[List[str]]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("text", nargs="?", default=default_text_path(),
                        help="text file to model (the default is the source of Python's "
                        "argparse module)")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the text")
    parser.add_argument("--seq-len", type=int, default=64,
                        help="time steps per window of truncated backpropagation through time")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="contiguous streams of the text read in parallel")
    parser.add_argument("--embedding-size", type=int, default=32,
                        help="size of the character embedding (the LSTM's input size)")
    parser.add_argument("--hidden-size", type=int, default=128, help="LSTM hidden size")
    parser.add_argument("--num-layers", type=int, default=1, help="stacked LSTM layers")
    parser.add_argument("--zoneout", type=float, default=0.1,
                        help="zoneout probability of the cell and the hidden state")
    parser.add_argument("--recurrent-dropout", type=float, default=0.1,
                        help="dropout probability of the h that W_hh reads")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="gradient norm clipped to this value")
    parser.add_argument("--max-chars", type=int, default=60_000,
                        help="train on the first N characters (keeps a CPU epoch short)")
    parser.add_argument("--sample-length", type=int, default=200,
                        help="characters to sample after training (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (the default is cuda when there is a GPU)")
    parser.add_argument("--backend", default="auto", choices=fastrnn.backends.CHOICES,
                        help="fastrnn backend of the LSTM (docs/api.md, \"Backends\")")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the run")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[float]:
    """Trains and returns the mean loss of every epoch."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    with open(args.text, encoding="utf-8", errors="replace") as f:
        text = f.read()[:args.max_chars]
    vocab = Vocabulary(text)
    data = streams(vocab.encode(text), args.batch_size).to(args.device)
    model = CharLM(len(vocab), args.embedding_size, args.hidden_size, args.num_layers,
                   args.zoneout, args.recurrent_dropout, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{len(text)} characters, vocabulary {len(vocab)}, {model.rnn}, "
          f"device {args.device}")
    losses = []
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, data, optimizer, args.seq_len, args.clip,
                           f"epoch {epoch}/{args.epochs}")
        losses.append(loss)
        print(f"epoch {epoch}: loss {loss:.4f} nats/char ({loss / math.log(2):.3f} bits/char)",
              flush=True)
    if args.sample_length > 0:
        print(sample(model, vocab, text[0], args.sample_length, args.device))
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
