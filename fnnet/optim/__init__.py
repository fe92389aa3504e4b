"""Pure optimizers as gradient transformations (optax-style) that follow their ``torch.optim``
namesakes step for step, with the same argument names and defaults."""

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
from .groups import freeze, multi_transform
from .lbfgs import LBFGS, lbfgs
from .plateau import reduce_on_plateau
from .rmsprop import rmsprop
from .rprop import rprop
from .schedules import (
                   constant,
                   cosine_annealing_lr,
                   exponential_lr,
                   linear_lr,
                   one_cycle_lr,
                   step_lr,
)
from .sgd import sgd
from .transforms import (
                   add_decayed_weights,
                   clip_by_global_norm,
                   clip_by_value,
                   scale,
                   scale_by_schedule,
)

__all__ = [
    "LBFGS", "GradientTransformation", "adagrad", "adam", "adamax", "adamw", "add_decayed_weights",
    "apply_updates", "asgd", "chain", "clip_by_global_norm", "clip_by_value", "constant",
    "cosine_annealing_lr", "exponential_lr", "freeze", "identity", "lbfgs", "linear_lr", "multi_transform",
    "one_cycle_lr", "optimizer", "reduce_on_plateau", "rmsprop", "rprop", "scale", "scale_by_schedule",
    "set_hyperparams", "set_to_zero", "sgd", "step_lr",
]
