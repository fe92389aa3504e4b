"""Explicit, splittable, counter-based random numbers (Threefry-2x32, as JAX).

A key is an ``int64`` tensor of shape ``[2]`` holding two 32-bit words; a batch of
keys is ``[..., 2]``. Every sampler is a pure function of the key, written in plain
integer tensor ops (add, xor, shift), so the same key gives the same bits eager or
compiled, on CPU or GPU, and under ``vmap`` a batch of keys gives independent streams.
Nothing here reads or advances torch's global generator.

    key = random.key(0)
    k1, k2 = random.split(key)
    x = random.normal(k1, (3, 4))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "key", "split", "fold_in", "bits", "uniform", "normal", "bernoulli", "randint",
    "permutation", "truncated_normal", "gumbel", "categorical", "is_key",
]

_MASK = 0xFFFFFFFF
_ROT = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA

Shape = Sequence[int] | int


def _shape(shape: Shape) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def key(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed (any Python int; the low 64 bits are used)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64, device=device)


def is_key(k: object) -> bool:
    return isinstance(k, torch.Tensor) and k.dtype == torch.int64 and k.ndim >= 1 and k.shape[-1] == 2


def _check_key(k: torch.Tensor, who: str) -> None:
    if not is_key(k):
        got = f"{type(k).__name__}" if not isinstance(k, torch.Tensor) else f"{k.dtype} {list(k.shape)}"
        raise TypeError(f"random.{who}: expected a key (int64 tensor [..., 2] from random.key), got {got}")


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _threefry2x32(k: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """Threefry-2x32 with 20 rounds. ``k``: [..., 2]; ``x0, x1``: counters broadcastable
    against ``k[..., 0]`` after unsqueezing. All values are 32-bit words in int64."""
    k0, k1 = k[..., 0], k[..., 1]
    extra = x0.ndim
    for _ in range(extra):
        k0, k1 = k0.unsqueeze(-1), k1.unsqueeze(-1)
    k2 = k0 ^ k1 ^ _PARITY
    ks = (k0, k1, k2)
    x0 = (x0 + k0) & _MASK
    x1 = (x1 + k1) & _MASK
    for block in range(5):
        for r in _ROT[block % 2]:
            x0 = (x0 + x1) & _MASK
            x1 = _rotl(x1, r) ^ x0
        x0 = (x0 + ks[(block + 1) % 3]) & _MASK
        x1 = (x1 + ks[(block + 2) % 3] + block + 1) & _MASK
    return x0, x1


def bits(k: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Uniform 32-bit words (int64 values in ``[0, 2**32)``) of ``shape``."""
    _check_key(k, "bits")
    shape = _shape(shape)
    n = math.prod(shape)
    half = (n + 1) // 2
    ctr = torch.arange(half, dtype=torch.int64, device=k.device)
    y0, y1 = _threefry2x32(k, ctr, ctr + half)
    out = torch.cat([y0, y1], dim=-1)[..., :n]
    return out.reshape(*k.shape[:-1], *shape)


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``num`` new independent keys, as a ``[num, 2]`` tensor (unpack or index it)."""
    _check_key(k, "split")
    out = bits(k, (num, 2))
    return out.movedim(-3, 0) if k.ndim > 1 else out


_FOLD_TAG = (0x243F6A88, 0x85A308D3)


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``k`` and an integer (a step count, a rank, a layer index)."""
    _check_key(k, "fold_in")
    if isinstance(data, torch.Tensor):
        d = data.to(device=k.device, dtype=torch.int64)
    else:
        d = torch.tensor(int(data), dtype=torch.int64, device=k.device)
    tag = torch.tensor(_FOLD_TAG, dtype=torch.int64, device=k.device)
    t0, t1 = _threefry2x32(k, tag[:1], tag[1:])
    sub = torch.stack([t0[..., 0], t1[..., 0]], dim=-1)
    y0, y1 = _threefry2x32(sub, ((d >> 32) & _MASK).reshape(1), (d & _MASK).reshape(1))
    return torch.stack([y0[..., 0], y1[..., 0]], dim=-1)


