"""Explicit, splittable, counter-based random numbers (Threefry-2x32, as JAX).

A key is an ``int64`` tensor of shape ``[2]`` holding two 32-bit words; a batch of
keys is ``[..., 2]``. Every sampler is a pure function of the key: the bits come from
Threefry written in plain integer tensor ops (add, xor, shift), exact on every backend,
and the step from bits to floats that needs a transcendental function (``erfinv``,
``log``, ``ndtri``) is one op the compiler does not trace into (``fnnet::sample``), so
the same key gives the same bits eager or compiled, and under ``vmap`` a batch of keys
gives independent streams. Nothing here reads or advances torch's global generator.

    key = random.key(0)
    k1, k2 = random.split(key)
    x = random.normal(k1, (3, 4))

Float samplers (``uniform``, ``normal``, ``truncated_normal``, ``gumbel``) return
``torch.get_default_dtype()`` unless given a ``dtype``, as layer ``init`` and torch's
factories do, so a float64 model samples float64 noise.

Arguments are checked before any arithmetic: a wrong key, shape, dtype or bound raises a
``TypeError``/``ValueError`` naming the sampler and the argument. Bounds given as tensors
are checked for their values only where that is possible (eager, outside ``vmap``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import torch

from . import _check
from ._check import describe as _describe

__all__ = [
    "key", "split", "fold_in", "bits", "uniform", "normal", "bernoulli", "randint",
    "permutation", "truncated_normal", "gumbel", "categorical", "is_key",
]

_MASK = 0xFFFFFFFF
_ROT = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Shape = Sequence[int] | int


# ---------------------------------------------------------------- argument checks

def _int(who: str, name: str, v: object, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as a Python int, ``lo <= v < hi`` when given: ints, numpy integers and 0-d
    integer tensors pass (a ``SymInt``, a dynamic size under compile, as is); bools, floats,
    strings and other tensors do not."""
    return _check.integer(f"random.{who}", name, v, lo, hi, tensors=True)


def _number(who: str, name: str, v: object) -> float:
    """A finite Python number (int or float, not bool), as a float."""
    return _check.real(f"random.{who}", name, v, words=_NUMBER_WORDS)


_NUMBER_WORDS = {TypeError: "{name} must be a float or a tensor, got {got}"}  # tensors are taken elsewhere


def _shape(shape: Shape, who: str = "bits") -> tuple[int, ...]:
    """A shape: an int or a sequence of ints >= 0 (torch.Size, tuple, list)."""
    if not isinstance(shape, (Sequence, torch.Tensor)):
        shape = (shape,)
    if isinstance(shape, (str, bytes, torch.Tensor)):
        raise TypeError(f"random.{who}: shape must be an int or a sequence of ints, got {_describe(shape)}")
    out = tuple(_int(who, "shape", s) for s in shape)
    if any(isinstance(s, int) and s < 0 for s in out):
        raise ValueError(f"random.{who}: shape entries must be >= 0, got {out}")
    return out


def _float_dtype(who: str, dtype: object) -> torch.dtype:
    """``dtype``, or ``torch.get_default_dtype()`` when None (as layer ``init`` and torch's
    own factories follow the default)."""
    if dtype is None:
        return torch.get_default_dtype()
    if dtype not in _FLOATS:
        raise TypeError(f"random.{who}: dtype must be a floating dtype {list(_FLOATS)}, got {dtype!r}")
    return dtype


# packing formats of the float dtypes (bfloat16 is float32's upper half)
_PACK = {torch.float16: ("<e", "<H"), torch.float32: ("<f", "<I"), torch.float64: ("<d", "<Q")}


