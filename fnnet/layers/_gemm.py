"""The GEMM under a float32 CPU dense layer: torch's (``F.linear``, BLAS: MKL on x86) or
oneDNN's (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU fusions call).

Why: which library multiplies fastest depends on the CPU and the shape. BLAS (MKL) takes a
generic code path on some x86 CPUs, where oneDNN's JIT kernels can run the same matmul faster;
elsewhere the two are level, and for small matmuls oneDNN's per-call cost loses
(``benchmarks/dense.py``). So the choice is measured, once per process, on the machine itself,
never read from the CPU's vendor.

Choice (:func:`set_gemm`, or the environment variable ``FNNET_GEMM`` read at import):

- ``"torch"``: always ``F.linear``: ``nn.Linear``'s numbers bit for bit.
- ``"onednn"``: oneDNN wherever it applies (below).
- ``"auto"`` (default): oneDNN where it applies and it was measured faster here. Eager, one
  probe matmul timed once per process (:func:`onednn_measured_faster`, by the margin ``MARGIN``);
  compiled, each matmul's own class (its sizes, which operands are transposed, its bias), timed
  once per process when a graph first meets it (:func:`gemm_for`, by the margin
  ``PASS_MARGIN``): the GEMMs differ by layout (oneDNN ahead on ``x @ W^T`` and ``g @ W`` for
  large matmuls, level on a weight gradient's ``g^T @ x`` on one CPU), so one probe cannot speak
  for every matmul of a step. Inductor caches the compiled code on disk, so a machine keeps the
  first choices it measured for a graph. Two processes on a loaded machine may measure
  differently and so differ at float32 rounding; set ``FNNET_GEMM`` to pin the choice.

Compiled code also weighs, for narrow matmuls (at most ``NARROW`` rows or output columns), torch's
GEMM on the transposed problem ``(b^T @ a^T)^T``, under ``"auto"`` and ``"onednn"``: MKL on an
AMD EPYC runs ``[400, 512] @ [512, 2]`` (the weight gradient of a 2-input layer) 5-10x slower
than ``[2, 512] @ [512, 400]`` (``benchmarks/dense.py``, ``narrow``), again measured, not assumed.

It applies only to float32 tensors on the CPU, with oneDNN built and enabled
(``torch.backends.mkldnn``), and to matmuls of at least ``MIN_WORK`` multiply-adds (rows x in x
out): below that a call's fixed cost outweighs the kernel. Never float64 (its tight parity with
``nn.Linear`` stays exact), never another dtype, never a GPU. oneDNN's sums run in another order
than BLAS's: its numbers equal ``nn.Linear``'s to float32 rounding, not bit for bit; set
``"torch"`` for bitwise agreement with ``nn.Linear``.

Two ways in, the same GEMM:

- eager: :func:`linear`, an ``autograd.Function`` whose backward's matmuls are the same
  Function, so it differentiates to any order (a gradient penalty's second derivative), with a
  ``jvp`` (forward-mode AD) and a ``vmap`` rule. ``fn.Linear`` calls it when :func:`applies`.
- compiled: ``fn.Linear`` puts ``F.linear`` in the graph (under ``torch.compile`` an
  ``autograd.Function`` inside ``torch.func.grad`` is not differentiated right twice: see
  ``tests/test_pins.py``), and :func:`jit_options` gives ``fn.jit`` an inductor pass that
  swaps each qualifying float32 CPU ``mm``/``addmm`` of the differentiated graph (forward,
  backward, double backward alike) for the kernel chosen for its class (oneDNN's, or torch's on
  the transposed problem): ``fn.jit(step, **jit_options())``.
"""

from __future__ import annotations

import functools
import os
import time

import torch

from .. import _compat

__all__ = ["MODES", "set_gemm", "get_gemm", "applies", "onednn_chosen", "onednn_measured_faster", "gemm_for",
           "onednn_faster_for", "measured", "linear", "jit_options"]

