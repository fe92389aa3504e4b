"""Data-parallel training on 2 CPU processes (gloo) gives the parameters of one process
stepping on the global batch; set-up mistakes end in errors, not hangs."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import fnnet as fn
from fnnet import distributed as dist
from fnnet import random

STEPS, N, BATCH = 10, 64, 8
MODEL = fn.Sequential(fn.Linear(3, 16), fn.tanh, fn.Linear(16, 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _data():
    kx, ky = random.split(random.key(1))
    x = random.normal(kx, (N, 3), torch.float64)
    return x, torch.sin(x.sum(1, keepdim=True)) + 0.1 * random.normal(ky, (N, 1), torch.float64)


def _train(batch_size: int, count_collectives: bool = False):
    """The training loop every rank runs; in a single process it is the reference."""
    key = random.key(0)
    # each rank draws different initial params: broadcast must make them rank 0's
    params = fn.tree.astype(MODEL.init(random.fold_in(key, dist.rank())), torch.float64)
    params = dist.broadcast(params)
    x, y = _data()

    def loss_fn(p, x, y):
        return ((MODEL.apply(p, x) - y) ** 2).mean()

    grad_fn = fn.value_and_grad(loss_fn)
    calls, step, epoch = [], 0, 0
    if count_collectives:
        real = torch.distributed.all_reduce
        torch.distributed.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        while step < STEPS:
            for idx in dist.shard_batches(random.fold_in(key, epoch), N, batch_size):
                _, grads = grad_fn(params, x[idx], y[idx])
                before = len(calls)
                grads = dist.all_reduce_mean(grads)
                if count_collectives:
                    assert len(calls) - before == 1, "one bucketed all_reduce per step"
                params = fn.tree.map(lambda p, g: p - 0.1 * g, params, grads)
                step += 1
                if step == STEPS:
                    break
            epoch += 1
    finally:
        if count_collectives:
            torch.distributed.all_reduce = real
    return params


def _worker(rank: int, world: int, port: int, out: str) -> None:
    _env(rank, world, port)
    dist.init(timeout=60)
    try:
        params = _train(BATCH, count_collectives=True)
        torch.save(params, os.path.join(out, f"rank{rank}.pt"))
        mismatched = {"w": torch.zeros(2 + rank)}
        try:
            dist.broadcast(mismatched)
            outcome = "no error"
        except dist.DistributedError as e:
            outcome = str(e)
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        dist.shutdown()


def test_two_gloo_processes_follow_the_single_process_trajectory(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference = _train(BATCH * 2)  # one process, the concatenated global batch
    for path, p0 in fn.tree.flatten_with_paths(ranks[0]):
        p1 = dict(fn.tree.flatten_with_paths(ranks[1]))[path]
        ref = dict(fn.tree.flatten_with_paths(reference))[path]
        assert torch.equal(p0, p1), f"ranks disagree on {path}"
        torch.testing.assert_close(p0, ref, rtol=1e-12, atol=1e-12)
    assert not torch.equal(reference["0"]["weight"], MODEL.init(random.key(0))["0"]["weight"].double())
    for r in (0, 1):
        msg = (tmp_path / f"rank{r}.txt").read_text()
        assert "differs from another rank" in msg, msg


def test_init_without_torchrun_environment_says_how_to_launch(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    assert not dist.launched()
    with pytest.raises(dist.DistributedError, match="torchrun"):
        dist.init()


def _lonely_worker(rank: int, port: int, out: str) -> None:
    _env(0, 2, port)  # a world of 2 in which the second rank never comes
    try:
        dist.init(timeout=3)
        outcome = "joined"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, "lonely.txt"), "w") as f:
        f.write(outcome)


def test_a_missing_rank_times_out_instead_of_hanging(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_lonely_worker, args=(0, _free_port(), str(tmp_path)))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "init hung past its timeout"
    outcome = (tmp_path / "lonely.txt").read_text()
    assert outcome != "joined" and outcome, outcome


def test_without_a_process_group_everything_is_the_identity():
    tree = {"a": torch.ones(3)}
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    assert dist.broadcast(tree) is tree and dist.all_reduce_mean(tree) is tree
    batches = list(dist.shard_batches(random.key(0), 10, 3))
    assert len(batches) == 3 and len(torch.cat(batches).unique()) == 9


def test_the_digits_example_runs_data_parallel_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 -m examples digits_mlp` trains on two gloo processes and the
    main rank alone prints the held-out accuracy."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "examples", "digits_mlp", "--steps", "20", "--no-compile",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("held-out accuracy") == 1 and "processes: 2" in proc.stdout, proc.stdout