def _unit_float(k: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uniform in [0, 1) with the full mantissa of ``dtype``."""
    if dtype == torch.float64:
        w = bits(k, (*shape, 2))
        hi, lo = w[..., 0] >> 5, w[..., 1] >> 6  # 27 + 26 = 53 bits
        return (hi * 67108864 + lo).to(torch.float64) * (1.0 / 9007199254740992.0)
    w = bits(k, shape)
    u = (w >> 8).to(torch.float32) * (1.0 / 16777216.0)  # 24 bits
    return u.to(dtype)


def uniform(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32,
            minval: float | torch.Tensor = 0.0, maxval: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Uniform on ``[minval, maxval)``."""
    _check_key(k, "uniform")
    u = _unit_float(k, _shape(shape), dtype)
    return u * (maxval - minval) + minval


def normal(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32,
           mean: float | torch.Tensor = 0.0, std: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Standard normal (then ``mean + std * z``) by the inverse error function."""
    _check_key(k, "normal")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = _unit_float(k, _shape(shape), work)
    tiny = torch.finfo(work).eps / 2
    v = (2.0 * u - 1.0).clamp(-1.0 + tiny, 1.0 - tiny)  # open interval: erfinv(+-1) is inf
    z = math.sqrt(2.0) * torch.special.erfinv(v)
    return (z * std + mean).to(dtype)


def truncated_normal(k: torch.Tensor, lower: float, upper: float, shape: Shape = (),
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal conditioned on ``lower <= z <= upper`` (inverse-CDF sampling)."""
    _check_key(k, "truncated_normal")
    if not lower < upper:
        raise ValueError(f"random.truncated_normal: need lower < upper, got {lower}, {upper}")
    work = torch.float64
    u = _unit_float(k, _shape(shape), work)
    a = 0.5 * math.erfc(-lower / math.sqrt(2.0))
    b = 0.5 * math.erfc(-upper / math.sqrt(2.0))
    p = a + u * (b - a)
    tiny = torch.finfo(work).eps
    z = math.sqrt(2.0) * torch.special.erfinv((2.0 * p - 1.0).clamp(-1.0 + tiny, 1.0 - tiny))
    return z.clamp(lower, upper).to(dtype)


def bernoulli(k: torch.Tensor, p: float | torch.Tensor = 0.5, shape: Shape | None = None) -> torch.Tensor:
    """Boolean tensor, True with probability ``p`` (``shape`` defaults to ``p``'s shape)."""
    _check_key(k, "bernoulli")
    if shape is None:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else ()
    dtype = p.dtype if isinstance(p, torch.Tensor) and p.dtype == torch.float64 else torch.float32
    return uniform(k, shape, dtype) < p


def randint(k: torch.Tensor, shape: Shape, low: int, high: int) -> torch.Tensor:
    """Integers uniform on ``[low, high)`` (int64). The modulo bias is below 2**-31."""
    _check_key(k, "randint")
    if high <= low:
        raise ValueError(f"random.randint: need low < high, got [{low}, {high})")
    w = bits(k, (*_shape(shape), 2))
    r = ((w[..., 0] & 0x7FFFFFFF) << 32) | w[..., 1]
    return low + torch.remainder(r, high - low)


def permutation(k: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """A random permutation of ``range(n)``, or of the rows of a tensor."""
    _check_key(k, "permutation")
    size = n if isinstance(n, int) else n.shape[0]
    w = bits(k, (size, 2))
    r = ((w[..., 0] & 0x7FFFFFFF) << 32) | w[..., 1]  # 63 random bits: ties are negligible
    idx = torch.argsort(r, dim=-1, stable=True)
    return idx if isinstance(n, int) else n[idx]


def gumbel(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    u = _unit_float(k, _shape(shape), torch.float64 if dtype == torch.float64 else torch.float32)
    tiny = torch.finfo(u.dtype).tiny
    return (-torch.log(-torch.log(u.clamp_min(tiny)))).to(dtype)


def categorical(k: torch.Tensor, logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Samples class indices from unnormalized ``logits`` (Gumbel-max)."""
    _check_key(k, "categorical")
    g = gumbel(k, tuple(logits.shape), logits.dtype)
    return torch.argmax(logits + g, dim=dim)