MODES = ("auto", "torch", "onednn")
ENV = "FNNET_GEMM"
MIN_WORK = 1 << 24  # rows * in * out: smaller matmuls stay on torch's GEMM (oneDNN's per-call cost dominates)
MARGIN = 0.8        # "auto" takes oneDNN only when its probe time is below this share of torch's
PASS_MARGIN = 0.95  # compiled: a class leaves torch's mm for another kernel when its time is below this share
MEASURE_WORK = 1 << 28  # a class is timed on at most this many multiply-adds (fewer rows), to bound compile time
NARROW = 32         # compiled: a matmul with at most this many rows or output columns is also timed transposed
MIN_NARROW_WORK = 1 << 16  # ... when it has at least this many multiply-adds


def _check_mode(mode, where: str) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{where}: the GEMM must be one of {MODES}, got {mode!r}")
    return mode


def mode_from_env(environ) -> str:
    """The choice that ``environ`` (``os.environ`` at import) asks for: ``FNNET_GEMM``, default ``"auto"``."""
    return _check_mode(environ.get(ENV, "auto"), f"environment variable {ENV}")


_mode = mode_from_env(os.environ)


def set_gemm(mode: str) -> None:
    """Choose the GEMM of float32 CPU dense layers from now on: ``"auto"``, ``"torch"`` or
    ``"onednn"`` (see the module doc). Eager calls follow it at once; a function compiled with
    :func:`jit_options` keeps the kernels it was compiled with."""
    global _mode
    _mode = _check_mode(mode, "fnnet.layers.linear.set_gemm")


def get_gemm() -> str:
    """The current choice: ``"auto"``, ``"torch"`` or ``"onednn"``."""
    return _mode


def _onednn_usable() -> bool:
    return _compat.HAS_ONEDNN_LINEAR and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _raw(a: torch.Tensor, bt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ bt.T + bias`` on oneDNN: a ``[M, K]``, bt ``[N, K]``, bias ``[N]`` -> ``[M, N]``.
    oneDNN refuses a zero-sized matmul: that one is ``F.linear`` (zeros, or the bias)."""
    if a.shape[0] == 0 or a.shape[1] == 0 or bt.shape[0] == 0:
        return torch.nn.functional.linear(a, bt, bias)
    return torch.ops.mkldnn._linear_pointwise(_plain(a), _plain(bt), bias, "none", [], "")


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is row- or column-major (oneDNN reads a transpose in place, faster
    than copying it), else a contiguous copy."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _fastest(kernels: dict, rounds: int) -> dict:
    """The fastest of ``rounds`` single calls of each kernel (seconds), the kernels interleaved,
    after two warm-up rounds (oneDNN builds its kernel on the first call): load from other
    processes only ever adds time, so the fastest call is the one nearest the kernel's own speed."""
    best = dict.fromkeys(kernels, float("inf"))
    with torch.no_grad():
        for r in range(rounds + 2):
            for name, f in kernels.items():
                t0 = time.perf_counter()
                f()
                if r >= 2:
                    best[name] = min(best[name], time.perf_counter() - t0)
    return best


@functools.cache
def onednn_measured_faster(rows: int = 512, inner: int = 384, outer: int = 384, rounds: int = 16) -> bool:
    """Whether oneDNN's GEMM beat torch's on a ``[rows, inner] @ [inner, outer]`` float32 probe,
    timed here by the margin ``MARGIN`` (:func:`_fastest`). Measured once per process: the eager
    choice under ``"auto"``."""
    if not _onednn_usable():
        return False
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, inner, generator=g), torch.randn(outer, inner, generator=g)
    b = torch.randn(outer, generator=g)
    best = _fastest({"torch": lambda: torch.nn.functional.linear(x, w, b), "onednn": lambda: _raw(x, w, b)}, rounds)
    return best["onednn"] < MARGIN * best["torch"]


_measured: dict[tuple, str] = {}  # gemm_for's answers in this process, by matmul class
KERNELS = ("torch", "onednn", "transposed")


