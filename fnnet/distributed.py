"""Data-parallel training over ``torch.distributed``: a thin layer, no communication of our own.

Launch with ``torchrun --nproc_per_node N script.py`` (several machines: ``torchrun --nnodes M
--node_rank R --rdzv_endpoint HOST:PORT ...``). Every rank runs the same pure step on its slice
of the global batch; gradients are averaged in one bucketed collective, so the parameters
follow exactly the trajectory of one process stepping on the whole global batch::

    device = dist.init()                                  # gloo on CPU, NCCL on GPU
    params = dist.broadcast(model.init(key))              # every rank starts from rank 0's
    grad_fn = fn.jit(fn.value_and_grad(loss_fn))          # compiled, communication-free
    update = fn.jit(lambda g, s, p: opt.update(g, s, p))
    for idx in dist.shard_batches(random.fold_in(key, epoch), n, batch_size):
        loss, grads = grad_fn(params, x[idx], y[idx])
        grads = dist.all_reduce_mean(grads)               # one all_reduce per dtype
        updates, opt_state = update(grads, opt_state, params)
        params = optim.apply_updates(params, updates)

The collective sits between two compiled functions rather than inside one graph: c10d
collectives are not traceable under ``fullgraph=True`` on every supported torch.

Randomness: keys that must agree (init, shuffling) are used as they are on every rank;
keys that must differ (dropout) go through :func:`rank_key`. BatchNorm running statistics
are local to each rank during a step (each normalizes with its own batch statistics, as
``nn.BatchNorm`` under DDP does); average them with ``all_reduce_mean(state)`` before
evaluating or saving, which keeps every rank's state identical.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any
from collections.abc import Iterator

import torch
import torch.distributed as dist

from . import random
from . import tree as T

__all__ = ["launched", "init", "shutdown", "is_initialized", "rank", "world_size", "is_main", "device",
           "broadcast", "all_reduce_mean", "rank_key", "shard_batches", "DistributedError"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A set-up problem: no launcher environment, or ranks that disagree on a tree."""


def launched() -> bool:
    """True when this process was started by torchrun (its environment is set), so a script
    can run data-parallel under torchrun and as a single process otherwise."""
    return all(v in os.environ for v in _ENV)


def init(backend: str | None = None, timeout: float = 300.0) -> torch.device:
    """Join the process group described by torchrun's environment; returns this rank's device.

    ``backend`` defaults to NCCL when CUDA is available, else gloo. ``timeout`` (seconds)
    bounds every collective, so a rank that never arrives ends in an error, not a hang.
    """
    missing = [v for v in _ENV if v not in os.environ]
    if missing:
        raise DistributedError(
            f"fnnet.distributed.init: no torchrun environment ({', '.join(missing)} not set); "
            "launch with `torchrun --nproc_per_node N your_script.py ...`")
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    dev = torch.device("cpu")
    if backend == "nccl":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return dev


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """The device collectives run on: CUDA for NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _signature(tree: Any) -> torch.Tensor:
    """A 64-bit digest of the tree's paths, shapes and dtypes, as a 1-element int64 tensor."""
    desc = ";".join(f"{p}:{tuple(x.shape)}:{x.dtype}" for p, x in T.flatten_with_paths(tree))
    digest = int.from_bytes(hashlib.sha256(desc.encode()).digest()[:8], "little", signed=True)
    return torch.tensor([digest, -digest], dtype=torch.int64, device=device())


def _check_same_structure(tree: Any, who: str) -> None:
    """Every rank's tree must have the same paths, shapes and dtypes (one small all_reduce of
    the digest and its negation: max == -(max of negation) iff all ranks agree)."""
    sig = _signature(tree)
    agree = sig.clone()
    dist.all_reduce(agree, op=dist.ReduceOp.MAX)
    if agree[0] != sig[0] or agree[1] != -agree[0]:
        raise DistributedError(
            f"fnnet.distributed.{who}: rank {rank()}'s tree differs from another rank's "
            f"(paths, shapes or dtypes); this rank has {len(T.leaves(tree))} leaves: "
            f"{[p for p in T.paths(tree)][:8]}...")


def _buckets(leaves: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Leaf indices grouped by (dtype, device): one flat buffer, one collective per group."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(leaves):
        groups.setdefault((x.dtype, x.device), []).append(i)
    return groups


def _collective(tree: Any, op) -> Any:
    flat, spec = T.flatten(tree)
    out = list(flat)
    for idx in _buckets(flat).values():
        xs = [flat[i] for i in idx]
        buf = torch.cat([x.reshape(-1) for x in xs]).to(device())  # a copy: inputs are never mutated
        op(buf)
        for i, y in zip(idx, buf.split([x.numel() for x in xs])):
            out[i] = y.view(flat[i].shape).to(flat[i].device)
    return T.unflatten(spec, out)


def broadcast(tree: Any, src: int = 0) -> Any:
    """Rank ``src``'s tree on every rank (params at start-up). Checks first that all ranks hold
    trees of the same structure, and raises :class:`DistributedError` on every rank if not."""
    if not is_initialized():
        return tree
    _check_same_structure(tree, "broadcast")
    return _collective(tree, lambda buf: dist.broadcast(buf, src))


def all_reduce_mean(tree: Any) -> Any:
    """The mean over ranks of a tree (gradients, BatchNorm statistics), in one ``all_reduce`` per
    (dtype, device) group: the leaves are flattened into one buffer, not sent one by one.
    Integer leaves (step counters) are averaged with floor division."""
    if not is_initialized():
        return tree
    n = world_size()

    def mean(buf: torch.Tensor) -> None:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf.is_floating_point():
            buf.div_(n)
        else:
            buf.floor_divide_(n)

    return _collective(tree, mean)


def rank_key(key: torch.Tensor) -> torch.Tensor:
    """A key of this rank's own (dropout, noise): ``fold_in(key, rank)``."""
    return random.fold_in(key, rank())


def shard_batches(key: torch.Tensor, n: int, batch_size: int, *, drop_last: bool = True
                  ) -> Iterator[torch.Tensor]:
    """This rank's index batches of one key-shuffled epoch over ``n`` examples.

    All ranks draw the same permutation from ``key``; each global batch holds
    ``batch_size * world_size`` indices and rank ``r`` gets its ``r``-th slice of
    ``batch_size``. So the mean over ranks of per-rank mean gradients is the gradient of
    the global batch. ``drop_last`` drops the final short global batch, keeping the
    slices equal in size (which the equivalence needs).
    """
    w, r = world_size(), rank()
    global_bs = batch_size * w
    perm = random.permutation(key, n)
    stop = (n // global_bs) * global_bs if drop_last else n
    for start in range(0, stop, global_bs):
        g = perm[start:start + global_bs]
        yield g[r * batch_size:(r + 1) * batch_size]