def _round_to(x: float, dtype: torch.dtype) -> float:
    """``x`` rounded to ``dtype`` (to nearest, ties to even; bfloat16 through float32, as
    torch converts a Python float), in plain Python so that it needs no tensor (no graph
    break under torch.compile)."""
    if dtype == torch.float64 or math.isinf(x) or math.isnan(x):
        return x
    try:
        x = struct.unpack("<f", struct.pack("<f", x))[0]
        if dtype == torch.bfloat16:
            b = struct.unpack("<I", struct.pack("<f", x))[0]
            b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
            x = struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]
        elif dtype == torch.float16:
            x = struct.unpack("<e", struct.pack("<e", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)
    return x


def _step(x: float, dtype: torch.dtype, up: bool) -> float:
    """The ``dtype`` value next to ``x`` (a ``dtype`` value) towards +inf (``up``) or -inf."""
    if dtype == torch.float64:
        return math.nextafter(x, math.inf if up else -math.inf)
    if math.isinf(x) and (x > 0) == up:
        return x
    f, i = _PACK[torch.float32 if dtype == torch.bfloat16 else dtype]
    one = 1 << 16 if dtype == torch.bfloat16 else 1
    if x == 0:
        b = struct.unpack(i, struct.pack(f, 0.0))[0] + one
        y = struct.unpack(f, struct.pack(i, b))[0]
        return y if up else -y
    b = struct.unpack(i, struct.pack(f, x))[0]
    b = b + one if (x > 0) == up else b - one
    return struct.unpack(f, struct.pack(i, b))[0]


def _strictly_inside(lower: float, upper: float, dtype: torch.dtype) -> tuple[float, float]:
    """The least ``dtype`` value above ``lower`` and the greatest below ``upper``."""
    lo, hi = _round_to(lower, dtype), _round_to(upper, dtype)
    return (lo if lo > lower else _step(lo, dtype, up=True)), (hi if hi < upper else _step(hi, dtype, up=False))


def _inspectable(t: torch.Tensor) -> bool:
    """Whether the values of ``t`` can be read for a check: eager and outside vmap/grad
    transforms (there a check would be data-dependent control flow)."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _bound_tensor(who: str, name: str, v: torch.Tensor, out_shape: tuple[int, ...]) -> None:
    """A tensor bound (``minval``, ``mean``, ``p``, ...): floating, and broadcastable to the
    sample's shape without growing it (nothing is broadcast silently)."""
    if not v.is_floating_point():
        raise TypeError(f"random.{who}: {name} must be a float or a floating tensor, got {_describe(v)}")
    try:
        grown = torch.broadcast_shapes(tuple(v.shape), out_shape) != tuple(out_shape)
    except RuntimeError:
        grown = True
    if grown:
        raise ValueError(f"random.{who}: {name} of shape {list(v.shape)} does not broadcast to the "
                         f"sample shape {list(out_shape)}")


# ---------------------------------------------------------------- keys and bits

def key(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed in ``[-2**63, 2**64)`` (negative seeds are their 64-bit
    two's complement, as ``jax.random.PRNGKey``). Floats, bools and strings are refused:
    ``key(1.5)`` would otherwise silently be ``key(1)``."""
    seed = _int("key", "seed", seed, -(1 << 63), 1 << 64)
    seed &= 0xFFFFFFFFFFFFFFFF
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64, device=device)


def is_key(k: object) -> bool:
    """An ``int64`` tensor ``[..., 2]``. Words are used modulo ``2**32``."""
    return isinstance(k, torch.Tensor) and k.dtype == torch.int64 and k.ndim >= 1 and k.shape[-1] == 2


def _check_key(k: torch.Tensor, who: str) -> None:
    if not is_key(k):
        raise TypeError(f"random.{who}: expected a key (int64 tensor [..., 2] from random.key), got {_describe(k)}")


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _round_barrier(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself; under ``torch.compile`` a point where inductor stores the value.

    Inductor inlines a chain of elementwise ops into its consumer by re-running the chain's
    Python lowering at every use. Each Threefry round uses a word twice (the add and the
    rotation), so the re-run work doubles round after round: with constant key words (a key
    made inside the compiled function) inductor realized nothing and compiling never finished;
    with the key an argument it took ~15 s of CPU. ``as_strided`` to the tensor's own layout is
    the identity, but its lowering realizes its input, which cuts the chain at every round;
    the scheduler still fuses all rounds into one kernel, so the generated code and the bits
    are unchanged, and a Threefry call compiles in about a second."""
    if torch.compiler.is_compiling():
        return x.as_strided(x.shape, x.stride())
    return x


def _threefry2x32(k: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """Threefry-2x32 with 20 rounds. ``k``: [..., 2]; ``x0, x1``: counters broadcastable
    against ``k[..., 0]`` after unsqueezing. All values are 32-bit words in int64."""
    k0, k1 = k[..., 0] & _MASK, k[..., 1] & _MASK
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
            x0, x1 = _round_barrier(x0), _round_barrier(x1)
        x0 = (x0 + ks[(block + 1) % 3]) & _MASK
        x1 = (x1 + ks[(block + 2) % 3] + block + 1) & _MASK
    return x0, x1


def _bits(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if k.device.type == "meta":  # shapes only (param_shapes, the params check): skip the 20 rounds
        return torch.empty((*k.shape[:-1], *shape), dtype=torch.int64, device="meta")
    n = math.prod(shape)
    half = (n + 1) // 2
    ctr = torch.arange(half, dtype=torch.int64, device=k.device)
    y0, y1 = _threefry2x32(k, ctr, ctr + half)
    out = torch.cat([y0, y1], dim=-1)[..., :n]
    return out.reshape((*k.shape[:-1], *shape))


def bits(k: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Uniform 32-bit words (int64 values in ``[0, 2**32)``): ``[*k.shape[:-1], *shape]``."""
    _check_key(k, "bits")
    return _bits(k, _shape(shape, "bits"))


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``num`` new independent keys: ``[num, 2]`` for one key (unpack or index it), and for a
    batch of keys ``[..., 2]`` the split of each key, ``[..., num, 2]`` (the batch dims in
    order, as ``vmap(split)`` gives). ``split(key(0))`` is ``jax.random.split``'s words."""
    _check_key(k, "split")
    return _bits(k, (_int("split", "num", num, 0), 2))


_FOLD_TAG = (0x243F6A88, 0x85A308D3)


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``k`` and an integer (a step count, a rank, a layer index): a Python int
    in int64's range or a 0-d integer tensor. ``k`` may be a batch of keys ``[..., 2]``."""
    _check_key(k, "fold_in")
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool or data.ndim:
            raise TypeError(f"random.fold_in: data must be an int or a 0-d integer tensor, got {_describe(data)}")
        d = data.to(device=k.device, dtype=torch.int64)
    else:
        d = torch.tensor(_int("fold_in", "data", data, -(1 << 63), 1 << 63), dtype=torch.int64, device=k.device)
    tag = torch.tensor(_FOLD_TAG, dtype=torch.int64, device=k.device)
    t0, t1 = _threefry2x32(k, tag[:1], tag[1:])
    sub = torch.stack([t0[..., 0], t1[..., 0]], dim=-1)
    y0, y1 = _threefry2x32(sub, ((d >> 32) & _MASK).reshape(1), (d & _MASK).reshape(1))
    return torch.stack([y0[..., 0], y1[..., 0]], dim=-1)


# ---------------------------------------------------------------- bits -> floats

def _unit_float(k: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uniform on the grid ``j * 2**-m``, ``0 <= j < 2**m``, in [0, 1), with ``m`` the
    significand bits of ``dtype`` (53, 24, 11 for float16, 8 for bfloat16): every value is
    exact in ``dtype``, so the largest is ``1 - 2**-m`` and never rounds up to 1. Only
    exact integer ops and power-of-two scalings: the same bits on every backend."""
    if dtype == torch.float64:
        w = _bits(k, (*shape, 2))
        hi, lo = w[..., 0] >> 5, w[..., 1] >> 6  # 27 + 26 = 53 bits
        return (hi * 67108864 + lo).to(torch.float64) * (1.0 / 9007199254740992.0)
    m = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[dtype]
    u = (_bits(k, shape) >> (32 - m)).to(torch.float32) * (2.0 ** -m)
    return u.to(dtype)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """Where an affine map of a sample is computed, so that ``maxval - minval`` cannot
    overflow: float32 for float16, float64 otherwise (bfloat16 has float32's range)."""
    return torch.float32 if dtype == torch.float16 else torch.float64


def _finish_impl(u: torch.Tensor, kind: str, a: float, b: float, dtype: torch.dtype) -> torch.Tensor:
    """Turns uniform ``u`` into the sample of ``kind`` (see ``_finish``)."""
    if kind == "uniform":  # [a, b) in dtype, u on the exact grid of dtype
        x = (u.to(_wide(dtype)) * (b - a) + a).to(dtype)
        return torch.where(x < b, x, _step(b, dtype, up=False)).clamp_min(a)
    if kind == "normal":  # a + b * z, z by the inverse error function
        tiny = torch.finfo(u.dtype).eps / 2
        v = (2.0 * u - 1.0).clamp(-1.0 + tiny, 1.0 - tiny)  # open interval: erfinv(+-1) is inf
        z = math.sqrt(2.0) * torch.special.erfinv(v)
        return (z * b + a).to(dtype)
    if kind == "gumbel":
        tiny = torch.finfo(u.dtype).tiny
        return (-torch.log(-torch.log(u.clamp_min(tiny)))).to(dtype)
    if kind == "truncated_normal":
        return _truncated_from_unit(u, a, b).to(dtype).clamp(*_strictly_inside(a, b, dtype))
    raise AssertionError(kind)


def _truncated_from_unit(u: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Inverse-CDF sampling of the standard normal on (lower, upper), in float64 and in log
    space, so that it stays exact far in a tail. JAX computes ``erf`` of the bounds, which
    rounds to 1 beyond ~6 sigma (float32) and then clamps every sample to a bound.

    The interval is mirrored to the lower half when it lies above 0 (the CDF of the side
    nearer to 0 has no cancellation), the CDF values are kept as logs (``log_ndtr``, finite
    far beyond where ``ndtr`` underflows), the mixture ``(1 - u) a + u b`` is taken with
    ``logaddexp``, and the quantile is ``ndtri``, refined by Newton steps on ``log_ndtr``
    where ``exp(log p)`` would be subnormal."""
    flip = lower > 0
    lo, hi = (-upper, -lower) if flip else (lower, upper)
    u = u.to(torch.float64)
    log_a = torch.special.log_ndtr(torch.tensor(lo, dtype=torch.float64, device=u.device))
    log_b = torch.special.log_ndtr(torch.tensor(hi, dtype=torch.float64, device=u.device))
    log_p = torch.logaddexp(torch.log1p(-u) + log_a, torch.log(u) + log_b)
    z = torch.special.ndtri(torch.exp(log_p))
    # where exp(log_p) is subnormal or 0 (z < -37), solve log_ndtr(z) = log_p by Newton's
    # method from the asymptotic quantile; log_p = -inf (u = 0, lower = -inf) is lower itself
    t = -2.0 * log_p
    zd = -torch.sqrt(t - torch.log(t) - math.log(2 * math.pi))
    for _ in range(4):
        log_cdf = torch.special.log_ndtr(zd)
        zd = zd - (log_cdf - log_p) * torch.exp(log_cdf + 0.5 * zd * zd + 0.5 * math.log(2 * math.pi))
    z = torch.where(log_p < -700.0, zd, z)
    z = torch.where(log_p == -math.inf, lo, z)
    return -z if flip else z


@torch.library.custom_op("fnnet::sample", mutates_args=())
def _finish_op(u: torch.Tensor, kind: str, a: float, b: float, dtype: torch.dtype) -> torch.Tensor:
    return _finish_impl(u, kind, a, b, dtype)


@_finish_op.register_fake
def _(u, kind, a, b, dtype):
    return u.new_empty(u.shape, dtype=dtype)


@_finish_op.register_vmap
def _(info, in_dims, u, kind, a, b, dtype):
    return _finish_op(u, kind, a, b, dtype), in_dims[0]  # elementwise: the batch dim stays


def _finish(u: torch.Tensor, kind: str, a: float, b: float, dtype: torch.dtype) -> torch.Tensor:
    """The float part of a sampler, from uniform ``u`` (no gradient flows into it): one op
    that ``torch.compile`` runs as the eager kernels rather than tracing, because inductor's
    fused ``erfinv``/``log`` round differently from ATen's (``normal`` differed by 1 ulp
    compiled) and a GPU compiler may contract ``u * s + a`` into an FMA. So a sampler gives
    the same bits eager and compiled, on every device, at the cost of one unfused kernel."""
    return _finish_op(u, kind, a, b, dtype)


# ---------------------------------------------------------------- samplers

def uniform(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype | None = None,
            minval: float | torch.Tensor = 0.0, maxval: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Uniform on ``[minval, maxval)`` in ``dtype`` (floating): ``maxval`` itself is never
    returned, in any dtype (a value that rounds up to it is replaced by the largest ``dtype``
    value below it). ``minval == maxval`` gives ``minval`` everywhere, as
    ``torch.nn.init.uniform_``. Tensor bounds must broadcast to the sample's shape."""
    _check_key(k, "uniform")
    shape, dtype = _shape(shape, "uniform"), _float_dtype("uniform", dtype)
    out_shape = (*k.shape[:-1], *shape)
    tensors = [isinstance(v, torch.Tensor) for v in (minval, maxval)]
    if not any(tensors):
        lo, hi = _number("uniform", "minval", minval), _number("uniform", "maxval", maxval)
        lo_d, hi_d = _round_to(lo, dtype), _round_to(hi, dtype)
        if not math.isfinite(hi - lo) or not math.isfinite(hi_d - lo_d):
            raise ValueError(f"random.uniform: maxval - minval = {hi} - {lo} overflows")
        if lo_d > hi_d or (lo_d == hi_d and lo != hi):
            raise ValueError(f"random.uniform: need minval < maxval (as {dtype}), got [{lo}, {hi})")
        u = _unit_float(k, shape, dtype)
        if lo == 0.0 and hi == 1.0:
            return u
        if lo_d == hi_d:
            return torch.full(out_shape, lo_d, dtype=dtype, device=k.device)
        return _finish(u, "uniform", lo_d, hi_d, dtype)
    # tensor bounds (possibly requiring grad): the affine map in torch ops, then the same clamp
    lo_t, hi_t = (v if isinstance(v, torch.Tensor)
                  else torch.tensor(_number("uniform", n, v), dtype=torch.float64, device=k.device)
                  for v, n in ((minval, "minval"), (maxval, "maxval")))
    for v, n in ((lo_t, "minval"), (hi_t, "maxval")):
        _bound_tensor("uniform", n, v, out_shape)
    if _inspectable(lo_t) and _inspectable(hi_t):
        if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
            raise ValueError("random.uniform: minval and maxval must be finite")
        if (lo_t > hi_t).any():
            raise ValueError("random.uniform: need minval <= maxval everywhere")
    u = _unit_float(k, shape, dtype)
    wide = _wide(dtype)
    lo_w, hi_w = lo_t.to(wide), hi_t.to(wide)
    x = (u.to(wide) * (hi_w - lo_w) + lo_w).to(dtype)
    hi_d, lo_d = hi_t.to(dtype), lo_t.to(dtype)
    x = torch.where(x < hi_d, x, torch.nextafter(hi_d.detach(), torch.full_like(hi_d, -math.inf)))
    return torch.maximum(x, lo_d)


def normal(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype | None = None,
           mean: float | torch.Tensor = 0.0, std: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Normal ``mean + std * z``, ``z`` standard normal by the inverse error function
    (computed in float32 for float16/bfloat16). ``std >= 0``; tensor ``mean``/``std`` must
    broadcast to the sample's shape (gradients flow into them)."""
    _check_key(k, "normal")
    shape, dtype = _shape(shape, "normal"), _float_dtype("normal", dtype)
    out_shape = (*k.shape[:-1], *shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if not isinstance(mean, torch.Tensor) and not isinstance(std, torch.Tensor):
        m, s = _number("normal", "mean", mean), _number("normal", "std", std)
        if s < 0:
            raise ValueError(f"random.normal: std must be >= 0, got {s}")
        return _finish(_unit_float(k, shape, work), "normal", m, s, dtype)
    for v, n in ((mean, "mean"), (std, "std")):
        if isinstance(v, torch.Tensor):
            _bound_tensor("normal", n, v, out_shape)
        else:
            _number("normal", n, v)
    if isinstance(std, torch.Tensor) and _inspectable(std) and (std < 0).any():
        raise ValueError("random.normal: std must be >= 0 everywhere")
    if not isinstance(std, torch.Tensor) and std < 0:
        raise ValueError(f"random.normal: std must be >= 0, got {std}")
    z = _finish(_unit_float(k, shape, work), "normal", 0.0, 1.0, work)
    return (z * std + mean).to(dtype)


def truncated_normal(k: torch.Tensor, lower: float, upper: float, shape: Shape = (),
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal conditioned on ``lower < z < upper`` (``-inf``/``inf`` allowed), by
    inverse-CDF sampling in log space (exact far in a tail: ``(10, 11)`` gives values spread
    over the interval, not clamped to a bound). Values lie strictly inside the bounds as
    represented in ``dtype``."""
    _check_key(k, "truncated_normal")
    shape, dtype = _shape(shape, "truncated_normal"), _float_dtype("truncated_normal", dtype)
    lower, upper = (_check.real("random.truncated_normal", n, v, finite=False)
                    for v, n in ((lower, "lower"), (upper, "upper")))
    if math.isnan(lower) or math.isnan(upper) or not lower < upper:
        raise ValueError(f"random.truncated_normal: need lower < upper, got {lower}, {upper}")
    lo_d, hi_d = _strictly_inside(lower, upper, dtype)
    if not lo_d <= hi_d:
        raise ValueError(f"random.truncated_normal: no {dtype} value lies strictly between "
                         f"{lower} and {upper}")
    return _finish(_unit_float(k, shape, torch.float64), "truncated_normal", lower, upper, dtype)


def bernoulli(k: torch.Tensor, p: float | torch.Tensor = 0.5, shape: Shape | None = None) -> torch.Tensor:
    """Boolean tensor, True with probability ``p`` in [0, 1] (``shape`` defaults to ``p``'s
    shape; a tensor ``p`` must broadcast to ``shape``). ``p = 1`` is always True."""
    _check_key(k, "bernoulli")
    if isinstance(p, torch.Tensor):
        if not p.is_floating_point():
            raise TypeError(f"random.bernoulli: p must be a float or a floating tensor, got {_describe(p)}")
        shape = tuple(p.shape) if shape is None else _shape(shape, "bernoulli")
        _bound_tensor("bernoulli", "p", p, (*k.shape[:-1], *shape))
        if _inspectable(p) and not ((p >= 0) & (p <= 1)).all():
            raise ValueError("random.bernoulli: p must lie in [0, 1] everywhere")
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    else:
        p = _number("bernoulli", "p", p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random.bernoulli: p must lie in [0, 1], got {p}")
        shape, dtype = (() if shape is None else _shape(shape, "bernoulli")), torch.float32
    return _unit_float(k, shape, dtype) < p


def randint(k: torch.Tensor, shape: Shape, low: int, high: int) -> torch.Tensor:
    """Integers uniform on ``[low, high)`` (int64), ``high - low <= 2**32``: from 63 random
    bits the modulo bias is then below ``2**-31``."""
    _check_key(k, "randint")
    shape = _shape(shape, "randint")
    low = _int("randint", "low", low, -(1 << 63), 1 << 63)
    high = _int("randint", "high", high, -(1 << 63), 1 << 63)
    if high <= low:
        raise ValueError(f"random.randint: need low < high, got [{low}, {high})")
    if high - low > 1 << 32:
        raise ValueError(f"random.randint: high - low must be at most 2**32 (a larger range would be "
                         f"measurably biased), got {high - low}")
    w = _bits(k, (*shape, 2))
    r = ((w[..., 0] & 0x7FFFFFFF) << 32) | w[..., 1]
    return low + torch.remainder(r, high - low)


def permutation(k: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """A random permutation of ``range(n)`` (``n >= 0``), or of the rows of a tensor."""
    _check_key(k, "permutation")
    if isinstance(n, torch.Tensor):
        if n.ndim == 0:
            raise ValueError("random.permutation: a tensor to shuffle needs at least 1 dim, got a 0-d tensor")
        size = n.shape[0]
    else:
        size = _int("permutation", "n", n, 0)
    w = _bits(k, (size, 2))
    r = ((w[..., 0] & 0x7FFFFFFF) << 32) | w[..., 1]  # 63 random bits: ties are negligible
    idx = torch.argsort(r, dim=-1, stable=True)
    return idx if not isinstance(n, torch.Tensor) else n[idx]


def gumbel(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard Gumbel, ``-log(-log(u))`` (computed in float32 for float16/bfloat16)."""
    _check_key(k, "gumbel")
    shape, dtype = _shape(shape, "gumbel"), _float_dtype("gumbel", dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return _finish(_unit_float(k, shape, work), "gumbel", 0.0, 0.0, dtype)


def categorical(k: torch.Tensor, logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Samples class indices from unnormalized ``logits`` (Gumbel-max) along ``dim``."""
    _check_key(k, "categorical")
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"random.categorical: logits must be a floating tensor, got {_describe(logits)}")
    if logits.ndim == 0:
        raise ValueError("random.categorical: logits need at least 1 dim (the classes), got a 0-d tensor")
    dim = _int("categorical", "dim", dim, -logits.ndim, logits.ndim)
    if logits.shape[dim] == 0:
        raise ValueError(f"random.categorical: logits have no classes along dim {dim}: {list(logits.shape)}")
    g = gumbel(k, tuple(logits.shape), logits.dtype)
    return torch.argmax(logits + g, dim=dim)