def gemm_for(rows: int, inner: int, outer: int, a_transposed: bool = False, b_transposed: bool = False,
             bias: int = 0, rounds: int = 8) -> str:
    """The kernel compiled code runs a float32 CPU ``[rows, inner] @ [inner, outer]`` of this
    class on (``a`` / ``b`` stored transposed or not; ``bias`` 0: none (``mm``), 1: ``[outer]``, 2:
    ``[rows, outer]`` (``addmm``)), timed here once per process and class (:func:`_fastest`, on
    at most ``MEASURE_WORK`` multiply-adds: the rows cut down):

    - ``"torch"``: torch's ``mm``/``addmm`` as inductor calls it, unless another beats it by the
      margin ``PASS_MARGIN``;
    - ``"onednn"`` (``fnnet::onednn_mm``), for matmuls of at least ``MIN_WORK`` with no 2-d bias;
    - ``"transposed"``: torch's GEMM on the transposed problem, ``(b^T @ a^T)^T``, for narrow
      matmuls (at most ``NARROW`` rows or output columns, at least ``MIN_NARROW_WORK``): the
      BLAS may take a slow path for a few output columns that the transposed problem (a few
      rows) avoids: a dense layer of 2 inputs, whose weight gradient is ``[400, 512] @ [512, 2]``,
      or of a few outputs.

    Which kernel wins depends on the CPU, the library and the layout, so it is measured, never
    assumed."""
    key = (rows, inner, outer, a_transposed, b_transposed, bias)
    if key not in _measured:
        _measured[key] = _measure_class(*key, rounds=rounds)
    return _measured[key]


def onednn_faster_for(rows: int, inner: int, outer: int, a_transposed: bool = False, b_transposed: bool = False,
                      bias: bool = False) -> bool:
    """Whether compiled ``"auto"`` puts this class on oneDNN (:func:`gemm_for`)."""
    return gemm_for(rows, inner, outer, a_transposed, b_transposed, int(bias)) == "onednn"


def measured() -> dict[tuple, str]:
    """A copy of this process's per-class answers: ``(rows, inner, outer, a_transposed,
    b_transposed, bias) -> kernel``."""
    return dict(_measured)


def _candidates(rows: int, inner: int, outer: int, bias: int) -> tuple[str, ...]:
    """The kernels :func:`gemm_for` weighs for a class (torch's always first)."""
    work = rows * inner * outer
    return ("torch",) + (("onednn",) if work >= MIN_WORK and bias < 2 and _onednn_usable() else ()) + \
        (("transposed",) if min(rows, outer) <= NARROW and work >= MIN_NARROW_WORK else ())


