"""fnnet.random under fn.jit (torch.compile, the default inductor backend): a key made inside
the compiled function compiles about as fast as a key passed in, and every sampler gives the
same bits compiled as eager (values, and gradients into tensor bounds), also under vmap.

Inductor used to re-run the inlined Threefry chain at every use: with a constant key (one
made inside the function) compiling never finished. The time bound below is generous (a
loaded 2-core machine) but far below the minutes that regression took; an alarm stops the
test instead of hanging where signals are available."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest
import torch

import fnnet as fn
from fnnet import random


@contextlib.contextmanager
def wall_limit(seconds: int):
    """Raise TimeoutError after ``seconds`` of wall time (a hang becomes a failure)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def first_call_cpu_seconds(f, *args):
    """(result, CPU seconds of this process) of the first, compiling, call of ``f``."""
    start = time.process_time()
    out = f(*args)
    return out, time.process_time() - start


def test_a_key_made_inside_a_compiled_function_gives_the_eager_bits():
    got = fn.jit(lambda x: x + random.uniform(random.fold_in(random.key(7), 3), (4,)))(torch.zeros(4))
    assert torch.equal(got, random.uniform(random.fold_in(random.key(7), 3), (4,)))


@pytest.mark.slow  # a compile-time guard (timed): three compiles compared
def test_a_key_made_inside_a_compiled_function_compiles_about_as_fast_as_a_key_argument():
    x = torch.zeros(4)
    with wall_limit(600):
        got, arg_s = first_call_cpu_seconds(fn.jit(lambda x, k: x + random.uniform(k, (4,))), x, random.key(7))
        assert torch.equal(got, random.uniform(random.key(7), (4,)))
        got, inside_s = first_call_cpu_seconds(fn.jit(lambda x: x + random.uniform(random.key(7), (4,))), x)
        assert torch.equal(got, random.uniform(random.key(7), (4,)))
        f = fn.jit(lambda x, i: x + random.uniform(random.fold_in(random.key(7), i), (4,)))
        got, fold_s = first_call_cpu_seconds(f, x, 3)
        assert torch.equal(got, random.uniform(random.fold_in(random.key(7), 3), (4,)))
    # the first compile also pays inductor's one-time set-up, so it is the generous reference;
    # fold_in runs Threefry three times (tag, data, then the sample)
    assert inside_s < 2 * arg_s + 10, (arg_s, inside_s)
    assert fold_s < 3 * arg_s + 20, (arg_s, fold_s)


def all_samplers(k, p, logits):
    ks = random.split(k, 14)
    return {
        "split": ks,
        "fold_in": random.fold_in(ks[1], 5),
        "uniform_f32": random.uniform(ks[2], (200,), torch.float32, -2.0, 3.0),
        "uniform_bf16": random.uniform(ks[3], (200,), torch.bfloat16),
        "uniform_f16": random.uniform(ks[3], (200,), torch.float16, 1.0, 2.0),
        "normal_f32": random.normal(ks[4], (200,)),
        "normal_f64": random.normal(ks[5], (200,), torch.float64, mean=1.0, std=3.0),
        "truncated_normal": random.truncated_normal(ks[6], -1.0, 2.0, (200,)),
        "truncated_normal_tail": random.truncated_normal(ks[7], 10.0, 11.0, (200,), torch.float64),
        "gumbel": random.gumbel(ks[8], (200,)),
        "categorical": random.categorical(ks[9], logits),
        "bernoulli": random.bernoulli(ks[10], 0.3, (200,)),
        "bernoulli_tensor_p": random.bernoulli(ks[10], p),
        "randint": random.randint(ks[11], (200,), -3, 9),
        "permutation": random.permutation(ks[12], 50),
    }


def float_samplers(k):
    """The samplers whose last step is floating-point arithmetic (erfinv, log, ndtri, an
    affine map): where a compiler's rounding could differ from ATen's."""
    ks = random.split(k, 5)
    return {
        "normal_f32": random.normal(ks[0], (200,)),
        "normal_f64": random.normal(ks[1], (200,), torch.float64, mean=1.0, std=3.0),
        "gumbel": random.gumbel(ks[2], (200,)),
        "truncated_normal_tail": random.truncated_normal(ks[3], 10.0, 11.0, (200,), torch.float64),
        "uniform_bf16": random.uniform(ks[4], (200,), torch.bfloat16, 1.0, 2.0),
    }


def assert_same_bits_compiled_as_eager(f, *args):
    with wall_limit(900):
        compiled = fn.jit(f)(*args)
    eager = f(*args)
    assert compiled.keys() == eager.keys()
    for name in eager:
        assert compiled[name].dtype == eager[name].dtype, name
        assert torch.equal(compiled[name], eager[name]), name


def test_samplers_ending_in_float_math_give_the_same_bits_compiled_as_eager():
    # normal used to differ by 1 ulp compiled (inductor's erfinv), gumbel likewise (its log)
    assert_same_bits_compiled_as_eager(float_samplers, random.key(21))


@pytest.mark.slow  # 14 Threefry call sites: about a minute of inductor on 2 cores
def test_every_sampler_gives_the_same_bits_compiled_as_eager():
    p, logits = torch.rand(200, dtype=torch.float64), torch.randn(100, 6)
    assert_same_bits_compiled_as_eager(all_samplers, random.key(21), p, logits)


def sampled_loss(mean, std, lo, hi, k):
    a, b = random.split(k)
    z = random.normal(a, (6, 3), torch.float64, mean=mean, std=std)
    u = random.uniform(b, (6, 3), torch.float64, minval=lo, maxval=hi)
    return (z * z).sum() + (u * z).sum()


def test_compiled_gradients_into_tensor_mean_std_and_bounds_equal_eager():
    mean, std = torch.randn(3, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64) + 0.5
    lo, hi = torch.tensor(-1.0, dtype=torch.float64), torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    args = (mean, std, lo, hi, random.key(5))
    grad = fn.value_and_grad(sampled_loss, argnums=(0, 1, 2, 3))
    eager_value, eager_grads = grad(*args)
    with wall_limit(600):
        value, grads = fn.jit(grad)(*args)
    torch.testing.assert_close(value, eager_value, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def per_key(k):
    a, b = random.split(k)
    return random.normal(a, (3,)), random.uniform(b, (2,), torch.float64, -1.0, 2.0), random.fold_in(k, 3)


def test_a_batch_of_keys_under_vmap_inside_jit_gives_each_keys_eager_stream():
    keys = random.split(random.key(1), 3)
    with wall_limit(600):
        compiled = fn.jit(fn.vmap(per_key))(keys)
    for i, k in enumerate(keys):
        for got, want in zip(compiled, per_key(k)):
            assert torch.equal(got[i], want)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q", "-p", "no:xdist"])
