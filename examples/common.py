"""The few things every example shares: a device, a compiled step, a shuffled batch stream
keyed like everything else, a progress bar, plots, and the closing printout."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any
from collections.abc import Callable, Iterator

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import fnnet as fn
from fnnet import random

__all__ = ["ExampleError", "StepTimer", "batches", "compile_step", "compiles", "device", "finite", "out_dir",
           "plt", "progress", "report", "save"]


class ExampleError(RuntimeError):
    """A problem the user can fix (bad argument, missing data package): the CLI prints its
    message on one line and exits with status 2."""


def device(name: str | torch.device = "cpu") -> torch.device:
    """``"cpu"`` or ``"cuda"`` (``"cuda:1"``...), checked: asking for a GPU that is not there
    is an :class:`ExampleError`, not a traceback from deep inside torch."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ExampleError(f"unknown device {name!r}: use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExampleError(f"--device {name}: torch sees no CUDA GPU here "
                           f"(torch {torch.__version__} built {'with' if torch.version.cuda else 'without'} CUDA)")
    if dev.type not in ("cpu", "cuda"):
        raise ExampleError(f"unsupported device {name!r}: use cpu or cuda")
    return dev


def compile_step(step: Callable, compile: bool | str | Callable | None = True,
                 default: bool = True) -> Callable:
    """The train step, compiled with ``fn.jit`` (``torch.compile``, ``fullgraph=True``: a graph
    break is an error). ``compile=False`` runs it eagerly; a string or callable picks the
    ``torch.compile`` backend (the tests use a cheap one to check the graph is whole).

    Shapes and the model's hyperparameters are compiled as constants (``dynamic=False``): the
    batches all have one shape, and an example that compiles the same step function for two
    models (char_rnn) gets a graph for each instead of symbolic sizes. ``compile=None`` takes
    the example's ``default``."""
    if not compiles(compile, default):
        return step
    compile = default if compile is None else compile
    backend = "inductor" if compile is True else compile
    return fn.jit(step, backend=backend, dynamic=False)


def compiles(compile: bool | str | Callable | None, default: bool = True) -> bool:
    """Whether :func:`compile_step` given these arguments compiles the step."""
    return (default if compile is None else compile) is not False


class StepTimer:
    """Wall time of every call of a step function, for the printout: the first call (where a
    compiled step traces and compiles) apart from the median of the calls after ``warmup``.

    ``timer = StepTimer(dev, compiles(compile, default)); step = timer.wrap(step)``; each call
    waits for the device (CUDA runs asynchronously) before reading the clock. ``timer.lines()`` gives the
    report's ``step`` and ``compile`` lines, ``timer.numbers()`` the same as numbers
    (``step_ms``; ``compile_s``: the first call less one steady step, 0 when eager)."""

    def __init__(self, device: torch.device, compiled: bool, warmup: int = 5):
        self.device, self.compiled, self.warmup, self.times = device, compiled, warmup, []

    def wrap(self, step: Callable) -> Callable:
        def timed(*args: Any) -> Any:
            t0 = time.perf_counter()
            out = step(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times.append(time.perf_counter() - t0)
            return out
        return timed

    def _steady(self) -> list[float]:
        return self.times[self.warmup:] or self.times[1:] or self.times

    def numbers(self) -> dict[str, float]:
        if not self.times:
            return {"step_ms": float("nan"), "compile_s": float("nan")}
        step = statistics.median(self._steady())
        return {"step_ms": 1e3 * step, "compile_s": max(self.times[0] - step, 0.0) if self.compiled else 0.0}

    def lines(self) -> dict[str, str]:
        n, steady = self.numbers(), len(self._steady())
        lines = {"step": f"{n['step_ms']:.1f} ms, {'compiled' if self.compiled else 'eager'} "
                         f"(median of the last {steady} of {len(self.times)} steps)"}
        if self.compiled:
            lines["compile"] = f"{n['compile_s']:.1f} s (the first step, less a steady one)"
        return lines


def batches(key: torch.Tensor, arrays: tuple[torch.Tensor, ...] | torch.Tensor,
            batch_size: int) -> Iterator[Any]:
    """Endless mini-batches of the rows of ``arrays`` (all of the same length), reshuffled
    every epoch by ``random.permutation(random.fold_in(key, epoch), n)``. Incomplete last
    batches are dropped, so every batch has the same shape and a compiled step never
    recompiles. A single tensor gives single tensors, a tuple gives tuples."""
    single = isinstance(arrays, torch.Tensor)
    arrays = (arrays,) if single else tuple(arrays)
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"batches: arrays of different lengths {[a.shape[0] for a in arrays]}")
    batch_size = min(batch_size, n)
    epoch = 0
    while True:
        perm = random.permutation(random.fold_in(key, epoch), n).to(arrays[0].device)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            batch = tuple(a[idx] for a in arrays)
            yield batch[0] if single else batch
        epoch += 1


def progress(steps: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar over ``range(steps)``; set its postfix with ``bar.set_postfix(loss=...)``."""
    return tqdm(range(steps), desc=desc, disable=not enabled, dynamic_ncols=True,
                mininterval=0.5, leave=False)


def finite(x: torch.Tensor | float) -> float:
    """A scalar as a Python float, refusing NaN and infinity (training went wrong)."""
    v = float(x)
    if v != v or v in (float("inf"), float("-inf")):
        raise FloatingPointError(f"loss became {v}")
    return v


def out_dir(out: str | os.PathLike | None, name: str) -> str:
    """``out`` or ``out/<name>``, created."""
    path = os.fspath(out) if out is not None else os.path.join("out", name)
    os.makedirs(path, exist_ok=True)
    return path


def save(fig: matplotlib.figure.Figure, out: str, filename: str) -> str:
    """Write ``fig`` as ``out/filename`` (PNG), close it, return the path."""
    path = os.path.join(out, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(name: str, lines: dict[str, str], plots: list[str]) -> None:
    """The closing printout: one line per metric, then where the plots went."""
    print(f"{name}:")
    for k, v in lines.items():
        print(f"  {k}: {v}")
    for p in plots:
        print(f"  plot: {p}")
