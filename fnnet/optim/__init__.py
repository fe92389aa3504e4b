"""Pure optimizers as gradient transformations (optax-style) that follow their ``torch.optim``
namesakes step for step, with the same argument names and defaults (``lr`` first).

    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-3, weight_decay=1e-4))
    state = opt.init(params)                          # a pytree of tensors, with the step count
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)

- Optimizers: ``sgd``, ``adam``, ``adamw``, ``adamax``, ``adagrad``, ``rmsprop``, ``rprop``,
  ``asgd`` (its averaged params are ``state["ax"]``), ``nadam``, ``radam``, ``adadelta``,
  ``adafactor`` (factored second moments), ``muon`` (2-D params only), and ``lbfgs``, which
  takes the loss: ``params, state, loss = opt.step(loss_fn, params, state)``.
- ``lr`` may be a number or a schedule of the step count: every torch lr scheduler as a pure
  function (``step_lr``, ``multi_step_lr``, ``constant_lr``, ``linear_lr``, ``exponential_lr``,
  ``polynomial_lr``, ``cosine_annealing_lr``, ``cosine_annealing_warm_restarts``, ``cyclic_lr``
  (and ``cyclic_momentum``), ``one_cycle_lr``, ``lambda_lr``, ``multiplicative_lr``,
  ``sequential_lr``, ``chained_scheduler``, ``swa_lr``) and optax's
  ``warmup_cosine_decay_schedule``, ``warmup_constant_schedule``, ``join_schedules``,
  ``piecewise_constant_schedule``.
- Weight averaging (``torch.optim.swa_utils``): ``swa = averaged("swa" | "ema")``,
  ``avg = swa.update(avg, params)``, ``swa.params(avg)``; ``update_bn(model, params, state, batches)``.
- Hyperparameters live in the state as tensors: ``set_hyperparams(state, lr=1e-4)`` is
  ``param_group["lr"] = 1e-4``, and a compiled step does not recompile for it. Under ``vmap``
  (ensembles) a state may hold one value per member.
- Param groups and freezing: ``multi_transform({"a": opt_a, "b": opt_b}, labels)`` with a label
  tree or ``f(path, leaf) -> label``; ``freeze(opt, predicate | bool tree | model)`` (frozen
  leaves: no state, bit-identical). ``add_decayed_weights(wd, mask)``, ``clip_by_value``, ``scale``,
  ``scale_by_schedule``, ``reduce_on_plateau`` (``update(..., value=loss)`` once per epoch).
- optax's building blocks, to ``chain`` (updates are added, so the last block is
  ``scale_by_learning_rate(lr)``, which flips the sign): ``scale_by_adam``, ``scale_by_amsgrad``,
  ``scale_by_rms``, ``scale_by_stddev``, ``trace``, ``ema``, ``scale_by_learning_rate``, ``clip``;
  and wrappers: ``masked(inner, mask)``, ``apply_if_finite(inner, n)``,
  ``MultiSteps(inner, every_k_schedule)`` (gradient accumulation), ``lookahead(fast, k, alpha)``
  (slow weights in ``state["slow"]``); ``adamw(..., mask=)`` decays only where the mask says.

Trees are matched by path (``tree.match``): grads, params, updates, states, label and mask
trees may come in any dict key order; a missing, extra or misshaped leaf is a ``ValueError``
naming its path (nothing is broadcast). Hyperparameters are checked at construction as
torch.optim checks them (``ValueError`` naming the optimizer and argument). ``lr=0``, held or
reached by a schedule, leaves the params unchanged, as in torch. Param groups:
``set_hyperparams(state, group="decay", lr=...)`` changes one group, and an unnamed change held
by several groups is refused. A model's frozen layers (``Embedding.from_pretrained``) stay out
of the optimizer with ``freeze(opt, model)`` (torch skips params that do not require grad).

Updates run as ``torch._foreach_*`` over all leaves; under ``vmap`` or when differentiating
through an update, leaf by leaf (see ``_ops``). Eager on the CPU, hyperparameters are read as
Python numbers, as torch.optim reads its CPU step; on an accelerator and under ``fn.jit`` they
stay tensors (no host sync, no recompiles).
"""

from .adadelta import adadelta
from .adafactor import adafactor
from .adagrad import adagrad
from .adam import adam, adamax, adamw
from .asgd import asgd
from .base import (
                   GradientTransformation,
                   apply_updates,
                   chain,
                   identity,
                   optimizer,
                   set_hyperparams,
                   set_to_zero,
)
from .blocks import ema, scale_by_adam, scale_by_amsgrad, scale_by_learning_rate, scale_by_rms, scale_by_stddev, trace
from .groups import freeze, frozen_paths, multi_transform
from .lbfgs import LBFGS, lbfgs
from .loss_scale import dynamic_loss_scale
from .muon import muon
from .nadam import nadam
from .plateau import reduce_on_plateau
from .radam import radam
from .rmsprop import rmsprop
from .rprop import rprop
from .schedules import (
                   chained_scheduler,
                   constant,
                   constant_lr,
                   cosine_annealing_lr,
                   cosine_annealing_warm_restarts,
                   cyclic_lr,
                   cyclic_momentum,
                   exponential_lr,
                   join_schedules,
                   lambda_lr,
                   linear_lr,
                   multi_step_lr,
                   multiplicative_lr,
                   one_cycle_lr,
                   piecewise_constant_schedule,
                   polynomial_lr,
                   sequential_lr,
                   step_lr,
                   warmup_constant_schedule,
                   warmup_cosine_decay_schedule,
)
from .sgd import sgd
from .swa import Averaged, averaged, swa_lr, update_bn
from .transforms import (
                   add_decayed_weights,
                   clip,
                   clip_by_global_norm,
                   clip_by_value,
                   scale,
                   scale_by_schedule,
)
from .wrappers import MultiSteps, apply_if_finite, lookahead, masked

__all__ = [
    "LBFGS", "GradientTransformation", "adagrad", "adam", "adamax", "adamw", "add_decayed_weights",
    "apply_updates", "asgd", "chain", "clip_by_global_norm", "clip_by_value", "constant",
    "cosine_annealing_lr", "dynamic_loss_scale", "exponential_lr", "freeze", "frozen_paths", "identity",
    "lbfgs", "linear_lr",
    "multi_transform",
    "one_cycle_lr", "optimizer", "reduce_on_plateau", "rmsprop", "rprop", "scale", "scale_by_schedule",
    "set_hyperparams", "set_to_zero", "sgd", "step_lr",
    # the rest of torch.optim's optimizers
    "adadelta", "adafactor", "muon", "nadam", "radam",
    # schedules (the rest of torch.optim.lr_scheduler, optax's) and weight averaging (swa_utils)
    "Averaged", "averaged", "chained_scheduler", "constant_lr", "cosine_annealing_warm_restarts", "cyclic_lr",
    "cyclic_momentum", "join_schedules", "lambda_lr", "multi_step_lr", "multiplicative_lr",
    "piecewise_constant_schedule", "polynomial_lr", "sequential_lr", "swa_lr", "update_bn",
    "warmup_constant_schedule", "warmup_cosine_decay_schedule",
    # optax's building blocks and wrappers
    "MultiSteps", "apply_if_finite", "clip", "ema", "lookahead", "masked", "scale_by_adam", "scale_by_amsgrad",
    "scale_by_learning_rate", "scale_by_rms", "scale_by_stddev", "trace",
]
