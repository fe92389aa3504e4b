"""Data-parallel step time at 1 and 2 gloo processes on this machine (an MLP on a digits-sized
batch): the all_reduce of one bucketed gradient buffer against the compute it splits."""

from __future__ import annotations

import os
import socket
import tempfile
import time

import torch
import torch.multiprocessing as mp

import fnnet as fn
from fnnet import distributed as dist
from fnnet import random

from .common import row

GLOBAL_BATCH = 512


def _step_times(rank: int, world: int, port: int, steps: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init(timeout=120)
    model = fn.Sequential(fn.Linear(784, 512), fn.relu, fn.Linear(512, 512), fn.relu, fn.Linear(512, 10))
    params = dist.broadcast(model.init(random.key(0)))
    x = random.normal(random.key(1), (GLOBAL_BATCH, 784))
    y = random.randint(random.key(2), (GLOBAL_BATCH,), 0, 10)

    def loss_fn(p, x, y):
        return torch.nn.functional.cross_entropy(model.apply(p, x), y)

    grad_fn = fn.value_and_grad(loss_fn)
    per_rank = GLOBAL_BATCH // world
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        _, g = grad_fn(params, x[sl], y[sl])
        g = dist.all_reduce_mean(g)
        params = fn.tree.map(lambda p, g: p - 0.01 * g, params, g)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        times = sorted(times[3:])
        with open(out, "w") as f:
            f.write(str(times[len(times) // 2] * 1e3))
    dist.shutdown()


def _run(world: int, steps: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ms")
        mp.spawn(_step_times, args=(world, port, steps, out), nprocs=world, join=True)
        return float(open(out).read())


def run(quick: bool = False) -> list[dict]:
    steps = 10 if quick else 40
    one = _run(1, steps)
    two = _run(2, steps)
    case = f"MLP 784-512-512-10, global batch {GLOBAL_BATCH}, fwd+bwd+allreduce+SGD"
    return [row("distributed", case, "1 process", one, one),
            row("distributed", case, "2 processes (gloo)", two, one)]
