"""fnnet: functional, JAX-style neural networks in pure PyTorch.

Models are frozen dataclasses with pure ``init(key)`` / ``apply(params, x)``; params
are nested dicts named as ``torch.nn`` names them; transforms come from ``torch.func``.
"""

from . import _compat  # first: on a torch older than the floor, an ImportError naming both
from . import _cache_key
from . import init, io, random, tree
from .interop import functional, params_from_module, state_from_module, to_state_dict
from .layers import *
from .layers import __all__ as _layers_all
from .module import Concat, Lambda, Module, ParamsError, Residual, Sequential, check_params, param_shapes
from .precision import MixedPrecision, Policy
from .remat import checkpoint, checkpoint_policies
from .scan import scan
from .stack import Stacked
from .summary import summary
from .transforms import grad, hessian, jacfwd, jacrev, jit, jvp, value_and_grad, vjp, vmap
from . import optim

_cache_key.tag_with_source(__file__)  # compiled graphs cached on disk are keyed by this source

__version__ = "0.1.0"
