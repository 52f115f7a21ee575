"""DistributedDataParallel over fastrnn layers: two CPU processes (gloo) each take half of a
batch; their averaged gradients equal the gradients of one process over the whole batch."""
from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastrnn

WORLD_SIZE = 2


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LayerNormLSTM(3, 6, num_layers=2, bidirectional=True,
                                          dtype=torch.float64)
        self.gru = fastrnn.GRU(12, 5, learn_initial_state=True, dtype=torch.float64)
        self.head = nn.Linear(5, 2, dtype=torch.float64)

    def forward(self, x, lengths):
        y, _ = self.lstm(x, lengths=lengths)
        z, _ = self.gru(y, lengths=lengths)
        return self.head(z)


def make_model_and_batch():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(7, 2 * WORLD_SIZE, 3, dtype=torch.float64)
    targets = torch.randn(7, 2 * WORLD_SIZE, 2, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 6])
    return model, x, targets, lengths


def loss_of(model, x, targets, lengths):
    return (model(x, lengths) - targets).square().mean()


# A hung collective must fail the test, not the whole CI run.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
TEST_TIMEOUT_S = 300


def worker(rank, store_path, result_path):
    torch.set_num_threads(1)  # two processes on a 2-core machine
    # A file store, not a TCP port: no race for a free port between the test and the workers.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD_SIZE, timeout=COLLECTIVE_TIMEOUT)
    try:
        torch.save(shard_gradients(rank), f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


def shard_gradients(rank):
    """This rank's gradients after one DDP step on its half of the batch.  The DDP wrapper dies
    when this returns, before the process group is destroyed: freed after it, its reducer at
    times hung the worker's exit."""
    model, x, targets, lengths = make_model_and_batch()
    ddp = nn.parallel.DistributedDataParallel(model)
    shard = slice(2 * rank, 2 * rank + 2)
    loss_of(ddp, x[:, shard], targets[:, shard], lengths[shard]).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_ddp_gradients_equal_single_process(tmp_path, monkeypatch):
    # Both workers run on this machine: gloo's default interface can be one whose address the
    # machine cannot connect to (seen in a sandbox: the rendezvous then hangs), loopback always
    # works.  The spawned workers inherit the variable.
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    result_path = str(tmp_path / "grads")
    workers = mp.spawn(worker, args=(str(tmp_path / "store"), result_path), nprocs=WORLD_SIZE,
                       join=False)
    deadline = time.monotonic() + TEST_TIMEOUT_S
    while not workers.join(timeout=5):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the DDP workers did not finish within {TEST_TIMEOUT_S} s")
    model, x, targets, lengths = make_model_and_batch()
    # equal shards: the mean over the batch is the mean of the shard means, which DDP's
    # gradient averaging differentiates
    loss_of(model, x, targets, lengths).backward()
    for rank in range(WORLD_SIZE):
        got = torch.load(f"{result_path}.{rank}")
        assert set(got) == {name for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