def _measure_class(rows, inner, outer, a_transposed, b_transposed, bias, rounds) -> str:
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    names = _candidates(rows, inner, outer, bias)
    if len(names) == 1:
        return "torch"
    rows = min(rows, max(64, MEASURE_WORK // max(1, inner * outer)))
    with unset_fake_temporarily():  # called from inductor's pass, under its fake mode: real tensors here
        g = torch.Generator().manual_seed(0)

        def matrix(n, m, transposed):
            return torch.randn(m, n, generator=g).t() if transposed else torch.randn(n, m, generator=g)

        a, b = matrix(rows, inner, a_transposed), matrix(inner, outer, b_transposed)
        c = None if not bias else torch.randn(*((outer,) if bias == 1 else (rows, outer)), generator=g)
        ct = None if c is None else c.unsqueeze(1) if bias == 1 else c.t()
        kernels = {"torch": (lambda: torch.addmm(c, a, b)) if bias else (lambda: torch.mm(a, b)),
                   "onednn": lambda: torch.ops.fnnet.onednn_mm(a, b, c),
                   "transposed": (lambda: torch.addmm(ct, b.t(), a.t()).t()) if bias
                   else (lambda: torch.mm(b.t(), a.t()).t())}
        best = _fastest({n: kernels[n] for n in names}, rounds)
    winner = min(best, key=best.get)
    return winner if best[winner] < PASS_MARGIN * best["torch"] else "torch"


def onednn_chosen() -> bool:
    """Whether the current choice (:func:`get_gemm`) puts qualifying matmuls on oneDNN here."""
    if _mode == "torch" or not _onednn_usable():
        return False
    return _mode == "onednn" or onednn_measured_faster()


def applies(dtype: torch.dtype, device: torch.device, rows: int, inner: int, outer: int) -> bool:
    """Whether an eager ``[rows, inner] @ [inner, outer]`` matmul runs on oneDNN: float32, CPU, at
    least ``MIN_WORK`` multiply-adds (none of the three empty), and oneDNN chosen
    (:func:`onednn_chosen`). Under ``"auto"``, not inside a ``torch.func`` transform (``fn.grad``,
    ``fn.vmap``, ...): there every application of the Function, forward and backward, runs through
    functorch's Python dispatch once per transform level, a fixed cost per call that outweighed
    the faster kernel at every size measured (``benchmarks/dense.py``, ``benchmarks/losses.py``);
    ``"onednn"`` uses it there too. Compiled code has neither cost: see :func:`jit_options`."""
    return (dtype == torch.float32 and torch.device(device).type == "cpu" and min(rows, inner, outer) > 0
            and rows * inner * outer >= MIN_WORK and onednn_chosen()
            and (_mode == "onednn" or torch._C._functorch.maybe_current_level() is None))


class _Gemm(torch.autograd.Function):
    """``a @ bt.T + bias`` on oneDNN, a ``[M, K]``, bt ``[N, K]``, bias ``[N]`` or None.
    Its backward's matmuls (``g @ bt``, ``g.T @ a``) are this Function again, so a backward
    differentiates like any other function (to any order)."""

    @staticmethod
    def forward(a, bt, bias):
        return _raw(a, bt, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, bt, bias = inputs
        ctx.save_for_backward(a, bt)
        ctx.save_for_forward(a, bt)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, g):
        a, bt = ctx.saved_tensors
        need_a, need_bt, need_bias = ctx.needs_input_grad
        ga = _Gemm.apply(g, bt.t(), None) if need_a else None
        gbt = _Gemm.apply(g.t(), a.t(), None) if need_bt else None
        gbias = g.sum(0) if need_bias and ctx.has_bias else None
        return ga, gbt, gbias

    @staticmethod
    def jvp(ctx, da, dbt, dbias):
        a, bt = ctx.saved_tensors
        out = None
        for t in (_Gemm.apply(da, bt, None) if da is not None else None,
                  _Gemm.apply(a, dbt, None) if dbt is not None else None,
                  dbias.expand(a.shape[0], bt.shape[0]) if dbias is not None else None):
            if t is not None:
                out = t if out is None else out + t
        return out  # forward AD calls jvp only when some input has a tangent

    @staticmethod
    def vmap(info, in_dims, a, bt, bias):
        da, dbt, dbias = in_dims
        if dbt is None and dbias is None:  # a batch of inputs through one weight: one taller matmul
            a = a.movedim(da, 0)
            return _Gemm.apply(a.reshape(-1, a.shape[-1]), bt, bias).reshape(a.shape[0], a.shape[1], -1), 0
        # batched weights (an ensemble): torch's batched matmul, differentiable as it is
        n = info.batch_size
        a = a.movedim(da, 0) if da is not None else a.expand(n, *a.shape)
        bt = bt.movedim(dbt, 0) if dbt is not None else bt.expand(n, *bt.shape)
        out = torch.matmul(a, bt.transpose(1, 2))
        if bias is not None:
            out = out + (bias.movedim(dbias, 0) if dbias is not None else bias).unsqueeze(-2)
        return out, 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on oneDNN, eager (see :func:`applies`). x ``[..., in]``, weight
    ``[out, in]``, bias ``[out]`` or None -> ``[..., out]``."""
    y = _Gemm.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


# -- compiled: an inductor pass over the differentiated graph ---------------------------------------

@torch.library.custom_op("fnnet::onednn_mm", mutates_args=())
def _onednn_mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b + bias`` (a ``[M, K]``, b ``[K, N]``, bias ``[N]``) on oneDNN: what the pass puts
    in place of ``mm``/``addmm`` after autograd has run (the op itself needs no derivative)."""
    return _raw(a, b.t(), bias)


@_onednn_mm.register_fake
def _(a, b, bias):
    return a.new_empty(a.shape[0], b.shape[1])


def _transposed(t: torch.Tensor) -> bool:
    """Whether a 2-d ``t`` is stored column-major (a transpose of a contiguous tensor)."""
    return t.ndim == 2 and not t.is_contiguous() and t.t().is_contiguous()


def _rewrite(graph) -> None:
    """Give each float32 CPU ``mm(a, b)`` / ``addmm(bias, a, b)`` (beta = alpha = 1; bias
    ``[N]`` or ``[M, N]``) of an inductor post-grad graph the kernel chosen for its class: under
    ``"onednn"`` every matmul of at least ``MIN_WORK`` (no 2-d bias) goes to ``fnnet::onednn_mm``;
    otherwise, and for narrow matmuls under both modes, what :func:`gemm_for` measured fastest."""
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        val = node.meta.get("val")
        if node.target is aten.addmm.default:
            bias, a, b = node.args[:3]
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            bval = bias.meta.get("val") if hasattr(bias, "meta") else None
            if bval is None or bval.ndim not in (1, 2) or tuple(bval.shape) != tuple(val.shape)[2 - bval.ndim:]:
                continue  # a bias broadcast another way stays with inductor
            bias_kind = bval.ndim
        else:
            (a, b), bias, bias_kind = node.args[:2], None, 0
        aval, bmeta = a.meta.get("val"), b.meta.get("val")
        if val is None or aval is None or bmeta is None or not isinstance(val, torch.Tensor):
            continue
        if not (val.dtype == torch.float32 and val.device.type == "cpu"):
            continue
        try:
            rows, inner, outer = (int(s) for s in (aval.shape[0], aval.shape[1], bmeta.shape[1]))
        except (TypeError, ValueError):  # a symbolic size: leave it to inductor
            continue
        if _mode == "onednn" and rows * inner * outer >= MIN_WORK and bias_kind < 2 and _onednn_usable():
            kernel = "onednn"
        else:
            kernel = gemm_for(rows, inner, outer, _transposed(aval), _transposed(bmeta), bias_kind)
        if kernel == "torch":
            continue
        with graph.inserting_before(node):
            if kernel == "onednn":
                new = graph.call_function(torch.ops.fnnet.onednn_mm.default, (a, b, bias))
                new.meta.update(node.meta)
            else:
                new = _transposed_product(graph, node, a, b, bias, bias_kind)
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def _transposed_product(graph, node, a, b, bias, bias_kind):
    """Nodes for ``(b^T @ a^T + bias^T)^T`` in place of ``node`` (``mm``/``addmm``), each with its
    fake value; made contiguous where it is a graph output (eager's strides)."""
    aten = torch.ops.aten

    def call(target, *args, **kwargs):
        n = graph.call_function(target, args, kwargs)
        vals = [x.meta["val"] if isinstance(x, torch.fx.Node) else x for x in args]
        n.meta["val"] = target(*vals, **kwargs)
        for k in ("stack_trace", "nn_module_stack", "source_fn_stack", "original_aten", "seq_nr"):
            if k in node.meta:
                n.meta[k] = node.meta[k]
        return n

    at, bt = call(aten.permute.default, a, [1, 0]), call(aten.permute.default, b, [1, 0])
    if bias is None:
        prod = call(aten.mm.default, bt, at)
    else:
        biast = call(aten.unsqueeze.default, bias, 1) if bias_kind == 1 else call(aten.permute.default, bias, [1, 0])
        prod = call(aten.addmm.default, biast, bt, at)
    out = call(aten.permute.default, prod, [1, 0])
    if any(user.op == "output" for user in node.users):
        out = call(aten.clone.default, out, memory_format=torch.contiguous_format)
    return out


@functools.cache
def _pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class OneDNNGemmPass(CustomGraphPass):
        def __call__(self, graph) -> None:
            _rewrite(graph)

        def uuid(self):
            # what the rewrite depends on: this file, the mode and the size limits (tests change them)
            return get_hash_for_files((__file__,), extra=f"{_mode}-{MIN_WORK}-{NARROW}-{MIN_NARROW_WORK}")

    return OneDNNGemmPass()


def jit_options() -> dict:
    """Keyword arguments for ``fn.jit`` (or ``torch.compile``) that give each matmul of the
    compiled function the GEMM chosen for its class (:func:`_rewrite`): under ``"onednn"`` oneDNN
    for every big one, under ``"auto"`` what was measured fastest here (:func:`gemm_for`, timed
    while compiling), narrow ones under both; ``{}`` under ``"torch"``.
    ``fn.jit(step, **jit_options())``; not together with ``mode=`` (torch.compile takes
    ``options`` or ``mode``, not both). The pass rewrites every qualifying matmul of the compiled
    graph, whichever layer it came from."""
    if _mode == "torch" or not _compat.HAS_CUSTOM_GRAPH_PASS:
        return {}
    return {"options": {"post_grad_custom_post_pass": _pass()}}
