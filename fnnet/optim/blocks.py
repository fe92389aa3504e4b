"""optax's building blocks, under optax's names, arguments and formulas, to ``chain``.

    opt = optim.chain(optim.clip_by_global_norm(1.0, eps=0.0), optim.scale_by_adam(),
                      optim.add_decayed_weights(1e-2, mask), optim.scale_by_learning_rate(schedule))

optax's sign convention, which is fnnet's: the updates are *added* to the params
(``apply_updates``), so ``scale_by_learning_rate`` multiplies by ``-lr`` (``flip_sign=True``).
Each block is an :func:`~fnnet.optim.base.optimizer`, the mechanism behind the torch-named
optimizers: its state is ``{"count", "hyperparams", <moments>}`` with the hyperparameters as
0-d tensors (``set_hyperparams(state, b2=0.99)``; a compiled step does not recompile), the
moments named as optax names them (``mu``, ``nu``, ``nu_max``, ``trace``, ``ema``) and the
arithmetic ``_foreach`` over all leaves. ``count`` is the number of updates made; the
bias corrections use ``t = count + 1`` for the update in progress, as optax.

Formulas (``g`` the incoming update, ``t`` the 1-based step):

- ``scale_by_adam``: ``mu = b1 mu + (1 - b1) g``, ``nu = b2 nu + (1 - b2) g^2``,
  ``g <- mu_hat / (sqrt(nu_hat + eps_root) + eps)``, ``x_hat = x / (1 - b^t)``;
  ``nesterov``: ``mu_hat = b1 mu / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``.
- ``scale_by_amsgrad``: as Adam with ``nu_max = max(nu_max, nu_hat)`` in the denominator.
- ``scale_by_rms`` / ``scale_by_stddev``: ``g / sqrt(nu + eps)`` (``eps_in_sqrt``) or
  ``g / (sqrt(nu) + eps)``; stddev uses ``nu - mu^2``; ``bias_correction`` divides by ``1 - d^t``.
- ``trace``: ``trace = g + decay trace``; ``g <- trace`` (or ``g + decay trace``: Nesterov).
- ``ema``: ``ema = decay ema + (1 - decay) g``; ``g <- ema`` (debiased: ``/ (1 - decay^t)``).
- ``scale_by_learning_rate``: ``g <- -lr g`` (``lr`` a number, held as ``hyperparams["lr"]``,
  or a schedule of ``count``).

Not carried over from optax: ``mu_dtype`` / ``accumulator_dtype`` (moments have the params'
dtype), complex params.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _check as C
from . import _ops
from .base import GradientTransformation, identity, optimizer


def _decay(owner: str, name: str, value: Any, divides: bool) -> None:
    """A decay rate in [0, 1]; [0, 1) where a bias correction divides by ``1 - decay^t``."""
    C.number(owner, name, value, lo=0.0, hi=1.0, hi_open=divides)


def _zeros(params: list) -> list:
    return [torch.zeros_like(p) for p in params]


def _adam_like(owner: str, b1, b2, eps, eps_root, *, nesterov: bool = False, amsgrad: bool = False,
               bias_correction_mu: bool = True, bias_correction_nu: bool = True) -> GradientTransformation:
    """Adam's moments and step, shared by ``scale_by_adam`` and ``scale_by_amsgrad``."""
    _decay(owner, "b1", b1, divides=bias_correction_mu)
    _decay(owner, "b2", b2, divides=bias_correction_nu)
    C.nonneg(owner, "eps", eps)
    C.nonneg(owner, "eps_root", eps_root)
    hp = {"b1": b1, "b2": b2, "eps": eps}
    if eps_root != 0:
        hp["eps_root"] = eps_root

    def slots(params):
        s = {"mu": _zeros(params), "nu": _zeros(params)}
        if amsgrad:
            s["nu_max"] = _zeros(params)
        return s

    def step(ops, g, p, s, h, t):
        b1, b2 = h["b1"], h["b2"]
        mu = ops.lerp(s["mu"], g, 1 - b1)                           # b1 mu + (1 - b1) g
        nu = ops.addcmul_(ops.mul(s["nu"], b2), g, g, 1 - b2)        # b2 nu + (1 - b2) g^2
        new = {"mu": mu, "nu": nu}
        # the `_` ops write only into buffers made here (never the state's): fewer allocations
        if amsgrad or "eps_root" in h:
            nu_hat = ops.div(nu, 1 - b2 ** t) if bias_correction_nu else nu
            if amsgrad:
                nu_hat = new["nu_max"] = ops.maximum(s["nu_max"], nu_hat)
            if "eps_root" in h:
                nu_hat = ops.add(nu_hat, h["eps_root"])
            denom = ops.add_(ops.sqrt(nu_hat), h["eps"])
        else:                                                        # sqrt(nu / bc2) = sqrt(nu) / sqrt(bc2)
            denom = ops.add_(ops.div_(ops.sqrt(nu), _ops.ssqrt(1 - b2 ** t)), h["eps"])
        if nesterov:   # b1 mu_hat(t+1) + (1 - b1) g_hat(t)
            mu_hat = ops.add(ops.mul(mu, b1 / (1 - b1 ** (t + 1))), g, alpha=(1 - b1) / (1 - b1 ** t))
            return ops.div_(mu_hat, denom), new
        if bias_correction_mu:                                       # mu / bc1 / denom = mu / (bc1 denom)
            denom = ops.mul_(denom, 1 - b1 ** t)
        return ops.div(mu, denom), new

    return optimizer(hp, slots, step, owner)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, *,
                  nesterov: bool = False) -> GradientTransformation:
    """Adam's rescaling without the learning rate (``optax.scale_by_adam``); ``nesterov``: NAdam's
    momentum (Dozat 2016, as optax). State: ``mu``, ``nu``. ``b1``, ``b2`` in [0, 1)."""
    C.flag("scale_by_adam", "nesterov", nesterov)
    return _adam_like("scale_by_adam", b1, b2, eps, eps_root, nesterov=nesterov)


def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                     bias_correction_mu: bool = True, bias_correction_nu: bool = True) -> GradientTransformation:
    """AMSGrad (``optax.scale_by_amsgrad``): Adam whose denominator uses the running maximum of
    the (bias-corrected, unless ``bias_correction_nu=False``) second moment. State: ``mu``,
    ``nu``, ``nu_max``."""
    C.flag("scale_by_amsgrad", "bias_correction_mu", bias_correction_mu)
    C.flag("scale_by_amsgrad", "bias_correction_nu", bias_correction_nu)
    return _adam_like("scale_by_amsgrad", b1, b2, eps, eps_root, amsgrad=True,
                      bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu)


def _rms_like(owner: str, decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered) -> GradientTransformation:
    """``scale_by_rms`` and, ``centered``, ``scale_by_stddev``."""
    _decay(owner, "decay", decay, divides=bias_correction)
    C.nonneg(owner, "eps", eps)
    C.nonneg(owner, "initial_scale", initial_scale)
    C.flag(owner, "eps_in_sqrt", eps_in_sqrt)
    C.flag(owner, "bias_correction", bias_correction)
    init_nu = float(initial_scale)

    def slots(params):
        s = {"nu": [torch.full_like(p, init_nu) for p in params]}
        if centered:
            s["mu"] = _zeros(params)
        return s

    def step(ops, g, p, s, h, t):
        d = h["decay"]
        nu = ops.addcmul(ops.mul(s["nu"], d), g, g, 1 - d)
        new = {"nu": nu}
        nu_hat = ops.div(nu, 1 - d ** t) if bias_correction else nu
        if centered:
            mu = new["mu"] = ops.lerp(s["mu"], g, 1 - d)
            mu_hat = ops.div(mu, 1 - d ** t) if bias_correction else mu
            # nu_hat - mu_hat^2, the square rounded first (as optax): exactly 0 when g is constant,
            # where a fused multiply-add could leave a negative rounding error (and sqrt a NaN)
            nu_hat = ops.sub(nu_hat, ops.mul(mu_hat, mu_hat))
        if eps_in_sqrt:
            denom = ops.sqrt(ops.add(nu_hat, h["eps"]))
        else:
            denom = ops.add_(ops.sqrt(nu_hat), h["eps"])
        return ops.div(g, denom), new

    return optimizer({"decay": decay, "eps": eps}, slots, step, owner)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0, eps_in_sqrt: bool = True,
                 bias_correction: bool = False) -> GradientTransformation:
    """Divide by the root of the moving average of ``g^2`` (``optax.scale_by_rms``, RMSprop's
    rescaling; optax's ``eps`` goes inside the root by default, torch's outside:
    ``eps_in_sqrt=False``). State: ``nu`` (starting at ``initial_scale``)."""
    return _rms_like("scale_by_rms", decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=False)


def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0, eps_in_sqrt: bool = True,
                    bias_correction: bool = False) -> GradientTransformation:
    """Divide by the root of the centred moving variance ``nu - mu^2`` (``optax.scale_by_stddev``,
    centred RMSprop). State: ``mu``, ``nu``."""
    return _rms_like("scale_by_stddev", decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=True)


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum, ``trace = g + decay * trace``; the update is ``trace`` or, ``nesterov``,
    ``g + decay * trace`` (``optax.trace``; torch's SGD momentum with ``dampening=0``). State:
    ``trace``. ``decay >= 0``."""
    C.nonneg("trace", "decay", decay)
    C.flag("trace", "nesterov", nesterov)

    def step(ops, g, p, s, h, t):
        tr = ops.add(g, s["trace"], alpha=h["decay"])
        return (ops.add(g, tr, alpha=h["decay"]) if nesterov else tr), {"trace": tr}

    return optimizer({"decay": decay}, lambda params: {"trace": _zeros(params)}, step, "trace")


def ema(decay: float, debias: bool = True) -> GradientTransformation:
    """The exponential moving average ``ema = decay * ema + (1 - decay) * g`` is the update,
    divided by ``1 - decay^t`` when ``debias`` (``optax.ema``). State: ``ema``. ``decay`` in
    [0, 1] ([0, 1) when debiased)."""
    C.flag("ema", "debias", debias)
    _decay("ema", "decay", decay, divides=debias)

    def step(ops, g, p, s, h, t):
        e = ops.lerp(s["ema"], g, 1 - h["decay"])
        return (ops.div(e, 1 - h["decay"] ** t) if debias else e), {"ema": e}

    return optimizer({"decay": decay}, lambda params: {"ema": _zeros(params)}, step, "ema")


def scale_by_learning_rate(learning_rate, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiply by ``-learning_rate`` (``flip_sign=False``: ``+learning_rate``), a number or a
    schedule of the update count (0 for the first update), as ``optax.scale_by_learning_rate``;
    ``None`` is the identity. A number is held as ``hyperparams["lr"]`` (the key every fnnet
    optimizer uses: ``set_hyperparams(state, lr=...)`` changes it without recompiling)."""
    C.flag("scale_by_learning_rate", "flip_sign", flip_sign)
    if learning_rate is None:
        return identity()
    if not callable(learning_rate):
        C.nonneg("scale_by_learning_rate", "learning_rate", learning_rate)
    sign = -1.0 if flip_sign else 1.0

    def step(ops, g, p, s, h, t):
        return ops.mul(g, sign * h["lr"]), {}

    return optimizer({"lr": learning_rate}, lambda params: {}, step, "scale_by_learning_rate")
